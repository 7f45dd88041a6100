//! The AST nodes of bulk writes: one multi-row `INSERT` per chunk (with the backend's conflict
//! clause for upserts), and the per-row rendering that counts a row's binds.

use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::insertable::InsertValues;
use diesel::query_builder::{AstPass, QueryFragment, QueryId, ValuesClause};
use diesel::{QueryResult, Table};

use super::{BulkConnection, Conflict};
use crate::backend::BudgetConnection;

/// What one row renders to (doc-hidden: part of the sealed [`BulkWrite`](super::BulkWrite)): its column list (which columns it sets; on SQLite a `None` of a
/// defaulted column drops the column) and how many bind parameters it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowShape {
    /// The column list as rendered (`"a", "b"`): rows of one statement must share it.
    pub columns: String,
    /// Bind parameters of the row (`None` rendered as `DEFAULT` takes none).
    pub binds: usize,
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
    Ok(RowShape { columns, binds })
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
pub(crate) fn insert_chunk<C, T, V>(
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
