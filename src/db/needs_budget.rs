use std::marker::PhantomData;

use diesel::connection::{
    CacheSize, Connection, ConnectionSealed, Instrumentation, LoadConnection, SimpleConnection,
    TransactionManager, TransactionManagerStatus,
};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::{ConnectionError, ConnectionResult, QueryResult};

use super::Conn;
use crate::backend::BudgetConnection;

/// Never implemented: the bound under which a [`Conn`] would be a Diesel connection.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` runs only budgeted queries: add `.budget(Budget::rows(n))` to the query",
    label = "this query has no budget",
    note = "`Conn` is not a Diesel connection: `query.budget(Budget::rows(n)).load(&mut conn)` runs a query under a budget",
    note = "for writes and statements that need no budget, use `conn.unbudgeted()` (recorded as unbudgeted)"
)]
pub trait NeedsBudget {}

impl<C: BudgetConnection> SimpleConnection for Conn<C>
where
    Conn<C>: NeedsBudget,
{
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        self.inner.batch_execute(query)
    }
}

impl<C: BudgetConnection> ConnectionSealed for Conn<C> where Conn<C>: NeedsBudget {}

impl<C: BudgetConnection> Connection for Conn<C>
where
    Conn<C>: NeedsBudget,
{
    type Backend = C::Backend;
    type TransactionManager = Delegate<C>;

    fn establish(_: &str) -> ConnectionResult<Self> {
        Err(ConnectionError::BadConnection(
            "a Conn comes from Db::get".into(),
        ))
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Self::Backend> + QueryId,
    {
        <C as Connection>::execute_returning_count(&mut self.inner, source)
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Delegate<C> as TransactionManager<Self>>::TransactionStateData {
        <C as Connection>::transaction_state(&mut self.inner)
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        <C as Connection>::instrumentation(&mut self.inner)
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        <C as Connection>::set_instrumentation(&mut self.inner, instrumentation)
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        <C as Connection>::set_prepared_statement_cache_size(&mut self.inner, size)
    }
}

impl<C, B> LoadConnection<B> for Conn<C>
where
    C: BudgetConnection + LoadConnection<B>,
    Conn<C>: NeedsBudget,
{
    type Cursor<'conn, 'query>
        = <C as LoadConnection<B>>::Cursor<'conn, 'query>
    where
        Self: 'conn;
    type Row<'conn, 'query>
        = <C as LoadConnection<B>>::Row<'conn, 'query>
    where
        Self: 'conn;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Self::Backend> + QueryId + 'query,
        Self::Backend: diesel::expression::QueryMetadata<T::SqlType>,
    {
        <C as LoadConnection<B>>::load(&mut self.inner, source)
    }
}

/// The transaction manager of the never-usable `Connection` impl: `C`'s.
#[doc(hidden)]
#[derive(Debug)]
pub struct Delegate<C>(PhantomData<C>);

impl<C: BudgetConnection> TransactionManager<Conn<C>> for Delegate<C>
where
    Conn<C>: NeedsBudget,
{
    type TransactionStateData =
        <<C as Connection>::TransactionManager as TransactionManager<C>>::TransactionStateData;

    fn begin_transaction(conn: &mut Conn<C>) -> QueryResult<()> {
        <C as Connection>::TransactionManager::begin_transaction(&mut conn.inner)
    }

    fn rollback_transaction(conn: &mut Conn<C>) -> QueryResult<()> {
        <C as Connection>::TransactionManager::rollback_transaction(&mut conn.inner)
    }

    fn commit_transaction(conn: &mut Conn<C>) -> QueryResult<()> {
        <C as Connection>::TransactionManager::commit_transaction(&mut conn.inner)
    }

    fn transaction_manager_status_mut(conn: &mut Conn<C>) -> &mut TransactionManagerStatus {
        <C as Connection>::TransactionManager::transaction_manager_status_mut(&mut conn.inner)
    }
}
