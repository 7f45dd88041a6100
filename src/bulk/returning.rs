//! `RETURNING` under a row budget: the rows a bulk insert wrote or a bulk delete removed,
//! loaded at most up to the budget.

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{QueryFragment, QueryId, ValuesClause};
use diesel::{Insertable, Table};

use super::delete::BulkKeys;
use super::{BulkDelete, BulkInsert, BulkWrite, KeyOf, OnProgress, Report};
use crate::budget::{BudgetSpec, Exceeded};
use crate::error::{Error, Result};
use crate::exec::{sealed as access, ConnectionOf, Executor};

/// A bulk write that loads what it wrote (or deleted), under a row budget. Built by
/// [`BulkInsert::returning`] and [`BulkDelete::returning`]; run it with `execute`, which
/// returns the [`Report`] and the rows.
#[must_use = "a bulk write does nothing until `.execute(&mut conn)`"]
#[derive(Debug)]
pub struct BulkReturning<B, S> {
    inner: B,
    returning: S,
    budget: BudgetSpec,
}

impl<B, S> BulkReturning<B, S> {
    pub(crate) fn new(inner: B, returning: S, budget: BudgetSpec) -> Self {
        BulkReturning {
            inner,
            returning,
            budget,
        }
    }
}

/// The error of a `RETURNING` write that would pass its budget.
pub(crate) fn over_budget(sql: String, budget: BudgetSpec, seen_rows: u64) -> Error {
    Error::BudgetExceeded {
        sql,
        budget,
        exceeded: Exceeded::Rows,
        seen_rows,
        seen_bytes: 0,
    }
}

impl<T, I, K, P, S> BulkReturning<BulkInsert<T, I, K, P>, S>
where
    T: Table + Copy,
    P: OnProgress,
{
    /// Writes the rows in one transaction and returns the [`Report`] and `returning` of every
    /// row written, in input order. See [`BulkInsert::returning`].
    ///
    /// # Errors
    /// [`Error::BudgetExceeded`] when the rows written would pass the budget (checked before
    /// each chunk is sent; nothing is written); otherwise as [`BulkInsert::execute`].
    pub fn execute<X, R, V, U>(self, conn: &mut X) -> Result<(Report, Vec<U>)>
    where
        X: Executor,
        I: Iterator<Item = R>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
        V: QueryId,
        K: KeyOf<R>,
        ConnectionOf<X>: BulkWrite<T, V>,
        S: Expression + QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend>,
        <ConnectionOf<X> as diesel::Connection>::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, <ConnectionOf<X> as diesel::Connection>::Backend> + 'static,
    {
        let conn = conn.connection(access::TOKEN);
        let BulkReturning {
            inner,
            returning,
            budget,
        } = self;
        let mut out: Vec<U> = Vec::new();
        let report = inner.run(conn, |conn, table, rows, _, conflict| {
            let after = out.len() as u64 + rows.len() as u64;
            if after > budget.rows {
                return Err(over_budget(
                    "INSERT INTO .. VALUES (..) RETURNING ..".into(),
                    budget,
                    after,
                ));
            }
            let got: Vec<U> = conn.insert_returning(table, rows, conflict, &returning)?;
            let n = got.len();
            out.extend(got);
            Ok(n)
        })?;
        Ok((report, out))
    }
}

impl<T, Col, I, P, S> BulkReturning<BulkDelete<T, Col, I, P>, S>
where
    T: Table + Copy,
    P: OnProgress,
{
    /// Deletes the rows of the keys in one transaction and returns the [`Report`] and
    /// `returning` of every row deleted (in no particular order). See
    /// [`BulkDelete::returning`].
    ///
    /// # Errors
    /// [`Error::BudgetExceeded`] when more rows than the budget would be deleted: at most
    /// budget + 1 rows are loaded, and the transaction is rolled back (nothing is deleted);
    /// [`Error::Query`] when a statement fails.
    pub fn execute<X, K, U>(self, conn: &mut X) -> Result<(Report, Vec<U>)>
    where
        X: Executor,
        I: Iterator<Item = K>,
        ConnectionOf<X>: BulkKeys<T, Col, K>,
        S: Expression + QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend>,
        <ConnectionOf<X> as diesel::Connection>::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, <ConnectionOf<X> as diesel::Connection>::Backend> + 'static,
    {
        let conn = conn.connection(access::TOKEN);
        let BulkReturning {
            inner,
            returning,
            budget,
        } = self;
        let mut out: Vec<U> = Vec::new();
        let report = inner.run(conn, |conn, table, keys| {
            let room = budget.rows - (out.len() as u64).min(budget.rows);
            let got: Vec<U> = conn.delete_returning(table, keys, &returning, room + 1)?;
            if got.len() as u64 > room {
                return Err(over_budget(
                    "DELETE FROM .. WHERE key IN (..) RETURNING ..".into(),
                    budget,
                    out.len() as u64 + got.len() as u64,
                ));
            }
            let n = got.len();
            out.extend(got);
            Ok(n)
        })?;
        Ok((report, out))
    }
}
