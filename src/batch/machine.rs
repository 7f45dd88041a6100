//! The walk state machine: where the next batch starts, when the walk ends, the key-order
//! check, resume keys and row counts. It runs its statements through a [`Source`]: the
//! database ([`super::source::Database`]), or, in its unit tests, rows in memory.

use std::cmp::Ordering;
use std::fmt::Debug;
use std::marker::PhantomData;

use super::BatchMode;
use crate::budget::{BudgetSpec, Meter, Meterage};
use crate::error::{Error, Result};
use crate::exec::{Loaded, Pull};

/// A keyset batch as read: its rows, and the row after them (if any), read only for its key.
pub(crate) type Batch<U> = Loaded<(Vec<U>, Option<U>)>;

/// What a walk's statements read from. Implemented by [`super::source::Database`]; unit tests
/// implement it over rows in memory.
pub(crate) trait Source<U, V, M> {
    /// An open streamed statement.
    type Stream: Pull<U>;

    /// Whether streamed walks really stream here (PostgreSQL row-by-row, SQLite's cursor)
    /// rather than buffering whole results (MySQL): else [`BatchMode::Stream`] walks in
    /// keyset batches.
    fn can_stream(&self) -> bool;

    /// The key's column names, for [`Error::KeyOrder`].
    fn key_columns(&self) -> Vec<&'static str>;

    /// Once, before the first statement: refuses a query that cannot be walked (a LIMIT or an
    /// OFFSET of its own).
    fn check(&mut self) -> Result<()>;

    /// One keyset batch: the rows after `after` in key order, at most `limit` of them,
    /// metered under `spec`, and the row after them, if any (`LIMIT limit + 1`; under a byte
    /// budget, the row that did not fit).
    fn batch(&mut self, after: Option<V>, spec: BudgetSpec, limit: u64) -> Result<Batch<U>>;

    /// The end check's statement: the last row at or before `at` in key order, if any.
    fn probe(&mut self, at: V, spec: BudgetSpec) -> Result<Option<U>>;

    /// Opens the one statement of a streamed walk: the rows after `after` in key order.
    fn stream(&mut self, after: Option<V>, spec: BudgetSpec) -> Result<Self::Stream>;
}

/// The state of one walk over source `S` (its open stream: `T`), keys `V` read by `F` from rows
/// `U`, bytes metered with `M`.
pub(crate) struct Machine<S, T, V, U, F, M> {
    pub(super) source: S,
    /// The open statement of a streamed walk.
    stream: Option<T>,
    key_of: F,
    /// The key of the last row handed out (or the `after` key): where the next batch starts.
    pub(super) last: Option<V>,
    pub(super) spec: BudgetSpec,
    pub(super) mode: BatchMode,
    /// The LIMIT of the next keyset batch: the row budget, or, under a byte budget, the rows
    /// expected to fit (from the sizes seen so far).
    pub(super) limit: u64,
    /// The key of the row after the previous keyset batch: where the next batch should start.
    /// A next batch that is empty or starts past it runs the end check ([`Machine::check_end`]).
    expected: Option<V>,
    pub(super) rows_done: u64,
    started: bool,
    /// No statement is left to run: a short keyset batch was the last, or the stream ended.
    exhausted: bool,
    pub(super) done: bool,
    /// An error to report once the rows before it are handed out: found before the walk
    /// started (an invalid budget), or in the row after a keyset batch (a key out of order).
    deferred: Option<Error>,
    /// Rows of the current keyset batch not handed out yet (a walk one row at a time).
    pub(super) buffer: std::vec::IntoIter<U>,
    _meter: PhantomData<fn() -> M>,
}

impl<S, T, V, U, F, M> Machine<S, T, V, U, F, M> {
    /// A walk from the first row; `deferred`: an error for the first call to report.
    pub(crate) fn new(
        source: S,
        key_of: F,
        spec: BudgetSpec,
        meters_bytes: bool,
        deferred: Option<Error>,
    ) -> Self {
        Machine {
            source,
            stream: None,
            key_of,
            last: None,
            spec,
            mode: BatchMode::Keyset,
            limit: if meters_bytes {
                spec.rows.min(FIRST_BYTE_METERED_LIMIT)
            } else {
                spec.rows
            },
            expected: None,
            rows_done: 0,
            started: false,
            exhausted: false,
            done: false,
            deferred,
            buffer: Vec::new().into_iter(),
            _meter: PhantomData,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.stream = None;
    }

    /// Ends the walk on `e`; a failure after the start says where to resume. A key out of
    /// order is a mistake in the walk itself, not a failure to resume from.
    fn fail(&mut self, e: Error) -> Error
    where
        V: Debug,
    {
        self.finish();
        self.buffer = Vec::new().into_iter();
        self.deferred = None;
        match e {
            e @ (Error::InvalidArgument { .. }
            | Error::InvalidBudget { .. }
            | Error::KeyOrder { .. }) => e,
            e => Error::Interrupted {
                rows_done: self.rows_done,
                resume_after: self.last.as_ref().map(|v| format!("{v:?}")),
                source: Box::new(e),
            },
        }
    }
}

/// The first LIMIT of a byte-metered keyset walk: small, since nothing is known yet of the
/// rows' sizes; later batches are sized from what fitted.
const FIRST_BYTE_METERED_LIMIT: u64 = 100;

/// The LIMIT of the next keyset batch under `spec` after a statement that received `seen`: as
/// many rows as fit the byte budget at the average size seen (so each row crosses the wire
/// about once, growing back when rows shrink), never more than the row budget nor less than 1.
fn next_limit(spec: &BudgetSpec, seen: &Meterage) -> u64 {
    match spec.bytes {
        Some(bytes) if seen.rows > 0 && seen.bytes > 0 => {
            let fit = u128::from(bytes) * u128::from(seen.rows) / u128::from(seen.bytes);
            u64::try_from(fit).unwrap_or(u64::MAX).min(spec.rows).max(1)
        }
        _ => spec.rows,
    }
}

/// The error for `next` not strictly after `previous` in the walk by the key `columns`.
fn key_order<V: Debug>(
    columns: Vec<&'static str>,
    previous: &V,
    next: &V,
    rows_done: u64,
) -> Error {
    Error::KeyOrder {
        key: columns,
        previous: format!("{previous:?}"),
        next: format!("{next:?}"),
        rows_done,
    }
}

/// Whether `next` is strictly after `previous` (Rust's order of the key type decides).
#[inline]
fn strictly_after<V: PartialOrd>(previous: &V, next: &V) -> bool {
    previous.partial_cmp(next) == Some(Ordering::Less)
}

impl<S, T, V, U, F, M> Machine<S, T, V, U, F, M>
where
    S: Source<U, V, M, Stream = T>,
    T: Pull<U>,
    V: Clone + Debug + PartialOrd,
    F: FnMut(&U) -> V,
    M: Meter<U>,
{
    /// The next batch of the walk ([`super::Batches`]); `None` once it ended. Ends after the
    /// first error.
    pub(crate) fn next_batch(&mut self) -> Option<Result<Vec<U>>> {
        if let Some(e) = self.deferred.take() {
            return Some(Err(self.fail(e)));
        }
        if self.done {
            return None;
        }
        let result = self.start().and_then(|()| {
            let rows = if self.streams() {
                self.next_streamed()?
            } else {
                self.next_keyset()?
            };
            match rows {
                Some(rows) => self.accept(&rows).map(|()| Some(rows)),
                None => Ok(None),
            }
        });
        match result {
            Ok(Some(rows)) => {
                self.rows_done += rows.len() as u64;
                Some(Ok(rows))
            }
            Ok(None) => {
                self.finish();
                None
            }
            Err(e) => Some(Err(self.fail(e))),
        }
    }

    /// The next row of the walk ([`super::RowsOf`]); `None` once it ended. Ends after the
    /// first error.
    pub(crate) fn next_row(&mut self) -> Option<Result<U>> {
        if self.buffer.len() == 0 {
            if let Some(e) = self.deferred.take() {
                return Some(Err(self.fail(e)));
            }
        }
        if self.done && self.buffer.len() == 0 {
            return None;
        }
        match self.row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.finish();
                None
            }
            Err(e) => Some(Err(self.fail(e))),
        }
    }

    /// Whether rows come from one streamed query rather than keyset batches. Under a time
    /// limit, never: the limit is per statement, so each batch gets it ([`crate::timeout`]).
    fn streams(&self) -> bool {
        self.mode == BatchMode::Stream && self.source.can_stream() && self.spec.time.is_none()
    }

    /// Once, before the first batch: a query with its own LIMIT cannot be walked.
    fn start(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        self.source.check()
    }

    /// Checks that the keys of `rows` are strictly increasing and strictly after the last key,
    /// then makes the last of them the last key. On a violation nothing changes.
    fn accept(&mut self, rows: &[U]) -> Result<()> {
        let mut last: Option<V> = None;
        for row in rows {
            let key = (self.key_of)(row);
            if let Some(previous) = last.as_ref().or(self.last.as_ref()) {
                if !strictly_after(previous, &key) {
                    let columns = self.source.key_columns();
                    return Err(key_order(columns, previous, &key, self.rows_done));
                }
            }
            last = Some(key);
        }
        if last.is_some() {
            self.last = last;
        }
        Ok(())
    }

    /// [`Machine::accept`] for one row handed out on its own.
    fn accept_one(&mut self, row: &U) -> Result<()> {
        let key = (self.key_of)(row);
        if let Some(previous) = self.last.as_ref() {
            if !strictly_after(previous, &key) {
                let columns = self.source.key_columns();
                return Err(key_order(columns, previous, &key, self.rows_done));
            }
        }
        self.last = Some(key);
        self.rows_done += 1;
        Ok(())
    }

    /// A keyset batch that is empty, or starts past the row read after the previous batch, may
    /// have been sent past rows by `key_of` (a composite read in the wrong order, a value that
    /// grows faster than the key): the last row at or before the last key, in the database's
    /// order, must not read as after it. One `LIMIT 1` statement, only then (rows deleted
    /// meanwhile are the other cause).
    fn check_end(&mut self) -> Result<()> {
        let Some(last) = self.last.clone() else {
            return Ok(());
        };
        // One row, however large, and rows only: this is a check, not a delivery.
        let spec = BudgetSpec {
            bytes: None,
            ..self.spec
        };
        let Some(row) = self.source.probe(last, spec)? else {
            return Ok(());
        };
        let Some(last) = self.last.as_ref() else {
            return Ok(());
        };
        let key = (self.key_of)(&row);
        if strictly_after(last, &key) || last.partial_cmp(&key).is_none() {
            let columns = self.source.key_columns();
            return Err(key_order(columns, last, &key, self.rows_done));
        }
        Ok(())
    }

    fn next_keyset(&mut self) -> Result<Option<Vec<U>>> {
        if self.exhausted {
            return Ok(None);
        }
        let limit = self.limit;
        let loaded = self.source.batch(self.last.clone(), self.spec, limit)?;
        if M::METERS_BYTES {
            self.limit = next_limit(&self.spec, &loaded.meter);
        }
        // Only when no row fitted: a single row larger than the byte budget.
        if let Some(e) = loaded.exceeded {
            return Err(loaded.into_error(self.spec, e));
        }
        let (rows, next) = loaded.rows;
        if let Some(expected) = self.expected.take() {
            let past = rows
                .first()
                .is_none_or(|first| strictly_after(&expected, &(self.key_of)(first)));
            if past {
                self.check_end()?;
            }
        }
        let (Some(last), Some(next)) = (rows.last(), next) else {
            // No row after this batch: it is the last one.
            self.exhausted = true;
            return Ok((!rows.is_empty()).then_some(rows));
        };
        // The row after the batch is the next batch's first: its key must be after the
        // batch's last, else `key > last` would skip it (equal keys across the boundary).
        // Reported once the batch is handed out, as a stream reports it.
        let last = (self.key_of)(last);
        let next = (self.key_of)(&next);
        if strictly_after(&last, &next) {
            self.expected = Some(next);
        } else {
            let columns = self.source.key_columns();
            let done = self.rows_done + rows.len() as u64;
            self.deferred = Some(key_order(columns, &last, &next, done));
            self.exhausted = true;
        }
        Ok(Some(rows))
    }

    /// The open stream, opened on first use; `None` once it ended.
    fn stream(&mut self) -> Result<Option<&mut T>> {
        if self.stream.is_none() {
            if self.exhausted {
                return Ok(None);
            }
            self.exhausted = true;
            let stream = self.source.stream(self.last.clone(), self.spec)?;
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut())
    }

    /// Closes the stream once its rows ended (its statement goes to the ledger then).
    fn close_ended_stream(&mut self) {
        if self.stream.as_ref().is_some_and(|s| s.ended()) {
            self.stream = None;
        }
    }

    /// The next batch of the stream: the rows that fit one batch's budget.
    fn next_streamed(&mut self) -> Result<Option<Vec<U>>> {
        let budget_rows = self.spec.rows;
        let Some(stream) = self.stream()? else {
            return Ok(None);
        };
        stream.new_window();
        let mut rows = Vec::new();
        while (rows.len() as u64) < budget_rows {
            let Some(row) = stream.next_fitting()? else {
                break;
            };
            rows.push(row);
        }
        if rows.is_empty() {
            // A single row larger than the byte budget.
            if let Some(exceeded) = stream.exceeded() {
                return Err(stream.over_budget(exceeded));
            }
        }
        self.close_ended_stream();
        Ok((!rows.is_empty()).then_some(rows))
    }

    /// One row of the walk: straight from the stream, or from the current keyset batch. Its key
    /// is checked and becomes the resume key as it is handed out.
    fn row(&mut self) -> Result<Option<U>> {
        let row = match self.buffer.next() {
            Some(row) => row,
            None => {
                self.start()?;
                if self.streams() {
                    let Some(stream) = self.stream()? else {
                        return Ok(None);
                    };
                    stream.new_window();
                    match stream.next_fitting()? {
                        Some(row) => row,
                        None => {
                            // A row larger than the byte budget.
                            if let Some(exceeded) = stream.exceeded() {
                                return Err(stream.over_budget(exceeded));
                            }
                            self.close_ended_stream();
                            return Ok(None);
                        }
                    }
                } else {
                    let Some(rows) = self.next_keyset()? else {
                        return Ok(None);
                    };
                    self.buffer = rows.into_iter();
                    let Some(row) = self.buffer.next() else {
                        return Ok(None);
                    };
                    row
                }
            }
        };
        self.accept_one(&row)?;
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::{next_limit, strictly_after};
    use crate::budget::{Budget, Meterage};

    #[test]
    fn byte_metered_limits_follow_what_fitted() {
        let spec = Budget::rows(100_000).bytes(1_000).spec();
        let seen = |rows, bytes| Meterage { rows, bytes };
        // 10 rows of 100 bytes fit: ask for 10 next, not 100,000.
        assert_eq!(next_limit(&spec, &seen(10, 1_000)), 10);
        // Cut at the 11th row (11 rows received, 1,100 bytes): still 10.
        assert_eq!(next_limit(&spec, &seen(11, 1_100)), 10);
        // Rows shrank to 10 bytes: grow back.
        assert_eq!(next_limit(&spec, &seen(10, 100)), 100);
        // Never past the row budget, never below one row.
        assert_eq!(next_limit(&spec, &seen(1_000, 1)), 100_000);
        assert_eq!(next_limit(&spec, &seen(1, 1 << 40)), 1);
        // Nothing seen, or no byte budget: the row budget.
        assert_eq!(next_limit(&spec, &seen(0, 0)), 100_000);
        assert_eq!(next_limit(&Budget::rows(7).spec(), &seen(3, 300)), 7);
    }

    #[test]
    fn only_a_strictly_greater_key_is_after() {
        assert!(strictly_after(&1, &2));
        assert!(!strictly_after(&2, &2));
        assert!(!strictly_after(&3, &2));
        assert!(strictly_after(&(1, 9), &(2, 0)));
        assert!(!strictly_after(&f64::NAN, &1.0));
    }
}
