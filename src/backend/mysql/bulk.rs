//! MySQL/MariaDB's half of bulk writes: the bind limit and `max_allowed_packet` (read from the
//! server), `ON DUPLICATE KEY UPDATE`, multi-table `UPDATE` joined to the chunk's rows,
//! `DELETE .. IN (..)` (its budgeted `RETURNING`: a locking read of the same keys first).

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::insertable::InsertValues;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, BindCollector, QueryFragment, ValuesClause};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Unsigned};
use diesel::{Column, QueryResult, RunQueryDsl as _, Table};

use crate::bulk::sql::{
    delete_keys, delete_returning, push_in_list, row_shape, ReturningStyle, RowShape, UpdateStyle,
};
use crate::bulk::{
    insert_plan, internal, sealed, BulkConnection, BulkKeys, BulkWrite, Conflict, ConflictOf,
    Limits, Plan, Want,
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
        // MariaDB 10.5+ has `INSERT .. RETURNING`, but its prepared statements report no
        // result metadata for it, and Diesel's MySQL client reads every result through one
        // ("No metadata exists"): refuse before any SQL instead.
        let _ = (table, rows, conflict, returning);
        Err(diesel::result::Error::QueryBuilderError(
            "bulk INSERT .. RETURNING is not supported on MySQL/MariaDB through Diesel's \
             client (MariaDB's prepared statements give it no result metadata)"
                .into(),
        ))
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
        (Some(limits.binds), limits.bytes, limits.binds)
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
