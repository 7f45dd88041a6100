//! Batched loading: any number of rows, with memory bounded by one batch.
//!
//! [`Budgeted::batches_by`] walks a query in key order. In [`BatchMode::Keyset`] (the default)
//! each batch is its own query, `WHERE key > <last key> ORDER BY key LIMIT <batch>`, so nothing
//! stays open between batches and the server does the skipping through the key's index (OFFSET
//! would rescan). In [`BatchMode::Stream`] the whole walk is one query whose rows arrive one at
//! a time (PostgreSQL's row-by-row mode, SQLite's cursor); MySQL's client buffers whole
//! results, so there `Stream` runs keyset batches. A query that is not `Clone` (a boxed query
//! built from run-time filters) is walked from a closure that builds it: [`Budget::walk`](crate::Budget::walk).
//!
//! # The key, and the order check
//! The key must be unique and not null: a primary key, or a tuple of columns that is
//! ([`Composite`]); `key_of` must read exactly that key from a row. The walk checks it: every
//! key delivered must be strictly after the previous one (within and across batches, in every
//! mode, compared with the key type's `PartialOrd`). Each keyset batch reads one row past its
//! end (`LIMIT <batch> + 1`; under a byte budget, the row that did not fit) and compares that row's key with the batch's last:
//! equal keys straddling a batch boundary, which the next batch's `key > last` would skip, are
//! caught there; the row is then dropped (the next batch reads it again: each batch but the
//! last moves one row more). That row also ends the walk: a batch with no row after it is the
//! last, with no further statement. When a batch comes back empty, or starts past the row read
//! after the one before, one more `LIMIT 1` query checks that the last row at or before the
//! last key reads as such (rows deleted meanwhile are the harmless cause). A non-unique key, a
//! join that repeats rows, a `key_of` that reads another column or a composite read in the
//! wrong order is [`Error::KeyOrder`], never a wrong result. Batches are delivered whole up to
//! the batch holding the first row out of order, rows ([`RowsOf`]) up to that row, in every
//! mode alike: keys repeated across a boundary are reported by the call after the batch
//! before them, as a stream reports them. The check costs one comparison per row. It sees the
//! values `key_of` returns, so read the key column itself.
//!
//! The database's order of the key column(s) must agree with Rust's order of the key type:
//! integers, timestamps, UUIDs and binary-collated text do; text under a case-insensitive or
//! locale collation (MySQL's default collation is case-insensitive) may not. A disagreement
//! surfaces as [`Error::KeyOrder`] (when it shows), never as a row lost or repeated silently.
//!
//! # Resuming
//! A failure part-way is [`Error::Interrupted`]; the iterator's `resume_key()` is the key of
//! the last row handed out (also by [`RowsOf`], row by row), and `.after(key)` starts a new
//! walk right after it. A PostgreSQL stream whose connection is killed after the server has
//! already sent every row can still finish normally, with no error: the rows were all
//! delivered.
//!
//! # What bounds memory and the wire
//! The **row** budget is what bounds wire traffic and client buffering: each statement carries
//! `LIMIT <rows>`, and up to that many rows cross the wire whatever a byte budget says (MySQL's
//! client buffers the whole LIMIT before the first row is decoded; PostgreSQL's row-by-row mode
//! reads and discards the rest of the LIMIT when a cut batch drops its cursor). A byte budget
//! bounds what is *kept*. Byte-budgeted keyset walks size each next `LIMIT` from the rows that
//! fitted before (starting at 100 rows), so each row crosses the wire about once; still, give a
//! byte-budgeted walk a row budget near what you expect to fit.
//!
//! `mod.rs` holds the public iterator ([`Batches`]); `machine.rs` the walk state machine,
//! generic over where its statements run (`source.rs`: the database; `tests.rs`: rows in
//! memory); `walk.rs` which queries a walk runs; `rows.rs` one row at a time ([`RowsOf`]).

use std::fmt::{self, Debug};

use crate::backend::BudgetConnection;
use crate::budget::{Meter, Metering, Overflow};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::exec::{ConnectionOf, Executor, Stream};
use crate::instrument::CallSite;
use crate::query::Budgeted;

mod machine;
mod rows;
mod source;
#[cfg(test)]
mod tests;
mod walk;

pub use crate::sql::keyset::{After, Composite, Keyset, KeysetAfter};
use machine::Machine;
pub use rows::RowsOf;
use source::Database;
pub use walk::{BatchQuery, PerBatch, ProbeQuery, Walk};

/// How [`Budgeted::batches_by`] reads the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchMode {
    /// One query per batch, `WHERE key > last ORDER BY key LIMIT batch`. Portable, holds nothing
    /// open between batches, and can be resumed from any key. The default.
    #[default]
    Keyset,
    /// One query for the whole walk, rows handed over one at a time: PostgreSQL row-by-row mode,
    /// SQLite's cursor. Fewer round trips; the connection is busy until the walk ends, and on
    /// PostgreSQL stopping early makes libpq read (and discard) the rest of the result. On MySQL
    /// this runs keyset batches, as MySQL's client buffers whole results.
    Stream,
}

/// How a walk reads the key of a row, as a plain function pointer: the nameable form of the
/// `key_of` closure, for [`BatchesBy`] and [`RowsBy`].
pub type KeyOf<U, V> = fn(&U) -> V;

/// [`Batches`] in its common shape, for a walk kept in a struct or returned from a function:
/// row budget only (bytes not metered) and a [`KeyOf`] function pointer as the key reader.
/// `C` is the Diesel connection type ([`ConnectionOf`] of the executor), `Q` the query, `K` the
/// key column(s), `U` the row type and `V` the key's Rust value.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(30)?;
/// use diesel_budget::batch::{BatchesBy, KeyOf};
/// use diesel_budget::demo::{items, Item};
/// use diesel_budget::prelude::*;
///
/// fn all_items(conn: &mut Conn<DbConnection>) -> BatchesBy<'_, DbConnection, items::table, items::id, Item, i32> {
///     let key_of: KeyOf<Item, i32> = |i| i.id;
///     items::table.budget(Budget::rows(10)).batches_by(items::id, key_of, conn)
/// }
/// assert_eq!(all_items(&mut conn).count(), 3);
/// # Ok(()) }
/// ```
pub type BatchesBy<'c, C, Q, K, U, V> =
    Batches<'c, C, Q, K, V, U, KeyOf<U, V>, crate::budget::Rows>;

/// [`RowsOf`] in its common shape (see [`BatchesBy`]).
pub type RowsBy<'c, C, Q, K, U, V> = RowsOf<'c, C, Q, K, V, U, KeyOf<U, V>, crate::budget::Rows>;

/// The state machine of a walk on a database.
type DatabaseWalk<'c, C, Q, K, V, U, F, M> =
    Machine<Database<'c, C, Q, K>, Stream<'c, U, M>, V, U, F, M>;

/// Iterator over the batches of a query: `Result<Vec<U>>`, each at most the budget's rows (and
/// bytes). Built by [`Budgeted::batches_by`]. Ends after the first error.
#[must_use = "batches are loaded only when iterated"]
pub struct Batches<'c, C, Q, K, V, U, F, M> {
    /// The walk: its state, over the connection, the query and the key.
    walk: DatabaseWalk<'c, C, Q, K, V, U, F, M>,
    /// Where `batches_by` (or `stream_by`) was called: the call site of every statement.
    site: &'static std::panic::Location<'static>,
}

impl<C, Q, K: Debug, V: Debug, U, F, M> Debug for Batches<'_, C, Q, K, V, U, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let walk = &self.walk;
        f.debug_struct("Batches")
            .field("key", &walk.source.key)
            .field("after", &walk.last)
            .field("budget", &walk.spec)
            .field("mode", &walk.mode)
            .field("limit", &walk.limit)
            .field("rows_done", &walk.rows_done)
            .field("done", &walk.done)
            .finish_non_exhaustive()
    }
}

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// Walks the whole result in batches of at most the budget's rows (and bytes), in order of
    /// `key`, which must be unique and not null. `key_of` reads the key of a loaded row; it is
    /// where the next batch starts. Any `ORDER BY` on the query is replaced by the key; a query
    /// with its own `LIMIT` or `OFFSET` is rejected ([`Error::InvalidArgument`]), as batches
    /// cover all rows (an offset would apply to every batch). A query that is not `Clone` (a
    /// boxed one) is walked through [`Budget::walk`](crate::Budget::walk).
    ///
    /// Every key must be strictly after the one before (see [the module docs](crate::batch)):
    /// a key that is not unique, a join that repeats rows, or a `key_of` that does not read
    /// exactly the key is [`Error::KeyOrder`] at the first row out of order, and nothing from
    /// that row on is delivered.
    ///
    /// Memory is bounded by one batch whatever the size of the table. The overflow policy does
    /// not apply: batching *is* the answer to "more rows than the budget". A single row larger
    /// than a byte budget is [`Error::BudgetExceeded`] (inside [`Error::Interrupted`]). The row
    /// budget bounds what crosses the wire per statement; a byte budget bounds what is kept.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(1_000)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::batch::BatchMode;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let mut total = 0;
    /// let mut batches = items::table
    ///     .filter(items::category.eq(2))
    ///     .budget(Budget::rows(30))
    ///     .batches_by(items::id, |i: &Item| i.id, &mut conn)
    ///     .mode(BatchMode::Stream);
    /// for batch in &mut batches {
    ///     let batch = batch?;
    ///     assert!(batch.len() <= 30);
    ///     total += batch.len();
    /// }
    /// assert_eq!(total, 100);
    /// assert_eq!(batches.resume_key(), Some(&992));
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn batches_by<'c, K, V, U, F, X>(
        self,
        key: K,
        key_of: F,
        conn: &'c mut X,
    ) -> Batches<'c, ConnectionOf<X>, Q, K, V, U, F, M>
    where
        X: Executor,
        K: Keyset,
        F: FnMut(&U) -> V,
    {
        let spec = self.budget.or_time(conn.default_time_limit()).spec();
        let conn = conn.connection(crate::exec::sealed::TOKEN);
        let streams = ConnectionOf::<X>::STREAMS && crate::timeout::session_time(conn).is_none();
        let source = Database {
            conn: Some(conn),
            query: self.query,
            key,
            streams,
        };
        let deferred = self.budget.or_time(spec.time).validate().err();
        Batches {
            walk: Machine::new(source, key_of, spec, M::METERS_BYTES, deferred),
            site: std::panic::Location::caller(),
        }
    }
}

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// Walks the whole result one row at a time, in order of `key`: the cheapest bounded way
    /// to read everything. Short for
    /// `batches_by(key, key_of, conn).mode(BatchMode::Stream).rows()`.
    ///
    /// On PostgreSQL (row-by-row mode) and SQLite (the cursor) this is one query and the client
    /// holds one row at a time; on MySQL, whose client buffers whole results, rows come out of
    /// keyset batches of the budget's size. A byte budget bounds each row (each batch on
    /// MySQL). Stopping early on PostgreSQL makes libpq read and discard the rest of the
    /// result; walk with [`BatchMode::Keyset`] if you often stop early. [`RowsOf::resume_key`]
    /// is the key of the last row handed out, and [`RowsOf::after`] resumes after it.
    ///
    /// On PostgreSQL, a stream whose connection is killed after the server has already sent
    /// every row (they wait in the socket and libpq's buffer) finishes normally, with no error:
    /// every row was delivered.
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
    /// let mut sum = 0;
    /// for item in &mut rows {
    ///     sum += item?.id;
    /// }
    /// assert_eq!(sum, 500_500);
    /// assert_eq!(rows.rows_done(), 1_000);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn stream_by<'c, K, V, U, F, X>(
        self,
        key: K,
        key_of: F,
        conn: &'c mut X,
    ) -> RowsOf<'c, ConnectionOf<X>, Q, K, V, U, F, M>
    where
        X: Executor,
        K: Keyset,
        F: FnMut(&U) -> V,
    {
        self.batches_by(key, key_of, conn)
            .mode(BatchMode::Stream)
            .rows()
    }
}

impl<C, Q, K, V, U, F, M> Batches<'_, C, Q, K, V, U, F, M> {
    /// Reads the rows with `mode`. Default: [`BatchMode::Keyset`]. Call before iterating.
    pub fn mode(mut self, mode: BatchMode) -> Self {
        self.walk.mode = mode;
        self
    }

    /// Starts right after `key` (exclusive), e.g. the [`Batches::resume_key`] of a walk that
    /// failed. Default: from the first row. Call before iterating.
    pub fn after(mut self, key: V) -> Self {
        self.walk.last = Some(key);
        self
    }

    /// The key of the last row delivered (of the last batch handed out): where a new walk
    /// resumes ([`Batches::after`]). Before the first batch, the `after` key, if any.
    pub fn resume_key(&self) -> Option<&V> {
        self.walk.last.as_ref()
    }

    /// Rows delivered so far.
    pub fn rows_done(&self) -> u64 {
        self.walk.rows_done
    }
}

impl<'c, C, Q, K, V, U, F, M> Iterator for Batches<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug + PartialOrd,
    F: FnMut(&U) -> V,
    M: Meter<U>,
    U: 'static,
{
    type Item = Result<Vec<U>>;

    fn next(&mut self) -> Option<Self::Item> {
        let _site = CallSite::enter(self.site);
        self.walk.next_batch()
    }
}
