//! SQLite's half of bulk writes: the bind limit read from the connection, `ON CONFLICT`.

use diesel::connection::SimpleConnection as _;
use diesel::insertable::InsertValues;
use diesel::query_builder::{AstPass, QueryFragment, ValuesClause};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{QueryResult, Table};

use crate::bulk::sql::{insert_chunk, row_shape, RowShape};
use crate::bulk::{insert_plan, internal, sealed, BulkConnection, BulkWrite, Conflict, Plan};

/// SQLite's smallest limit ever (`SQLITE_MAX_VARIABLE_NUMBER` before 3.32): the fallback when
/// the probe's message cannot be read.
const FALLBACK_LIMIT: usize = 999;

impl sealed::Sealed for SqliteConnection {}

impl BulkConnection for SqliteConnection {
    /// Diesel does not expose `sqlite3_limit`: prepare `SELECT ?2147483647`, which fails with
    /// "variable number must be between ?1 and ?N", N being this connection's live limit.
    fn bind_limit(&mut self) -> QueryResult<usize> {
        let probe = internal(|| self.batch_execute("SELECT ?2147483647"));
        let Err(e) = probe else {
            return Ok(i32::MAX as usize);
        };
        let limit = e
            .to_string()
            .rsplit('?')
            .next()
            .and_then(|n| n.trim().parse::<usize>().ok());
        Ok(limit.unwrap_or(FALLBACK_LIMIT))
    }

    fn push_conflict_clause<'b>(
        conflict: &'b Conflict,
        columns: &'b [String],
        out: AstPass<'_, 'b, Sqlite>,
    ) -> QueryResult<()> {
        crate::backend::on_conflict_clause(conflict, columns, out)
    }
}

impl<T, V> BulkWrite<T, V> for SqliteConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Sqlite>,
    V: InsertValues<Sqlite, T>,
{
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<RowShape> {
        row_shape::<Self, T, V>(row)
    }

    fn plan(&mut self, _: T, shape: &RowShape, _: bool, _: bool) -> QueryResult<Plan> {
        Ok(insert_plan(self.bind_limit()?, shape))
    }

    fn write_chunk(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        _: &Plan,
        conflict: Option<(&Conflict, &[String])>,
    ) -> QueryResult<usize> {
        insert_chunk(self, table, rows, conflict)
    }
}
