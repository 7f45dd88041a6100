//! PostgreSQL's half of bulk writes: binary `COPY .. FROM STDIN` a chunk at a time, or a
//! multi-row `INSERT` (65,535 binds) with `ON CONFLICT`.

use std::io::Write;

use diesel::insertable::InsertValues;
use diesel::pg::{CopyFormat, CopyTarget, Pg, PgConnection};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, QueryFragment, ValuesClause};
use diesel::{ExecuteCopyFromDsl as _, QueryResult, Table};

use crate::backend::BudgetConnection;
use crate::bulk::sql::{column_names, insert_chunk, row_shape, RowShape};
use crate::bulk::{insert_plan, sealed, BulkConnection, BulkWrite, Conflict, Plan};

/// Bind parameters a statement may hold (the protocol's 16-bit count).
const BIND_LIMIT: usize = 65_535;

/// Rows a `COPY` chunk holds by default: past ~10k rows a statement costs nothing measurable.
const COPY_ROWS: usize = 10_000;

/// The binary `COPY` signature, flags and header extension length (PostgreSQL docs, "Binary
/// Format").
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl sealed::Sealed for PgConnection {}

impl BulkConnection for PgConnection {
    fn bind_limit(&mut self) -> QueryResult<usize> {
        Ok(BIND_LIMIT)
    }

    fn push_conflict_clause<'b>(
        conflict: &'b Conflict,
        columns: &'b [String],
        out: AstPass<'_, 'b, Pg>,
    ) -> QueryResult<()> {
        crate::backend::on_conflict_clause(conflict, columns, out)
    }
}

impl<T, V> BulkWrite<T, V> for PgConnection
where
    T: Table + Copy + CopyTarget<Table = T>,
    T::FromClause: QueryFragment<Pg>,
    T::AllColumns: QueryFragment<Pg>,
    V: InsertValues<Pg, T>,
{
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<RowShape> {
        row_shape::<Self, T, V>(row)
    }

    /// `COPY` when allowed and the row sets every column of the table, in the table's order,
    /// each with a bound value (no `DEFAULT`): then the binary rows line up with `COPY t`.
    fn plan(
        &mut self,
        _: T,
        shape: &RowShape,
        insert_only: bool,
        upsert: bool,
    ) -> QueryResult<Plan> {
        if !insert_only && !upsert {
            let all = PgConnection::render_sql(&T::all_columns())?;
            let table: Vec<&str> = all
                .split(", ")
                .map(|c| c.rsplit_once("\".\"").map_or(c, |(_, name)| name))
                .map(|c| c.trim_matches('"'))
                .collect();
            let row = column_names(&shape.columns);
            if row.len() == shape.binds && row == table {
                return Ok(Plan {
                    bind_limit: None,
                    default_rows: COPY_ROWS,
                    copy: true,
                });
            }
        }
        Ok(insert_plan(BIND_LIMIT, shape))
    }

    fn write_chunk(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        plan: &Plan,
        conflict: Option<(&Conflict, &[String])>,
    ) -> QueryResult<usize> {
        if !plan.copy {
            return insert_chunk(self, table, rows, conflict);
        }
        let data = copy_data(self, rows)?;
        diesel::copy_from(table)
            .from_raw_data(table, move |out: &mut dyn Write| {
                out.write_all(&data)
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
            })
            .with_format(CopyFormat::Binary)
            .execute(self)
    }
}

/// The chunk in `COPY`'s binary format: each row's binds as Diesel serialises them for a
/// statement (the same send format `COPY` reads), a length before each, `-1` for NULL.
fn copy_data<T, V>(conn: &mut PgConnection, rows: &[ValuesClause<V, T>]) -> QueryResult<Vec<u8>>
where
    T: Table,
    V: InsertValues<Pg, T>,
{
    let too_long =
        || diesel::result::Error::SerializationError("a COPY field or row is too long".into());
    let backend = Pg;
    let mut binds = RawBytesBindCollector::<Pg>::new();
    let mut data = Vec::with_capacity(COPY_HEADER.len() + rows.len() * 64 + 2);
    data.extend_from_slice(COPY_HEADER);
    for row in rows {
        row.values.collect_binds(&mut binds, conn, &backend)?;
        let fields = i16::try_from(binds.binds.len()).map_err(|_| too_long())?;
        data.extend_from_slice(&fields.to_be_bytes());
        for field in binds.binds.drain(..) {
            match field {
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(bytes) => {
                    let len = i32::try_from(bytes.len()).map_err(|_| too_long())?;
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(&bytes);
                }
            }
        }
        binds.metadata.clear();
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(data)
}
