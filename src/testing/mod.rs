//! Budgets in tests: record every statement a code path runs and hold it to a budget.
//!
//! [`record`] runs a closure and returns what it did as a [`Ledger`]: each statement with its
//! identity (connection and sequence number), kind (budgeted, unbudgeted, transaction control),
//! SQL with placeholders and its bound values apart, rows received from the server and rows
//! delivered to the caller, bytes and time. [`Ledger::assert`] checks it and panics with the
//! whole ledger when a check fails, like `assert!`.
//!
//! A recording sees the statements run **on its own thread**, on every instrumented connection
//! (pooled ones, and plain ones given to [`record`]). Work handed to other threads (a thread pool,
//! `std::thread::scope`) is not in the ledger: record inside that thread, or check
//! [`crate::Db::stats`], which counts every thread.
//!
//! # Budgets in CI
//! - [`Ledger::check`]: the checks of [`Ledger::assert`] returning a [`CheckError`] (query
//!   shape, call site of the executor entry point, observed vs allowed) instead of panicking;
//!   [`Ledger::shapes`] and [`Ledger::repeated_shapes`] group statements by [`fingerprint`].
//! - [`scaling`]: N+1 detection by running a code path at several data scales.
//! - `lockfile` (feature `ci`): committed budget files under `tests/budgets/`, compared on
//!   every run; the `diesel-budget check` command (feature `cli`) prints the differences.
//! - `explain` (feature `ci`): full scans, indexes and estimates from each
//!   backend's `EXPLAIN`; `assert_index_usable` asks whether an index can serve.
//! - [`strict`], [`crate::Db::set_strict`], `DIESEL_BUDGET_STRICT=1`: statements without a budget
//!   fail the test that ran them, unless [`allow_unbudgeted`] names them.
//!
//! # Example
//! ```
//! # include!("../../tests/doc_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, mut conn) = demo_db(100)?;
//! use diesel::prelude::*;
//! use diesel_budget::prelude::*;
//! use diesel_budget::demo::{items, Item};
//! use diesel_budget::testing;
//!
//! let (rows, ledger) = testing::record(&mut conn, |conn| {
//!     items::table
//!         .filter(items::category.eq(1))
//!         .budget(Budget::rows(20))
//!         .load::<Item>(conn)
//! });
//! assert_eq!(rows?.len(), 10);
//! ledger
//!     .assert()
//!     .round_trips_at_most(1)
//!     .rows_at_most(10)
//!     .no_unbudgeted_queries();
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use diesel::Connection;

use crate::exec::Executor;
pub use crate::instrument::{fingerprint, Statement, StatementId, StatementKind};
use crate::instrument::{pop_recording, push_recording, slot, BudgetInstrumentation, Slot, Vacant};

mod checks;
#[cfg(feature = "ci")]
pub mod explain;
#[cfg(feature = "ci")]
pub mod lockfile;
mod scaling;
mod strict;

pub use checks::{CheckError, LedgerAssert, LedgerCheck, Shape};
#[cfg(feature = "ci")]
pub use explain::{
    assert_index_usable, assert_no_full_scan, check_index_usable, check_no_full_scan, explain,
    explain_sql, preflight, Access, ExplainConnection, ExplainOptions, Plan, PlanError, PlanNode,
    PreflightError, ScannedTable, SqlExplain,
};
#[cfg(feature = "ci")]
pub use lockfile::{
    assert_lockfile, check_lockfile, check_lockfile_in, Change, LockEntry, LockError, LockReport,
    Lockfile, Verdict,
};
pub use scaling::{scaling, Growth, Scaling, ScalingError};
pub use strict::{allow_unbudgeted, allow_unbudgeted_scope, strict, Allowed};

/// Runs `f` and records every statement it runs on this thread, on any instrumented
/// connection. Recordings nest: an inner one's statements are in the outer one too.
///
/// Pooled connections ([`crate::Conn`]) carry the instrumentation already. A plain Diesel
/// connection that has no instrumentation gets ours for the recording and none again after it;
/// one that has ours (installed with [`crate::instrument()`], possibly forwarding to yours) keeps
/// it.
///
/// # Panics
/// When `conn` carries an `Instrumentation` of someone else's: Diesel holds one per connection
/// and gives no way to take it out and put it back, so recording would destroy it. Install ours
/// in front of it instead: `conn.set_instrumentation(BudgetInstrumentation::default().forward_to(yours))`
/// on a plain connection, [`crate::Conn::set_instrumentation`] on a pooled one.
#[track_caller]
pub fn record<X, T, F>(conn: &mut X, f: F) -> (T, Ledger)
where
    X: Executor,
    F: FnOnce(&mut X) -> T,
{
    let c = conn.connection(crate::exec::sealed::TOKEN);
    let installed = match slot(c.instrumentation()) {
        Slot::Ours => false,
        Slot::Empty => {
            c.set_instrumentation(BudgetInstrumentation::default());
            true
        }
        Slot::Foreign => panic!(
            "testing::record: this connection carries an Instrumentation of its own, which \
             recording would replace for good; install diesel-budget's in front of it: \
             `conn.set_instrumentation(BudgetInstrumentation::default().forward_to(yours))`, \
             or `Conn::set_instrumentation(yours)` on a pooled connection"
        ),
    };
    /// Closes the recording if `f` panics, so later recordings stay balanced.
    struct Open(bool);
    impl Drop for Open {
        fn drop(&mut self) {
            if self.0 {
                pop_recording();
            }
        }
    }
    push_recording();
    let mut open = Open(true);
    let value = f(conn);
    open.0 = false;
    let statements = pop_recording();
    if installed {
        conn.connection(crate::exec::sealed::TOKEN)
            .set_instrumentation(Vacant);
    }
    (value, Ledger { statements })
}

/// The statements one recording saw, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    statements: Vec<Statement>,
}

impl Ledger {
    /// Every statement, in order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// Statements sent to the server, of every kind except transaction control.
    pub fn round_trips(&self) -> usize {
        self.statements
            .iter()
            .filter(|s| s.kind != StatementKind::Transaction)
            .count()
    }

    /// Rows budgeted statements received from the server ([`Statement::rows`]): with the probe
    /// row past each budget and rows read but not delivered.
    pub fn rows(&self) -> u64 {
        self.statements.iter().filter_map(|s| s.rows).sum()
    }

    /// Rows budgeted statements handed to their callers ([`Statement::rows_delivered`]). Less
    /// than [`rows`](Self::rows) when rows were read for nothing: a budget's probe row, a
    /// strict budget's overflow, a byte-limited batch's row read again by the next batch.
    pub fn rows_delivered(&self) -> u64 {
        self.statements
            .iter()
            .filter_map(|s| s.rows_delivered)
            .sum()
    }

    /// Bytes received by byte-metered statements.
    pub fn bytes(&self) -> u64 {
        self.statements.iter().filter_map(|s| s.bytes).sum()
    }

    /// Time spent in statements.
    pub fn elapsed(&self) -> Duration {
        self.statements.iter().map(|s| s.elapsed).sum()
    }

    /// Statements that ran without a budget.
    pub fn unbudgeted(&self) -> impl Iterator<Item = &Statement> {
        self.statements
            .iter()
            .filter(|s| s.kind == StatementKind::Unbudgeted)
    }

    /// Checks on this ledger that panic with the whole ledger when they fail.
    pub fn assert(&self) -> LedgerAssert<'_> {
        LedgerAssert::new(self)
    }

    /// The same checks as [`assert`](Self::assert), returning a [`CheckError`] instead of
    /// panicking (for harnesses that collect failures); its message is the panic's.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(30)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    /// use diesel_budget::testing;
    ///
    /// let (_, ledger) = testing::record(&mut conn, |conn| {
    ///     for id in 1..=3 {
    ///         items::table.find(id).budget(Budget::rows(1)).first::<Item>(conn)?;
    ///     }
    ///     Ok::<_, diesel_budget::Error>(())
    /// });
    /// let err = ledger.check().round_trips_at_most(1).unwrap_err();
    /// assert_eq!((err.observed, err.allowed), (3, 1));
    /// // The message names the query shape, where it was issued and how often.
    /// assert!(err.to_string().contains("3 round trips, at most 1 allowed"));
    /// assert!(err.to_string().contains("3x SELECT"));
    /// assert!(err.to_string().contains(file!()));
    /// # Ok(()) }
    /// ```
    pub fn check(&self) -> LedgerCheck<'_> {
        LedgerCheck::new(self)
    }

    /// The statements grouped by SQL shape ([`fingerprint`]) and call site, in order of first
    /// appearance, transaction control left out.
    pub fn shapes(&self) -> Vec<Shape> {
        checks::shapes(&self.statements)
    }

    /// Shapes run more than `times` times in this recording: the secondary signal of an N+1
    /// (the same query once per parent). [`scaling`] is the reliable one.
    pub fn repeated_shapes(&self, times: usize) -> Vec<Shape> {
        self.shapes()
            .into_iter()
            .filter(|s| s.count > times)
            .collect()
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} statements, {} round trips, {} rows received, {} delivered, {} bytes, {:?}",
            self.statements.len(),
            self.round_trips(),
            self.rows(),
            self.rows_delivered(),
            self.bytes(),
            self.elapsed()
        )?;
        for (i, s) in self.statements.iter().enumerate() {
            let budget = s
                .budget
                .map(|b| format!(" budget[{b}]"))
                .unwrap_or_default();
            let rows = s.rows.map(|r| format!(" rows={r}")).unwrap_or_default();
            let delivered = s
                .rows_delivered
                .map(|r| format!(" delivered={r}"))
                .unwrap_or_default();
            let bytes = s.bytes.map(|b| format!(" bytes={b}")).unwrap_or_default();
            let failed = if s.failed { " FAILED" } else { "" };
            let at = s.location.map(|l| format!(" at {l}")).unwrap_or_default();
            // The SQL with placeholders; bound values stay out of the text (safe to log).
            writeln!(
                f,
                "  #{i} {} {:?}{budget}{rows}{delivered}{bytes}{failed} {:?}{at}: {}",
                s.id, s.kind, s.elapsed, s.sql
            )?;
        }
        Ok(())
    }
}
