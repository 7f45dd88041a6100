//! MySQL/MariaDB's half of bulk writes: the bind limit, `ON DUPLICATE KEY UPDATE`.

use diesel::insertable::InsertValues;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::{AstPass, QueryFragment, ValuesClause};
use diesel::{QueryResult, Table};

use crate::bulk::sql::{insert_chunk, row_shape, RowShape};
use crate::bulk::{insert_plan, sealed, BulkConnection, BulkWrite, Conflict, Plan};

/// Placeholders a prepared statement may hold (the protocol's 16-bit count).
const BIND_LIMIT: usize = 65_535;

impl sealed::Sealed for MysqlConnection {}

impl BulkConnection for MysqlConnection {
    fn bind_limit(&mut self) -> QueryResult<usize> {
        Ok(BIND_LIMIT)
    }

    /// `ON DUPLICATE KEY UPDATE c = VALUES(c), ..` for every inserted column but the key (any
    /// unique key of the table triggers it); for "do nothing", `key = key`, which changes
    /// nothing and, unlike `INSERT IGNORE`, does not turn other errors into warnings.
    fn push_conflict_clause<'b>(
        conflict: &'b Conflict,
        columns: &'b [String],
        mut out: AstPass<'_, 'b, Mysql>,
    ) -> QueryResult<()> {
        out.push_sql(" ON DUPLICATE KEY UPDATE ");
        let mut first = true;
        if conflict.update {
            for column in columns.iter().filter(|c| c.as_str() != conflict.key) {
                if !first {
                    out.push_sql(", ");
                }
                first = false;
                out.push_identifier(column)?;
                out.push_sql(" = VALUES(");
                out.push_identifier(column)?;
                out.push_sql(")");
            }
        }
        if first {
            out.push_identifier(conflict.key)?;
            out.push_sql(" = ");
            out.push_identifier(conflict.key)?;
        }
        Ok(())
    }
}

impl<T, V> BulkWrite<T, V> for MysqlConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Mysql>,
    V: InsertValues<Mysql, T>,
{
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<RowShape> {
        row_shape::<Self, T, V>(row)
    }

    fn plan(&mut self, _: T, shape: &RowShape, _: bool, _: bool) -> QueryResult<Plan> {
        Ok(insert_plan(BIND_LIMIT, shape))
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
