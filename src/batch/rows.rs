//! A walk one row at a time: [`RowsOf`], built by [`Batches::rows`] or
//! [`Budgeted::stream_by`](crate::Budgeted::stream_by).

use std::fmt::{self, Debug};

use crate::backend::BudgetConnection;
use crate::budget::Meter;
use crate::error::Result;
use crate::instrument::CallSite;
use crate::sql::keyset::Keyset;

use super::{Batches, Walk};

impl<'c, C, Q, K, V, U, F, M> Batches<'c, C, Q, K, V, U, F, M> {
    /// The same walk, one row at a time: `Result<U>`.
    ///
    /// In [`BatchMode::Stream`](super::BatchMode::Stream) on PostgreSQL and SQLite each row comes straight off the
    /// streamed query, with no batch vector in between, so the client holds one row (plus
    /// libpq's buffer) whatever the budget; a byte budget then bounds each row. Elsewhere rows
    /// are handed out of keyset batches of the budget's size. [`Budgeted::stream_by`](crate::Budgeted::stream_by) is the
    /// short form.
    pub fn rows(self) -> RowsOf<'c, C, Q, K, V, U, F, M> {
        RowsOf { batches: self }
    }
}

/// The rows of a walk one at a time; built by [`Batches::rows`] or [`Budgeted::stream_by`](crate::Budgeted::stream_by).
/// Ends after the first error, which is [`Error::Interrupted`](crate::Error::Interrupted) once rows were delivered.
#[must_use = "rows are loaded only when iterated"]
pub struct RowsOf<'c, C, Q, K, V, U, F, M> {
    /// The walk; the rows of its current keyset batch wait in its state machine.
    batches: Batches<'c, C, Q, K, V, U, F, M>,
}

impl<C, Q, K: Debug, V: Debug, U, F, M> Debug for RowsOf<'_, C, Q, K, V, U, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowsOf")
            .field("batches", &self.batches)
            .field("buffered", &self.batches.walk.buffer.len())
            .finish()
    }
}

impl<C, Q, K, V, U, F, M> RowsOf<'_, C, Q, K, V, U, F, M> {
    /// Starts right after `key` (exclusive), e.g. the [`RowsOf::resume_key`] of a walk that
    /// stopped or failed. Default: from the first row. Call before iterating.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(1_000)?;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let mut rows = items::table
    ///     .budget(Budget::rows(100))
    ///     .stream_by(items::id, |i: &Item| i.id, &mut conn);
    /// let first: Vec<i32> = (&mut rows).take(250).map(|r| r.map(|i| i.id)).collect::<Result<_, _>>()?;
    /// let key = *rows.resume_key().ok_or("no key")?;
    /// drop(rows);
    /// assert_eq!(key, 250);
    /// let rest = items::table
    ///     .budget(Budget::rows(100))
    ///     .stream_by(items::id, |i: &Item| i.id, &mut conn)
    ///     .after(key)
    ///     .count();
    /// assert_eq!(first.len() + rest, 1_000);
    /// # Ok(()) }
    /// ```
    pub fn after(mut self, key: V) -> Self {
        self.batches.walk.last = Some(key);
        self
    }

    /// The key of the last row handed out, in every mode: where a new walk resumes
    /// ([`RowsOf::after`]), with no row lost or repeated.
    pub fn resume_key(&self) -> Option<&V> {
        self.batches.resume_key()
    }

    /// Rows handed out so far.
    pub fn rows_done(&self) -> u64 {
        self.batches.rows_done()
    }
}

impl<'c, C, Q, K, V, U, F, M> Iterator for RowsOf<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug + PartialOrd,
    F: FnMut(&U) -> V,
    M: Meter<U>,
    U: 'static,
{
    type Item = Result<U>;

    fn next(&mut self) -> Option<Result<U>> {
        let _site = CallSite::enter(self.batches.site);
        self.batches.walk.next_row()
    }
}
