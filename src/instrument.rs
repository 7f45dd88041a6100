//! Seeing every statement: Diesel's `Instrumentation`, installed on every pooled connection.
//!
//! Diesel reports each statement (`StartQuery` / `FinishQuery`) on the thread that runs it, but
//! not how many rows it returned. The executor knows the rows, so the two meet in thread-local
//! state: while a budgeted query runs, the executor marks its thread as inside a budget; a
//! statement that starts outside one is *unbudgeted*. Statements Diesel issues for transactions (`BEGIN`,
//! `COMMIT`, savepoints) and the pool's own liveness checks are classified separately.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};

use crate::budget::BudgetSpec;

/// What kind of statement the instrumentation saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementKind {
    /// Run by the executor under a budget.
    Budgeted,
    /// Run with no budget: through [`crate::Conn::unbudgeted`], or by code that bypassed the
    /// executor on an instrumented connection.
    Unbudgeted,
    /// Transaction control issued by Diesel (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints).
    Transaction,
    /// Issued by the library itself: pool liveness checks, migrations, session set-up.
    Internal,
}

/// One statement as the instrumentation and executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement {
    /// The SQL. For budgeted statements: with placeholders; otherwise as Diesel displays it
    /// (which includes the bound values).
    pub sql: String,
    /// How it was classified.
    pub kind: StatementKind,
    /// The budget it ran under, for budgeted statements.
    pub budget: Option<BudgetSpec>,
    /// Rows the executor received (budgeted statements only; `None` otherwise).
    pub rows: Option<u64>,
    /// Bytes of those rows when the budget meters bytes.
    pub bytes: Option<u64>,
    /// Time from start to finish as seen by the instrumentation.
    pub elapsed: Duration,
    /// Whether the database reported an error.
    pub failed: bool,
}

#[derive(Default)]
struct ThreadState {
    /// The budget of the query the executor is running on this thread, if any.
    budget: Cell<Option<BudgetSpec>>,
    /// Depth of library-internal work (pool checkout, migrations).
    internal: Cell<u32>,
    /// Open recordings (see `crate::testing::record`), innermost last.
    recordings: RefCell<Vec<Vec<Statement>>>,
}

thread_local! {
    static STATE: ThreadState = ThreadState::default();
}

/// Marks the statements the executor runs for one budgeted query. Dropping it ends the scope.
pub(crate) struct BudgetScope {
    previous: Option<BudgetSpec>,
}

impl BudgetScope {
    pub(crate) fn enter(spec: BudgetSpec) -> Self {
        let previous = STATE.with(|s| s.budget.replace(Some(spec)));
        BudgetScope { previous }
    }
}

impl Drop for BudgetScope {
    fn drop(&mut self) {
        STATE.with(|s| s.budget.set(self.previous));
    }
}

/// Marks library-internal statements (pool checkout, migrations).
pub(crate) struct InternalScope(());

impl InternalScope {
    pub(crate) fn enter() -> Self {
        STATE.with(|s| s.internal.set(s.internal.get() + 1));
        InternalScope(())
    }
}

impl Drop for InternalScope {
    fn drop(&mut self) {
        STATE.with(|s| s.internal.set(s.internal.get().saturating_sub(1)));
    }
}

pub(crate) fn push_recording() {
    STATE.with(|s| s.recordings.borrow_mut().push(Vec::new()));
}

pub(crate) fn pop_recording() -> Vec<Statement> {
    STATE.with(|s| s.recordings.borrow_mut().pop().unwrap_or_default())
}

/// Whether any recording is open on this thread (statements are only rendered then).
fn recording() -> bool {
    STATE.with(|s| s.recordings.try_borrow().is_ok_and(|r| !r.is_empty()))
}

fn with_recordings(f: impl Fn(&mut Vec<Statement>)) {
    STATE.with(|s| {
        if let Ok(mut recs) = s.recordings.try_borrow_mut() {
            recs.iter_mut().for_each(&f);
        }
    });
}

/// Called by the executor when a budgeted query is done: attaches rows and bytes to the last
/// budgeted statement of every open recording, and to the connection's statistics.
pub(crate) fn note_result(
    instrumentation: &mut dyn Instrumentation,
    rows: u64,
    bytes: Option<u64>,
) {
    let stats = instrumentation
        .downcast_ref::<BudgetInstrumentation>()
        .map(|ours| &*ours.stats);
    note_rows(stats, rows, bytes);
}

/// The statistics behind a connection's instrumentation, if it is ours.
pub(crate) fn stats_of(instrumentation: &mut dyn Instrumentation) -> Option<Arc<StatsCell>> {
    instrumentation
        .downcast_ref::<BudgetInstrumentation>()
        .map(|ours| Arc::clone(&ours.stats))
}

/// Like [`note_result`], with the statistics already at hand.
pub(crate) fn note_rows(stats: Option<&StatsCell>, rows: u64, bytes: Option<u64>) {
    with_recordings(|rec| {
        if let Some(st) = rec
            .iter_mut()
            .rev()
            .find(|st| st.kind == StatementKind::Budgeted)
        {
            st.rows = Some(rows);
            st.bytes = bytes;
        }
    });
    if let Some(stats) = stats {
        stats.rows.fetch_add(rows, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes.unwrap_or(0), Ordering::Relaxed);
    }
}

/// Counters shared by every connection of one pool.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    statements: AtomicU64,
    budgeted: AtomicU64,
    unbudgeted: AtomicU64,
    transaction: AtomicU64,
    internal: AtomicU64,
    failed: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

impl StatsCell {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            statements: get(&self.statements),
            budgeted: get(&self.budgeted),
            unbudgeted: get(&self.unbudgeted),
            transaction: get(&self.transaction),
            internal: get(&self.internal),
            failed: get(&self.failed),
            rows: get(&self.rows),
            bytes: get(&self.bytes),
            time: Duration::from_nanos(get(&self.nanos)),
        }
    }
}

/// What the connections of one [`crate::Db`] have run since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Every statement, of every kind.
    pub statements: u64,
    /// Statements run by the executor under a budget.
    pub budgeted: u64,
    /// Statements run without a budget (escape hatch or bypass).
    pub unbudgeted: u64,
    /// Transaction control statements.
    pub transaction: u64,
    /// Library-internal statements (pool checks, migrations).
    pub internal: u64,
    /// Statements the database rejected.
    pub failed: u64,
    /// Rows received by budgeted queries.
    pub rows: u64,
    /// Bytes received by byte-metered budgeted queries.
    pub bytes: u64,
    /// Time spent in statements, start to finish.
    pub time: Duration,
}

impl Stats {
    /// What happened between `earlier` and `self` (two snapshots of the same pool).
    ///
    /// # Example
    /// ```
    /// # include!("../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(10)?;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let before = db.stats();
    /// let rows = items::table.budget(Budget::rows(10)).load::<Item>(&mut conn)?;
    /// let delta = db.stats().since(&before);
    /// assert_eq!((delta.budgeted, delta.unbudgeted, delta.rows), (1, 0, 10));
    /// # Ok(()) }
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            statements: self.statements.saturating_sub(earlier.statements),
            budgeted: self.budgeted.saturating_sub(earlier.budgeted),
            unbudgeted: self.unbudgeted.saturating_sub(earlier.unbudgeted),
            transaction: self.transaction.saturating_sub(earlier.transaction),
            internal: self.internal.saturating_sub(earlier.internal),
            failed: self.failed.saturating_sub(earlier.failed),
            rows: self.rows.saturating_sub(earlier.rows),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

/// The [`Instrumentation`] diesel-budget installs on each pooled connection.
///
/// Install it on a connection of your own with [`crate::instrument()`].
#[derive(Debug, Default)]
pub struct BudgetInstrumentation {
    stats: Arc<StatsCell>,
    /// Set by a transaction event: the next statement is Diesel's `BEGIN`/`COMMIT`/...
    transaction_pending: bool,
    /// Kind and start of the statement in flight (statements on one connection never overlap).
    in_flight: Option<(StatementKind, Instant)>,
}

impl BudgetInstrumentation {
    pub(crate) fn with_stats(stats: Arc<StatsCell>) -> Self {
        BudgetInstrumentation {
            stats,
            ..Default::default()
        }
    }

    /// What this connection (and any sharing its pool) has run.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    fn classify(&mut self) -> (StatementKind, Option<BudgetSpec>) {
        if std::mem::take(&mut self.transaction_pending) {
            return (StatementKind::Transaction, None);
        }
        STATE.with(|s| {
            if s.internal.get() > 0 {
                (StatementKind::Internal, None)
            } else if let Some(spec) = s.budget.get() {
                (StatementKind::Budgeted, Some(spec))
            } else {
                (StatementKind::Unbudgeted, None)
            }
        })
    }
}

impl Instrumentation for BudgetInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::BeginTransaction { .. }
            | InstrumentationEvent::CommitTransaction { .. }
            | InstrumentationEvent::RollbackTransaction { .. } => {
                self.transaction_pending = true;
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                let (kind, budget) = self.classify();
                let counter = match kind {
                    StatementKind::Budgeted => &self.stats.budgeted,
                    StatementKind::Unbudgeted => &self.stats.unbudgeted,
                    StatementKind::Transaction => &self.stats.transaction,
                    StatementKind::Internal => &self.stats.internal,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.stats.statements.fetch_add(1, Ordering::Relaxed);
                self.in_flight = Some((kind, Instant::now()));
                if kind != StatementKind::Internal && recording() {
                    let sql = query.to_string();
                    with_recordings(|rec| {
                        rec.push(Statement {
                            sql: sql.clone(),
                            kind,
                            budget,
                            rows: None,
                            bytes: None,
                            elapsed: Duration::ZERO,
                            failed: false,
                        })
                    });
                }
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                let Some((kind, started)) = self.in_flight.take() else {
                    return;
                };
                let elapsed = started.elapsed();
                let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                self.stats.nanos.fetch_add(nanos, Ordering::Relaxed);
                if error.is_some() {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                if kind != StatementKind::Internal {
                    let failed = error.is_some();
                    with_recordings(|rec| {
                        if let Some(st) = rec.last_mut() {
                            st.elapsed = elapsed;
                            st.failed = failed;
                        }
                    });
                }
            }
            _ => {}
        }
    }
}
