//! One statement read at once under a budget: its instrumentation scope, its time limit, the
//! [`Cursor`] its rows go through, and what the ledger and the pool's statistics learn of it.

use std::marker::PhantomData;
use std::time::Instant;

use diesel::connection::{DefaultLoadingMode, LoadConnection};
use diesel::deserialize::FromSqlRow;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::query_dsl::{CompatibleType, RunQueryDsl};
use diesel::QueryResult;

use super::cursor::{All, ByRef, Cursor, Lookahead, Render, Seen, Sql, Take};
use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage, Metering};
use crate::error::{Error, Result};
use crate::instrument::{BudgetScope, StatementTag};
use crate::query::{BudgetQuery, Fetch};

/// Rows loaded under a budget, with what was counted.
pub(crate) struct Loaded<R> {
    /// The rows kept: `Vec<U>`, or `Option<U>` for `first`.
    pub(crate) rows: R,
    /// The SQL with placeholders; rendered only when the outcome is an error that shows it
    /// (over budget, or no row where one was asked for), else empty.
    pub(crate) sql: String,
    pub(crate) meter: Meterage,
    pub(crate) exceeded: Option<Exceeded>,
    /// A locking read fetched at most the budget: a full result may have more rows.
    pub(crate) lock_cut: bool,
    /// The statement that loaded them, for the ledger's count of rows delivered.
    pub(crate) tag: StatementTag,
}

impl<R> Loaded<R> {
    pub(crate) fn into_error(mut self, budget: BudgetSpec, exceeded: Exceeded) -> Error {
        self.tag.delivered(0);
        Error::BudgetExceeded {
            sql: self.sql,
            budget,
            exceeded,
            seen_rows: self.meter.rows,
            seen_bytes: self.meter.bytes,
        }
    }
}

/// Runs `query` with at most `limit` rows fetched, metering rows against `spec` and bytes with
/// `M`; stops at the first row past the budget (that row is dropped and counted).
pub(crate) fn load_metered<'q, C, U, Q, M>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    conn: &mut C,
) -> Result<Loaded<Vec<U>>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
{
    execute::<C, U, Q, M, All>(query, spec, limit, false, conn)
}

/// Runs a keyset batch's `query` with `LIMIT batch + 1`: at most `batch` rows kept under
/// `spec`, and the row after them, if any ([`Lookahead`]), taken off the result but neither
/// metered nor delivered.
pub(crate) fn load_batch<'q, C, U, Q, M>(
    query: Q,
    spec: BudgetSpec,
    batch: u64,
    conn: &mut C,
) -> Result<Loaded<(Vec<U>, Option<U>)>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
{
    let limit = i64::try_from(batch.saturating_add(1)).unwrap_or(i64::MAX);
    execute::<C, U, Q, M, Lookahead>(query, spec, limit, false, conn)
}

/// What runs the statement a query built ([`BudgetQuery::run_limited`]): opens it on the
/// connection and reads its rows through a [`Cursor`]. The query module builds statements;
/// this is the only place they are run from.
#[doc(hidden)]
pub trait RunStatement<C: BudgetConnection, U> {
    /// What reading the statement gives.
    type Output;

    /// Runs `statement`; `lock_cut`: a locking read fetches at most the budget; `cap`: the
    /// statement went out with its own LIMIT unread (SQLite), so at most `cap` rows are
    /// stepped (the row after the cap is never computed: SQLite's cursor steps one row per
    /// `next`).
    fn run<P>(self, statement: &P, lock_cut: bool, cap: Option<i64>) -> Result<Self::Output>
    where
        C: LoadConnection<C::StreamMode>,
        P: Query + QueryFragment<C::Backend> + QueryId,
        C::Backend: QueryMetadata<P::SqlType>,
        P::SqlType: CompatibleType<U, C::Backend>,
        U: FromSqlRow<<P::SqlType as CompatibleType<U, C::Backend>>::SqlType, C::Backend> + 'static,
        <P::SqlType as CompatibleType<U, C::Backend>>::SqlType: 'static;
}

/// What a read gives besides what the cursor counted.
pub(crate) struct Ran<R> {
    rows: R,
    /// The SQL with placeholders, rendered only for an outcome that shows it.
    sql: Option<String>,
    exceeded: Option<Exceeded>,
    lock_cut: bool,
}

/// Reads a statement through a [`Cursor`], keeping rows as `T` says; what the cursor counted
/// goes to `seen`, also when the read fails.
struct Reader<'a, C, T, M> {
    conn: &'a mut C,
    /// The connection's streaming mode rather than its default (bytes are metered: nothing
    /// should be buffered beyond the row at hand).
    stream: bool,
    spec: BudgetSpec,
    deadline: Option<Instant>,
    /// The statement's `LIMIT`.
    limit: i64,
    /// No row is an error that shows the SQL (`first`, `get_result`).
    empty_is_error: bool,
    seen: &'a mut Seen,
    _take: PhantomData<fn() -> (T, M)>,
}

impl<'a, C, T, M: Metering> Reader<'a, C, T, M> {
    fn new(
        conn: &'a mut C,
        spec: BudgetSpec,
        deadline: Option<Instant>,
        limit: i64,
        empty_is_error: bool,
        seen: &'a mut Seen,
    ) -> Self {
        Reader {
            conn,
            stream: M::METERS_BYTES,
            spec,
            deadline,
            limit,
            empty_is_error,
            seen,
            _take: PhantomData,
        }
    }
}

impl<C, U, T, M> RunStatement<C, U> for Reader<'_, C, T, M>
where
    C: BudgetConnection,
    T: Take<U>,
    M: Meter<U>,
{
    type Output = Ran<T::Rows>;

    #[inline]
    fn run<P>(self, statement: &P, lock_cut: bool, cap: Option<i64>) -> Result<Ran<T::Rows>>
    where
        C: LoadConnection<C::StreamMode>,
        P: Query + QueryFragment<C::Backend> + QueryId,
        C::Backend: QueryMetadata<P::SqlType>,
        P::SqlType: CompatibleType<U, C::Backend>,
        U: FromSqlRow<<P::SqlType as CompatibleType<U, C::Backend>>::SqlType, C::Backend> + 'static,
        <P::SqlType as CompatibleType<U, C::Backend>>::SqlType: 'static,
    {
        let Reader {
            conn,
            stream,
            spec,
            deadline,
            limit,
            empty_is_error,
            seen,
            _take,
        } = self;
        let read = Read::<C, P, T, M> {
            statement,
            spec,
            deadline,
            limit,
            empty_is_error,
            lock_cut,
            _types: PhantomData,
        };
        // `Iterator::take` checks its count before `next`: the row after the cap is never
        // stepped.
        let cap = cap.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        // An open recording takes the statement's SQL from here rather than rendering it.
        crate::instrument::hint_statement::<C::Backend, P>(statement);
        let ran = if stream {
            read.rows(
                ByRef(statement)
                    .load_iter::<U, C::StreamMode>(conn)
                    .map(|rows| rows.take(cap)),
                seen,
            )
        } else {
            read.rows(
                ByRef(statement)
                    .load_iter::<U, DefaultLoadingMode>(conn)
                    .map(|rows| rows.take(cap)),
                seen,
            )
        };
        crate::instrument::clear_hint();
        ran
    }
}

/// The connection, row keeping and metering types of a [`Read`].
type Types<C, T, M> = PhantomData<fn() -> (C, T, M)>;

/// The part of a read that does not depend on the loading mode.
struct Read<'s, C, P, T, M> {
    statement: &'s P,
    spec: BudgetSpec,
    deadline: Option<Instant>,
    limit: i64,
    empty_is_error: bool,
    lock_cut: bool,
    _types: Types<C, T, M>,
}

impl<C, P, T, M> Read<'_, C, P, T, M>
where
    C: BudgetConnection,
    P: QueryFragment<C::Backend>,
{
    /// Hands the rows to a cursor until `T` has what it keeps or the cursor stops. Dropping
    /// Diesel's iterator then stops the statement: SQLite at once, PostgreSQL row-by-row reads
    /// (and discards) the rest of a result the `LIMIT` already bounded, MySQL had it buffered.
    #[inline]
    fn rows<U, I>(self, rows: QueryResult<I>, seen: &mut Seen) -> Result<Ran<T::Rows>>
    where
        I: Iterator<Item = QueryResult<U>>,
        T: Take<U>,
        M: Meter<U>,
    {
        let sql = Render::<C, P>::new(self.statement);
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(Error::query(sql.sql().unwrap_or_default(), e)),
        };
        let mut cursor = Cursor::<I, _, U, M>::new(rows, sql, self.spec, self.deadline);
        let taken = T::take(&mut cursor, self.limit);
        *seen = cursor.seen();
        let rows = taken?;
        let sql = if cursor.needs_sql(self.empty_is_error) {
            Some(cursor.sql()?)
        } else {
            None
        };
        Ok(Ran {
            rows,
            sql,
            exceeded: cursor.exceeded(),
            lock_cut: self.lock_cut,
        })
    }
}

/// Runs `query` through a [`Cursor`] inside the budget's instrumentation scope and time limit,
/// then reports what the cursor counted to the ledger and the pool's statistics: rows received
/// (decoded, with the row that stopped loading, or buffered by the client) and, for now, rows
/// delivered (what the read kept, unless the query failed; callers correct it with the tag).
/// `empty_is_error`: no row is an error that shows the SQL.
#[inline]
pub(super) fn execute<'q, C, U, Q, M, T>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    empty_is_error: bool,
    conn: &mut C,
) -> Result<Loaded<T::Rows>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
    T: Take<U>,
{
    let mut fetch = Fetch {
        limit,
        budget_rows: spec.rows,
        truncate: spec.truncate,
        timed: Default::default(),
    };
    let mut tag = StatementTag::next_on(conn.instrumentation());
    let mut seen = Seen::default();
    let result = {
        let _scope = BudgetScope::enter(spec);
        // What to send besides the statement: nothing when the budget's limit is the one the
        // session carries (a pool's default); a limit of its own otherwise; and when the budget
        // has none but the session does, the limit lifted for this statement alone (0: none).
        let session = crate::timeout::session_time(conn);
        let per_statement = match (spec.time, session) {
            (Some(time), Some(s)) if time == s => None,
            (Some(time), _) => Some(time),
            (None, Some(_)) => Some(std::time::Duration::ZERO),
            (None, None) => None,
        };
        // The one place a reader is built; each branch below only chooses how the time limit
        // wraps it.
        let read = |conn: &mut C, fetch: Fetch, deadline: Option<Instant>| {
            query.run_limited(
                fetch,
                Reader::<C, T, M>::new(conn, spec, deadline, limit, empty_is_error, &mut seen),
            )
        };
        match per_statement {
            None if spec.time.is_some() => {
                conn.within_session_limit(|conn| read(conn, fetch, None))
            }
            None => read(conn, fetch, None),
            Some(time) => {
                // SQLite: nothing on a server can cancel the statement, so the clock is read
                // between rows.
                let deadline = if C::CLIENT_DEADLINE && !time.is_zero() {
                    Instant::now().checked_add(time)
                } else {
                    None
                };
                fetch.timed = conn.time_sql(time)?;
                conn.within_time_limit(time, |conn| read(conn, fetch, deadline))
            }
        }
    };
    // Out of time: the server cancelled the statement, or the client's clock ran out.
    let timed_out = match &result {
        Err(Error::Query { source, .. }) => spec.time.is_some() && C::is_time_out(source),
        _ => seen.timed_out,
    };
    tag.note(
        seen.received.max(seen.buffered),
        if result.is_ok() && !timed_out {
            seen.delivered
        } else {
            0
        },
        M::METERS_BYTES.then_some(seen.meter.bytes),
    );
    if timed_out {
        // Always an error, whatever the overflow policy: the rows are not a prefix the budget
        // chose.
        let sql = match result {
            Err(Error::Query { sql, .. }) => sql.unwrap_or_default(),
            Ok(ran) => ran.sql.unwrap_or_default(),
            Err(_) => String::new(),
        };
        return Err(Error::BudgetExceeded {
            sql,
            budget: spec,
            exceeded: Exceeded::Time,
            seen_rows: seen.meter.rows,
            seen_bytes: seen.meter.bytes,
        });
    }
    result.map(|ran| Loaded {
        rows: ran.rows,
        sql: ran.sql.unwrap_or_default(),
        meter: seen.meter,
        exceeded: ran.exceeded,
        lock_cut: ran.lock_cut,
        tag,
    })
}
