//! Budgets: how many rows (and bytes) one query may bring into memory.
//!
//! A [`Budget`] is a plain value with no I/O. Its two type parameters record, at compile time,
//! whether bytes are metered (`Rows` or [`Bytes`]) and what happens on overflow ([`Strict`]:
//! an error, or [`Truncate`]: the rows that fit plus a flag). The executor reads them to decide
//! which bounds a row type must meet (byte metering needs [`get_size2::GetSize`]) and what
//! `load` returns (`Vec<U>` or [`Truncated<U>`]).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use crate::error::Error;

/// Marker: only rows are metered. The row type needs no size information.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rows;

/// Marker: rows and bytes are metered. The row type must implement [`get_size2::GetSize`]
/// (one line: `#[derive(GetSize)]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes;

/// Marker: a result larger than the budget is an [`Error::BudgetExceeded`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strict;

/// Marker: a result larger than the budget is cut to the budget and flagged
/// ([`Truncated::is_truncated`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncate;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Rows {}
    impl Sealed for super::Bytes {}
    impl Sealed for super::Strict {}
    impl Sealed for super::Truncate {}
}

/// Whether bytes are metered: [`Rows`] (no) or [`Bytes`] (yes). Sealed.
pub trait Metering: sealed::Sealed {
    /// True for [`Bytes`].
    const METERS_BYTES: bool;
}

impl Metering for Rows {
    const METERS_BYTES: bool = false;
}

impl Metering for Bytes {
    const METERS_BYTES: bool = true;
}

/// How a row's size is measured: not at all ([`Rows`]) or through [`get_size2::GetSize`]
/// ([`Bytes`]). Sealed.
///
/// A byte budget on a row type without `GetSize` is a compile error that says so (the
/// `Bytes` impl is marked `do_not_recommend`, so rustc reports this trait's message rather than
/// a bare "`GetSize` is not implemented").
#[diagnostic::on_unimplemented(
    message = "a byte budget needs the row type `{U}` to implement `GetSize`",
    label = "`{U}` cannot say its size in bytes",
    note = "derive it on the row type: `#[derive(GetSize)]` (crate get-size2), or meter rows \
            only: remove `.bytes(..)` from the budget"
)]
pub trait Meter<U>: Metering {
    /// Bytes `row` holds in memory (stack size plus owned heap); 0 when bytes are not metered.
    fn size_of(row: &U) -> u64;
}

impl<U> Meter<U> for Rows {
    #[inline]
    fn size_of(_row: &U) -> u64 {
        0
    }
}

#[diagnostic::do_not_recommend]
impl<U: get_size2::GetSize> Meter<U> for Bytes {
    #[inline]
    fn size_of(row: &U) -> u64 {
        u64::try_from(row.get_size()).unwrap_or(u64::MAX)
    }
}

/// What `load` returns under an overflow policy. Sealed.
pub trait Overflow: sealed::Sealed {
    /// The result of `load` for rows of type `U`.
    type Output<U>;
    /// Whether excess rows are cut (true) or an error (false).
    const TRUNCATES: bool;
    /// Wraps the loaded rows; `truncated` is only ever true under [`Truncate`].
    fn finish<U>(rows: Vec<U>, truncated: bool) -> Self::Output<U>;
}

impl Overflow for Strict {
    type Output<U> = Vec<U>;
    const TRUNCATES: bool = false;
    #[inline]
    fn finish<U>(rows: Vec<U>, _truncated: bool) -> Vec<U> {
        rows
    }
}

impl Overflow for Truncate {
    type Output<U> = Truncated<U>;
    const TRUNCATES: bool = true;
    #[inline]
    fn finish<U>(rows: Vec<U>, truncated: bool) -> Truncated<U> {
        Truncated { rows, truncated }
    }
}

/// The rows a [`Truncate`] budget let through, and whether more existed.
///
/// Dereferences to `[U]`; [`Truncated::into_vec`] gives the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated<U> {
    rows: Vec<U>,
    truncated: bool,
}

impl<U> Truncated<U> {
    /// True when the query had more rows (or bytes) than the budget allowed and some were cut.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// The rows that fit.
    pub fn into_vec(self) -> Vec<U> {
        self.rows
    }
}

impl<U> Deref for Truncated<U> {
    type Target = [U];
    fn deref(&self) -> &[U] {
        &self.rows
    }
}

impl<U> IntoIterator for Truncated<U> {
    type Item = U;
    type IntoIter = std::vec::IntoIter<U>;
    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

/// The largest row budget: `LIMIT budget + 1` must fit the SQL `BIGINT` Diesel binds.
pub const MAX_ROWS: u64 = (i64::MAX - 1) as u64;

/// The longest time limit: `i32::MAX` milliseconds, PostgreSQL's largest `statement_timeout`
/// (about 24.8 days).
pub const MAX_TIME: Duration = Duration::from_millis(i32::MAX as u64);

/// A memory budget for one query: at most `rows` rows and, when metered, at most `bytes` bytes.
///
/// Build one with [`Budget::rows`], then optionally [`Budget::bytes`] and
/// [`Budget::truncate`]. A budget is checked when the query runs: zero rows, zero bytes or more
/// than [`MAX_ROWS`] rows give [`Error::InvalidBudget`] before anything is sent to the server.
/// [`Budget::try_rows`] checks up front instead.
///
/// # Example
/// ```
/// use diesel_budget::Budget;
///
/// let b = Budget::rows(500).bytes(2 << 20).truncate();
/// assert_eq!(b.spec().rows, 500);
/// assert_eq!(b.spec().bytes, Some(2 << 20));
/// assert!(b.spec().truncate);
/// assert!(Budget::try_rows(0).is_err());
/// ```
pub struct Budget<M = Rows, O = Strict> {
    rows: u64,
    bytes: u64,
    time: Option<Duration>,
    /// [`Budget::no_time_limit`]: no pool default either.
    untimed: bool,
    _marker: PhantomData<fn() -> (M, O)>,
}

// Manual impls: derives would demand `M: Clone` etc. of the markers.
impl<M, O> Clone for Budget<M, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M, O> Copy for Budget<M, O> {}
impl<M, O> PartialEq for Budget<M, O> {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
            && self.bytes == other.bytes
            && self.time == other.time
            && self.untimed == other.untimed
    }
}
impl<M, O> Eq for Budget<M, O> {}
impl<M, O> fmt::Debug for Budget<M, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .field("time", &self.time)
            .field("metering", &std::any::type_name::<M>())
            .field("overflow", &std::any::type_name::<O>())
            .finish()
    }
}

impl Budget {
    /// A budget of at most `rows` rows, errors on overflow, bytes not metered.
    pub const fn rows(rows: u64) -> Budget<Rows, Strict> {
        Budget {
            rows,
            bytes: 0,
            time: None,
            untimed: false,
            _marker: PhantomData,
        }
    }

    /// Like [`Budget::rows`], but rejects 0 and values over [`MAX_ROWS`] now.
    pub fn try_rows(rows: u64) -> Result<Budget<Rows, Strict>, Error> {
        let b = Budget::rows(rows);
        b.validate()?;
        Ok(b)
    }
}

impl<M, O> Budget<M, O> {
    /// Also meter bytes: the rows loaded may hold at most `bytes` bytes in memory, as measured
    /// by [`get_size2::GetSize`] (the row's own size plus what it owns on the heap).
    /// Default: bytes are not metered.
    pub const fn bytes(self, bytes: u64) -> Budget<Bytes, O> {
        Budget {
            rows: self.rows,
            bytes,
            time: self.time,
            untimed: self.untimed,
            _marker: PhantomData,
        }
    }

    /// On overflow, return the rows that fit with a flag instead of an error.
    /// Default: overflow is [`Error::BudgetExceeded`].
    pub const fn truncate(self) -> Budget<M, Truncate> {
        Budget {
            rows: self.rows,
            bytes: self.bytes,
            time: self.time,
            untimed: self.untimed,
            _marker: PhantomData,
        }
    }

    /// Also bound time: each statement the query runs may take at most `limit` on the server,
    /// which cancels it when the time is up; the query then fails with
    /// [`Error::BudgetExceeded`] whose `exceeded` is [`Exceeded::Time`], and the connection
    /// stays usable. Default: no time limit, or the pool's
    /// ([`DbBuilder::time_limit`](crate::DbBuilder::time_limit)).
    ///
    /// How each backend enforces it (see [`crate::timeout`]): PostgreSQL `SET LOCAL
    /// statement_timeout` in a transaction around the statement; MariaDB `SET STATEMENT
    /// max_statement_time=.. FOR <statement>`; SQLite checks the clock between rows. A time
    /// limit applies per statement: a keyset walk gives each batch the whole limit.
    ///
    /// Checked when the query runs: zero, or more than [`MAX_TIME`], is
    /// [`Error::InvalidBudget`]. Whole milliseconds (a fraction rounds up).
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// use diesel_budget::Budget;
    ///
    /// let b = Budget::rows(500).time(Duration::from_millis(250));
    /// assert_eq!(b.spec().time, Some(Duration::from_millis(250)));
    /// assert!(Budget::rows(1).time(Duration::ZERO).validate().is_err());
    /// ```
    pub const fn time(mut self, limit: Duration) -> Self {
        self.time = Some(limit);
        self.untimed = false;
        self
    }

    /// No time limit at all, not even the pool's default
    /// ([`DbBuilder::time_limit`](crate::DbBuilder::time_limit)): for the rare query that must
    /// run longer than the pool allows (a report, a maintenance read). On a pool whose
    /// connections carry the default as a session setting, the statement is sent with the
    /// limit lifted for it alone (PostgreSQL `SET LOCAL statement_timeout = 0` in a
    /// transaction, MariaDB `SET STATEMENT max_statement_time=0 FOR ..`), see
    /// [`crate::timeout`]. Default: the pool's limit, if any.
    ///
    /// # Example
    /// ```
    /// use std::time::Duration;
    /// use diesel_budget::Budget;
    ///
    /// let b = Budget::rows(10).time(Duration::from_secs(1)).no_time_limit();
    /// assert_eq!(b.spec().time, None);
    /// ```
    pub const fn no_time_limit(mut self) -> Self {
        self.time = None;
        self.untimed = true;
        self
    }

    /// This budget, with `default` as its time limit unless it has one of its own (or
    /// [`no_time_limit`](Self::no_time_limit)).
    pub(crate) fn or_time(mut self, default: Option<Duration>) -> Self {
        if self.time.is_none() && !self.untimed {
            self.time = default;
        }
        self
    }

    /// The row limit.
    pub const fn row_limit(&self) -> u64 {
        self.rows
    }
}

impl<M: Metering, O: Overflow> Budget<M, O> {
    /// The budget as plain values, for errors, ledgers and logs.
    pub fn spec(&self) -> BudgetSpec {
        BudgetSpec {
            rows: self.rows,
            bytes: M::METERS_BYTES.then_some(self.bytes),
            truncate: O::TRUNCATES,
            time: self.time,
        }
    }

    /// Checks the budget: at least one row, at most [`MAX_ROWS`], and at least one byte when
    /// bytes are metered.
    pub fn validate(&self) -> Result<(), Error> {
        let reason = if self.rows == 0 {
            "a row budget of zero admits nothing; use at least 1"
        } else if self.rows > MAX_ROWS {
            "a row budget must be below i64::MAX"
        } else if M::METERS_BYTES && self.bytes == 0 {
            "a byte budget of zero admits nothing; use at least 1"
        } else if self.time.is_some_and(|t| t.is_zero()) {
            "a time limit of zero admits nothing; use at least 1 ms"
        } else if self.time.is_some_and(|t| t > MAX_TIME) {
            "a time limit must be at most 2,147,483 s (PostgreSQL's statement_timeout range)"
        } else {
            return Ok(());
        };
        Err(Error::InvalidBudget {
            budget: self.spec(),
            reason,
        })
    }
}

/// A budget as plain values: what errors, ledgers and logs report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BudgetSpec {
    /// Most rows the query may load.
    pub rows: u64,
    /// Most bytes the loaded rows may hold, when metered.
    pub bytes: Option<u64>,
    /// Whether overflow truncates (true) or fails (false).
    pub truncate: bool,
    /// Longest time each statement may run on the server, when limited.
    pub time: Option<Duration>,
}

impl fmt::Display for BudgetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows", self.rows)?;
        if let Some(b) = self.bytes {
            write!(f, ", {b} bytes")?;
        }
        if self.truncate {
            write!(f, ", truncating")?;
        }
        if let Some(t) = self.time {
            write!(f, ", {} ms", t.as_millis())?;
        }
        Ok(())
    }
}

/// Running totals of one execution, checked against its budget as rows arrive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meterage {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// Which limit a result passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Exceeded {
    /// More rows than the budget.
    Rows,
    /// More bytes than the budget.
    Bytes,
    /// The statement ran longer than the budget's time limit and was cancelled.
    Time,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exceeded::Rows => "rows",
            Exceeded::Bytes => "bytes",
            Exceeded::Time => "time",
        })
    }
}

impl Meterage {
    /// Adds one row of `size` bytes; returns which limit it passes, if any.
    pub(crate) fn add(&mut self, size: u64, spec: &BudgetSpec) -> Option<Exceeded> {
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.rows > spec.rows {
            Some(Exceeded::Rows)
        } else if spec.bytes.is_some_and(|b| self.bytes > b) {
            Some(Exceeded::Bytes)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reflects_type_state() {
        let b = Budget::rows(3);
        assert_eq!(
            b.spec(),
            BudgetSpec {
                rows: 3,
                bytes: None,
                truncate: false,
                time: None,
            }
        );
        let b = Budget::rows(3).truncate().bytes(10);
        assert_eq!(b.spec().bytes, Some(10));
        assert!(b.spec().truncate);
    }

    #[test]
    fn zero_and_huge_budgets_are_invalid() {
        assert!(matches!(
            Budget::rows(0).validate(),
            Err(Error::InvalidBudget { .. })
        ));
        assert!(Budget::rows(MAX_ROWS).validate().is_ok());
        assert!(Budget::rows(MAX_ROWS + 1).validate().is_err());
        assert!(Budget::rows(1).bytes(0).validate().is_err());
        assert!(Budget::try_rows(1).is_ok());
    }

    #[test]
    fn meterage_stops_at_the_first_excess() {
        let spec = Budget::rows(2).bytes(100).spec();
        let mut m = Meterage::default();
        assert_eq!(m.add(40, &spec), None);
        assert_eq!(m.add(60, &spec), None);
        assert_eq!(m.add(1, &spec), Some(Exceeded::Rows));
        let mut m = Meterage::default();
        assert_eq!(m.add(60, &spec), None);
        assert_eq!(m.add(41, &spec), Some(Exceeded::Bytes));
    }
}
