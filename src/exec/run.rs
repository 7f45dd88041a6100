//! One statement under a budget: its instrumentation scope, its time limit, what the ledger
//! and the pool's statistics learn of it.

use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::time::Instant;

use super::sink::Collector;
use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage};
use crate::error::{Error, Result};
use crate::instrument::{BudgetScope, StatementTag};
use crate::query::{BudgetQuery, Fetch, Ran, RowSink};

/// Rows loaded under a budget, with what was counted.
pub(crate) struct Loaded<U> {
    pub(crate) rows: Vec<U>,
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

impl<U> Loaded<U> {
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
) -> Result<Loaded<U>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
{
    load::<C, U, Q, M>(query, spec, limit, false, conn)
}

/// [`load_metered`]; `sql_if_empty`: an empty result is an error that shows the SQL.
#[inline]
pub(super) fn load<'q, C, U, Q, M>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    sql_if_empty: bool,
    conn: &mut C,
) -> Result<Loaded<U>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
{
    let mut sink = Collector::<U, M> {
        rows: Vec::new(),
        buffered: 0,
        deadline: None,
        meter: Meterage::default(),
        exceeded: None,
        spec,
        sql_if_empty,
        _meter: PhantomData,
    };
    let (ran, tag) = execute(query, spec, limit, M::METERS_BYTES, conn, &mut sink, |s| {
        Seen {
            meter: s.meter,
            buffered: s.buffered,
            delivered: s.rows.len() as u64,
        }
    })?;
    Ok(Loaded {
        rows: sink.rows,
        sql: ran.sql.unwrap_or_default(),
        meter: sink.meter,
        exceeded: sink.exceeded,
        lock_cut: ran.lock_cut,
        tag,
    })
}

/// What a sink saw of one execution, for the ledger.
pub(super) struct Seen {
    pub(super) meter: Meterage,
    /// Rows the client library buffered (0 when rows were decoded one at a time).
    pub(super) buffered: u64,
    /// Rows the sink kept for the caller.
    pub(super) delivered: u64,
}

/// Runs `query` into `sink` inside the budget's instrumentation scope, then reports what
/// `seen` reads off the sink to the ledger and the pool's statistics: rows received (decoded,
/// with the row that stopped loading, or buffered by the client) and, for now, rows delivered
/// (what the sink kept, unless the query failed; callers correct it with the returned tag).
#[inline]
pub(super) fn execute<'q, C, U, Q, S>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    meters_bytes: bool,
    conn: &mut C,
    sink: &mut S,
    seen: impl Fn(&S) -> Seen,
) -> Result<(Ran, StatementTag)>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    S: RowSink<U>,
{
    let mut fetch = Fetch {
        limit,
        budget_rows: spec.rows,
        truncate: spec.truncate,
        prefix: None,
    };
    let mut tag = StatementTag::next_on(conn.instrumentation());
    let mut sink = Deadline {
        sink,
        deadline: None,
        passed: false,
    };
    let result = {
        let _scope = BudgetScope::enter(spec);
        match spec.time {
            None => query.run_limited(fetch, meters_bytes, conn, &mut sink),
            Some(time) => {
                if C::CLIENT_DEADLINE {
                    sink.deadline = Instant::now().checked_add(time);
                }
                fetch.prefix = C::statement_prefix(time);
                conn.within_time_limit(time, |conn| {
                    query.run_limited(fetch, meters_bytes, conn, &mut sink)
                })
            }
        }
    };
    // Out of time: the server cancelled the statement, or the client's clock ran out.
    let timed_out = match &result {
        Err(Error::Query { source, .. }) => spec.time.is_some() && C::is_time_out(source),
        _ => sink.passed,
    };
    let seen = seen(sink.sink);
    tag.note(
        seen.meter.rows.max(seen.buffered),
        if result.is_ok() && !timed_out {
            seen.delivered
        } else {
            0
        },
        meters_bytes.then_some(seen.meter.bytes),
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
    result.map(|ran| (ran, tag))
}

/// A sink that stops at a deadline the client keeps itself (SQLite under a time limit:
/// nothing on a server can cancel the statement, so the clock is read between rows).
struct Deadline<'s, S> {
    sink: &'s mut S,
    deadline: Option<Instant>,
    passed: bool,
}

impl<U, S: RowSink<U>> RowSink<U> for Deadline<'_, S> {
    fn expect(&mut self, rows: usize) {
        self.sink.expect(rows);
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.passed = true;
            return ControlFlow::Break(());
        }
        self.sink.push(row)
    }

    fn needs_sql(&self) -> bool {
        self.passed || self.sink.needs_sql()
    }
}
