//! The AST nodes of bulk writes: one multi-row `INSERT` per chunk (with the backend's conflict
//! clause for upserts), and the per-row rendering that counts a row's binds.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::connection::{DefaultLoadingMode, LoadConnection};
use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::insertable::InsertValues;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId, ValuesClause};
use diesel::{Column, QueryResult, Table};

use super::delete::BulkKeys;
use super::{BulkConnection, Conflict};
use crate::backend::{BudgetBackend, BudgetConnection};

/// What one row renders to (doc-hidden: part of the sealed [`BulkWrite`](super::BulkWrite)): its column list (which columns it sets; on SQLite a `None` of a
/// defaulted column drops the column) and how many bind parameters it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowShape {
    /// The column list as rendered (`"a", "b"`): rows of one statement must share it.
    pub columns: String,
    /// Bind parameters of the row (`None` rendered as `DEFAULT` takes none).
    pub binds: usize,
    /// Bytes the row's binds take on the wire, where the server bounds a statement's size
    /// (MySQL's `max_allowed_packet`); 0 where nothing bounds it.
    pub bytes: usize,
}

/// Renders `row` and counts its placeholders (`$n` or `?`): bind values are never inlined into
/// Diesel's SQL, so this is exact for the Insertable itself (a raw SQL literal holding `?`
/// would count too, which only makes chunks smaller).
pub(crate) fn row_shape<C, T, V>(row: &ValuesClause<V, T>) -> QueryResult<RowShape>
where
    C: BudgetConnection,
    T: Table,
    V: InsertValues<C::Backend, T>,
{
    let columns = C::render_sql(&ColumnsOf::<C::Backend, T, V>(&row.values, PhantomData))?;
    let binds = C::render_sql(&row.values)?
        .chars()
        .filter(|c| *c == '$' || *c == '?')
        .count();
    Ok(RowShape {
        columns,
        binds,
        bytes: 0,
    })
}

/// Renders a row's column list (Diesel's `InsertValues::column_names`) as a fragment.
struct ColumnsOf<'a, DB, T, V>(&'a V, PhantomData<(DB, T)>);

impl<DB, T, V> QueryFragment<DB> for ColumnsOf<'_, DB, T, V>
where
    DB: Backend,
    T: Table,
    V: InsertValues<DB, T>,
{
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.column_names(out)
    }
}

/// The column names of a rendered column list (`"a", "b"` or `` `a`, `b` ``), unquoted. The
/// list is Diesel's rendering of `Column::NAME`s, so it holds schema names, never data.
pub(crate) fn column_names(columns: &str) -> Vec<String> {
    columns
        .split(", ")
        .filter(|c| !c.is_empty())
        .map(|c| {
            let quote = c.chars().next().unwrap_or('"');
            let inner = c
                .strip_prefix(quote)
                .and_then(|c| c.strip_suffix(quote))
                .unwrap_or(c);
            let doubled: String = [quote, quote].iter().collect();
            inner.replace(&doubled, &quote.to_string())
        })
        .collect()
}

/// `INSERT INTO t (cols) VALUES (..), (..), .. [conflict clause]`: one chunk, one statement.
/// Every row must have the same column list ([`RowShape::columns`]); the chunker sees to it.
pub(crate) struct ChunkInsert<'a, C, T: Table, V> {
    pub(crate) from: T::FromClause,
    pub(crate) rows: &'a [ValuesClause<V, T>],
    pub(crate) conflict: Option<(&'a Conflict, &'a [String])>,
    pub(crate) _conn: PhantomData<fn() -> C>,
}

impl<C, T, V> QueryId for ChunkInsert<'_, C, T, V>
where
    T: Table,
{
    type QueryId = ();
    // Cached by its SQL: chunks of the same size and columns share one prepared statement.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, T, V> QueryFragment<C::Backend> for ChunkInsert<'_, C, T, V>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        let Some(first) = self.rows.first() else {
            return Err(diesel::result::Error::QueryBuilderError(
                "a bulk chunk has no rows".into(),
            ));
        };
        out.push_sql("INSERT INTO ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        first.values.column_names(out.reborrow())?;
        out.push_sql(") VALUES ");
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql("(");
            row.values.walk_ast(out.reborrow())?;
            out.push_sql(")");
        }
        if let Some((conflict, columns)) = self.conflict {
            C::push_conflict_clause(conflict, columns, out.reborrow())?;
        }
        Ok(())
    }
}

/// Runs one chunk as a multi-row INSERT; returns the rows the database reports as affected.
fn insert_chunk<C, T, V>(
    conn: &mut C,
    table: T,
    rows: &[ValuesClause<V, T>],
    conflict: Option<(&Conflict, &[String])>,
) -> QueryResult<usize>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    let node = ChunkInsert::<C, T, V> {
        from: table.from_clause(),
        rows,
        conflict,
        _conn: PhantomData,
    };
    conn.execute_returning_count(&node)
}

/// The chunk statements every backend builds the same way: a multi-row `INSERT` (with the
/// backend's conflict clause), an update joined to the chunk's rows, an `INSERT .. RETURNING`.
/// Blanket-implemented for every [`BulkConnection`] that can render them for table `T` and
/// values `V`; the bound that lets [`BulkWrite`](super::BulkWrite)'s default methods build
/// them (doc-hidden: part of the sealed `BulkWrite`).
pub trait ChunkStatements<T: Table, V>: BulkConnection {
    /// Runs one chunk as a multi-row `INSERT`; returns the rows affected.
    #[doc(hidden)]
    fn insert_rows(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: Option<(&Conflict, &[String])>,
    ) -> QueryResult<usize>;

    /// Runs one chunk of a bulk update; returns the rows matched.
    #[doc(hidden)]
    fn update_rows(
        &mut self,
        table: T,
        key: &'static str,
        rows: &[ValuesClause<V, T>],
    ) -> QueryResult<usize>;

    /// Inserts one chunk and loads `returning` of each row written.
    #[doc(hidden)]
    fn insert_rows_returning<S, U>(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: Option<(&Conflict, &[String])>,
        returning: &S,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<Self::Backend>,
        Self::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Self::Backend> + 'static;
}

impl<C, T, V> ChunkStatements<T, V> for C
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    fn insert_rows(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: Option<(&Conflict, &[String])>,
    ) -> QueryResult<usize> {
        insert_chunk(self, table, rows, conflict)
    }

    fn update_rows(
        &mut self,
        table: T,
        key: &'static str,
        rows: &[ValuesClause<V, T>],
    ) -> QueryResult<usize> {
        update_chunk(self, table, key, rows)
    }

    fn insert_rows_returning<S, U>(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: Option<(&Conflict, &[String])>,
        returning: &S,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<C::Backend>,
        C::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, C::Backend> + 'static,
    {
        insert_returning(self, table, rows, conflict, returning)
    }
}

/// How a backend writes an update of many rows by key in one statement (doc-hidden: part of
/// the sealed [`BulkConnection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStyle {
    /// `WITH "__rows" (k, c) AS (VALUES (..), ..) UPDATE t SET c = "__rows".c FROM "__rows"
    /// WHERE t.k = "__rows".k` (PostgreSQL, SQLite 3.33+).
    ValuesCte,
    /// `UPDATE t JOIN (WITH __rows (k, c) AS (SELECT ?, ? UNION ALL SELECT ?, ?) SELECT * FROM
    /// __rows) AS __rows ON t.k = __rows.k SET t.c = __rows.c` (MySQL 8, MariaDB 10.2+).
    UnionJoin,
}

/// How a backend keeps a `DELETE .. RETURNING` to its budget (doc-hidden: part of the sealed
/// [`BulkConnection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturningStyle {
    /// `WITH d AS (DELETE .. RETURNING ..) SELECT * FROM d LIMIT $n`: the server sends at most
    /// `n` rows (PostgreSQL).
    CteLimit,
    /// `SELECT .. WHERE k IN (..) LIMIT ? FOR UPDATE`, then the `DELETE` of the same keys in
    /// the same transaction, its count checked against the rows read (MySQL/MariaDB: Diesel's
    /// client reads its results through prepared statements, which get no result metadata for
    /// MariaDB's `DELETE .. RETURNING`).
    LockThenDelete,
    /// `DELETE .. RETURNING ..`, the client stops stepping after `n` rows (SQLite 3.35+).
    ClientStop,
}

/// The name of the derived table of a chunk's rows in an update.
const ROWS: &str = "__rows";

/// An update of the rows matching a chunk's keys to the chunk's values (see [`UpdateStyle`]).
pub(crate) struct UpdateChunk<'a, C, T: Table, V> {
    from: T::FromClause,
    key: &'static str,
    columns: Vec<String>,
    rows: &'a [ValuesClause<V, T>],
    _conn: PhantomData<fn() -> C>,
}

impl<C, T: Table, V> QueryId for UpdateChunk<'_, C, T, V> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, T, V> UpdateChunk<'_, C, T, V>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    /// `"t"."k"`: a column of the target table, qualified.
    fn target<'b>(
        &'b self,
        column: &'b str,
        out: &mut AstPass<'_, 'b, C::Backend>,
    ) -> QueryResult<()> {
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(".");
        out.push_identifier(column)
    }

    /// `"__rows" ("k", "c")`.
    fn rows_name<'b>(&'b self, out: &mut AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        out.push_identifier(ROWS)?;
        out.push_sql(" (");
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(c)?;
        }
        out.push_sql(")");
        Ok(())
    }

    /// `"__rows"."c"`.
    fn source<'b>(column: &'b str, out: &mut AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        out.push_identifier(ROWS)?;
        out.push_sql(".");
        out.push_identifier(column)
    }

    fn set_columns(&self) -> impl Iterator<Item = &String> {
        self.columns.iter().filter(move |c| c.as_str() != self.key)
    }
}

impl<C, T, V> QueryFragment<C::Backend> for UpdateChunk<'_, C, T, V>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        if self.rows.is_empty() {
            return Err(diesel::result::Error::QueryBuilderError(
                "a bulk chunk has no rows".into(),
            ));
        }
        match C::UPDATE_STYLE {
            UpdateStyle::ValuesCte => {
                out.push_sql("WITH ");
                self.rows_name(&mut out)?;
                out.push_sql(" AS (VALUES ");
                for (i, row) in self.rows.iter().enumerate() {
                    out.push_sql(if i > 0 { ", (" } else { "(" });
                    row.values.walk_ast(out.reborrow())?;
                    out.push_sql(")");
                }
                out.push_sql(") UPDATE ");
                self.from.walk_ast(out.reborrow())?;
                out.push_sql(" SET ");
                for (i, c) in self.set_columns().enumerate() {
                    if i > 0 {
                        out.push_sql(", ");
                    }
                    out.push_identifier(c)?;
                    out.push_sql(" = ");
                    Self::source(c, &mut out)?;
                }
                out.push_sql(" FROM ");
                out.push_identifier(ROWS)?;
                out.push_sql(" WHERE ");
            }
            UpdateStyle::UnionJoin => {
                out.push_sql("UPDATE ");
                self.from.walk_ast(out.reborrow())?;
                out.push_sql(" JOIN (WITH ");
                self.rows_name(&mut out)?;
                out.push_sql(" AS (");
                for (i, row) in self.rows.iter().enumerate() {
                    out.push_sql(if i > 0 {
                        " UNION ALL SELECT "
                    } else {
                        "SELECT "
                    });
                    row.values.walk_ast(out.reborrow())?;
                }
                out.push_sql(") SELECT * FROM ");
                out.push_identifier(ROWS)?;
                out.push_sql(") AS ");
                out.push_identifier(ROWS)?;
                out.push_sql(" ON ");
                self.target(self.key, &mut out)?;
                out.push_sql(" = ");
                Self::source(self.key, &mut out)?;
                out.push_sql(" SET ");
                for (i, c) in self.set_columns().enumerate() {
                    if i > 0 {
                        out.push_sql(", ");
                    }
                    self.target(c, &mut out)?;
                    out.push_sql(" = ");
                    Self::source(c, &mut out)?;
                }
                return Ok(());
            }
        }
        self.target(self.key, &mut out)?;
        out.push_sql(" = ");
        Self::source(self.key, &mut out)
    }
}

/// Runs one chunk of a bulk update; returns the rows matched.
fn update_chunk<C, T, V>(
    conn: &mut C,
    table: T,
    key: &'static str,
    rows: &[ValuesClause<V, T>],
) -> QueryResult<usize>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
{
    let columns = match rows.first() {
        Some(first) => column_names(&C::render_sql(&ColumnsOf::<C::Backend, T, V>(
            &first.values,
            PhantomData,
        ))?),
        None => return Ok(0),
    };
    let node = UpdateChunk::<C, T, V> {
        from: table.from_clause(),
        key,
        columns,
        rows,
        _conn: PhantomData,
    };
    conn.execute_returning_count(&node)
}

/// `query RETURNING returning`, loadable: a statement that writes and hands back rows.
pub(crate) struct Returning<'a, C, Q, S> {
    query: Q,
    returning: &'a S,
    /// At most this many rows, where the backend can say so in the SQL
    /// ([`ReturningStyle`]); a `DELETE` only.
    limit: Option<i64>,
    _conn: PhantomData<fn() -> C>,
}

impl<C, Q, S> QueryId for Returning<'_, C, Q, S> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, Q, S: Expression> Query for Returning<'_, C, Q, S> {
    type SqlType = S::SqlType;
}

impl<C, Q, S> QueryFragment<C::Backend> for Returning<'_, C, Q, S>
where
    C: BulkConnection,
    Q: QueryFragment<C::Backend>,
    S: QueryFragment<C::Backend>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        let Some(limit) = &self.limit else {
            self.query.walk_ast(out.reborrow())?;
            out.push_sql(" RETURNING ");
            return self.returning.walk_ast(out.reborrow());
        };
        match C::RETURNING_STYLE {
            ReturningStyle::CteLimit => {
                out.push_sql("WITH ");
                out.push_identifier("__returned")?;
                out.push_sql(" AS (");
                self.query.walk_ast(out.reborrow())?;
                out.push_sql(" RETURNING ");
                self.returning.walk_ast(out.reborrow())?;
                out.push_sql(") SELECT * FROM ");
                out.push_identifier("__returned")?;
                out.push_sql(" LIMIT ");
                <C::Backend as BudgetBackend>::push_bigint(&mut out, limit)
            }
            ReturningStyle::LockThenDelete => {
                // `query` is the key predicate's table and keys (a `SelectKeys`).
                out.push_sql("SELECT ");
                self.returning.walk_ast(out.reborrow())?;
                self.query.walk_ast(out.reborrow())?;
                out.push_sql(" LIMIT ");
                <C::Backend as BudgetBackend>::push_bigint(&mut out, limit)?;
                out.push_sql(" FOR UPDATE");
                Ok(())
            }
            ReturningStyle::ClientStop => {
                self.query.walk_ast(out.reborrow())?;
                out.push_sql(" RETURNING ");
                self.returning.walk_ast(out.reborrow())
            }
        }
    }
}

/// Runs `query RETURNING returning` and loads at most `limit` rows (the client stops reading
/// there; the SQL says so too where the backend allows, see [`ReturningStyle`]).
fn load_returning<C, Q, S, U>(
    conn: &mut C,
    query: Q,
    returning: &S,
    limit: Option<u64>,
) -> QueryResult<Vec<U>>
where
    C: BulkConnection,
    Q: QueryFragment<C::Backend>,
    S: Expression + QueryFragment<C::Backend>,
    C::Backend: QueryMetadata<S::SqlType>,
    U: FromSqlRow<S::SqlType, C::Backend> + 'static,
{
    let node = Returning::<C, Q, S> {
        query,
        returning,
        limit: limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        _conn: PhantomData,
    };
    let cursor = <C as LoadConnection<DefaultLoadingMode>>::load(conn, node)?;
    let mut out = Vec::new();
    for row in cursor.take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX))) {
        let row = row?;
        out.push(U::build_from_row(&row).map_err(diesel::result::Error::DeserializationError)?);
    }
    Ok(out)
}

/// Inserts one chunk (with its conflict clause) and loads `returning` of each row written.
fn insert_returning<C, T, V, S, U>(
    conn: &mut C,
    table: T,
    rows: &[ValuesClause<V, T>],
    conflict: Option<(&Conflict, &[String])>,
    returning: &S,
) -> QueryResult<Vec<U>>
where
    C: BulkConnection,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    V: InsertValues<C::Backend, T>,
    S: Expression + QueryFragment<C::Backend>,
    C::Backend: QueryMetadata<S::SqlType>,
    U: FromSqlRow<S::SqlType, C::Backend> + 'static,
{
    let node = ChunkInsert::<C, T, V> {
        from: table.from_clause(),
        rows,
        conflict,
        _conn: PhantomData,
    };
    load_returning(conn, node, returning, None)
}

/// `DELETE FROM t WHERE t.k` and the backend's key set (`= ANY($1)` or `IN (?, ..)`).
pub(crate) struct DeleteKeys<'a, C, T: Table, Col, K> {
    from: T::FromClause,
    keys: &'a [K],
    /// Only ` FROM t WHERE t.k ..`: the tail of a locking `SELECT` of the same rows.
    select: bool,
    _marker: PhantomData<fn() -> (C, Col)>,
}

impl<C, T: Table, Col, K> QueryId for DeleteKeys<'_, C, T, Col, K> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, T, Col, K> QueryFragment<C::Backend> for DeleteKeys<'_, C, T, Col, K>
where
    C: BulkKeys<T, Col, K>,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    Col: Column<Table = T>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, C::Backend>) -> QueryResult<()> {
        out.push_sql(if self.select {
            " FROM "
        } else {
            "DELETE FROM "
        });
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(".");
        out.push_identifier(Col::NAME)?;
        C::push_key_set(self.keys, out)
    }
}

/// Deletes the rows of one chunk of keys; returns how many.
pub(crate) fn delete_keys<C, T, Col, K>(conn: &mut C, table: T, keys: &[K]) -> QueryResult<usize>
where
    C: BulkKeys<T, Col, K>,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    Col: Column<Table = T>,
{
    let node = DeleteKeys::<C, T, Col, K> {
        from: table.from_clause(),
        keys,
        select: false,
        _marker: PhantomData,
    };
    conn.execute_returning_count(&node)
}

/// Deletes the rows of one chunk of keys and loads `returning` of at most `limit` of them.
pub(crate) fn delete_returning<C, T, Col, K, S, U>(
    conn: &mut C,
    table: T,
    keys: &[K],
    returning: &S,
    limit: u64,
) -> QueryResult<Vec<U>>
where
    C: BulkKeys<T, Col, K>,
    T: Table,
    T::FromClause: QueryFragment<C::Backend>,
    Col: Column<Table = T>,
    S: Expression + QueryFragment<C::Backend>,
    C::Backend: QueryMetadata<S::SqlType>,
    U: FromSqlRow<S::SqlType, C::Backend> + 'static,
{
    let lock_first = C::RETURNING_STYLE == ReturningStyle::LockThenDelete;
    let node = DeleteKeys::<C, T, Col, K> {
        from: table.from_clause(),
        keys,
        select: lock_first,
        _marker: PhantomData,
    };
    let rows: Vec<U> = load_returning(conn, node, returning, Some(limit))?;
    if lock_first && (rows.len() as u64) < limit {
        // Every row of the keys is read and locked: delete exactly those.
        let deleted = delete_keys::<C, T, Col, K>(conn, table, keys)?;
        if deleted != rows.len() {
            return Err(diesel::result::Error::QueryBuilderError(
                format!(
                    "a bulk delete removed {deleted} rows where its locking read found {}",
                    rows.len()
                )
                .into(),
            ));
        }
    }
    Ok(rows)
}

/// ` IN (?, ?, ..)`: one bind per key (SQLite, MySQL).
#[allow(dead_code)] // used by the backends whose deletes bind one key a placeholder
pub(crate) fn push_in_list<'b, DB, ST, K>(
    keys: &'b [K],
    mut out: AstPass<'_, 'b, DB>,
) -> QueryResult<()>
where
    DB: Backend + diesel::sql_types::HasSqlType<ST>,
    K: diesel::serialize::ToSql<ST, DB>,
{
    out.push_sql(" IN (");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_bind_param::<ST, K>(key)?;
    }
    out.push_sql(")");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::column_names;

    #[test]
    fn unquotes_rendered_column_lists() {
        assert_eq!(column_names(r#""id", "na""me""#), ["id", r#"na"me"#]);
        assert_eq!(column_names("`id`, `v`"), ["id", "v"]);
        assert!(column_names("").is_empty());
    }
}
