//! MySQL/MariaDB's half of bulk writes: the bind limit and `max_allowed_packet` (read from the
//! server), `ON DUPLICATE KEY UPDATE`, multi-table `UPDATE` joined to the chunk's rows,
//! `DELETE .. IN (..)` (its budgeted `RETURNING`: a locking read of the same keys first), and
//! insert `RETURNING` emulated from the ids the server generated (see
//! [`insert_returning_by_id`]).

use diesel::connection::{DefaultLoadingMode, LoadConnection};
use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::insertable::InsertValues;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, BindCollector, Query, QueryFragment, QueryId, ValuesClause};
use diesel::result::Error as DieselError;
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Nullable, Text, Unsigned};
use diesel::{Column, QueryResult, RunQueryDsl as _, Table};

use crate::backend::BudgetConnection;
use crate::bulk::sql::{
    delete_keys, delete_returning, push_in_list, row_shape, ChunkStatements as _, ReturningStyle,
    RowShape, UpdateStyle,
};
use crate::bulk::{
    insert_plan, internal, sealed, BulkConnection, BulkKeys, BulkWrite, Conflict, ConflictOf,
    Limits, Plan, Want, DELETE_KEYS,
};

/// Placeholders a prepared statement may hold (the protocol's 16-bit count).
const BIND_LIMIT: usize = 65_535;

/// Wire bytes counted per bind on top of its value: its type (2 bytes) and the longest
/// length prefix (9), plus its share of the SQL text (`?, ` and a `UNION ALL SELECT`).
const PER_BIND: usize = 12;

/// Bytes of a statement's packet kept for what is not the rows' binds (the statement's head,
/// the conflict clause, the packet headers).
const PACKET_MARGIN: usize = 64 << 10;

impl sealed::Sealed for MysqlConnection {}

impl BulkConnection for MysqlConnection {
    const UPDATE_STYLE: UpdateStyle = UpdateStyle::UnionJoin;
    const RETURNING_STYLE: ReturningStyle = ReturningStyle::LockThenDelete;

    fn bind_limit(&mut self) -> QueryResult<usize> {
        Ok(BIND_LIMIT)
    }

    /// The bind limit and the bytes `max_allowed_packet` leaves for binds, read from the
    /// server once per bulk call (a global setting that can change between calls).
    fn limits(&mut self) -> QueryResult<Limits> {
        Ok(Limits {
            binds: BIND_LIMIT,
            bytes: Some(packet_bytes(self)?),
        })
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

/// The bytes one statement's binds may take: the server's `max_allowed_packet` (read once per
/// bulk call: it is a global setting that can change) less a margin for the rest of the
/// packet.
fn packet_bytes(conn: &mut MysqlConnection) -> QueryResult<usize> {
    let packet: u64 = internal(|| {
        diesel::select(diesel::dsl::sql::<Unsigned<BigInt>>("@@max_allowed_packet"))
            .get_result(conn)
    })?;
    let packet = usize::try_from(packet).unwrap_or(usize::MAX);
    Ok(packet.saturating_sub(PACKET_MARGIN.min(packet / 4)))
}

/// The bytes of `value`'s binds as the client sends them, plus [`PER_BIND`] a bind.
fn bind_bytes<F: QueryFragment<Mysql> + ?Sized>(value: &F) -> QueryResult<usize> {
    let mut binds = RawBytesBindCollector::<Mysql>::new();
    value.collect_binds(&mut binds, &mut (), &Mysql)?;
    Ok(binds
        .binds
        .iter()
        .map(|b| b.as_ref().map_or(0, Vec::len) + PER_BIND)
        .sum())
}

impl<T, V> BulkWrite<T, V> for MysqlConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Mysql>,
    V: InsertValues<Mysql, T>,
{
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<RowShape> {
        let mut shape = row_shape::<Self, T, V>(row)?;
        shape.bytes = bind_bytes(&row.values)?;
        Ok(shape)
    }

    fn row_bytes(row: &ValuesClause<V, T>) -> QueryResult<usize> {
        bind_bytes(&row.values)
    }

    fn plan(_: T, shape: &RowShape, _: Want, limits: Limits) -> QueryResult<Plan> {
        Ok(insert_plan(limits, shape))
    }

    fn insert_returning<S, U>(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: ConflictOf<'_>,
        returning: &S,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<Mysql>,
        Mysql: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Mysql> + 'static,
    {
        insert_returning_by_id::<T, V, S, U>(self, table, rows, conflict, returning)
    }
}

impl<T, Col, K> BulkKeys<T, Col, K> for MysqlConnection
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Mysql>,
    Col: Column<Table = T>,
    Mysql: HasSqlType<Col::SqlType>,
    K: ToSql<Col::SqlType, Mysql>,
{
    fn key_plan(limits: Limits) -> (Option<usize>, Option<usize>, usize) {
        (
            Some(limits.binds),
            limits.bytes,
            limits.binds.min(DELETE_KEYS),
        )
    }

    fn key_bytes(key: &K) -> QueryResult<usize> {
        let mut binds = RawBytesBindCollector::<Mysql>::new();
        binds.push_bound_value::<Col::SqlType, K>(key, &mut ())?;
        Ok(binds
            .binds
            .iter()
            .map(|b| b.as_ref().map_or(0, Vec::len) + PER_BIND)
            .sum())
    }

    fn push_key_set<'b>(keys: &'b [K], out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        push_in_list::<Mysql, Col::SqlType, K>(keys, out)
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
        S: Expression + QueryFragment<Mysql>,
        Mysql: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Mysql> + 'static,
    {
        delete_returning::<Self, T, Col, K, S, U>(self, table, keys, returning, limit)
    }
}

/// A refusal of an insert `RETURNING` this emulation cannot make exact (typed: a
/// `QueryBuilderError`, surfaced as `Error::Query`).
fn refuse(why: String) -> DieselError {
    DieselError::QueryBuilderError(
        format!("bulk INSERT .. RETURNING on MySQL/MariaDB: {why}").into(),
    )
}

/// `SHOW COLUMNS FROM t`: sees temporary tables (`information_schema` does not on MariaDB
/// 10.11) and the table a temporary one shadows is not confused with it. The table's name
/// is Diesel's, rendered as an identifier.
struct ShowColumns<F>(F);

impl<F> QueryId for ShowColumns<F> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<F> Query for ShowColumns<F> {
    /// `Field`, `Type`, `Null`, `Key`, `Default`, `Extra`.
    type SqlType = (
        Nullable<Text>,
        Nullable<Text>,
        Nullable<Text>,
        Nullable<Text>,
        Nullable<Text>,
        Nullable<Text>,
    );
}

impl<F: QueryFragment<Mysql>> QueryFragment<Mysql> for ShowColumns<F> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SHOW COLUMNS FROM ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<F> diesel::RunQueryDsl<MysqlConnection> for ShowColumns<F> {}

/// One column of `SHOW COLUMNS`.
type ShowColumn = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// An identifier as Diesel renders it (`` `id` ``).
struct Ident<'a>(&'a str);

impl QueryFragment<Mysql> for Ident<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_identifier(self.0)
    }
}

/// `SELECT returning FROM t WHERE t.id BETWEEN ? AND ? ORDER BY t.id LIMIT ?`: the rows of
/// one chunk, by the ids the server gave them.
struct ByIds<'a, F, S> {
    from: F,
    column: &'a str,
    first: u64,
    last: u64,
    limit: i64,
    returning: &'a S,
}

impl<F, S> QueryId for ByIds<'_, F, S> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<F, S: Expression> Query for ByIds<'_, F, S> {
    type SqlType = S::SqlType;
}

impl<F, S> QueryFragment<Mysql> for ByIds<'_, F, S>
where
    F: QueryFragment<Mysql>,
    S: QueryFragment<Mysql>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        self.returning.walk_ast(out.reborrow())?;
        out.push_sql(" FROM ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(".");
        out.push_identifier(self.column)?;
        out.push_sql(" BETWEEN ");
        out.push_bind_param::<Unsigned<BigInt>, u64>(&self.first)?;
        out.push_sql(" AND ");
        out.push_bind_param::<Unsigned<BigInt>, u64>(&self.last)?;
        out.push_sql(" ORDER BY ");
        self.from.walk_ast(out.reborrow())?;
        out.push_sql(".");
        out.push_identifier(self.column)?;
        out.push_sql(" LIMIT ");
        out.push_bind_param::<BigInt, i64>(&self.limit)
    }
}

/// Insert `RETURNING` on MySQL/MariaDB, from the ids the server generated. MariaDB 10.5+ has
/// `INSERT .. RETURNING`, but its prepared statements report no result metadata for it and
/// Diesel's MySQL client reads every result through one ("No metadata exists"). So, in the
/// write's transaction, per chunk:
///
/// 1. `SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment, LAST_INSERT_ID(0)`:
///    lock mode 0 or 1 (with 2, "interleaved", the ids of one multi-row insert need not be
///    consecutive), the step between ids, and `LAST_INSERT_ID()` reset (an insert that
///    generates no id leaves it unchanged: a stale value would point at other rows);
/// 2. `SHOW COLUMNS FROM t`: exactly one `AUTO_INCREMENT` column, which the rows leave out
///    (a row that sets it would take an id out of the sequence);
/// 3. the multi-row `INSERT` (no upsert: a row updated by `ON DUPLICATE KEY UPDATE` gets no
///    new id), then `SELECT LAST_INSERT_ID()`: the id of the chunk's first row (0: no id was
///    generated); in lock modes 0 and 1 the `n` rows of one simple multi-row insert get
///    `first, first + step, .., first + (n - 1) * step`, in row order;
/// 4. `SELECT returning FROM t WHERE id BETWEEN first AND first + (n - 1) * step ORDER BY id
///    LIMIT n + 1`: exactly `n` rows or an error (the column is unique or not, our `n` rows
///    are all in the range, so `n` found are ours).
///
/// Any refusal is an error before the chunk's `INSERT` (1, 2) or after it (3, 4): the
/// write's transaction rolls back and nothing is written.
fn insert_returning_by_id<T, V, S, U>(
    conn: &mut MysqlConnection,
    table: T,
    rows: &[ValuesClause<V, T>],
    conflict: ConflictOf<'_>,
    returning: &S,
) -> QueryResult<Vec<U>>
where
    T: Table + Copy,
    T::FromClause: QueryFragment<Mysql>,
    V: InsertValues<Mysql, T>,
    S: Expression + QueryFragment<Mysql>,
    Mysql: QueryMetadata<S::SqlType>,
    U: FromSqlRow<S::SqlType, Mysql> + 'static,
{
    if conflict.is_some() {
        return Err(refuse(
            "an upsert's updated rows get no new id: use a plain insert".into(),
        ));
    }
    let Some(first_row) = rows.first() else {
        return Ok(Vec::new());
    };
    let n = rows.len() as u64;
    // 1. Lock mode, step, and LAST_INSERT_ID() reset, in one statement.
    let (mode, step, _): (i64, i64, i64) = internal(|| {
        diesel::select(diesel::dsl::sql::<(BigInt, BigInt, BigInt)>(
            "CAST(@@innodb_autoinc_lock_mode AS SIGNED), \
             CAST(@@auto_increment_increment AS SIGNED), CAST(LAST_INSERT_ID(0) AS SIGNED)",
        ))
        .get_result(conn)
    })?;
    if !(0..=1).contains(&mode) {
        return Err(refuse(format!(
            "innodb_autoinc_lock_mode is {mode}: only 0 and 1 give one multi-row insert \
             consecutive ids"
        )));
    }
    let step = u64::try_from(step)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| refuse(format!("auto_increment_increment is {step}")))?;
    // 2. The table's one AUTO_INCREMENT column, left out of the rows.
    let columns: Vec<ShowColumn> = internal(|| ShowColumns(table.from_clause()).load(conn))?;
    let auto: Vec<String> = columns
        .into_iter()
        .filter(|c| {
            c.5.as_deref()
                .is_some_and(|e| e.to_ascii_lowercase().contains("auto_increment"))
        })
        .filter_map(|c| c.0)
        .collect();
    let [column] = auto.as_slice() else {
        return Err(refuse(format!(
            "the table has {} AUTO_INCREMENT columns (exactly one is needed)",
            auto.len()
        )));
    };
    let listed = <MysqlConnection as BulkWrite<T, V>>::row_shape(first_row)?.columns;
    let ident = MysqlConnection::render_sql(&Ident(column))?;
    if listed.contains(&ident) {
        return Err(refuse(format!(
            "the rows set the AUTO_INCREMENT column {ident}: leave it out of the \
             Insertable so the server generates it"
        )));
    }
    // 3. The insert and the id of its first row.
    let inserted = conn.insert_rows(table, rows, None)?;
    let first: u64 = internal(|| {
        diesel::select(diesel::dsl::sql::<Unsigned<BigInt>>("LAST_INSERT_ID()")).get_result(conn)
    })?;
    if first == 0 || inserted as u64 != n {
        return Err(refuse(format!(
            "the insert of {n} rows affected {inserted} and generated first id {first}"
        )));
    }
    // 4. The chunk's rows, by id.
    let last = (n - 1)
        .checked_mul(step)
        .and_then(|span| first.checked_add(span))
        .ok_or_else(|| refuse("the ids overflow".into()))?;
    let node = ByIds {
        from: table.from_clause(),
        column,
        first,
        last,
        limit: i64::try_from(n + 1).unwrap_or(i64::MAX),
        returning,
    };
    let cursor = <MysqlConnection as LoadConnection<DefaultLoadingMode>>::load(conn, node)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in cursor {
        let row = row?;
        out.push(U::build_from_row(&row).map_err(DieselError::DeserializationError)?);
    }
    if out.len() as u64 != n {
        return Err(refuse(format!(
            "{} rows found with the ids {first}..={last} of the {n} rows inserted",
            out.len()
        )));
    }
    Ok(out)
}
