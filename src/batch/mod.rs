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
//! mode, compared with the key type's `PartialOrd`), and when a keyset walk ends right after a
//! full batch, one more `LIMIT 1` query checks that the last row at or before the last key reads
//! as such. A non-unique key, a join that repeats rows, a `key_of` that reads another column or
//! a composite read in the wrong order is [`Error::KeyOrder`], never a wrong result. The check
//! costs one comparison per row. It sees the values `key_of` returns: a reader that returns
//! another value which still grows with the key (say `id * 2`) can send a keyset batch past
//! rows unnoticed, so read the key column itself.
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

use std::cmp::Ordering;
use std::fmt::{self, Debug};
use std::marker::PhantomData;

use diesel::{QueryResult, RunQueryDsl};

use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage, Metering, Overflow, Rows};
use crate::error::{Error, Result};
use crate::exec::{load_metered, ConnectionOf, Executor};
use crate::instrument::{BudgetScope, CallSite, StatementTag};
use crate::query::{render, Budgeted};
use crate::sql::inspect::{has_top_level_limit, has_top_level_offset};

mod rows;
mod walk;

pub use crate::sql::keyset::{After, Composite, Keyset, KeysetAfter};
pub use rows::RowsOf;
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

type RowStream<'c, U> = Box<dyn Iterator<Item = QueryResult<U>> + 'c>;

/// An open single-query stream and what it has delivered. Reports its rows to the ledger and
/// the pool's statistics when it ends (or is dropped part-way).
struct Streamed<'c, U> {
    rows: RowStream<'c, U>,
    sql: String,
    meter: Meterage,
    meters_bytes: bool,
    /// Rows taken off the stream (delivered or not).
    received: u64,
    /// The streamed statement, in the ledger and the pool's statistics.
    tag: StatementTag,
}

impl<U> Drop for Streamed<'_, U> {
    fn drop(&mut self) {
        self.tag.note(
            self.received,
            self.meter.rows,
            self.meters_bytes.then_some(self.meter.bytes),
        );
    }
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

/// Iterator over the batches of a query: `Result<Vec<U>>`, each at most the budget's rows (and
/// bytes). Built by [`Budgeted::batches_by`]. Ends after the first error.
#[must_use = "batches are loaded only when iterated"]
pub struct Batches<'c, C, Q, K, V, U, F, M> {
    conn: Option<&'c mut C>,
    stream: Option<Streamed<'c, U>>,
    /// A streamed row that did not fit the previous batch's byte budget.
    pending: Option<U>,
    query: Q,
    key: K,
    key_of: F,
    /// The key of the last row handed out (or the `after` key): where the next batch starts.
    last: Option<V>,
    spec: BudgetSpec,
    mode: BatchMode,
    /// The LIMIT of the next keyset batch: the row budget, or, under a byte budget, the rows
    /// expected to fit (from the sizes seen so far).
    limit: u64,
    /// The previous keyset batch delivered rows: an empty batch now ends the walk only after
    /// the end check ([`Batches::check_end`]).
    check_at_end: bool,
    rows_done: u64,
    started: bool,
    done: bool,
    deferred: Option<Error>,
    /// Where `batches_by` (or `stream_by`) was called: the call site of every statement.
    site: &'static std::panic::Location<'static>,
    _meter: PhantomData<fn() -> M>,
}

impl<C, Q, K: Debug, V: Debug, U, F, M> Debug for Batches<'_, C, Q, K, V, U, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batches")
            .field("key", &self.key)
            .field("after", &self.last)
            .field("budget", &self.spec)
            .field("mode", &self.mode)
            .field("limit", &self.limit)
            .field("rows_done", &self.rows_done)
            .field("done", &self.done)
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
        Batches {
            conn: Some(conn.connection(crate::exec::sealed::TOKEN)),
            stream: None,
            pending: None,
            query: self.query,
            key,
            key_of,
            last: None,
            spec,
            mode: BatchMode::Keyset,
            limit: if M::METERS_BYTES {
                spec.rows.min(FIRST_BYTE_METERED_LIMIT)
            } else {
                spec.rows
            },
            check_at_end: false,
            rows_done: 0,
            started: false,
            done: false,
            deferred: self.budget.or_time(spec.time).validate().err(),
            site: std::panic::Location::caller(),
            _meter: PhantomData,
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
        self.mode = mode;
        self
    }

    /// Starts right after `key` (exclusive), e.g. the [`Batches::resume_key`] of a walk that
    /// failed. Default: from the first row. Call before iterating.
    pub fn after(mut self, key: V) -> Self {
        self.last = Some(key);
        self
    }

    /// The key of the last row delivered (of the last batch handed out): where a new walk
    /// resumes ([`Batches::after`]). Before the first batch, the `after` key, if any.
    pub fn resume_key(&self) -> Option<&V> {
        self.last.as_ref()
    }

    /// Rows delivered so far.
    pub fn rows_done(&self) -> u64 {
        self.rows_done
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

/// The error for `next` not strictly after `previous` in the walk by `key`.
fn key_order<K: Keyset, V: Debug>(key: &K, previous: &V, next: &V, rows_done: u64) -> Error {
    Error::KeyOrder {
        key: key.columns(),
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
}

impl<C: BudgetConnection, Q, K, V: Debug, U, F, M> Batches<'_, C, Q, K, V, U, F, M> {
    /// Whether rows come from one streamed query rather than keyset batches. Under a time
    /// limit, never: the limit is per statement, so each batch gets it ([`crate::timeout`]).
    fn streams(&self) -> bool {
        self.mode == BatchMode::Stream && C::STREAMS && self.spec.time.is_none()
    }

    fn finish(&mut self) {
        self.done = true;
        self.stream = None;
    }

    /// Ends the walk on `e`; a failure after the start says where to resume. A key out of
    /// order is a mistake in the walk itself, not a failure to resume from.
    fn fail(&mut self, e: Error) -> Error {
        self.finish();
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

impl<'c, C, Q, K, V, U, F, M> Batches<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug + PartialOrd,
    F: FnMut(&U) -> V,
    M: Meter<U>,
    U: 'static,
{
    /// Checks that the keys of `rows` are strictly increasing and strictly after the last key,
    /// then makes the last of them the last key. On a violation nothing changes.
    fn accept(&mut self, rows: &[U]) -> Result<()> {
        let mut last: Option<V> = None;
        for row in rows {
            let key = (self.key_of)(row);
            if let Some(previous) = last.as_ref().or(self.last.as_ref()) {
                if !strictly_after(previous, &key) {
                    return Err(key_order(&self.key, previous, &key, self.rows_done));
                }
            }
            last = Some(key);
        }
        if last.is_some() {
            self.last = last;
        }
        Ok(())
    }

    /// [`Batches::accept`] for one row handed out on its own.
    fn accept_one(&mut self, row: &U) -> Result<()> {
        let key = (self.key_of)(row);
        if let Some(previous) = self.last.as_ref() {
            if !strictly_after(previous, &key) {
                return Err(key_order(&self.key, previous, &key, self.rows_done));
            }
        }
        self.last = Some(key);
        self.rows_done += 1;
        Ok(())
    }

    /// A keyset walk that got an empty batch right after a full one may have been led astray
    /// by `key_of` (a composite read in the wrong order sends the next batch past every row):
    /// the last row at or before the last key, in the database's order, must not read as
    /// after it. One `LIMIT 1` statement, only at the end of such walks.
    fn check_end(&mut self) -> Result<()> {
        let Some(last) = self.last.clone() else {
            return Ok(());
        };
        let query = self.query.probe(self.key, last);
        let Some(conn) = self.conn.as_deref_mut() else {
            return Ok(());
        };
        // One row, however large, and rows only: this is a check, not a delivery.
        let spec = BudgetSpec {
            bytes: None,
            ..self.spec
        };
        let loaded = load_metered::<C, U, _, Rows>(query, spec, 1, conn)?;
        let (Some(row), Some(last)) = (loaded.rows.first(), self.last.as_ref()) else {
            return Ok(());
        };
        let key = (self.key_of)(row);
        if strictly_after(last, &key) || last.partial_cmp(&key).is_none() {
            return Err(key_order(&self.key, last, &key, self.rows_done));
        }
        Ok(())
    }

    /// Once, before the first batch: a query with its own LIMIT cannot be walked.
    fn start(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        let sql = self.query.own_sql()?;
        if has_top_level_limit(&sql) || has_top_level_offset(&sql) {
            return Err(Error::InvalidArgument {
                name: "query",
                reason: format!(
                    "batches walk the whole result, but the query has a LIMIT or OFFSET of \
                     its own; drop it (start a walk part-way with `after`) or load with a \
                     budget instead: {sql}"
                ),
            });
        }
        Ok(())
    }

    fn batch_query(&self) -> Q::Batch {
        self.query.batch(self.key, self.last.clone())
    }

    fn next_keyset(&mut self) -> Result<Option<Vec<U>>> {
        let query = self.batch_query();
        let Some(conn) = self.conn.as_deref_mut() else {
            return Ok(None);
        };
        let limit = self.limit;
        let loaded = load_metered::<C, U, _, M>(
            query,
            self.spec,
            i64::try_from(limit).unwrap_or(i64::MAX),
            conn,
        )?;
        if M::METERS_BYTES {
            self.limit = next_limit(&self.spec, &loaded.meter);
        }
        match loaded.exceeded {
            Some(e) if loaded.rows.is_empty() => Err(loaded.into_error(self.spec, e)),
            // Cut short by bytes: the rows that did not fit are read again by the next batch
            // (a few: the LIMIT was sized to what fits).
            Some(_) => {
                self.check_at_end = true;
                Ok(Some(loaded.rows))
            }
            None if loaded.rows.is_empty() => {
                if std::mem::take(&mut self.check_at_end) {
                    self.check_end()?;
                }
                Ok(None)
            }
            None => {
                // A short batch is the last one: no need to ask again.
                if (loaded.rows.len() as u64) < limit {
                    self.conn = None;
                } else {
                    self.check_at_end = true;
                }
                Ok(Some(loaded.rows))
            }
        }
    }

    /// The next row of the single streamed query, opening it on first use; `None` at its end.
    fn pull(&mut self) -> Result<Option<U>> {
        if let Some(row) = self.pending.take() {
            return Ok(Some(row));
        }
        if self.stream.is_none() {
            let Some(conn) = self.conn.take() else {
                return Ok(None);
            };
            let query = self.batch_query();
            let sql = render::<C, _>(&query)?;
            let tag = StatementTag::next_on(conn.instrumentation());
            let _scope = BudgetScope::enter(self.spec);
            let rows = query
                .load_iter::<U, C::StreamMode>(conn)
                .map_err(|e| Error::query(sql.clone(), e))?;
            self.stream = Some(Streamed {
                rows: Box::new(rows),
                sql,
                meter: Meterage::default(),
                meters_bytes: M::METERS_BYTES,
                received: 0,
                tag,
            });
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.rows.next() {
            None => {
                self.stream = None;
                Ok(None)
            }
            Some(Err(e)) => Err(Error::query(stream.sql.clone(), e)),
            Some(Ok(row)) => {
                stream.received += 1;
                Ok(Some(row))
            }
        }
    }

    /// Counts a streamed row as delivered.
    fn delivered(&mut self, size: u64) {
        if let Some(stream) = self.stream.as_mut() {
            stream.meter.rows += 1;
            stream.meter.bytes = stream.meter.bytes.saturating_add(size);
        }
    }

    /// The error for a single row larger than the byte budget.
    fn row_too_large(&self, exceeded: Exceeded, size: u64) -> Error {
        Error::BudgetExceeded {
            sql: self
                .stream
                .as_ref()
                .map(|s| s.sql.clone())
                .unwrap_or_default(),
            budget: self.spec,
            exceeded,
            seen_rows: 1,
            seen_bytes: size,
        }
    }

    fn next_streamed(&mut self) -> Result<Option<Vec<U>>> {
        let mut rows = Vec::new();
        let mut batch = Meterage::default();
        while batch.rows < self.spec.rows {
            let Some(row) = self.pull()? else {
                break;
            };
            let size = M::size_of(&row);
            match batch.add(size, &self.spec) {
                None => {
                    self.delivered(size);
                    rows.push(row);
                }
                Some(exceeded) if rows.is_empty() => {
                    return Err(self.row_too_large(exceeded, size));
                }
                Some(_) => {
                    self.pending = Some(row);
                    break;
                }
            }
        }
        Ok((!rows.is_empty()).then_some(rows))
    }

    /// One row of the walk: straight from the stream, or from the current keyset batch. Its key
    /// is checked and becomes the resume key as it is handed out.
    fn next_row(&mut self, buffer: &mut std::vec::IntoIter<U>) -> Result<Option<U>> {
        let row = match buffer.next() {
            Some(row) => row,
            None => {
                self.start()?;
                if self.streams() {
                    let Some(row) = self.pull()? else {
                        return Ok(None);
                    };
                    let size = M::size_of(&row);
                    if self.spec.bytes.is_some_and(|b| size > b) {
                        return Err(self.row_too_large(Exceeded::Bytes, size));
                    }
                    self.delivered(size);
                    row
                } else {
                    let Some(rows) = self.next_keyset()? else {
                        return Ok(None);
                    };
                    *buffer = rows.into_iter();
                    let Some(row) = buffer.next() else {
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
