//! The typed builder: `.budget(..)` on any Diesel select gives a [`Budgeted`] query, the only
//! kind of query the executor runs.
//!
//! # How the LIMIT is pushed down
//! The executor asks the server for at most `budget + 1` rows, so it can tell "fits" from
//! "too many" without ever receiving the excess. A Diesel query either has no `LIMIT`, and gets
//! `.limit(budget + 1)`, or already has one (`.limit(n)`), which a second `.limit()` would
//! silently *replace*. To keep yours, the executor renders the query first: when it ends in a
//! top-level `LIMIT`, the query is wrapped instead, as
//! `SELECT * FROM (<your query>) AS diesel_budget_capped LIMIT budget + 1`, so the smaller of
//! the two limits wins. (MySQL rejects `SELECT *` over a derived table with duplicate column
//! names: give a joined query with its own `LIMIT` distinct column names, or drop the `LIMIT`
//! and let the budget bound it.)

use std::ops::ControlFlow;

use diesel::backend::Backend;
use diesel::connection::DefaultLoadingMode;
use diesel::query_builder::{AsQuery, AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::LimitDsl;
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType};
use diesel::QueryResult;

use crate::backend::{has_top_level_limit, BudgetConnection};
use crate::budget::{Budget, Rows, Strict};
use crate::error::{Error, Result};
use crate::timeout::Prefixed;

/// Adds [`budget`](BudgetDsl::budget) to every Diesel query that can take a `LIMIT`: tables,
/// select statements (plain, filtered, ordered, joined, grouped) and boxed selects.
///
/// # Example
/// ```
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::items;
///
/// let q = items::table.filter(items::category.eq(3)).budget(Budget::rows(500));
/// assert_eq!(q.budget_spec().rows, 500);
/// ```
pub trait BudgetDsl: Sized {
    /// Declares how much of the result may be loaded. See [`Budget`].
    fn budget<M, O>(self, budget: Budget<M, O>) -> Budgeted<Self, M, O> {
        Budgeted {
            query: self,
            budget,
        }
    }
}

impl<T: LimitDsl> BudgetDsl for T {}

/// A query with its budget: what the executor runs (`load`, `first`, `get_result(s)`,
/// `batches_by`). Built by [`BudgetDsl::budget`].
#[must_use = "a budgeted query does nothing until it is loaded"]
#[derive(Debug, Clone, Copy)]
pub struct Budgeted<Q, M = Rows, O = Strict> {
    pub(crate) query: Q,
    pub(crate) budget: Budget<M, O>,
}

impl<Q, M: crate::budget::Metering, O: crate::budget::Overflow> Budgeted<Q, M, O> {
    /// The budget as plain values.
    pub fn budget_spec(&self) -> crate::budget::BudgetSpec {
        self.budget.spec()
    }

    /// The query without its budget.
    pub fn into_inner(self) -> Q {
        self.query
    }
}

/// `SELECT * FROM (<query>) AS diesel_budget_capped LIMIT <limit>`: caps a query that has a
/// `LIMIT` of its own without replacing it.
#[derive(Debug, Clone, Copy)]
pub struct Capped<Q> {
    query: Q,
    limit: i64,
}

impl<Q: Query> Query for Capped<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryId> QueryId for Capped<Q> {
    type QueryId = Capped<Q::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q, DB> QueryFragment<DB> for Capped<Q>
where
    DB: Backend + HasSqlType<BigInt>,
    Q: QueryFragment<DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT * FROM (");
        self.query.walk_ast(out.reborrow())?;
        out.push_sql(") AS diesel_budget_capped LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.limit)
    }
}

impl<Q, C> RunQueryDsl<C> for Capped<Q> {}

/// Where the executor hands the rows of one execution.
#[doc(hidden)]
pub trait RowSink<U> {
    /// The result holds `rows` rows (known when the client buffered it); called before any row.
    fn expect(&mut self, rows: usize);
    /// One row; `Break` stops loading.
    fn push(&mut self, row: U) -> ControlFlow<()>;
}

/// A Diesel query the executor can run on connection `C`, loading rows of type `U`.
///
/// Implemented for every query Diesel itself could `load` into `U` and put a `LIMIT` on; you
/// never implement it. When a call does not compile, the cause is usually the same as for
/// Diesel's `load`: the row type does not match the selected columns.
pub trait BudgetQuery<'q, C: BudgetConnection, U>: Sized {
    /// Runs the query with at most `limit` rows, handing rows to `sink` until it breaks.
    /// Returns the SQL that ran. `stream` picks the connection's streaming loading mode;
    /// `prefix` is constant text put before the statement (a time limit, [`crate::timeout`]).
    #[doc(hidden)]
    fn run_limited<S>(
        self,
        limit: i64,
        stream: bool,
        prefix: Option<String>,
        conn: &mut C,
        sink: &mut S,
    ) -> Result<String>
    where
        S: RowSink<U>;
}

impl<'q, C, U, Q> BudgetQuery<'q, C, U> for Q
where
    C: BudgetConnection,
    Q: AsQuery,
    Q::Query: LimitDsl + QueryFragment<C::Backend>,
    diesel::dsl::Limit<Q::Query>:
        LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode> + QueryFragment<C::Backend>,
    Capped<Q::Query>:
        LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode> + QueryFragment<C::Backend>,
    Prefixed<diesel::dsl::Limit<Q::Query>>:
        LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode> + QueryFragment<C::Backend>,
    Prefixed<Capped<Q::Query>>:
        LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode> + QueryFragment<C::Backend>,
    C: diesel::connection::LoadConnection<C::StreamMode>,
    U: 'static,
{
    fn run_limited<S>(
        self,
        limit: i64,
        stream: bool,
        prefix: Option<String>,
        conn: &mut C,
        sink: &mut S,
    ) -> Result<String>
    where
        S: RowSink<U>,
    {
        let query = self.as_query();
        let capped = has_top_level_limit(&render::<C, _>(&query)?);
        match (capped, prefix) {
            (true, None) => run(Capped { query, limit }, stream, conn, sink),
            (false, None) => run(query.limit(limit), stream, conn, sink),
            (true, Some(p)) => run(
                Prefixed::new(p, Capped { query, limit }),
                stream,
                conn,
                sink,
            ),
            (false, Some(p)) => run(Prefixed::new(p, query.limit(limit)), stream, conn, sink),
        }
    }
}

/// Renders `query` (for errors and ledgers), then runs it through [`drive`].
fn run<'q, C, U, P, S>(query: P, stream: bool, conn: &mut C, sink: &mut S) -> Result<String>
where
    C: BudgetConnection + diesel::connection::LoadConnection<C::StreamMode>,
    P: LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode> + QueryFragment<C::Backend>,
    U: 'static,
    S: RowSink<U>,
{
    let sql = render::<C, _>(&query)?;
    match drive(query, stream, conn, sink) {
        Ok(()) => Ok(sql),
        Err(e) => Err(Error::query(sql, e)),
    }
}

pub(crate) fn render<C: BudgetConnection, Q: QueryFragment<C::Backend> + ?Sized>(
    query: &Q,
) -> Result<String> {
    C::render_sql(query).map_err(Error::from)
}

/// Runs `query`, handing each row to `sink` until it breaks or the rows end. Breaking drops the
/// iterator: SQLite stops at once, PostgreSQL row-by-row reads (and discards) the rest of a
/// result the `LIMIT` already bounded, MySQL had it buffered.
fn drive<'q, C, U, P, S>(query: P, stream: bool, conn: &mut C, sink: &mut S) -> QueryResult<()>
where
    C: BudgetConnection + diesel::connection::LoadConnection<C::StreamMode>,
    P: LoadQuery<'q, C, U> + LoadQuery<'q, C, U, C::StreamMode>,
    U: 'static,
    S: RowSink<U>,
{
    fn pump<U, S: RowSink<U>>(
        rows: impl Iterator<Item = QueryResult<U>>,
        sink: &mut S,
    ) -> QueryResult<()> {
        sink.expect(rows.size_hint().0);
        for row in rows {
            if sink.push(row?).is_break() {
                break;
            }
        }
        Ok(())
    }
    if stream {
        pump(query.load_iter::<U, C::StreamMode>(conn)?, sink)
    } else {
        pump(query.load_iter::<U, DefaultLoadingMode>(conn)?, sink)
    }
}
