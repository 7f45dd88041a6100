//! SQLite's half of bulk writes: the bind limit read from the connection, `ON CONFLICT`,
//! `UPDATE .. FROM` (3.33+), `RETURNING` (3.35+; the bundled library is 3.50).

use diesel::connection::SimpleConnection as _;
use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::insertable::InsertValues;
use diesel::query_builder::{AstPass, QueryFragment, ValuesClause};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{Column, QueryResult, Table};

use crate::bulk::sql::{
    delete_keys, delete_returning, push_in_list, row_shape, ReturningStyle, RowShape, UpdateStyle,
};
use crate::bulk::{
    insert_plan, internal, sealed, BulkConnection, BulkKeys, BulkWrite, Conflict, Limits, Plan,
    Want,
};

/// SQLite's smallest limit ever (`SQLITE_MAX_VARIABLE_NUMBER` before 3.32): the fallback when
/// the probe's message cannot be read.
const FALLBACK_LIMIT: usize = 999;

impl sealed::Sealed for SqliteConnection {}

impl BulkConnection for SqliteConnection {
    const UPDATE_STYLE: UpdateStyle = UpdateStyle::ValuesCte;
    const RETURNING_STYLE: ReturningStyle = ReturningStyle::ClientStop;

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

    fn plan(_: T, shape: &RowShape, _: Want, limits: Limits) -> QueryResult<Plan> {
        Ok(insert_plan(limits, shape))
    }
}

impl<T, Col, K> BulkKeys<T, Col, K> for SqliteConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Sqlite>,
    Col: Column<Table = T>,
    Sqlite: HasSqlType<Col::SqlType>,
    K: ToSql<Col::SqlType, Sqlite>,
{
    fn key_plan(limits: Limits) -> (Option<usize>, Option<usize>, usize) {
        (Some(limits.binds), None, limits.binds)
    }

    fn key_bytes(_: &K) -> QueryResult<usize> {
        Ok(0)
    }

    fn push_key_set<'b>(keys: &'b [K], out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        push_in_list::<Sqlite, Col::SqlType, K>(keys, out)
    }

    fn delete_keys(&mut self, table: T, keys: &[K]) -> QueryResult<usize> {
        delete_keys::<Self, T, Col, K>(self, table, keys)
    }

    fn delete_returning<S, U>(
        &mut self,
        table: T,
        keys: &[K],
        returning: &S,
        limit: u64,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<Sqlite>,
        Sqlite: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Sqlite> + 'static,
    {
        delete_returning::<Self, T, Col, K, S, U>(self, table, keys, returning, limit)
    }
}
