//! PostgreSQL's half of bulk writes: binary `COPY .. FROM STDIN` a chunk at a time, or a
//! multi-row `INSERT` (65,535 binds) with `ON CONFLICT`; upserts over `COPY` through a
//! temporary staging table; updates from a `VALUES` list; deletes by `= ANY($1)`.

use std::io::Write;
use std::marker::PhantomData;

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::insertable::InsertValues;
use diesel::pg::{CopyFormat, CopyTarget, Pg, PgConnection, PgMetadataLookup, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, QueryFragment, QueryId, ValuesClause};
use diesel::serialize::{IsNull, Output, ToSql};
use diesel::sql_types::{Array, HasSqlType, SingleValue, SqlType};
use diesel::{Column, Connection as _, ExecuteCopyFromDsl as _, QueryResult, Table};

use crate::backend::BudgetConnection;
use crate::bulk::sql::{
    column_names, delete_keys, delete_returning, row_shape, ChunkStatements as _, ReturningStyle,
    RowShape, UpdateStyle,
};
use crate::bulk::{
    insert_plan, sealed, BulkConnection, BulkKeys, BulkWrite, Conflict, ConflictOf, Limits, Op,
    Plan, Want, DELETE_KEYS,
};

/// Bind parameters a statement may hold (the protocol's 16-bit count).
const BIND_LIMIT: usize = 65_535;

/// Rows a `COPY` chunk holds by default: past ~10k rows a statement costs nothing measurable.
const COPY_ROWS: usize = 10_000;

/// Rows an `UNNEST` upsert chunk holds by default (one array bind a column whatever the count).
const UNNEST_ROWS: usize = 10_000;

/// The temporary staging table of upserts over `COPY` (dropped at the end of each chunk, and
/// by `ON COMMIT DROP` whatever happens).
const STAGE: &str = "diesel_budget_stage";

/// The binary `COPY` signature, flags and header extension length (PostgreSQL docs, "Binary
/// Format").
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl sealed::Sealed for PgConnection {}

impl BulkConnection for PgConnection {
    const UPDATE_STYLE: UpdateStyle = UpdateStyle::ValuesCte;
    const RETURNING_STYLE: ReturningStyle = ReturningStyle::CteLimit;

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
    <T as diesel::query_builder::AsQuery>::SqlType: SqlType,
    V: InsertValues<Pg, T>,
{
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<RowShape> {
        row_shape::<Self, T, V>(row)
    }

    /// A plain insert: `COPY` when allowed and the row sets every column of the table, in
    /// the table's order, each with a bound value (no `DEFAULT`): then the binary rows line up
    /// with `COPY t`. An upsert: `INSERT .. SELECT * FROM UNNEST($1, ..)` (one array a column)
    /// when the row binds every column it names, or the `COPY`-fed staging table when asked
    /// for ([`staging`](crate::bulk::BulkInsert::staging)) and the row sets every column.
    /// Otherwise, or after `insert_only`, multi-row `INSERT`s.
    fn plan(_: T, shape: &RowShape, want: Want, limits: Limits) -> QueryResult<Plan> {
        if want.op != Op::Insert || !want.copy {
            return Ok(insert_plan(limits, shape));
        }
        let row = column_names(&shape.columns);
        let bound = row.len() == shape.binds;
        if want.upsert && want.staging != Some(true) {
            if !bound {
                return Ok(insert_plan(limits, shape));
            }
            return Ok(Plan {
                bind_limit: None,
                byte_limit: None,
                default_rows: UNNEST_ROWS,
                copy: false,
                staging: false,
                encoded: false,
                unnest: true,
            });
        }
        let all = PgConnection::render_sql(&T::all_columns())?;
        let table: Vec<&str> = all
            .split(", ")
            .map(|c| c.rsplit_once("\".\"").map_or(c, |(_, name)| name))
            .map(|c| c.trim_matches('"'))
            .collect();
        if bound && row == table {
            return Ok(Plan {
                bind_limit: None,
                byte_limit: None,
                default_rows: COPY_ROWS,
                copy: true,
                staging: want.upsert,
                encoded: !want.upsert,
                unnest: false,
            });
        }
        Ok(insert_plan(limits, shape))
    }

    /// Binary `COPY` of a plain insert, streamed: the chunk's first row is encoded before the
    /// `COPY` starts, with the connection answering the custom types it looks up (kept); each
    /// later row is encoded and sent while the `COPY` runs, its lookups answered from what was
    /// kept. A row that binds another number of values than the first (Diesel renders one
    /// column list for every row of a PostgreSQL insert, `DEFAULT` for a `None`: only the count
    /// of bound values can differ between rows of one type), that needs a type not kept, or
    /// that fails to encode, ends the chunk and is handed back unwritten (planned anew, an
    /// error it holds shows there).
    fn write_stream(
        &mut self,
        table: T,
        first: &ValuesClause<V, T>,
        fields: usize,
        next: &mut dyn FnMut() -> Option<ValuesClause<V, T>>,
    ) -> QueryResult<(usize, Option<ValuesClause<V, T>>)> {
        let mut types = Replay::default();
        let mut head = Vec::with_capacity(COPY_HEADER.len() + 256);
        let mut binds = RawBytesBindCollector::<Pg>::new();
        // Each pass learns the types the row looked up and missed (an array of a custom type
        // looks up its element type too); a handful of passes covers any real row.
        for pass in 0.. {
            head.clear();
            head.extend_from_slice(COPY_HEADER);
            let encoded = encode_row(&mut types, &mut binds, first, fields, &mut head);
            if types.missed.is_empty() {
                if !encoded? {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "the first row of a COPY chunk did not encode".into(),
                    ));
                }
                break;
            }
            if pass == 8 {
                return Err(diesel::result::Error::QueryBuilderError(
                    "a COPY row looked up more nested custom types than expected".into(),
                ));
            }
            for (name, schema) in std::mem::take(&mut types.missed) {
                let found = self.lookup_type(&name, schema.as_deref());
                types.known.push((name, schema, found));
            }
        }
        // `from_raw_data` takes an `Fn`: the state it changes sits in cells.
        let stream = std::cell::RefCell::new((next, types, binds, Vec::new(), 1usize, None));
        let write = |out: &mut dyn Write| -> QueryResult<()> {
            let io = |e: std::io::Error| diesel::result::Error::SerializationError(Box::new(e));
            let mut state = stream.borrow_mut();
            let (next, types, binds, row_bytes, written, back) = &mut *state;
            out.write_all(&head).map_err(io)?;
            while let Some(row) = next() {
                row_bytes.clear();
                match encode_row(types, binds, &row, fields, row_bytes) {
                    Ok(true) if types.missed.is_empty() => {
                        out.write_all(row_bytes).map_err(io)?;
                        *written += 1;
                    }
                    _ => {
                        *back = Some(row);
                        break;
                    }
                }
            }
            out.write_all(&(-1i16).to_be_bytes()).map_err(io)
        };
        diesel::copy_from(table)
            .from_raw_data(table, write)
            .with_format(CopyFormat::Binary)
            .execute(self)?;
        let (_, _, _, _, written, back) = stream.into_inner();
        Ok((written, back))
    }

    fn write_chunk(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        plan: &Plan,
        conflict: ConflictOf<'_>,
    ) -> QueryResult<usize> {
        if plan.unnest {
            let arrays = BINDS.with_borrow_mut(|binds| column_arrays(self, binds, rows))?;
            return match (arrays, conflict) {
                (Some(arrays), Some((conflict, columns))) => {
                    let from = table.from_clause();
                    self.execute_returning_count(&UnnestInsert::<T> {
                        from: &from,
                        columns,
                        arrays,
                        conflict,
                    })
                }
                // A column without an array type: the rows as a multi-row `INSERT`.
                _ => self.insert_rows(table, rows, conflict),
            };
        }
        if !plan.copy {
            return self.insert_rows(table, rows, conflict);
        }
        let data = copy_data(self, rows)?;
        let write = move |out: &mut dyn Write| {
            out.write_all(&data)
                .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
        };
        let Some((conflict, columns)) = conflict.filter(|_| plan.staging) else {
            return diesel::copy_from(table)
                .from_raw_data(table, write)
                .with_format(CopyFormat::Binary)
                .execute(self);
        };
        let from = table.from_clause();
        self.execute_returning_count(&Staging::<T> {
            from: &from,
            step: Step::Create,
        })?;
        diesel::copy_from(table)
            .from_raw_data(Stage::<T>(PhantomData), write)
            .with_format(CopyFormat::Binary)
            .execute(self)?;
        let affected = self.execute_returning_count(&Staging::<T> {
            from: &from,
            step: Step::Upsert { conflict, columns },
        })?;
        self.execute_returning_count(&Staging::<T> {
            from: &from,
            step: Step::Drop,
        })?;
        Ok(affected)
    }
}

impl<T, Col, K> BulkKeys<T, Col, K> for PgConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Pg>,
    Col: Column<Table = T>,
    Col::SqlType: 'static,
    Pg: HasSqlType<Col::SqlType>,
    K: ToSql<Col::SqlType, Pg>,
{
    fn key_plan(_: Limits) -> (Option<usize>, Option<usize>, usize) {
        (None, None, DELETE_KEYS)
    }

    fn key_bytes(_: &K) -> QueryResult<usize> {
        Ok(0)
    }

    /// ` = ANY($1)`: the chunk's keys as one array bind.
    fn push_key_set<'b>(keys: &'b [K], mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(" = ANY(");
        out.push_bind_param::<Array<Col::SqlType>, [K]>(keys)?;
        out.push_sql(")");
        Ok(())
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
        S: Expression + QueryFragment<Pg>,
        Pg: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Pg> + 'static,
    {
        delete_returning::<Self, T, Col, K, S, U>(self, table, keys, returning, limit)
    }
}

/// `COPY "diesel_budget_stage" FROM STDIN`: the staging table as a `COPY` target (it is `LIKE`
/// the table, so its columns are the table's, in order).
struct Stage<T>(PhantomData<T>);

impl<T> CopyTarget for Stage<T>
where
    T: Table,
    <T as diesel::query_builder::AsQuery>::SqlType: SqlType,
{
    type Table = T;
    type SqlType = T::SqlType;

    fn walk_target(mut pass: AstPass<'_, '_, Pg>) -> QueryResult<()> {
        pass.push_identifier(STAGE)
    }
}

/// The statements around the `COPY` of a staged upsert.
enum Step<'a> {
    /// `CREATE TEMP TABLE stage (LIKE t) ON COMMIT DROP`.
    Create,
    /// `INSERT INTO t (cols) SELECT cols FROM stage ON CONFLICT ..`.
    Upsert {
        conflict: &'a Conflict,
        columns: &'a [String],
    },
    /// `DROP TABLE stage`.
    Drop,
}

struct Staging<'a, T: Table> {
    from: &'a T::FromClause,
    step: Step<'a>,
}

impl<T: Table> QueryId for Staging<'_, T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T> QueryFragment<Pg> for Staging<'_, T>
where
    T: Table,
    T::FromClause: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        match &self.step {
            Step::Create => {
                out.push_sql("CREATE TEMPORARY TABLE ");
                out.push_identifier(STAGE)?;
                out.push_sql(" (LIKE ");
                self.from.walk_ast(out.reborrow())?;
                out.push_sql(") ON COMMIT DROP");
            }
            Step::Upsert { conflict, columns } => {
                out.push_sql("INSERT INTO ");
                self.from.walk_ast(out.reborrow())?;
                out.push_sql(" (");
                push_list(columns, &mut out)?;
                out.push_sql(") SELECT ");
                push_list(columns, &mut out)?;
                out.push_sql(" FROM ");
                out.push_identifier(STAGE)?;
                crate::backend::on_conflict_clause(conflict, columns, out.reborrow())?;
            }
            Step::Drop => {
                out.push_sql("DROP TABLE ");
                out.push_identifier(STAGE)?;
            }
        }
        Ok(())
    }
}

fn push_list<'b>(columns: &'b [String], out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push_sql(", ");
        }
        out.push_identifier(c)?;
    }
    Ok(())
}

thread_local! {
    /// The bind collector rows are encoded through, kept between rows (its two `Vec`s).
    static BINDS: std::cell::RefCell<RawBytesBindCollector<Pg>> =
        std::cell::RefCell::new(RawBytesBindCollector::new());
}

/// The chunk in `COPY`'s binary format (header and trailer included).
fn copy_data<T, V>(conn: &mut PgConnection, rows: &[ValuesClause<V, T>]) -> QueryResult<Vec<u8>>
where
    T: Table,
    V: InsertValues<Pg, T>,
{
    let mut binds = RawBytesBindCollector::<Pg>::new();
    let mut data = Vec::with_capacity(COPY_HEADER.len() + rows.len() * 64 + 2);
    data.extend_from_slice(COPY_HEADER);
    for row in rows {
        encode_row(conn, &mut binds, row, usize::MAX, &mut data)?;
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(data)
}

/// Appends `row` to `data` as one tuple of `COPY`'s binary format: each bind as Diesel
/// serialises it for a statement (the same send format `COPY` reads), a length before each,
/// `-1` for NULL. `Ok(false)`, nothing appended, when the row binds other than `fields` values
/// (`usize::MAX`: any number).
fn encode_row<T, V>(
    lookup: &mut (dyn PgMetadataLookup + 'static),
    binds: &mut RawBytesBindCollector<Pg>,
    row: &ValuesClause<V, T>,
    fields: usize,
    data: &mut Vec<u8>,
) -> QueryResult<bool>
where
    T: Table,
    V: InsertValues<Pg, T>,
{
    let too_long =
        || diesel::result::Error::SerializationError("a COPY field or row is too long".into());
    binds.binds.clear();
    binds.metadata.clear();
    row.values.collect_binds(binds, lookup, &Pg)?;
    let count = binds.binds.len();
    if fields != usize::MAX && count != fields {
        return Ok(false);
    }
    let count = i16::try_from(count).map_err(|_| too_long())?;
    data.extend_from_slice(&count.to_be_bytes());
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
    Ok(true)
}

/// One column of an `UNNEST` chunk: its values as a one-dimensional array in PostgreSQL's
/// binary array format (`array_recv`), built from the binds Diesel serialises for each row.
struct ColumnArray {
    /// The array type's OID (the parameter's type).
    array_oid: u32,
    /// The header (patched by [`ColumnArray::finish`]) and the elements.
    data: Vec<u8>,
    len: i32,
    has_null: bool,
}

/// Bytes of a one-dimensional array's header: dimensions, null flag, element type, length,
/// lower bound.
const ARRAY_HEADER: usize = 20;

impl ColumnArray {
    fn new(array_oid: u32, element_oid: u32, rows: usize) -> Self {
        let mut data = Vec::with_capacity(ARRAY_HEADER + rows * 16);
        data.extend_from_slice(&1i32.to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&element_oid.to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&1i32.to_be_bytes());
        ColumnArray {
            array_oid,
            data,
            len: 0,
            has_null: false,
        }
    }

    fn push(&mut self, value: Option<&[u8]>) -> QueryResult<()> {
        let too_long =
            || diesel::result::Error::SerializationError("an UNNEST array is too long".into());
        match value {
            None => {
                self.data.extend_from_slice(&(-1i32).to_be_bytes());
                self.has_null = true;
            }
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).map_err(|_| too_long())?;
                self.data.extend_from_slice(&len.to_be_bytes());
                self.data.extend_from_slice(bytes);
            }
        }
        self.len = self.len.checked_add(1).ok_or_else(too_long)?;
        Ok(())
    }

    /// Writes the null flag and the length into the header.
    fn finish(&mut self) {
        self.data[4..8].copy_from_slice(&i32::from(self.has_null).to_be_bytes());
        self.data[12..16].copy_from_slice(&self.len.to_be_bytes());
    }
}

impl std::fmt::Debug for ColumnArray {
    /// Compact: a recording keeps each bind's `Debug` form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "array[{} values, {} bytes]", self.len, self.data.len())
    }
}

/// The chunk's rows as one array a column, in the order the rows bind their values; `None`
/// when a row binds another number of values than the first (a `DEFAULT`) or a column's type
/// has no array type.
fn column_arrays<T, V>(
    conn: &mut PgConnection,
    binds: &mut RawBytesBindCollector<Pg>,
    rows: &[ValuesClause<V, T>],
) -> QueryResult<Option<Vec<ColumnArray>>>
where
    T: Table,
    V: InsertValues<Pg, T>,
{
    let mut arrays: Vec<ColumnArray> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        binds.binds.clear();
        binds.metadata.clear();
        row.values.collect_binds(binds, conn, &Pg)?;
        if i == 0 {
            for meta in &binds.metadata {
                let (Ok(element), Ok(array)) = (meta.oid(), meta.array_oid()) else {
                    return Ok(None);
                };
                if array == 0 {
                    return Ok(None);
                }
                arrays.push(ColumnArray::new(array, element, rows.len()));
            }
        }
        if binds.binds.len() != arrays.len() {
            return Ok(None);
        }
        for (array, value) in arrays.iter_mut().zip(&binds.binds) {
            array.push(value.as_deref())?;
        }
    }
    binds.binds.clear();
    binds.metadata.clear();
    arrays.iter_mut().for_each(ColumnArray::finish);
    Ok(Some(arrays))
}

/// An array parameter whose type is known only at run time (the element type comes from the
/// binds of the chunk's rows). Diesel asks a bind's type through the static
/// `HasSqlType::metadata`, so [`UnnestInsert`] sets [`ARRAY_OID`] right before it pushes each
/// array; nothing runs in between on this thread.
#[derive(Debug, Clone, Copy)]
struct RuntimeArray;

impl SqlType for RuntimeArray {
    type IsNull = diesel::sql_types::is_nullable::NotNull;
}

impl SingleValue for RuntimeArray {}

thread_local! {
    /// The array type of the [`RuntimeArray`] bind being pushed.
    static ARRAY_OID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl HasSqlType<RuntimeArray> for Pg {
    fn metadata(_: &mut Self::MetadataLookup) -> PgTypeMetadata {
        PgTypeMetadata::new(ARRAY_OID.get(), 0)
    }
}

impl ToSql<RuntimeArray, Pg> for ColumnArray {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        out.write_all(&self.data)?;
        Ok(IsNull::No)
    }
}

/// `INSERT INTO t (cols) SELECT * FROM UNNEST($1, .., $n) ON CONFLICT ..`: a chunk of an
/// upsert as one array bind a column.
struct UnnestInsert<'a, T: Table> {
    from: &'a T::FromClause,
    columns: &'a [String],
    arrays: Vec<ColumnArray>,
    conflict: &'a Conflict,
}

impl<T: Table> QueryId for UnnestInsert<'_, T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T> QueryFragment<Pg> for UnnestInsert<'_, T>
where
    T: Table,
    T::FromClause: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("INSERT INTO ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(" (");
        push_list(self.columns, &mut out)?;
        out.push_sql(") SELECT * FROM UNNEST(");
        for (i, array) in self.arrays.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            ARRAY_OID.set(array.array_oid);
            out.push_bind_param::<RuntimeArray, ColumnArray>(array)?;
        }
        out.push_sql(")");
        crate::backend::on_conflict_clause(self.conflict, self.columns, out.reborrow())
    }
}

/// The type lookup of a streamed `COPY` chunk (which holds the connection meanwhile): the
/// custom types the connection answered for the chunk's first row, and those asked for but not
/// known (their metadata is a placeholder: the row is not sent).
#[derive(Default)]
struct Replay {
    known: Vec<(String, Option<String>, PgTypeMetadata)>,
    missed: Vec<(String, Option<String>)>,
}

impl PgMetadataLookup for Replay {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let found = self
            .known
            .iter()
            .find(|(name, s, _)| name == type_name && s.as_deref() == schema);
        match found {
            Some((_, _, metadata)) => metadata.clone(),
            None => {
                self.missed
                    .push((type_name.to_owned(), schema.map(str::to_owned)));
                PgTypeMetadata::new(0, 0)
            }
        }
    }
}
