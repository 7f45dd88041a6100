//! Delete by keys, a chunk of keys a statement.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Instant;

use diesel::deserialize::FromSqlRow;
use diesel::expression::Expression;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::{Column, QueryResult, Table};

use super::returning::BulkReturning;
use super::{BulkConnection, Checkpoint, ChunkMode, Limits, NoProgress, OnProgress, Progress};
use super::{Report, Tally};
use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::exec::{sealed as access, ConnectionOf, Executor};
use crate::instrument::BudgetScope;

/// Keys a delete chunk holds by default on the servers (SQLite's default is its bind limit):
/// PostgreSQL's `= ANY($1)` takes one bind whatever the count; on MySQL/MariaDB an `IN (..)`
/// list as wide as the bind limit (65,535) ran at 0.84x of plain Diesel's 10,000-key
/// statements (MariaDB 10.11, 10^5 rows).
#[allow(dead_code)] // unused in a build with neither server backend
pub(crate) const DELETE_KEYS: usize = 10_000;

/// Starts a bulk delete of the rows of `table` whose `key` column equals one of `keys` (a
/// slice, a `Vec` or any iterator of key values, never collected whole). Keys with no row
/// delete nothing; a key given twice is deleted once.
///
/// One statement per chunk of keys:
/// - PostgreSQL: `DELETE FROM t WHERE t.k = ANY($1)`: **one bind whatever the chunk**, 10,000
///   keys a chunk by default;
/// - SQLite and MySQL/MariaDB: `DELETE FROM t WHERE t.k IN (?, ?, ..)`, as many keys as the
///   bind limit allows (SQLite read from the connection; MySQL 65,535, and its
///   `max_allowed_packet` read from the server).
///
/// Transaction modes, progress and resume as for [`insert_into`](super::insert_into);
/// [`returning`](BulkDelete::returning) loads the deleted rows under a budget.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = demo_db(100)?;
/// use diesel_budget::bulk;
/// use diesel_budget::demo::items;
///
/// let report = bulk::delete(items::table, items::id, (1..=100).filter(|id| id % 2 == 0))
///     .execute(&mut conn)?;
/// assert_eq!((report.rows, report.affected), (50, 50));
/// # Ok(()) }
/// ```
pub fn delete<T, Col, I>(table: T, key: Col, keys: I) -> BulkDelete<T, Col, I::IntoIter>
where
    T: Table,
    Col: Column<Table = T>,
    I: IntoIterator,
{
    let _ = key;
    BulkDelete {
        table,
        keys: keys.into_iter(),
        mode: ChunkMode::new(),
        _key: PhantomData,
    }
}

/// A bulk delete being configured; run it with [`execute`](Self::execute). Built by
/// [`delete`].
#[must_use = "a bulk delete does nothing until `.execute(&mut conn)`"]
#[derive(Debug)]
pub struct BulkDelete<T, Col, I, P = NoProgress> {
    table: T,
    keys: I,
    mode: ChunkMode<P>,
    _key: PhantomData<fn() -> Col>,
}

impl<T, Col, I, P> BulkDelete<T, Col, I, P> {
    /// All or nothing (the default), as [`BulkInsert::atomic`](super::BulkInsert::atomic).
    pub fn atomic(mut self) -> Self {
        self.mode = self.mode.atomic(true);
        self
    }

    /// Each chunk of keys commits, as
    /// [`BulkInsert::per_chunk`](super::BulkInsert::per_chunk); a failure is
    /// [`Error::BulkInterrupted`] whose [`Checkpoint`] counts the keys done.
    pub fn per_chunk(mut self) -> Self {
        self.mode = self.mode.atomic(false);
        self
    }

    /// Continues an interrupted [`per_chunk`](Self::per_chunk) delete: `checkpoint.rows_done`
    /// keys of the input are skipped (same input, same order). Default: from the first key.
    pub fn resume(mut self, checkpoint: Checkpoint) -> Self {
        self.mode = self.mode.resume(checkpoint);
        self
    }

    /// At most `keys` keys a chunk. Default: 10,000 on PostgreSQL (one array bind), the bind
    /// limit elsewhere. More than the bind limit is [`Error::InvalidArgument`] before
    /// anything is deleted.
    pub fn chunk_rows(mut self, keys: NonZeroUsize) -> Self {
        self.mode = self.mode.chunk_rows(keys);
        self
    }

    /// Calls `callback` after each chunk (`rows_done`: keys done). Default: none.
    pub fn on_progress<F: FnMut(Progress)>(self, callback: F) -> BulkDelete<T, Col, I, F> {
        BulkDelete {
            table: self.table,
            keys: self.keys,
            mode: self.mode.on_progress(callback),
            _key: PhantomData,
        }
    }

    /// Loads `returning` (a column or a tuple of columns) of every row deleted, under a row
    /// `budget`: more deleted rows than the budget fail with [`Error::BudgetExceeded`] having
    /// loaded at most budget + 1 rows, and **nothing is deleted** (a delete with `RETURNING`
    /// is always [`atomic`](Self::atomic): its transaction, or savepoint, is rolled back).
    /// How the server is kept from sending more: PostgreSQL `WITH d AS (DELETE .. RETURNING
    /// ..) SELECT * FROM d LIMIT $n`; SQLite 3.35+ `DELETE .. RETURNING ..`, read a row at a
    /// time and stopped at the limit (SQLite applies the whole delete at the first step and
    /// keeps the chunk's returned rows inside the library); MySQL/MariaDB `SELECT .. WHERE k IN
    /// (..) LIMIT ? FOR UPDATE` then the `DELETE` of the same keys in the same transaction,
    /// checked to delete exactly the rows read (MariaDB's own `DELETE .. RETURNING` cannot be
    /// read through Diesel's prepared statements; MySQL has none).
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (_db, mut conn) = demo_db(100)?;
    /// use diesel_budget::bulk;
    /// use diesel_budget::demo::{items, Item};
    /// use diesel_budget::Budget;
    ///
    /// let (report, gone) = bulk::delete(items::table, items::id, 1..=10)
    ///     .returning(items::all_columns, Budget::rows(10))
    ///     .execute::<_, _, Item>(&mut conn)?;
    /// assert_eq!((report.affected, gone.len()), (10, 10));
    ///
    /// // 90 rows left: a budget of 50 refuses, and nothing is deleted.
    /// let err = bulk::delete(items::table, items::id, 1..=100)
    ///     .returning(items::id, Budget::rows(50))
    ///     .execute::<_, _, i32>(&mut conn)
    ///     .unwrap_err();
    /// assert!(err.is_budget_exceeded());
    /// # Ok(()) }
    /// ```
    pub fn returning<S>(mut self, returning: S, budget: Budget) -> BulkReturning<Self, S> {
        self.mode = self.mode.atomic(true);
        BulkReturning::new(self, returning, budget.spec())
    }
}

/// A connection that can delete rows of table `T` by keys of type `K` in column `Col`: how a
/// chunk of keys is written on this backend. Sealed; the bound of [`BulkDelete::execute`].
pub trait BulkKeys<T: Table, Col, K>: BulkConnection {
    /// Keys one statement may hold (`None`: one array bind, no limit) and bytes their binds
    /// may take (`None`: unbounded) under the connection's `limits` (read once per bulk
    /// call); the default keys a chunk.
    #[doc(hidden)]
    fn key_plan(limits: Limits) -> (Option<usize>, Option<usize>, usize);

    /// Bytes `key` takes on the wire where the server bounds a statement's size; else 0.
    #[doc(hidden)]
    fn key_bytes(key: &K) -> QueryResult<usize>;

    /// Appends the key set: ` = ANY($1)` or ` IN (?, ..)`.
    #[doc(hidden)]
    fn push_key_set<'b>(keys: &'b [K], out: AstPass<'_, 'b, Self::Backend>) -> QueryResult<()>;

    /// Deletes the rows of a chunk of keys; returns how many.
    #[doc(hidden)]
    fn delete_keys(&mut self, table: T, keys: &[K]) -> QueryResult<usize>;

    /// Deletes the rows of a chunk of keys and loads `returning` of at most `limit` of them.
    #[doc(hidden)]
    fn delete_returning<S, U>(
        &mut self,
        table: T,
        keys: &[K],
        returning: &S,
        limit: u64,
    ) -> QueryResult<Vec<U>>
    where
        S: Expression + QueryFragment<Self::Backend>,
        Self::Backend: QueryMetadata<S::SqlType>,
        U: FromSqlRow<S::SqlType, Self::Backend> + 'static;
}

impl<T, Col, I, P> BulkDelete<T, Col, I, P>
where
    T: Table + Copy,
    P: OnProgress,
{
    /// Deletes the rows of the keys; returns what was done ([`Report::rows`]: keys;
    /// [`Report::affected`]: rows deleted).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] before anything is deleted when
    /// [`chunk_rows`](Self::chunk_rows) passes the bind limit; [`Error::Query`] when a
    /// statement fails in [`atomic`](Self::atomic) mode (nothing was deleted);
    /// [`Error::BulkInterrupted`] in [`per_chunk`](Self::per_chunk) mode.
    pub fn execute<X, K>(self, conn: &mut X) -> Result<Report>
    where
        X: Executor,
        I: Iterator<Item = K>,
        ConnectionOf<X>: BulkKeys<T, Col, K>,
    {
        let conn = conn.connection(access::TOKEN);
        self.run(conn, |conn, table, keys| Ok(conn.delete_keys(table, keys)?))
    }

    /// Runs the chunks of keys through `write` in the transaction mode asked for.
    pub(crate) fn run<C, K, W>(self, conn: &mut C, mut write: W) -> Result<Report>
    where
        C: BulkKeys<T, Col, K>,
        I: Iterator<Item = K>,
        W: FnMut(&mut C, T, &[K]) -> Result<usize>,
    {
        let started = Instant::now();
        let BulkDelete {
            table,
            mut keys,
            mode,
            ..
        } = self;
        let total = mode.skip_done(&mut keys, "keys")?;
        let ChunkMode {
            atomic,
            chunk_rows,
            resume,
            progress,
        } = mode;
        let mut tally = Tally::new(atomic, resume, total, progress);
        let mut body = |conn: &mut C| -> Result<()> {
            let limits = conn.limits().map_err(Error::from)?;
            let (bind_limit, byte_limit, default) = C::key_plan(limits);
            // One bind is kept for the LIMIT of a budgeted `RETURNING` (MariaDB).
            let bind_limit = bind_limit.map(|l| l.saturating_sub(1).max(1));
            let max = match (chunk_rows, bind_limit) {
                (Some(n), Some(l)) if n.get() > l => {
                    return Err(Error::InvalidArgument {
                        name: "chunk_rows",
                        reason: format!(
                            "{n} keys a chunk pass the backend's limit of {l} keys a statement"
                        ),
                    })
                }
                (Some(n), _) => n.get(),
                (None, Some(l)) => default.min(l),
                (None, None) => default,
            };
            let mut chunk: Vec<K> = Vec::with_capacity(max.min(default.max(1024)));
            let mut next = keys.next();
            while next.is_some() {
                let mut bytes = 0usize;
                while let Some(key) = next.take() {
                    let b = C::key_bytes(&key).map_err(Error::from)?;
                    let full = chunk.len() >= max
                        || (!chunk.is_empty() && byte_limit.is_some_and(|l| bytes + b > l));
                    if full {
                        next = Some(key);
                        break;
                    }
                    bytes += b;
                    chunk.push(key);
                    next = keys.next();
                }
                let n = chunk.len();
                tally.chunk(conn, n as u64, 1, false, |conn: &mut C| {
                    let _scope = BudgetScope::enter(Budget::rows(n as u64).spec());
                    write(conn, table, &chunk).map_err(|e| match e {
                        Error::Query { sql: None, source } => Error::query(
                            format!("DELETE FROM .. WHERE key IN (..): {n} keys"),
                            source,
                        ),
                        other => other,
                    })
                })?;
                chunk.clear();
            }
            Ok(())
        };
        if atomic {
            conn.transaction::<_, Error, _>(&mut body)?;
        } else {
            let result = body(conn);
            result.map_err(|e| tally.interrupted(e, resume))?;
        }
        Ok(tally.finish(started))
    }
}
