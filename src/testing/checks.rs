//! Ledger checks: each returns a [`CheckError`] (for harnesses) or panics with the same message
//! ([`LedgerAssert`]). The message names the query shapes behind the failure, where each was
//! issued and how much it did; bound values never appear in it.

use std::fmt;
use std::panic::Location;

use super::Ledger;
use crate::budget::BudgetSpec;
use crate::instrument::{fingerprint, Statement, StatementKind};

/// The statements of a ledger that share one SQL shape ([`fingerprint`](super::fingerprint))
/// and one call site, with what they did together.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shape {
    /// The SQL shape: placeholders only, never bound values.
    pub fingerprint: String,
    /// Where the executor was called (budgeted statements); `None` when unknown.
    pub location: Option<&'static Location<'static>>,
    /// How the statements were classified (of the first one).
    pub kind: StatementKind,
    /// How many statements: round trips.
    pub count: usize,
    /// Rows received from the server, all statements together.
    pub rows: u64,
    /// Rows handed to the callers, all statements together.
    pub rows_delivered: u64,
    /// The most rows one statement received.
    pub max_rows: u64,
    /// Bytes received (byte-metered statements), all statements together.
    pub bytes: u64,
    /// The most bytes one statement received.
    pub max_bytes: u64,
    /// The budget declared (of the first budgeted statement).
    pub budget: Option<BudgetSpec>,
}

impl Shape {
    /// The call site as `file:line:column`, or `unknown call site`.
    pub fn call_site(&self) -> String {
        match self.location {
            Some(l) => l.to_string(),
            None => "unknown call site".to_owned(),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x {} at {}: {} rows received (at most {} by one), {} bytes",
            self.count,
            self.fingerprint,
            self.call_site(),
            self.rows,
            self.max_rows,
            self.bytes
        )?;
        if let Some(b) = self.budget {
            write!(f, ", budget [{b}]")?;
        }
        Ok(())
    }
}

/// Groups `statements` by shape and call site, in order of first appearance, transaction
/// control left out.
pub(super) fn shapes(statements: &[Statement]) -> Vec<Shape> {
    let mut out: Vec<Shape> = Vec::new();
    for st in statements
        .iter()
        .filter(|s| s.kind != StatementKind::Transaction)
    {
        let fp = fingerprint(&st.sql);
        let rows = st.rows.unwrap_or(0);
        let bytes = st.bytes.unwrap_or(0);
        match out
            .iter_mut()
            .find(|s| s.fingerprint == fp && s.location == st.location)
        {
            Some(s) => {
                s.count += 1;
                s.rows += rows;
                s.rows_delivered += st.rows_delivered.unwrap_or(0);
                s.max_rows = s.max_rows.max(rows);
                s.bytes += bytes;
                s.max_bytes = s.max_bytes.max(bytes);
                s.budget = s.budget.or(st.budget);
            }
            None => out.push(Shape {
                fingerprint: fp,
                location: st.location,
                kind: st.kind,
                count: 1,
                rows,
                rows_delivered: st.rows_delivered.unwrap_or(0),
                max_rows: rows,
                bytes,
                max_bytes: bytes,
                budget: st.budget,
            }),
        }
    }
    out
}

/// A ledger check that failed: what was checked, observed against allowed, and the query
/// shapes behind it (most to blame first). Its `Display` is the message
/// [`LedgerAssert`] panics with; it holds SQL shapes with placeholders, never bound values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckError {
    /// The check, e.g. `round trips`, `rows`, `bytes`, `unbudgeted statements`, `repeats of
    /// one shape`.
    pub check: &'static str,
    /// What the ledger shows.
    pub observed: u64,
    /// What the check allows.
    pub allowed: u64,
    /// The shapes that make up [`observed`](Self::observed), most to blame first.
    pub shapes: Vec<Shape>,
    /// The whole ledger, rendered.
    pub ledger: String,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "budget check failed: {} {}, at most {} allowed",
            self.observed, self.check, self.allowed
        )?;
        if !self.shapes.is_empty() {
            writeln!(f, "by query shape and call site:")?;
            for s in &self.shapes {
                writeln!(f, "  {s}")?;
            }
        }
        write!(f, "{}", self.ledger)
    }
}

impl std::error::Error for CheckError {}

/// Checks on a [`Ledger`] that return a [`CheckError`]; chain them with `?`.
/// Built by [`Ledger::check`].
#[derive(Debug, Clone, Copy)]
pub struct LedgerCheck<'a> {
    ledger: &'a Ledger,
}

impl<'a> LedgerCheck<'a> {
    pub(super) fn new(ledger: &'a Ledger) -> Self {
        LedgerCheck { ledger }
    }

    fn fail(
        self,
        check: &'static str,
        observed: u64,
        allowed: u64,
        key: impl Fn(&Shape) -> u64,
        keep: impl Fn(&Shape) -> bool,
    ) -> Result<Self, CheckError> {
        if observed <= allowed {
            return Ok(self);
        }
        let mut shapes: Vec<Shape> = self.ledger.shapes().into_iter().filter(keep).collect();
        // Stable: equal shapes keep their order of appearance.
        shapes.sort_by_key(|s| std::cmp::Reverse(key(s)));
        Err(CheckError {
            check,
            observed,
            allowed,
            shapes,
            ledger: self.ledger.to_string(),
        })
    }

    /// At most `n` statements were sent (transaction control not counted).
    pub fn round_trips_at_most(self, n: usize) -> Result<Self, CheckError> {
        let got = self.ledger.round_trips() as u64;
        self.fail("round trips", got, n as u64, |s| s.count as u64, |_| true)
    }

    /// At most `n` rows were received from the server ([`Ledger::rows`]).
    pub fn rows_at_most(self, n: u64) -> Result<Self, CheckError> {
        let got = self.ledger.rows();
        self.fail("rows", got, n, |s| s.rows, |s| s.rows > 0)
    }

    /// At most `n` bytes were received (byte-metered statements).
    pub fn bytes_at_most(self, n: u64) -> Result<Self, CheckError> {
        let got = self.ledger.bytes();
        self.fail("bytes", got, n, |s| s.bytes, |s| s.bytes > 0)
    }

    /// Every statement ran under a budget (or was transaction control).
    pub fn no_unbudgeted_queries(self) -> Result<Self, CheckError> {
        let got = self.ledger.unbudgeted().count() as u64;
        self.fail(
            "statements ran without a budget",
            got,
            0,
            |s| s.count as u64,
            |s| s.kind == StatementKind::Unbudgeted,
        )
    }

    /// No SQL shape ran more than `n` times from one call site: the secondary N+1 signal
    /// ([`Ledger::repeated_shapes`]).
    pub fn each_shape_at_most(self, n: usize) -> Result<Self, CheckError> {
        let got = self
            .ledger
            .shapes()
            .iter()
            .map(|s| s.count)
            .max()
            .unwrap_or(0) as u64;
        self.fail(
            "runs of one query shape",
            got,
            n as u64,
            |s| s.count as u64,
            |s| s.count > n,
        )
    }
}

/// Chained checks on a [`Ledger`]; each panics with the message of [`CheckError`] when it
/// fails. Built by [`Ledger::assert`].
#[derive(Debug, Clone, Copy)]
pub struct LedgerAssert<'a> {
    check: LedgerCheck<'a>,
}

impl<'a> LedgerAssert<'a> {
    pub(super) fn new(ledger: &'a Ledger) -> Self {
        LedgerAssert {
            check: LedgerCheck::new(ledger),
        }
    }

    #[track_caller]
    fn or_panic(result: Result<LedgerCheck<'a>, CheckError>) -> Self {
        match result {
            Ok(check) => LedgerAssert { check },
            Err(e) => panic!("{e}"),
        }
    }

    /// At most `n` statements were sent (transaction control not counted).
    #[track_caller]
    pub fn round_trips_at_most(self, n: usize) -> Self {
        Self::or_panic(self.check.round_trips_at_most(n))
    }

    /// At most `n` rows were received from the server ([`Ledger::rows`]).
    #[track_caller]
    pub fn rows_at_most(self, n: u64) -> Self {
        Self::or_panic(self.check.rows_at_most(n))
    }

    /// At most `n` bytes were received (byte-metered statements).
    #[track_caller]
    pub fn bytes_at_most(self, n: u64) -> Self {
        Self::or_panic(self.check.bytes_at_most(n))
    }

    /// Every statement ran under a budget (or was transaction control).
    #[track_caller]
    pub fn no_unbudgeted_queries(self) -> Self {
        Self::or_panic(self.check.no_unbudgeted_queries())
    }

    /// No SQL shape ran more than `n` times from one call site.
    #[track_caller]
    pub fn each_shape_at_most(self, n: usize) -> Self {
        Self::or_panic(self.check.each_shape_at_most(n))
    }
}
