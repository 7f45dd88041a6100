//! Seeing every statement: Diesel's `Instrumentation`, installed on every pooled connection.
//!
//! Diesel reports each statement (`StartQuery` / `FinishQuery`) on the thread that runs it, but
//! not how many rows it returned. The executor knows the rows, so the two meet by statement
//! identity: every statement gets a [`StatementId`] (which connection, and its place in that
//! connection's sequence) when it starts; the executor asks for the id its query is about to get
//! and attaches rows, bytes and timings to *that* statement, however statements on other
//! connections interleave (a stream open on one connection while lookups run on another).
//!
//! While a budgeted query runs, the executor marks its thread as inside a budget; a statement
//! that starts outside one is *unbudgeted*. Statements Diesel issues for transactions (`BEGIN`,
//! `COMMIT`, savepoints) and the pool's own liveness checks are classified separately.
//!
//! Recordings ([`crate::testing::record`]) are per thread: a recording sees the statements run on
//! the thread that opened it, on any instrumented connection, and nothing run on other threads.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{DebugQuery, Instrumentation, InstrumentationEvent};

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

/// Which statement: the instrumented connection it ran on and its place in that connection's
/// sequence. Connections are numbered in the order their instrumentation was created, from 1,
/// per process; statements from 0 per connection. Displayed as `c3#17`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatementId {
    /// The connection (its instrumentation) the statement ran on.
    pub connection: u64,
    /// The statement's number on that connection.
    pub seq: u64,
}

impl fmt::Display for StatementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}#{}", self.connection, self.seq)
    }
}

/// One statement as the instrumentation and executor saw it.
///
/// Rows are counted twice: [`rows`](Self::rows) is what came from the server into this process
/// (rows the executor decoded, or the client library buffered), [`rows_delivered`](Self::rows_delivered)
/// what the executor handed to the caller. The difference is work spent on rows nobody got: the
/// probe row past a budget (`LIMIT budget + 1`), rows of a result that exceeded a strict budget,
/// rows a byte-limited batch read but left for the next batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statement {
    /// Which statement this is (connection and sequence number).
    pub id: StatementId,
    /// The SQL, with placeholders (`$1`, `?`): never the bound values, which are in
    /// [`binds`](Self::binds).
    pub sql: String,
    /// The bound values, in order, each in its `Debug` form. May hold user data: keep it out of
    /// logs that must not carry data.
    pub binds: Vec<String>,
    /// How it was classified.
    pub kind: StatementKind,
    /// The budget it ran under, for budgeted statements.
    pub budget: Option<BudgetSpec>,
    /// Rows received from the server (budgeted statements only; `None` otherwise): every row the
    /// executor decoded, or, where the client library buffers whole results (MySQL, PostgreSQL
    /// outside row-by-row mode), every row it buffered. On PostgreSQL in row-by-row mode, rows
    /// libpq reads and discards after a stream stops early are not seen, so not counted.
    pub rows: Option<u64>,
    /// Rows the executor handed to the caller (budgeted statements only).
    pub rows_delivered: Option<u64>,
    /// Bytes of the rows decoded, when the budget meters bytes.
    pub bytes: Option<u64>,
    /// Time from start to finish as seen by the instrumentation. A streamed statement finishes
    /// when its stream ends or is dropped (PostgreSQL row-by-row, SQLite), so its time includes
    /// the caller's work between rows; on MySQL the result is buffered at once.
    pub elapsed: Duration,
    /// Whether the database reported an error.
    pub failed: bool,
    /// Where the executor was called from (`load`, `first`, `get_result`, `batches_by`, ...):
    /// the caller's file, line and column, for budgeted statements. `None` for statements that
    /// did not go through the executor.
    pub location: Option<&'static Location<'static>>,
}

impl Statement {
    /// The statement's SQL shape ([`crate::testing::fingerprint`]): placeholders only, lists of
    /// placeholders collapsed, whitespace normalised. Statements that differ only in bound
    /// values (or in the length of an `IN` list) share it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.sql)
    }
}

/// The SQL shape of `sql` (placeholders only, never values): whitespace runs become one space,
/// PostgreSQL's numbered placeholders (`$3`) become `?`, a list of placeholders (`?, ?, ?`)
/// becomes one `?`, and repeated rows of a multi-row `VALUES` (`(?), (?)`) become one.
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut space = false;
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    while out.contains("?, ?") {
        out = out.replace("?, ?", "?");
    }
    while out.contains("(?), (?)") {
        out = out.replace("(?), (?)", "(?)");
    }
    out
}

/// The SQL of statically identified statements, by query and backend type.
type StaticSql = std::collections::HashMap<(TypeId, TypeId), Arc<str>, lru::DefaultHasher>;

struct ThreadState {
    /// The budget of the query the executor is running on this thread, if any.
    budget: Cell<Option<BudgetSpec>>,
    /// Depth of library-internal work (pool checkout, migrations).
    internal: Cell<u32>,
    /// Open recordings (see `crate::testing::record`), innermost last.
    recordings: RefCell<Vec<Vec<Statement>>>,
    /// The SQL and binds of the statement the executor is about to run, handed over while a
    /// recording is open ([`hint_statement`]), so the instrumentation need not render it.
    hint: RefCell<Option<(String, Vec<String>)>>,
    /// The SQL of statically identified statements (Diesel's `QueryId`), by query and backend
    /// type: rendered once per thread.
    static_sql: RefCell<Option<StaticSql>>,
    /// Where the executor entry point running on this thread was called from.
    site: Cell<Option<&'static Location<'static>>>,
    /// Depth of `crate::testing::allow_unbudgeted` scopes (strict mode lets their statements
    /// through).
    allowed: RefCell<Vec<&'static str>>,
}

impl ThreadState {
    /// Built at compile time: no lazy initialisation on each access.
    const fn new() -> Self {
        ThreadState {
            budget: Cell::new(None),
            internal: Cell::new(0),
            recordings: RefCell::new(Vec::new()),
            hint: RefCell::new(None),
            static_sql: RefCell::new(None),
            site: Cell::new(None),
            allowed: RefCell::new(Vec::new()),
        }
    }
}

thread_local! {
    static STATE: ThreadState = const { ThreadState::new() };
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

/// Marks the executor work of one call of a public entry point (`load`, `batches_by`'s
/// iterator, ...) with the caller's location. Dropping it restores the previous one.
pub(crate) struct CallSite {
    previous: Option<&'static Location<'static>>,
}

impl CallSite {
    pub(crate) fn enter(site: &'static Location<'static>) -> Self {
        let previous = STATE.with(|s| s.site.replace(Some(site)));
        CallSite { previous }
    }
}

impl Drop for CallSite {
    fn drop(&mut self) {
        STATE.with(|s| s.site.set(self.previous));
    }
}

/// Strict mode for every instrumented connection of the process (see
/// [`crate::testing::strict`]).
static STRICT_PROCESS: AtomicBool = AtomicBool::new(false);

/// Turns strict mode on or off for the whole process.
pub(crate) fn set_strict_process(on: bool) {
    STRICT_PROCESS.store(on, Ordering::SeqCst);
}

/// Turns strict mode on for the process when `DIESEL_BUDGET_STRICT` is `1` or `true` (read
/// once, when the first instrumentation is created).
fn strict_from_env() {
    static READ: std::sync::Once = std::sync::Once::new();
    READ.call_once(|| {
        if std::env::var("DIESEL_BUDGET_STRICT").is_ok_and(|v| v == "1" || v == "true") {
            set_strict_process(true);
        }
    });
}

/// Lets unbudgeted statements through strict mode on this thread until dropped; `name` says
/// why (it is in the recorded statement's ledger line and in strict mode's messages).
pub(crate) struct AllowUnbudgeted(());

impl AllowUnbudgeted {
    pub(crate) fn enter(name: &'static str) -> Self {
        STATE.with(|s| s.allowed.borrow_mut().push(name));
        AllowUnbudgeted(())
    }
}

impl Drop for AllowUnbudgeted {
    fn drop(&mut self) {
        STATE.with(|s| {
            s.allowed.borrow_mut().pop();
        });
    }
}

/// Whether an `allow_unbudgeted` scope is open on this thread.
fn unbudgeted_allowed() -> bool {
    STATE.with(|s| s.allowed.try_borrow().is_ok_and(|a| !a.is_empty()))
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

fn with_recordings(f: impl Fn(&mut Vec<Statement>)) {
    STATE.with(|s| {
        if let Ok(mut recs) = s.recordings.try_borrow_mut() {
            recs.iter_mut().for_each(&f);
        }
    });
}

/// Applies `f` to statement `id` in every open recording that has it.
fn with_statement(id: StatementId, f: impl Fn(&mut Statement)) {
    with_recordings(|rec| {
        // The statement is almost always among the last few: search from the end.
        if let Some(st) = rec.iter_mut().rev().find(|st| st.id == id) {
            f(st);
        }
    });
}

/// The statement a budgeted query is about to run, so that its results attach to it and to the
/// pool's statistics. Taken from the connection *before* the query starts
/// ([`StatementTag::next_on`]): the next statement started on that connection is the query's.
#[derive(Debug, Default)]
pub(crate) struct StatementTag {
    id: Option<StatementId>,
    stats: Option<Arc<StatsCell>>,
    /// Rows noted as delivered so far (what the statistics hold for this statement).
    delivered: u64,
}

impl StatementTag {
    /// The tag of the next statement on the connection whose instrumentation this is; an empty
    /// tag when the instrumentation is not ours.
    pub(crate) fn next_on(instrumentation: &mut dyn Instrumentation) -> Self {
        match instrumentation.downcast_ref::<BudgetInstrumentation>() {
            Some(ours) => StatementTag {
                id: Some(StatementId {
                    connection: ours.connection,
                    seq: ours.next_seq,
                }),
                stats: Some(Arc::clone(&ours.stats)),
                delivered: 0,
            },
            None => StatementTag::default(),
        }
    }

    /// Attaches what the statement did: rows `received` from the server, rows `delivered` to the
    /// caller (for now: [`StatementTag::delivered`] corrects it), and bytes when metered.
    pub(crate) fn note(&mut self, received: u64, delivered: u64, bytes: Option<u64>) {
        if let Some(id) = self.id {
            with_statement(id, |st| {
                st.rows = Some(received);
                st.rows_delivered = Some(delivered);
                st.bytes = bytes;
            });
        }
        if let Some(stats) = &self.stats {
            stats.rows.fetch_add(received, Ordering::Relaxed);
            stats.rows_delivered.fetch_add(delivered, Ordering::Relaxed);
            stats.bytes.fetch_add(bytes.unwrap_or(0), Ordering::Relaxed);
        }
        self.delivered = delivered;
    }

    /// Corrects the rows delivered: the caller kept `delivered` of the rows noted (none when a
    /// strict budget turned them into an error, one for `get_result`).
    pub(crate) fn delivered(&mut self, delivered: u64) {
        if delivered == self.delivered {
            return;
        }
        if let Some(id) = self.id {
            with_statement(id, |st| st.rows_delivered = Some(delivered));
        }
        if let Some(stats) = &self.stats {
            if delivered > self.delivered {
                stats
                    .rows_delivered
                    .fetch_add(delivered - self.delivered, Ordering::Relaxed);
            } else {
                stats
                    .rows_delivered
                    .fetch_sub(self.delivered - delivered, Ordering::Relaxed);
            }
        }
        self.delivered = delivered;
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
    rows_delivered: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    /// Strict mode for this pool's connections (see [`crate::DbBuilder::strict`]).
    pub(crate) strict: AtomicBool,
    /// The caches that follow this pool's writes ([`crate::cache::Cache::attach`]).
    pub(crate) writes: crate::cache::track::Observers,
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
            rows_delivered: get(&self.rows_delivered),
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
    /// Rows budgeted queries received from the server (see [`Statement::rows`]).
    pub rows: u64,
    /// Rows budgeted queries handed to their callers (see [`Statement::rows_delivered`]).
    pub rows_delivered: u64,
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
    /// assert_eq!((delta.budgeted, delta.unbudgeted), (1, 0));
    /// assert_eq!((delta.rows, delta.rows_delivered), (10, 10));
    ///
    /// // Over budget: the probe row (LIMIT 5 + 1) came, nothing was delivered.
    /// let before = db.stats();
    /// assert!(items::table.budget(Budget::rows(5)).load::<Item>(&mut conn).is_err());
    /// let delta = db.stats().since(&before);
    /// assert_eq!((delta.rows, delta.rows_delivered), (6, 0));
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
            rows_delivered: self.rows_delivered.saturating_sub(earlier.rows_delivered),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

/// Numbers instrumented connections, from 1.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A statement started and not yet finished on one connection.
#[derive(Debug)]
struct InFlight {
    id: StatementId,
    kind: StatementKind,
    started: Instant,
    /// What it does to cached results (read only when a cache follows the pool).
    effects: Vec<crate::cache::sql::Effect>,
}

/// Most statements kept as in flight on one connection (a leaked cursor never finishes).
const MAX_IN_FLIGHT: usize = 16;

/// The [`Instrumentation`] diesel-budget installs on each pooled connection.
///
/// Install it on a connection of your own with [`crate::instrument()`]. It can carry an
/// instrumentation of yours and forward every event to it ([`BudgetInstrumentation::forward_to`]):
/// Diesel holds one instrumentation per connection, so this is how both see the statements.
///
/// # Example
/// ```
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// # #[cfg(feature = "sqlite")]
/// # fn main() {
/// use diesel::connection::{Connection, InstrumentationEvent};
/// use diesel::sqlite::SqliteConnection;
/// use diesel_budget::instrument::BudgetInstrumentation;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(0));
/// let counter = Arc::clone(&seen);
/// let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
/// conn.set_instrumentation(BudgetInstrumentation::default().forward_to(
///     move |event: InstrumentationEvent<'_>| {
///         if matches!(event, InstrumentationEvent::StartQuery { .. }) {
///             *counter.lock().expect("not poisoned") += 1;
///         }
///     },
/// ));
/// diesel::connection::SimpleConnection::batch_execute(&mut conn, "SELECT 1").expect("runs");
/// assert_eq!(*seen.lock().expect("not poisoned"), 1);
/// # }
/// ```
pub struct BudgetInstrumentation {
    stats: Arc<StatsCell>,
    /// This connection's number.
    connection: u64,
    /// The number the next statement gets.
    next_seq: u64,
    /// Set by a transaction event: the next statement is Diesel's `BEGIN`/`COMMIT`/...
    transaction_pending: bool,
    /// Statements started and not finished, innermost last (a statement can start inside
    /// another: PostgreSQL looks up custom types while preparing).
    in_flight: Vec<InFlight>,
    /// The user's own instrumentation, which gets every event after us.
    forward: Option<Box<dyn Instrumentation>>,
    /// This connection's transaction and uncommitted writes, for the caches.
    pub(crate) writes: crate::cache::track::WriteTracker,
    /// What a backend learnt once about this connection's server (MySQL or MariaDB, for time
    /// limits): instrumentation is the one per-connection slot of ours.
    pub(crate) server_note: Option<&'static str>,
    /// The time limit this connection's session carries, as the pool set it when it opened
    /// the connection (PostgreSQL `statement_timeout`, MariaDB `max_statement_time`): a
    /// budgeted statement with this limit sends nothing more. `None`: no session limit of ours.
    pub(crate) session_time: Option<std::time::Duration>,
}

impl fmt::Debug for BudgetInstrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetInstrumentation")
            .field("connection", &self.connection)
            .field("next_seq", &self.next_seq)
            .field("stats", &self.stats.snapshot())
            .field("forwards", &self.forward.is_some())
            .field("server", &self.server_note)
            .field("session_time", &self.session_time)
            .finish_non_exhaustive()
    }
}

impl Default for BudgetInstrumentation {
    fn default() -> Self {
        BudgetInstrumentation::with_stats(Arc::default())
    }
}

impl BudgetInstrumentation {
    pub(crate) fn with_stats(stats: Arc<StatsCell>) -> Self {
        strict_from_env();
        BudgetInstrumentation {
            stats,
            connection: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            next_seq: 0,
            transaction_pending: false,
            in_flight: Vec::new(),
            forward: None,
            writes: Default::default(),
            server_note: None,
            session_time: None,
        }
    }

    /// Forwards every event, after counting it, to `next` (your own logging or tracing
    /// instrumentation). Default: none.
    pub fn forward_to(mut self, next: impl Instrumentation) -> Self {
        self.forward = Some(Box::new(next));
        self
    }

    /// Forwards every event to `next` from now on, replacing any earlier one.
    pub(crate) fn set_forward(&mut self, next: Box<dyn Instrumentation>) {
        self.forward = Some(next);
    }

    /// Stops forwarding events (drops the instrumentation given to
    /// [`forward_to`](Self::forward_to)).
    pub(crate) fn stop_forwarding(&mut self) {
        self.forward = None;
    }

    /// Whether this instrumentation counts into `stats`.
    pub(crate) fn counts_into(&self, stats: &Arc<StatsCell>) -> bool {
        Arc::ptr_eq(&self.stats, stats)
    }

    /// The pool's shared statistics (and cache observers).
    pub(crate) fn stats_cell(&self) -> &Arc<StatsCell> {
        &self.stats
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

    fn on_event(&mut self, event: &InstrumentationEvent<'_>) {
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
                let id = StatementId {
                    connection: self.connection,
                    seq: self.next_seq,
                };
                self.next_seq += 1;
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    let lost = self.in_flight.remove(0);
                    self.writes.finish(&lost.effects, true, &self.stats.writes);
                }
                let effects = if self.stats.writes.any() {
                    crate::cache::sql::effects(&split_query(*query).0)
                } else {
                    Vec::new()
                };
                self.in_flight.push(InFlight {
                    id,
                    kind,
                    started: Instant::now(),
                    effects,
                });
                if kind == StatementKind::Unbudgeted
                    && (STRICT_PROCESS.load(Ordering::Relaxed)
                        || self.stats.strict.load(Ordering::Relaxed))
                    && !unbudgeted_allowed()
                {
                    // Before the statement runs: it never reaches the server. The message has
                    // the SQL shape, never bound values.
                    let (sql, _) = split_query(*query);
                    self.in_flight.pop();
                    panic!(
                        "diesel-budget strict mode: a statement ran without a budget on {id}: \
                         {}\nGive it a budget (`.budget(Budget::rows(n))`), or allow it by name: \
                         `testing::allow_unbudgeted(\"why\", || ..)`",
                        fingerprint(&sql)
                    );
                }
                if kind != StatementKind::Internal {
                    // One visit to the thread's state: nothing to do without a recording.
                    STATE.with(|s| {
                        let Ok(mut recs) = s.recordings.try_borrow_mut() else {
                            return;
                        };
                        let Some((innermost, outer)) = recs.split_last_mut() else {
                            return;
                        };
                        let budgeted = kind == StatementKind::Budgeted;
                        let location = if budgeted { s.site.get() } else { None };
                        let hinted = if budgeted {
                            s.hint.try_borrow_mut().ok().and_then(|mut h| h.take())
                        } else {
                            None
                        };
                        let (sql, binds) = hinted.unwrap_or_else(|| split_query(*query));
                        let statement = Statement {
                            id,
                            sql,
                            binds,
                            kind,
                            budget,
                            rows: None,
                            rows_delivered: None,
                            bytes: None,
                            elapsed: Duration::ZERO,
                            failed: false,
                            location,
                        };
                        // A copy for each outer recording, the statement itself for the
                        // innermost.
                        outer.iter_mut().for_each(|rec| rec.push(statement.clone()));
                        innermost.push(statement);
                    });
                }
            }
            InstrumentationEvent::FinishQuery { error, .. } => {
                let Some(InFlight {
                    id,
                    kind,
                    started,
                    effects,
                }) = self.in_flight.pop()
                else {
                    return;
                };
                if !effects.is_empty() {
                    self.writes
                        .finish(&effects, error.is_some(), &self.stats.writes);
                }
                let elapsed = started.elapsed();
                let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                self.stats.nanos.fetch_add(nanos, Ordering::Relaxed);
                let failed = error.is_some();
                if failed {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                if kind != StatementKind::Internal {
                    with_statement(id, |st| {
                        st.elapsed = elapsed;
                        st.failed = failed;
                    });
                }
            }
            _ => {}
        }
    }
}

impl Instrumentation for BudgetInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.on_event(&event);
        if let Some(next) = self.forward.as_mut() {
            next.on_connection_event(event);
        }
    }
}

/// What a connection's instrumentation slot holds, as far as recording is concerned.
pub(crate) enum Slot {
    /// Ours.
    Ours,
    /// Nothing (Diesel's no-op, or the no-op a recording left behind).
    Empty,
    /// Someone else's.
    Foreign,
}

/// The no-op a recording puts back on a connection that had no instrumentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vacant;

impl Instrumentation for Vacant {
    fn on_connection_event(&mut self, _: InstrumentationEvent<'_>) {}
}

/// Classifies a connection's instrumentation.
pub(crate) fn slot(instrumentation: &mut dyn Instrumentation) -> Slot {
    if instrumentation.is::<BudgetInstrumentation>() {
        return Slot::Ours;
    }
    let any: &dyn Any = instrumentation;
    let nothing = {
        let none = diesel::connection::DynInstrumentation::none();
        let none: &dyn Instrumentation = &*none;
        let none: &dyn Any = none;
        none.type_id()
    };
    if any.type_id() == nothing || any.type_id() == TypeId::of::<Vacant>() {
        Slot::Empty
    } else {
        Slot::Foreign
    }
}

/// `query`'s bind values alone through Diesel's `debug_query`: a wrapper whose SQL is empty
/// (`to_sql` writes nothing), so only the binds are formatted.
struct BindsOnly<'a, Q>(&'a Q);

impl<DB: diesel::backend::Backend, Q: diesel::query_builder::QueryFragment<DB>>
    diesel::query_builder::QueryFragment<DB> for BindsOnly<'_, Q>
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn to_sql(&self, _: &mut DB::QueryBuilder, _: &DB) -> diesel::QueryResult<()> {
        Ok(())
    }
}

/// Before the executor runs `query` while a recording is open on this thread: hands the
/// instrumentation the statement's SQL and binds, so it does not render the SQL again. The SQL
/// of a statically identified query (its type fixes its SQL: Diesel's statement cache relies on
/// the same) is rendered once per thread; other queries are rendered here. Nothing happens
/// without a recording.
pub(crate) fn hint_statement<DB, Q>(query: &Q)
where
    DB: crate::backend::BudgetBackend + 'static,
    Q: diesel::query_builder::QueryFragment<DB> + diesel::query_builder::QueryId,
{
    // One visit to the thread's state.
    STATE.with(|s| {
        if !s.recordings.try_borrow().is_ok_and(|r| !r.is_empty()) {
            return;
        }
        let render = || -> Option<String> {
            let mut out = <DB::QueryBuilder as Default>::default();
            query.to_sql(&mut out, &DB::default()).ok()?;
            Some(diesel::query_builder::QueryBuilder::finish(out))
        };
        let sql = match Q::query_id() {
            Some(id) => {
                let key = (id, TypeId::of::<DB>());
                let cached = s
                    .static_sql
                    .try_borrow()
                    .ok()
                    .and_then(|cache| Some(cache.as_ref()?.get(&key)?.to_string()));
                match cached {
                    Some(sql) => Some(sql),
                    None => render().inspect(|sql| {
                        if let Ok(mut cache) = s.static_sql.try_borrow_mut() {
                            cache
                                .get_or_insert_with(StaticSql::default)
                                .insert(key, Arc::from(sql.as_str()));
                        }
                    }),
                }
            }
            None => render(),
        };
        let Some(sql) = sql else { return };
        // Diesel writes ` -- binds: [b1, b2]` (the SQL part is empty): split as it is
        // written, without the text in between.
        let mut binds = BindSplitter::default();
        if fmt::write(
            &mut binds,
            format_args!("{}", diesel::debug_query::<DB, _>(&BindsOnly(query))),
        )
        .is_err()
        {
            return;
        }
        if let Ok(mut hint) = s.hint.try_borrow_mut() {
            *hint = Some((sql, binds.finish()));
        }
    });
}

/// Receives Diesel's ` -- binds: [<b1>, <b2>]` and keeps each bind's `Debug` form: the list
/// split at its top-level commas while it is written (also used by [`split_query`]).
#[derive(Default)]
struct BindSplitter {
    items: Vec<String>,
    current: String,
    /// Inside the outer brackets.
    open: bool,
    /// Past them.
    closed: bool,
    depth: usize,
    in_str: bool,
    escaped: bool,
}

impl BindSplitter {
    /// Adds `piece` to the bind being written (a value written in one piece, the usual case,
    /// is copied once, at its size).
    fn keep(&mut self, piece: &str) {
        if piece.is_empty() {
        } else if self.current.is_empty() {
            self.current = piece.to_owned();
        } else {
            self.current.push_str(piece);
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.items.push(std::mem::take(&mut self.current));
        }
        self.items
    }
}

impl fmt::Write for BindSplitter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        if self.closed {
            return Ok(());
        }
        if !self.open {
            // Everything up to the list's `[`.
            match rest.find('[') {
                Some(at) => {
                    self.open = true;
                    rest = &rest[at + 1..];
                }
                None => return Ok(()),
            }
        }
        // Bytes, not chars: every delimiter is ASCII, so each cut is a char boundary.
        let bytes = rest.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if self.in_str {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'[' | b'(' | b'{' => self.depth += 1,
                b']' if self.depth == 0 => {
                    // The end of the list.
                    self.keep(&rest[start..i]);
                    self.closed = true;
                    return Ok(());
                }
                b']' | b')' | b'}' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 0 => {
                    self.keep(&rest[start..i]);
                    let item = std::mem::take(&mut self.current);
                    if self.items.capacity() == 0 {
                        self.items.reserve_exact(4);
                    }
                    self.items.push(item);
                    start = i + 1;
                }
                b' ' if self.depth == 0 && self.current.is_empty() && start == i => {
                    // The space after a separating comma.
                    start = i + 1;
                }
                _ => {}
            }
        }
        self.keep(&rest[start..]);
        Ok(())
    }
}

/// Drops a hint no statement took (the executor's statement failed before it started).
pub(crate) fn clear_hint() {
    STATE.with(|s| {
        if let Ok(mut hint) = s.hint.try_borrow_mut() {
            hint.take();
        }
    });
}

/// Splits a query as Diesel's instrumentation shows it into the SQL (with placeholders) and the
/// bound values (each in its `Debug` form).
///
/// Diesel's `Display` form of a statement is `<sql> -- binds: [<b1>, <b2>]`, and of raw SQL text
/// (`batch_execute`) the text alone. The SQL ends at the first ` -- binds: [` (bound values come
/// after the SQL, so no value can move it; only SQL text that itself holds that comment would cut
/// the SQL short, never put a value in it); the bind list is split at its top-level commas.
/// (`Display` rather than `Debug`: the SQL is neither escaped nor unescaped, which made a
/// recording cost a third more per point read on SQLite.)
pub(crate) fn split_query(query: &dyn DebugQuery) -> (String, Vec<String>) {
    const MARK: &str = " -- binds: [";
    let mut text = query.to_string();
    if let Some(at) = text.find(MARK) {
        let mut binds = BindSplitter::default();
        // The splitter keeps what it is given: writing to it cannot fail.
        let _ = fmt::Write::write_str(&mut binds, &text[at..]);
        if binds.closed && text.ends_with(']') {
            text.truncate(at);
            return (text, binds.finish());
        }
    }
    (text, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inside of a `Debug` list split as [`split_query`] splits a bind list.
    fn split_list(list: &str) -> Vec<String> {
        let mut splitter = BindSplitter::default();
        fmt::Write::write_str(&mut splitter, &format!(" -- binds: [{list}]")).expect("write");
        assert!(splitter.closed, "the list was not closed: {list}");
        splitter.finish()
    }

    #[test]
    fn lists_split_at_top_level_commas() {
        let items: Vec<String> = vec![
            format!("{:?}", "a, \"b\"], c"),
            "6".into(),
            format!("{:?}", Some((1, [2, 3]))),
            format!("{:?}", vec![1u8, 2]),
        ];
        // Diesel's list: each bind's `Debug` form, joined by ", ".
        let joined = items.join(", ");
        assert_eq!(split_list(&joined), items);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn binds_split_while_written_as_the_list_splits() {
        use std::fmt::Write as _;
        let values = vec![
            format!("{:?}", "a, \"b\"], c ) ("),
            format!("{:?}", Some((1, [2, 3]))),
            format!("{:?}", vec![1u8, 2]),
            "-7".to_owned(),
            format!("{:?}", " "),
        ];
        let text = format!(" -- binds: [{}]", values.join(", "));
        assert_eq!(split_list(&text[12..text.len() - 1]), values);
        let mut whole = BindSplitter::default();
        whole.write_str(&text).expect("write");
        assert_eq!(whole.finish(), values);
        // Written in pieces of every size, as a formatter may.
        for size in 1..8 {
            let mut pieces = BindSplitter::default();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(size) {
                pieces
                    .write_str(&piece.iter().collect::<String>())
                    .expect("write");
            }
            pieces.write_str(" [after]").expect("write");
            assert_eq!(pieces.finish(), values, "pieces of {size}");
        }
        let mut empty = BindSplitter::default();
        empty.write_str(" -- binds: []").expect("write");
        assert!(empty.finish().is_empty());
    }

    #[test]
    fn a_query_splits_into_placeholders_and_binds() {
        use diesel::prelude::*;
        diesel::table! {
            people (id) {
                id -> Integer,
                email -> Text,
            }
        }
        let email = "alice@example.com\", ] } -- binds: [1]".to_owned();
        let q = people::table
            .filter(people::email.eq(&email))
            .filter(people::id.gt(7))
            .limit(3);
        // Whichever backend this build has (its placeholders are `?` or `$n`).
        let debug = diesel::debug_query::<crate::backend::TestBackend, _>(&q);
        let (sql, binds) = split_query(&debug);
        assert!(!sql.contains("alice"), "{sql}");
        assert!(
            sql.contains("`email` = ?) AND") || sql.contains("\"email\" = $1) AND"),
            "{sql}"
        );
        assert!(
            sql.ends_with("LIMIT ?") || sql.ends_with("LIMIT $3"),
            "{sql}"
        );
        assert_eq!(binds, [format!("{email:?}"), "7".into(), "3".into()]);

        let raw = diesel::connection::StrQueryHelper::new("SELECT \"x\"\n");
        assert_eq!(split_query(&raw), ("SELECT \"x\"\n".to_owned(), Vec::new()));
    }
}
