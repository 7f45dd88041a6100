//! Bulk writes: insert or upsert any number of rows, a chunk at a time.
//!
//! [`insert_into`] takes a slice or an iterator of any Diesel `Insertable` and writes it in
//! chunks, never collecting the input: memory is bounded by one chunk whatever the number of
//! rows.
//!
//! - **Chunks** are sized from the backend's real bind-parameter limit (PostgreSQL and MySQL
//!   65,535; SQLite read from the connection at run time, 32,766 for the bundled library)
//!   divided by the binds one row really uses, counted by rendering the row (a `None` rendered
//!   as `DEFAULT` takes no bind). A row type with a static query id (Diesel's promise that every
//!   value renders the same SQL: a derived `Insertable` without an `Option` left to its
//!   `DEFAULT`) is rendered once, not per row. A chunk size you ask for with
//!   [`chunk_rows`](BulkInsert::chunk_rows) that cannot fit is [`Error::InvalidArgument`]
//!   before anything is written, never a server error half-way.
//! - **PostgreSQL** writes each chunk with binary `COPY .. FROM STDIN` when the rows set every
//!   column of the table (chosen automatically; [`insert_only`](BulkInsert::insert_only)
//!   switches it off); otherwise, and on the other backends, each chunk is one multi-row
//!   `INSERT`.
//! - **Transactions**: [`atomic`](BulkInsert::atomic) (the default) writes everything in one
//!   transaction (a savepoint inside an open one): all or nothing.
//!   [`per_chunk`](BulkInsert::per_chunk) commits each chunk; a failure returns
//!   [`Error::BulkInterrupted`] with a [`Checkpoint`], and [`resume`](BulkInsert::resume) with
//!   the same input continues from there with no row lost or written twice.
//! - **Upserts**: [`on_conflict_do_update`](BulkInsert::on_conflict_do_update) and
//!   [`on_conflict_do_nothing`](BulkInsert::on_conflict_do_nothing) (`ON CONFLICT` on
//!   PostgreSQL and SQLite, `ON DUPLICATE KEY UPDATE` on MySQL/MariaDB). Duplicate keys inside
//!   the input follow one rule whatever the chunk boundaries: **the last row wins** for
//!   `do_update`, **the first row wins** for `do_nothing` (rows a chunk would write twice are
//!   dropped from it before it is sent; PostgreSQL refuses a statement that touches a row twice).
//!   On PostgreSQL each upsert chunk is one `INSERT .. SELECT * FROM UNNEST($1, ..)` with one
//!   array bind a column (or, asked for, a `COPY`-fed [`staging`](BulkInsert::staging) table).
//! - **Update by key** ([`update`]) and **delete by keys** ([`delete`]): one statement a chunk,
//!   the same transaction modes, progress and report.
//! - **`RETURNING` under a budget**: [`BulkInsert::returning`] and [`BulkDelete::returning`]
//!   load what was written or deleted, never more than the budget + 1 rows, all or nothing.
//! - **MySQL's `max_allowed_packet`** (read from the server) bounds a chunk's bytes as well.
//!
//! # Example
//! ```
//! # include!("../../tests/doc_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, mut conn) = demo_db(0)?;
//! use diesel_budget::bulk;
//! use diesel_budget::demo::{items, Item};
//!
//! // Any iterator: the rows are generated a chunk at a time, never all in memory.
//! let rows = (1..=20_000).map(Item::generate);
//! let mut seen = Vec::new();
//! let report = bulk::insert_into(items::table, rows)
//!     .on_progress(|p| seen.push(p.rows_done))
//!     .execute(&mut conn)?;
//! assert_eq!(report.rows, 20_000);
//! assert!(report.chunks >= 2); // SQLite: 5 binds a row, 6,553 rows a statement (bundled)
//! assert_eq!(seen.last(), Some(&20_000));
//!
//! // Upsert: the same keys again, with new names; the last row of a key wins.
//! let renamed = (1..=100).map(|id| Item { name: format!("new-{id}"), ..Item::generate(id) });
//! bulk::insert_into(items::table, renamed)
//!     .on_conflict_do_update(items::id, |i: &Item| i.id)
//!     .execute(&mut conn)?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{AstPass, QueryFragment, QueryId, ValuesClause};
use diesel::{Column, Connection, Insertable, QueryResult, Table};

use crate::backend::BudgetConnection;
use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::exec::{sealed as access, ConnectionOf, Executor};
use crate::instrument::{BudgetScope, InternalScope};

mod delete;
mod returning;
pub(crate) mod sql;
mod update;

#[allow(unused_imports)] // the server backends' default; a SQLite-only build has none
pub(crate) use delete::DELETE_KEYS;
pub use delete::{delete, BulkDelete, BulkKeys};
pub use returning::BulkReturning;
#[doc(hidden)]
pub use sql::{ChunkStatements, ReturningStyle, RowShape, UpdateStyle};
pub use update::{update, BulkUpdate};

/// Starts a bulk insert of `rows` (a slice, a `Vec`, or any iterator of `Insertable<table>`)
/// into `table`. Nothing runs until [`BulkInsert::execute`]. See the [module docs](self).
pub fn insert_into<T, I>(table: T, rows: I) -> BulkInsert<T, I::IntoIter>
where
    T: Table,
    I: IntoIterator,
{
    BulkInsert {
        table,
        rows: rows.into_iter(),
        mode: ChunkMode::new(),
        insert_only: false,
        staging: None,
        op: Op::Insert,
        conflict: None,
        key_of: NoKey,
    }
}

/// A bulk insert being configured; run it with [`execute`](Self::execute). Built by
/// [`insert_into`].
#[must_use = "a bulk insert does nothing until `.execute(&mut conn)`"]
#[derive(Debug)]
pub struct BulkInsert<T, I, K = NoKey, P = NoProgress> {
    table: T,
    rows: I,
    mode: ChunkMode<P>,
    insert_only: bool,
    staging: Option<bool>,
    op: Op,
    conflict: Option<Conflict>,
    key_of: K,
}

/// The settings every bulk builder shares ([`BulkInsert`], [`BulkUpdate`], [`BulkDelete`]):
/// transaction mode, resume point, chunk size and progress callback. Their public setters
/// delegate here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkMode<P> {
    /// One transaction for everything (`atomic`) or one per chunk (`per_chunk`).
    pub(crate) atomic: bool,
    /// The chunk size asked for; `None`: the backend's default.
    pub(crate) chunk_rows: Option<NonZeroUsize>,
    /// Where a resumed write starts.
    pub(crate) resume: Checkpoint,
    /// Called after each chunk.
    pub(crate) progress: P,
}

impl ChunkMode<NoProgress> {
    /// The defaults: atomic, the backend's chunk size, from the first row, no callback.
    pub(crate) fn new() -> Self {
        ChunkMode {
            atomic: true,
            chunk_rows: None,
            resume: Checkpoint::default(),
            progress: NoProgress,
        }
    }
}

impl<P> ChunkMode<P> {
    pub(crate) fn atomic(self, atomic: bool) -> Self {
        ChunkMode { atomic, ..self }
    }

    pub(crate) fn resume(self, resume: Checkpoint) -> Self {
        ChunkMode { resume, ..self }
    }

    pub(crate) fn chunk_rows(self, rows: NonZeroUsize) -> Self {
        ChunkMode {
            chunk_rows: Some(rows),
            ..self
        }
    }

    pub(crate) fn on_progress<F>(self, progress: F) -> ChunkMode<F> {
        ChunkMode {
            atomic: self.atomic,
            chunk_rows: self.chunk_rows,
            resume: self.resume,
            progress,
        }
    }

    /// Skips the input a resumed write has done (`what`: "rows" or "keys", for the error) and
    /// returns the length of the whole input, when the iterator knows it exactly.
    pub(crate) fn skip_done<I: Iterator>(&self, input: &mut I, what: &str) -> Result<Option<u64>> {
        if self.resume.rows_done > 0 {
            let skip =
                usize::try_from(self.resume.rows_done).map_err(|_| Error::InvalidArgument {
                    name: "checkpoint",
                    reason: format!("more {what} than this platform can count"),
                })?;
            input.nth(skip - 1);
        }
        Ok(match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(self.resume.rows_done + lo as u64),
            _ => None,
        })
    }
}

/// What a chunk of rows does: insert (or upsert) them, or update the rows of their keys.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `INSERT` (or `COPY`), with the conflict clause of an upsert.
    Insert,
    /// `UPDATE .. FROM` the chunk's rows, joined on the key.
    Update,
    /// `INSERT .. RETURNING`: never `COPY`.
    InsertReturning,
}

/// How far a [`per_chunk`](BulkInsert::per_chunk) bulk write got: the input rows (counted from
/// the start of the input, duplicates dropped by an upsert included) whose chunks were
/// committed. Carried by [`Error::BulkInterrupted`]; pass it to
/// [`resume`](BulkInsert::resume).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Input rows committed, from the start of the input.
    pub rows_done: u64,
    /// Chunks committed, from the start of the input.
    pub chunks_done: u64,
}

/// What a bulk write did, returned by [`BulkInsert::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Input rows written by this call (after a [`resume`](BulkInsert::resume): not counting
    /// the rows skipped). Duplicates an upsert dropped count as written.
    pub rows: u64,
    /// Rows the database reported as affected (an upsert's update counts 2 on MySQL, a skipped
    /// conflict 0).
    pub affected: u64,
    /// Chunks written by this call.
    pub chunks: u64,
    /// Statements sent: one per chunk (an `INSERT` or a `COPY`).
    pub statements: u64,
    /// Chunks written with `COPY` (PostgreSQL).
    pub copy_chunks: u64,
    /// Wall-clock time of the call.
    pub elapsed: Duration,
}

/// Handed to the [`on_progress`](BulkInsert::on_progress) callback after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Input rows written so far, from the start of the input (a resumed write starts at its
    /// checkpoint).
    pub rows_done: u64,
    /// Rows in the whole input, when the iterator knows its exact length.
    pub rows_total: Option<u64>,
    /// Chunks written so far, from the start of the input.
    pub chunks_done: u64,
}

/// The conflict clause of an upsert.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The unique key's column (PostgreSQL and SQLite name it; MySQL uses any unique key).
    pub key: &'static str,
    /// Update the other columns (`true`) or keep the existing row (`false`).
    pub update: bool,
}

/// No key extractor: a plain insert.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

/// No progress callback.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

/// Reads the conflict key of a row, to apply the duplicate rule of upserts. Implemented for
/// closures `Fn(&R) -> Key` and for [`NoKey`].
pub trait KeyOf<R> {
    /// The key's type.
    type Key: Hash + Eq;
    /// The key of `row`, or `None` without a key extractor.
    fn key_of(&self, row: &R) -> Option<Self::Key>;
}

impl<R> KeyOf<R> for NoKey {
    type Key = ();
    fn key_of(&self, _: &R) -> Option<()> {
        None
    }
}

impl<R, F, Key> KeyOf<R> for F
where
    F: Fn(&R) -> Key,
    Key: Hash + Eq,
{
    type Key = Key;
    fn key_of(&self, row: &R) -> Option<Key> {
        Some(self(row))
    }
}

/// Called with a [`Progress`] after each chunk. Implemented for closures `FnMut(Progress)` and
/// for [`NoProgress`].
pub trait OnProgress {
    /// Reports progress.
    fn progress(&mut self, progress: Progress);
}

impl OnProgress for NoProgress {
    fn progress(&mut self, _: Progress) {}
}

impl<F: FnMut(Progress)> OnProgress for F {
    fn progress(&mut self, progress: Progress) {
        self(progress)
    }
}

impl<T, I, K, P> BulkInsert<T, I, K, P> {
    /// All or nothing (the default): every chunk in one transaction, or in a savepoint when a
    /// transaction is already open. A failure rolls everything back and returns the error.
    pub fn atomic(mut self) -> Self {
        self.mode = self.mode.atomic(true);
        self
    }

    /// Each chunk in its own transaction (a savepoint when one is open), committed before the
    /// next is sent. A failure returns [`Error::BulkInterrupted`] carrying the
    /// [`Checkpoint`] of what was committed. Default: [`atomic`](Self::atomic).
    pub fn per_chunk(mut self) -> Self {
        self.mode = self.mode.atomic(false);
        self
    }

    /// Continues an interrupted [`per_chunk`](Self::per_chunk) write: `checkpoint.rows_done`
    /// rows of the input are skipped (the input must be the same, in the same order). Default:
    /// start from the first row.
    pub fn resume(mut self, checkpoint: Checkpoint) -> Self {
        self.mode = self.mode.resume(checkpoint);
        self
    }

    /// At most `rows` rows a chunk. Default: as many as the backend's bind limit allows for
    /// the rows' bind count (10,000 a chunk for PostgreSQL's `COPY`). A size whose rows need
    /// more binds than the limit is [`Error::InvalidArgument`] before anything is written;
    /// rows that take more binds than the first one end a chunk early rather than pass the
    /// limit.
    pub fn chunk_rows(mut self, rows: NonZeroUsize) -> Self {
        self.mode = self.mode.chunk_rows(rows);
        self
    }

    /// Never use PostgreSQL's `COPY` or `UNNEST`: every chunk is a multi-row `INSERT`.
    /// Default: `COPY` where the rows allow it (PostgreSQL, no upsert, every column of the
    /// table set), `UNNEST` for upserts (see [`staging`](Self::staging)).
    pub fn insert_only(mut self) -> Self {
        self.insert_only = true;
        self
    }

    /// PostgreSQL upserts: write each chunk with binary `COPY` into a temporary staging table
    /// (`CREATE TEMP TABLE .. (LIKE target) ON COMMIT DROP`), then `INSERT INTO target ..
    /// SELECT .. FROM staging ON CONFLICT ..`, when the rows set every column of the table.
    /// Four statements a chunk; CockroachDB keeps temporary tables behind a setting.
    ///
    /// Default, without it: each chunk of 10,000 rows is **one** `INSERT INTO target (cols)
    /// SELECT * FROM UNNEST($1, .., $n) ON CONFLICT ..`, one array bind a column whatever the
    /// row count, when the rows bind every column they name (rows that leave a column to its
    /// `DEFAULT` go as multi-row `INSERT .. ON CONFLICT` chunks). Measured at 10^5 and 10^6
    /// rows, half of them existing (README, bulk-write benchmarks): `UNNEST` ran 1.1-1.6x
    /// chunked `INSERT .. ON CONFLICT`, and even with the staging table (0.84-1.08x in one
    /// run, 1.12-1.19x in another). [`insert_only`](Self::insert_only) forces chunked `INSERT
    /// .. ON CONFLICT`. The other backends ignore it.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = demo_db(10)?;
    /// use diesel_budget::bulk;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let report = bulk::insert_into(items::table, (1..=20).map(Item::generate))
    ///     .on_conflict_do_update(items::id, |i: &Item| i.id)
    ///     .staging()
    ///     .execute(&mut conn)?;
    /// assert_eq!(report.rows, 20);
    /// # Ok(()) }
    /// ```
    pub fn staging(mut self) -> Self {
        self.staging = Some(true);
        self
    }

    /// Loads `returning` (a column or a tuple of columns, as in Diesel's `.returning(..)`) of
    /// every row written, in input order, under a row `budget`: a write that would return more
    /// rows than the budget fails with [`Error::BudgetExceeded`] before the chunk that would
    /// pass it is sent, and nothing is written (a write with `RETURNING` is always
    /// [`atomic`](Self::atomic)). Chunks are multi-row `INSERT .. RETURNING` (never `COPY`).
    /// PostgreSQL and SQLite (3.35+; bundled 3.50).
    ///
    /// **MySQL/MariaDB: generated `AUTO_INCREMENT` ids only.** MariaDB 10.5+ has `INSERT ..
    /// RETURNING`, but Diesel's MySQL client reads results through prepared statements, which
    /// MariaDB gives no result metadata for it ("No metadata exists", checked on 10.11). So the
    /// rows are read back by the ids the server generated: per chunk, in the transaction,
    /// `LAST_INSERT_ID()` is reset, the multi-row `INSERT` runs, and `SELECT returning FROM t
    /// WHERE id BETWEEN first AND first + (n - 1) * @@auto_increment_increment ORDER BY id`
    /// must find exactly the chunk's `n` rows (`first`: `LAST_INSERT_ID()`, the id of the
    /// chunk's first row). Exact when, checked per chunk before its `INSERT`:
    /// `@@innodb_autoinc_lock_mode` is 0 or 1 (with 2, "interleaved", one multi-row insert's
    /// ids need not be consecutive), the table has exactly one `AUTO_INCREMENT` column (`SHOW
    /// COLUMNS`, so temporary tables count), the rows leave that column out (the server
    /// generates every id), and the write is not an upsert (a row updated by `ON DUPLICATE
    /// KEY UPDATE` gets no new id). Otherwise, or when the insert generated no id or the
    /// read-back finds another count than `n`, [`Error::Query`] (a `QueryBuilderError`) and the
    /// transaction rolls back: nothing is written. Other sessions inserting into the table
    /// meanwhile do not matter: the ids of one simple multi-row insert are consecutive and in
    /// row order in lock modes 0 and 1. InnoDB tables only (the default engine; not checked):
    /// on MyISAM/Aria an `AUTO_INCREMENT` column that is the second column of an index numbers
    /// each prefix apart, so its ids need not be consecutive.
    ///
    /// Order: each backend returns the rows of a multi-row `VALUES` in the order of the
    /// `VALUES` (observed and tested on all three; PostgreSQL and SQLite document no order for
    /// `RETURNING`, so return the key with what you need if you must be sure). With an upsert
    /// that skips a conflicting row (`do_nothing`), that row returns nothing.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = demo_db(0)?;
    /// # // MySQL/MariaDB alone: the demo rows set their ids (refused there, see above).
    /// # if cfg!(all(feature = "mysql", not(feature = "sqlite"), not(feature = "postgres"))) {
    /// #     return Ok(());
    /// # }
    /// use diesel_budget::bulk;
    /// use diesel_budget::demo::{items, Item};
    /// use diesel_budget::Budget;
    ///
    /// let (report, names) = bulk::insert_into(items::table, (1..=3).map(Item::generate))
    ///     .returning((items::id, items::name), Budget::rows(10))
    ///     .execute::<_, _, _, (i32, String)>(&mut conn)?;
    /// assert_eq!(report.rows, 3);
    /// assert_eq!(names[2], (3, "item-3".to_string()));
    ///
    /// // More rows than the budget: refused before the chunk is sent, nothing written.
    /// let err = bulk::insert_into(items::table, (4..=20).map(Item::generate))
    ///     .returning(items::id, Budget::rows(10))
    ///     .execute::<_, _, _, i32>(&mut conn)
    ///     .unwrap_err();
    /// assert!(err.is_budget_exceeded());
    /// # Ok(()) }
    /// ```
    pub fn returning<S>(mut self, returning: S, budget: Budget) -> BulkReturning<Self, S> {
        self.op = Op::InsertReturning;
        self.mode = self.mode.atomic(true);
        BulkReturning::new(self, returning, budget.spec())
    }

    /// Calls `callback` after each chunk with the rows and chunks done so far. Default: none.
    pub fn on_progress<F: FnMut(Progress)>(self, callback: F) -> BulkInsert<T, I, K, F> {
        BulkInsert {
            table: self.table,
            rows: self.rows,
            mode: self.mode.on_progress(callback),
            insert_only: self.insert_only,
            staging: self.staging,
            op: self.op,
            conflict: self.conflict,
            key_of: self.key_of,
        }
    }

    /// Upsert: a row whose `key` already exists updates every other column it sets
    /// (`ON CONFLICT (key) DO UPDATE SET c = excluded.c, ..` on PostgreSQL and SQLite,
    /// `ON DUPLICATE KEY UPDATE c = VALUES(c), ..` on MySQL, where any unique key counts).
    /// `key_of` reads the key from a row: among input rows with the same key, **the last one
    /// wins**, wherever chunk boundaries fall. Default: a plain insert.
    pub fn on_conflict_do_update<Col, F>(self, key: Col, key_of: F) -> BulkInsert<T, I, F, P>
    where
        Col: Column<Table = T>,
    {
        let _ = key;
        self.with_conflict(
            Conflict {
                key: Col::NAME,
                update: true,
            },
            key_of,
        )
    }

    /// Insert-or-ignore: a row whose `key` already exists is skipped (`ON CONFLICT (key) DO
    /// NOTHING` on PostgreSQL and SQLite; on MySQL `ON DUPLICATE KEY UPDATE key = key`, which
    /// unlike `INSERT IGNORE` still fails on other errors). Among input rows with the same key,
    /// **the first one wins**. Default: a plain insert.
    pub fn on_conflict_do_nothing<Col, F>(self, key: Col, key_of: F) -> BulkInsert<T, I, F, P>
    where
        Col: Column<Table = T>,
    {
        let _ = key;
        self.with_conflict(
            Conflict {
                key: Col::NAME,
                update: false,
            },
            key_of,
        )
    }

    pub(crate) fn with_conflict<F>(self, conflict: Conflict, key_of: F) -> BulkInsert<T, I, F, P> {
        BulkInsert {
            table: self.table,
            rows: self.rows,
            mode: self.mode,
            insert_only: self.insert_only,
            staging: self.staging,
            op: self.op,
            conflict: Some(conflict),
            key_of,
        }
    }
}

impl<T, I, K, P> BulkInsert<T, I, K, P>
where
    T: Table + Copy,
    P: OnProgress,
{
    /// Writes the rows; returns what was done.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] before anything is written when the requested
    /// [`chunk_rows`](Self::chunk_rows) cannot fit the bind limit; [`Error::Query`] when a
    /// statement fails in [`atomic`](Self::atomic) mode (nothing was written);
    /// [`Error::BulkInterrupted`] in [`per_chunk`](Self::per_chunk) mode (the chunks before
    /// its checkpoint are committed).
    pub fn execute<X, R, V>(self, conn: &mut X) -> Result<Report>
    where
        X: Executor,
        I: Iterator<Item = R>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
        V: QueryId,
        K: KeyOf<R>,
        ConnectionOf<X>: BulkWrite<T, V>,
    {
        let conn = conn.connection(access::TOKEN);
        let op = self.op;
        self.run(conn, |conn, table, rows, plan, conflict| {
            Ok(match op {
                Op::Update => {
                    let key = conflict.map(|(c, _)| c.key).unwrap_or_default();
                    conn.update_chunk(table, key, rows)?
                }
                _ => conn.write_chunk(table, rows, plan, conflict)?,
            })
        })
    }

    /// Runs the chunks through `write` in the transaction mode asked for.
    pub(crate) fn run<C, R, V, W>(self, conn: &mut C, mut write: W) -> Result<Report>
    where
        C: BulkWrite<T, V>,
        I: Iterator<Item = R>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
        V: QueryId,
        K: KeyOf<R>,
        W: FnMut(&mut C, T, &[ValuesClause<V, T>], &Plan, ConflictOf<'_>) -> Result<usize>,
    {
        let started = Instant::now();
        let BulkInsert {
            table,
            mut rows,
            mode,
            insert_only,
            staging,
            op,
            conflict,
            key_of,
        } = self;
        let total = mode.skip_done(&mut rows, "rows")?;
        let ChunkMode {
            atomic,
            chunk_rows,
            resume,
            progress,
        } = mode;
        let want = Want {
            op,
            copy: !insert_only && op == Op::Insert,
            upsert: conflict.is_some() && op == Op::Insert,
            staging,
        };
        let mut run = Run {
            table,
            chunk_rows,
            want,
            conflict,
            key_of,
            tally: Tally::new(atomic, resume, total, progress),
            limits: None,
        };
        if atomic {
            conn.transaction::<_, Error, _>(|conn| run.all(conn, rows, &mut write))?;
        } else {
            let result = run.all(conn, rows, &mut write);
            result.map_err(|e| run.tally.interrupted(e, resume))?;
        }
        Ok(run.tally.finish(started))
    }
}

/// The conflict clause of a chunk, with the chunk's column names.
pub(crate) type ConflictOf<'a> = Option<(&'a Conflict, &'a [String])>;

/// What the caller asked of the chunks, for [`BulkWrite::plan`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// What the chunks do.
    pub op: Op,
    /// `COPY` is allowed (PostgreSQL; not after [`BulkInsert::insert_only`]).
    pub copy: bool,
    /// An upsert (`ON CONFLICT` / `ON DUPLICATE KEY`).
    pub upsert: bool,
    /// [`BulkInsert::staging`] as asked; `None`: the backend's default.
    pub staging: Option<bool>,
}

/// How one chunk will be written, decided from its first row.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Bind parameters one statement may hold; `None` for `COPY` (no binds).
    pub bind_limit: Option<usize>,
    /// Bytes one statement's binds may take ([`RowShape::bytes`]); `None`: unbounded (the
    /// server's packet limit applies to MySQL only).
    pub byte_limit: Option<usize>,
    /// Rows a chunk holds unless [`BulkInsert::chunk_rows`] says otherwise.
    pub default_rows: usize,
    /// Written with PostgreSQL's `COPY`.
    pub copy: bool,
    /// An upsert written through a `COPY`-fed staging table (PostgreSQL).
    pub staging: bool,
    /// The chunk is streamed ([`BulkWrite::write_stream`]): each row is taken from the input,
    /// encoded and sent while the statement runs, so the server works while the next rows are
    /// made; no row is kept, no shape rendered after the chunk's first row (PostgreSQL's
    /// binary `COPY` of a plain insert). A plain insert only: rows carry no conflict key.
    pub encoded: bool,
    /// An upsert written as `INSERT .. SELECT * FROM UNNEST($1, ..)`, one array a column
    /// (PostgreSQL): every row of the chunk binds as many values as the first.
    pub unnest: bool,
}

impl Plan {
    /// Statements one chunk takes: 4 through a staging table (create, `COPY`, `INSERT ..
    /// SELECT`, drop), else 1.
    fn statements(&self) -> u64 {
        if self.staging {
            4
        } else {
            1
        }
    }
}

/// A row as a chunk holds it: its values and its conflict key (the chunk keeps its first
/// row's shape; every row of a chunk renders the same column list).
struct Pending<V, T, Key> {
    values: ValuesClause<V, T>,
    key: Option<Key>,
}

/// The bookkeeping every bulk operation shares: transaction mode, checkpoint, progress, report.
pub(crate) struct Tally<P> {
    atomic: bool,
    done: Checkpoint,
    total: Option<u64>,
    progress: P,
    report: Report,
}

impl<P: OnProgress> Tally<P> {
    pub(crate) fn new(atomic: bool, resume: Checkpoint, total: Option<u64>, progress: P) -> Self {
        Tally {
            atomic,
            done: resume,
            total,
            progress,
            report: Report {
                rows: 0,
                affected: 0,
                chunks: 0,
                statements: 0,
                copy_chunks: 0,
                elapsed: Duration::ZERO,
            },
        }
    }

    /// Runs one chunk of `input_rows` input rows through `write` (in its own transaction under
    /// `per_chunk`), then counts it and reports progress.
    pub(crate) fn chunk<C, F>(
        &mut self,
        conn: &mut C,
        input_rows: u64,
        statements: u64,
        copy: bool,
        write: F,
    ) -> Result<()>
    where
        C: Connection,
        F: FnOnce(&mut C) -> Result<usize>,
    {
        self.chunk_counted(conn, statements, copy, |conn: &mut C| {
            write(conn).map(|affected| (input_rows, affected))
        })
    }

    /// [`chunk`](Self::chunk) for a chunk whose input rows are known only once it is written:
    /// `write` returns them with the rows affected.
    pub(crate) fn chunk_counted<C, F>(
        &mut self,
        conn: &mut C,
        statements: u64,
        copy: bool,
        write: F,
    ) -> Result<()>
    where
        C: Connection,
        F: FnOnce(&mut C) -> Result<(u64, usize)>,
    {
        let (input_rows, affected) = if self.atomic {
            write(conn)
        } else {
            conn.transaction::<_, Error, _>(write)
                .map_err(|e| Error::BulkInterrupted {
                    checkpoint: self.done,
                    source: Box::new(e),
                })
        }?;
        self.report.rows += input_rows;
        self.report.affected += affected as u64;
        self.report.chunks += 1;
        self.report.statements += statements;
        self.report.copy_chunks += u64::from(copy);
        self.done.rows_done += input_rows;
        self.done.chunks_done += 1;
        self.progress.progress(Progress {
            rows_done: self.done.rows_done,
            rows_total: self.total,
            chunks_done: self.done.chunks_done,
        });
        Ok(())
    }

    /// A `per_chunk` failure outside a chunk's own transaction (planning the next chunk, a
    /// row refused, the connection gone between chunks) as [`Error::BulkInterrupted`] with the
    /// checkpoint reached; a refused argument before anything was written stays as it is.
    pub(crate) fn interrupted(&self, e: Error, started_at: Checkpoint) -> Error {
        match e {
            Error::BulkInterrupted { .. } => e,
            Error::InvalidArgument { .. } if self.done == started_at => e,
            e => Error::BulkInterrupted {
                checkpoint: self.done,
                source: Box::new(e),
            },
        }
    }

    pub(crate) fn finish(mut self, started: Instant) -> Report {
        self.report.elapsed = started.elapsed();
        self.report
    }
}

struct Run<T, K, P> {
    table: T,
    chunk_rows: Option<NonZeroUsize>,
    want: Want,
    conflict: Option<Conflict>,
    key_of: K,
    tally: Tally<P>,
    /// The backend's limits, read from the connection once, when the first row is planned.
    limits: Option<Limits>,
}

impl<T, K, P> Run<T, K, P>
where
    T: Table + Copy,
    P: OnProgress,
{
    fn all<C, R, V, W>(
        &mut self,
        conn: &mut C,
        mut rows: impl Iterator<Item = R>,
        write: &mut W,
    ) -> Result<()>
    where
        C: BulkWrite<T, V>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
        V: QueryId,
        K: KeyOf<R>,
        W: FnMut(&mut C, T, &[ValuesClause<V, T>], &Plan, ConflictOf<'_>) -> Result<usize>,
    {
        let mut chunk: Vec<Pending<V, T, K::Key>> = Vec::new();
        // The shape of the open chunk's first row.
        let mut chunk_shape = sql::RowShape::default();
        let mut plan: Option<Plan> = None;
        let (mut binds, mut bytes) = (0usize, 0usize);
        // The shape every row renders when the row type has a static query id: Diesel's
        // promise that its SQL is the same for every value (its statement cache keys such
        // statements by type alone), so it is rendered once, not per row. Not so for a row
        // with an `Option` left to its `DEFAULT`, whose column list depends on the value.
        let mut fixed: Option<sql::RowShape> = None;
        // A row a streamed chunk took but did not write (it binds other values): the next row.
        let mut carried: Option<ValuesClause<V, T>> = None;
        loop {
            let (key, values) = match carried.take() {
                // Streamed chunks are plain inserts: their rows carry no conflict key.
                Some(values) => (None, values),
                None => match rows.next() {
                    Some(row) => (self.key_of.key_of(&row), row.values()),
                    None => break,
                },
            };
            let rendered;
            let (shape, row_bytes) = match &fixed {
                Some(shape) => (shape, C::row_bytes(&values).map_err(Error::from)?),
                None => {
                    rendered = C::row_shape(&values).map_err(Error::from)?;
                    if self.want.op == Op::Update {
                        check_update_row(&rendered, self.conflict.as_ref())?;
                    }
                    if V::HAS_STATIC_QUERY_ID {
                        fixed = Some(rendered.clone());
                    }
                    (&rendered, rendered.bytes)
                }
            };
            let fits = match &plan {
                Some(p) if !chunk.is_empty() => {
                    chunk_shape.columns == shape.columns
                        && (!p.unnest || chunk_shape.binds == shape.binds)
                        && chunk.len() < self.max_rows(p)
                        && p.bind_limit.is_none_or(|l| binds + shape.binds <= l)
                        && p.byte_limit.is_none_or(|l| bytes + row_bytes <= l)
                }
                _ => true,
            };
            if !fits {
                self.flush(conn, &mut chunk, &chunk_shape, plan.as_ref(), write)?;
                (binds, bytes) = (0, 0);
                plan = None;
            }
            if plan.is_none() {
                let (limits, first) = match self.limits {
                    Some(limits) => (limits, false),
                    None => (conn.limits().map_err(Error::from)?, true),
                };
                self.limits = Some(limits);
                let p = C::plan(self.table, shape, self.want, limits).map_err(Error::from)?;
                if first {
                    self.check_chunk_rows(&p, shape)?;
                }
                plan = Some(p);
            }
            if let Some(p) = plan.filter(|p| p.encoded) {
                // The whole chunk now, streamed from the input (the open chunk is empty: a
                // plan is made only for a chunk's first row).
                carried = self.stream(conn, &values, shape, &p, &mut rows)?;
                plan = None;
                continue;
            }
            if chunk.is_empty() {
                chunk_shape = shape.clone();
            }
            binds += shape.binds;
            bytes += row_bytes;
            chunk.push(Pending { values, key });
        }
        self.flush(conn, &mut chunk, &chunk_shape, plan.as_ref(), write)
    }

    /// Streams one chunk of an [`encoded`](Plan::encoded) plan, starting with `first`, as one
    /// statement in its own transaction under `per_chunk`; returns the row that ended it
    /// unwritten, if one did.
    fn stream<C, R, V>(
        &mut self,
        conn: &mut C,
        first: &ValuesClause<V, T>,
        shape: &sql::RowShape,
        plan: &Plan,
        rows: &mut impl Iterator<Item = R>,
    ) -> Result<Option<ValuesClause<V, T>>>
    where
        C: BulkWrite<T, V>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
    {
        let (table, op, max_rows) = (self.table, self.want.op, self.max_rows(plan));
        let mut taken = 1;
        let mut next = || {
            if taken >= max_rows {
                return None;
            }
            let row = rows.next()?;
            taken += 1;
            Some(row.values())
        };
        let mut carried = None;
        self.tally.chunk_counted(
            conn,
            plan.statements(),
            plan.copy,
            |conn: &mut C| -> Result<(u64, usize)> {
                let _scope = BudgetScope::enter(Budget::rows(max_rows as u64).spec());
                let (written, back) = conn
                    .write_stream(table, first, shape.binds, &mut next)
                    .map_err(|source| {
                        Error::query(summary(op, plan, &shape.columns, max_rows), source)
                    })?;
                carried = back;
                Ok((written as u64, written))
            },
        )?;
        Ok(carried)
    }

    fn max_rows(&self, plan: &Plan) -> usize {
        self.chunk_rows.map_or(plan.default_rows, NonZeroUsize::get)
    }

    /// A requested chunk size must fit the bind limit with the first row's binds.
    fn check_chunk_rows(&self, plan: &Plan, shape: &sql::RowShape) -> Result<()> {
        if let (Some(rows), Some(limit)) = (self.chunk_rows, plan.bind_limit) {
            if rows.get().saturating_mul(shape.binds) > limit {
                return Err(Error::InvalidArgument {
                    name: "chunk_rows",
                    reason: format!(
                        "{} rows of {} binds each pass the backend's limit of {limit} bind \
                         parameters a statement; at most {} rows fit",
                        rows,
                        shape.binds,
                        limit / shape.binds.max(1)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes `chunk` (and empties it) as one statement, in its own transaction under
    /// `per_chunk`.
    fn flush<C, V, Key: Hash + Eq, W>(
        &mut self,
        conn: &mut C,
        chunk: &mut Vec<Pending<V, T, Key>>,
        shape: &sql::RowShape,
        plan: Option<&Plan>,
        write: &mut W,
    ) -> Result<()>
    where
        C: BulkWrite<T, V>,
        W: FnMut(&mut C, T, &[ValuesClause<V, T>], &Plan, ConflictOf<'_>) -> Result<usize>,
    {
        let (Some(plan), false) = (plan, chunk.is_empty()) else {
            return Ok(());
        };
        let input_rows = chunk.len() as u64;
        if let Some(conflict) = &self.conflict {
            dedup(chunk, conflict.update);
        }
        let columns = &shape.columns;
        let names = sql::column_names(columns);
        let values: Vec<ValuesClause<V, T>> = chunk.drain(..).map(|p| p.values).collect();
        let conflict = self.conflict.as_ref().map(|c| (c, names.as_slice()));
        let table = self.table;
        let op = self.want.op;
        self.tally.chunk(
            conn,
            input_rows,
            plan.statements(),
            plan.copy,
            |conn: &mut C| -> Result<usize> {
                let _scope = BudgetScope::enter(Budget::rows(values.len() as u64).spec());
                write(conn, table, &values, plan, conflict).map_err(|e| match e {
                    Error::Query { sql: None, source } => {
                        Error::query(summary(op, plan, columns, values.len()), source)
                    }
                    other => other,
                })
            },
        )
    }
}

/// A row of an update must bind every column it names (a `DEFAULT` cannot stand in a derived
/// table) and set a column besides the key.
fn check_update_row(shape: &sql::RowShape, key: Option<&Conflict>) -> Result<()> {
    let names = sql::column_names(&shape.columns);
    let key = key.map(|c| c.key).unwrap_or_default();
    if shape.binds != names.len() {
        return Err(Error::InvalidArgument {
            name: "rows",
            reason: "a row of a bulk update leaves a column to its DEFAULT (an Option that is \
                     None): derive Insertable with `treat_none_as_default_value = false`"
                .into(),
        });
    }
    if !names.iter().any(|n| n == key) || names.len() < 2 {
        return Err(Error::InvalidArgument {
            name: "rows",
            reason: format!(
                "a row of a bulk update must set the key column `{key}` and at least one other"
            ),
        });
    }
    Ok(())
}

/// Drops the rows of `chunk` whose key comes again in it: all but the last (`last_wins`) or
/// all but the first. Rows without a key are kept.
fn dedup<V, T, Key: Hash + Eq>(chunk: &mut Vec<Pending<V, T, Key>>, last_wins: bool) {
    let mut keep: HashMap<&Key, usize> = HashMap::with_capacity(chunk.len());
    for (i, p) in chunk.iter().enumerate() {
        if let Some(k) = &p.key {
            if last_wins {
                keep.insert(k, i);
            } else {
                keep.entry(k).or_insert(i);
            }
        }
    }
    if keep.len() == chunk.len() {
        return;
    }
    let kept: Vec<bool> = chunk
        .iter()
        .enumerate()
        .map(|(i, p)| p.key.as_ref().is_none_or(|k| keep.get(k) == Some(&i)))
        .collect();
    drop(keep);
    let mut i = 0;
    chunk.retain(|_| {
        i += 1;
        kept[i - 1]
    });
}

/// The statement of a failed chunk, as the error shows it: its shape, never its values.
fn summary(op: Op, plan: &Plan, columns: &str, rows: usize) -> String {
    match op {
        Op::Update => format!("UPDATE .. FROM ({columns}) VALUES (..): {rows} rows"),
        Op::InsertReturning => {
            format!("INSERT INTO .. ({columns}) VALUES (..) RETURNING ..: {rows} rows")
        }
        Op::Insert if plan.staging => format!(
            "COPY .. ({columns}) FROM STDIN (FORMAT binary) into a staging table, INSERT .. \
             SELECT .. ON CONFLICT: {rows} rows"
        ),
        Op::Insert if plan.copy && plan.encoded => {
            format!("COPY .. ({columns}) FROM STDIN (FORMAT binary): at most {rows} rows, streamed")
        }
        Op::Insert if plan.copy => {
            format!("COPY .. ({columns}) FROM STDIN (FORMAT binary): {rows} rows")
        }
        Op::Insert if plan.unnest => format!(
            "INSERT INTO .. ({columns}) SELECT * FROM UNNEST(..) ON CONFLICT ..: {rows} rows"
        ),
        Op::Insert => format!("INSERT INTO .. ({columns}) VALUES (..): {rows} rows"),
    }
}

pub(crate) mod sealed {
    /// Only diesel-budget implements the bulk traits.
    pub trait Sealed {}
}

/// A connection bulk writes run on: this backend's bind limit and conflict clause. Sealed:
/// implemented for the Diesel connection of each backend (SQLite, PostgreSQL, MySQL).
pub trait BulkConnection: BudgetConnection + sealed::Sealed {
    /// How an update of many rows by key is written on this backend.
    #[doc(hidden)]
    const UPDATE_STYLE: sql::UpdateStyle;

    /// How a `DELETE .. RETURNING` is kept to its budget on this backend.
    #[doc(hidden)]
    const RETURNING_STYLE: sql::ReturningStyle;

    /// Bind parameters one statement may hold, read from the connection where it varies.
    #[doc(hidden)]
    fn bind_limit(&mut self) -> QueryResult<usize>;

    /// What bounds one statement on this connection: read once per bulk call (SQLite probes
    /// its bind limit, MySQL reads `max_allowed_packet`), before the first chunk is planned.
    #[doc(hidden)]
    fn limits(&mut self) -> QueryResult<Limits> {
        Ok(Limits {
            binds: self.bind_limit()?,
            bytes: None,
        })
    }

    /// Appends the upsert clause for `conflict` (`columns`: the inserted columns).
    #[doc(hidden)]
    fn push_conflict_clause<'b>(
        conflict: &'b Conflict,
        columns: &'b [String],
        out: AstPass<'_, 'b, Self::Backend>,
    ) -> QueryResult<()>;
}

/// A connection that can bulk-write rows of values `V` into table `T`: how a chunk is planned
/// and written on this backend. Sealed; you never implement it, it is the bound of
/// [`BulkInsert::execute`].
pub trait BulkWrite<T: Table, V>: BulkConnection + sql::ChunkStatements<T, V> {
    /// The columns and binds of one row.
    #[doc(hidden)]
    fn row_shape(row: &ValuesClause<V, T>) -> QueryResult<sql::RowShape>;

    /// [`RowShape::bytes`](sql::RowShape::bytes) of `row` alone, for a row whose columns and
    /// binds are known without rendering it. Default: 0 (nothing bounds a statement's bytes).
    #[doc(hidden)]
    fn row_bytes(row: &ValuesClause<V, T>) -> QueryResult<usize> {
        let _ = row;
        Ok(0)
    }

    /// How a chunk starting with a row of `shape` is written, under the connection's
    /// `limits` (read once per bulk call). Sends nothing.
    #[doc(hidden)]
    fn plan(table: T, shape: &sql::RowShape, want: Want, limits: Limits) -> QueryResult<Plan>;

    /// Writes one chunk; returns the rows affected. Default: one multi-row `INSERT` with the
    /// backend's conflict clause.
    #[doc(hidden)]
    fn write_chunk(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        plan: &Plan,
        conflict: ConflictOf<'_>,
    ) -> QueryResult<usize> {
        let _ = plan;
        self.insert_rows(table, rows, conflict)
    }

    /// Writes one chunk of an [`encoded`](Plan::encoded) plan as a stream: `first` (binding
    /// `fields` values), then each row `next` gives, encoded and sent as it is taken, until
    /// `next` gives `None` or a row does not bind exactly `fields` values or cannot be encoded
    /// while the statement runs; that row is returned, unwritten, for the chunker to plan
    /// anew. Returns the rows written. Default: unreachable (no plan of the backend sets
    /// `encoded`), an error.
    #[doc(hidden)]
    fn write_stream(
        &mut self,
        table: T,
        first: &ValuesClause<V, T>,
        fields: usize,
        next: &mut dyn FnMut() -> Option<ValuesClause<V, T>>,
    ) -> QueryResult<(usize, Option<ValuesClause<V, T>>)> {
        let _ = (table, first, fields, next);
        Err(diesel::result::Error::QueryBuilderError(
            "this backend streams no chunk".into(),
        ))
    }

    /// Updates the rows whose `key` matches a row of the chunk to the chunk's values; returns
    /// the rows matched. Default: one statement in the backend's
    /// [`UPDATE_STYLE`](BulkConnection::UPDATE_STYLE).
    #[doc(hidden)]
    fn update_chunk(
        &mut self,
        table: T,
        key: &'static str,
        rows: &[ValuesClause<V, T>],
    ) -> QueryResult<usize> {
        self.update_rows(table, key, rows)
    }

    /// Inserts one chunk and loads `returning` of each row written. Default: one multi-row
    /// `INSERT .. RETURNING`.
    #[doc(hidden)]
    fn insert_returning<S, U>(
        &mut self,
        table: T,
        rows: &[ValuesClause<V, T>],
        conflict: ConflictOf<'_>,
        returning: &S,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<Self::Backend>,
        Self::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Self::Backend> + 'static,
    {
        self.insert_rows_returning(table, rows, conflict, returning)
    }
}

/// What bounds one statement on a connection (doc-hidden: part of the sealed
/// [`BulkConnection`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bind parameters one statement may hold.
    pub binds: usize,
    /// Bytes one statement's binds may take ([`RowShape::bytes`](sql::RowShape::bytes));
    /// `None`: unbounded (MySQL's `max_allowed_packet` bounds it).
    pub bytes: Option<usize>,
}

/// The default plan of a multi-row statement under `limits`.
pub(crate) fn insert_plan(limits: Limits, shape: &sql::RowShape) -> Plan {
    Plan {
        bind_limit: Some(limits.binds),
        byte_limit: limits.bytes,
        default_rows: (limits.binds / shape.binds.max(1)).max(1),
        copy: false,
        staging: false,
        encoded: false,
        unnest: false,
    }
}

/// Runs `f` marked as the library's own statement (not the caller's, not unbudgeted). Only
/// some backends' bulk paths need it (unused in a build without them).
#[allow(dead_code)]
pub(crate) fn internal<T>(f: impl FnOnce() -> T) -> T {
    let _scope = InternalScope::enter();
    f()
}

#[cfg(test)]
mod tests {
    use super::{dedup, Pending};
    use diesel::query_builder::ValuesClause;

    fn pending(key: i32, v: i32) -> Pending<i32, (), i32> {
        let mut values = ValuesClause::<i32, ()>::default();
        values.values = v;
        Pending {
            values,
            key: Some(key),
        }
    }

    #[test]
    fn dedup_keeps_the_last_or_the_first_of_a_key_in_input_order() {
        let make = || {
            vec![
                pending(1, 10),
                pending(2, 20),
                pending(1, 11),
                pending(3, 30),
            ]
        };
        let mut last = make();
        dedup(&mut last, true);
        let got: Vec<i32> = last.iter().map(|p| p.values.values).collect();
        assert_eq!(got, [20, 11, 30]);
        let mut first = make();
        dedup(&mut first, false);
        let got: Vec<i32> = first.iter().map(|p| p.values.values).collect();
        assert_eq!(got, [10, 20, 30]);
    }
}
