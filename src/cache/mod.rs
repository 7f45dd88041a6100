//! A read-through cache for budgeted queries: results kept in memory, bounded in bytes and
//! entries, and dropped when a write to a table they read is committed.
//!
//! ```
//! # include!("../../tests/doc_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, mut conn) = demo_db(100)?;
//! use std::sync::Arc;
//! use diesel::prelude::*;
//! use diesel_budget::prelude::*;
//! use diesel_budget::demo::{items, Item};
//!
//! let cache = Cache::builder().max_bytes(8 << 20).max_entries(1_000).build()?;
//! cache.attach(&db); // this pool's writes invalidate it
//!
//! let q = || items::table.filter(items::category.eq(3)).order(items::id).budget(Budget::rows(50));
//! let first: Arc<[Item]> = cache.load(q(), &mut conn)?; // from the database
//! let again: Arc<[Item]> = cache.load(q(), &mut conn)?; // from the cache: the same rows
//! assert!(Arc::ptr_eq(&first, &again));
//!
//! // A committed write to `items`, by any statement on a connection of `db`...
//! diesel::update(items::table.filter(items::id.eq(3)))
//!     .set(items::name.eq("renamed"))
//!     .execute(conn.unbudgeted())?;
//! // ...and the next read goes to the database again.
//! let fresh: Arc<[Item]> = cache.load(q(), &mut conn)?;
//! assert_eq!(fresh[0].name, "renamed");
//! assert_eq!(cache.stats().hits, 1);
//! # Ok(()) }
//! ```
//!
//! # What is cached, under which key
//! The key is the backend, the SQL with its placeholders, the bound values (their `Debug`
//! form), the budget and the row type (`TypeId` and name): the same query loaded into two row
//! types, or under two budgets, is two entries. The budget applies to what is loaded: a
//! result over the budget is the usual [`Error::BudgetExceeded`] and nothing is stored.
//! Errors are never cached. A hit hands out the same `Arc<[U]>` to every reader: no copy.
//!
//! # Never stale after a committed write
//! Every statement on a connection of an attached [`Db`] is read by its instrumentation (the
//! executor's, [`Conn::unbudgeted`]'s, plain Diesel's, and `batch_execute` text alike). Writes
//! (`INSERT`, `UPDATE`, `DELETE`, `REPLACE`, `TRUNCATE`, `MERGE`) name the tables they write;
//! a statement that cannot be read for certain (DDL, `COPY`, `CALL`, a writing CTE, ..) counts
//! as a write to every table. Those tables' entries are dropped when the write becomes visible
//! to others: at the end of an autocommit statement, or when the outermost transaction
//! commits; never for a rollback. Each table has a generation: a fill that started before a
//! write committed and finished after it is not stored, and readers that arrive after the
//! commit never wait for such a fill. Readers that began before the commit may get what the
//! database had then.
//!
//! Inside a transaction, a read may be served by the cache (committed data) but its result is
//! never stored (a transaction's snapshot may be older than the cache); inside a transaction
//! that has written, reads bypass the cache altogether (they must see their own writes). A
//! read on a connection whose writes this cache does not follow (another pool, a plain
//! connection) bypasses the cache too ([`CacheStats::bypassed`]).
//!
//! What the cache cannot see: writes by other programs or other pools (call
//! [`Cache::invalidate`]), functions or triggers that write tables other than the statement's
//! own (invalidate those tables yourself, or read through functions that the cache counts as
//! depending on every table: a query with no `FROM` depends on every table), and statements run
//! while the connection's instrumentation was replaced through
//! `conn.unbudgeted().set_instrumentation(..)` (use [`Conn::set_instrumentation`], which
//! keeps ours).

#[cfg(feature = "shared-cache")]
pub mod shared;
pub(crate) mod sql;
pub mod tier;
pub(crate) mod track;

#[cfg(feature = "shared-cache")]
pub use shared::{SharedCache, SharedCacheBuilder};

use std::any::TypeId;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::backend::Backend;
use diesel::connection::{Connection, TransactionManager};
use diesel::query_builder::{AsQuery, QueryFragment};

use crate::backend::BudgetConnection;
use crate::budget::{Metering, Strict};
#[cfg(doc)]
use crate::db::Conn;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::exec::sealed::TOKEN;
use crate::exec::{ConnectionOf, Executor, LoadBudgeted};
use crate::instrument::BudgetInstrumentation;
use crate::query::Budgeted;
use tier::memory::{Key, Lookup, Store, Stored};
use track::{Invalidate, Written};

/// An in-process result cache for budgeted queries. Cheap to clone (clones share the entries).
/// Built by [`Cache::builder`]; see the [module docs](self).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    max_entry_bytes: u64,
    ttl: Option<Duration>,
    misses: AtomicU64,
    fills: AtomicU64,
    coalesced: AtomicU64,
    bypassed: AtomicU64,
    raced: AtomicU64,
    too_large: AtomicU64,
    invalidations: AtomicU64,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Invalidate for Inner {
    fn invalidate_written(&self, written: &Written) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.store.invalidate(written);
    }
}

/// What a [`Cache`] has done since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to the database (fills, waits for a fill that failed, reads in a
    /// transaction that found nothing).
    pub misses: u64,
    /// Results loaded from the database and stored.
    pub fills: u64,
    /// Reads that waited for another thread's fill of the same key and got its rows
    /// (single-flight): counted neither as hits nor as misses.
    pub coalesced: u64,
    /// Reads that bypassed the cache: inside a transaction that has written, on a
    /// connection whose writes the cache does not follow, or (shared tier) while the server
    /// is marked down.
    pub bypassed: u64,
    /// Fills not stored because a write to a table they read committed while they ran.
    pub raced: u64,
    /// Results served but not stored: over the per-entry limit.
    pub too_large: u64,
    /// Entries dropped to stay within the bounds (least recently used first).
    pub evictions: u64,
    /// Committed writes (or [`Cache::invalidate`] calls) announced to the cache.
    pub invalidations: u64,
    /// Entries dropped by invalidations.
    pub invalidated: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now: rows (as byte budgets count them: `GetSize`) plus keys.
    pub bytes: u64,
    /// Shared tier: entries found and refused (another format version, a MAC that does not
    /// verify, another row identity): served from the database instead.
    pub rejected: u64,
    /// Shared tier: calls to the server that failed or timed out (the reads went to the
    /// database).
    pub tier_errors: u64,
    /// Shared tier: times the server was reached again after a failure (each bumped the
    /// epoch, invalidating every entry).
    pub recoveries: u64,
}

impl CacheStats {
    /// Hits over hits and misses; 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Settings for a [`Cache`]; every setter says its default.
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    max_bytes: u64,
    max_entries: usize,
    max_entry_bytes: Option<u64>,
    ttl: Option<Duration>,
}

impl CacheBuilder {
    /// Most bytes the entries may hold together (rows as `GetSize` counts them, plus keys).
    /// Default: 64 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Most entries. Default: 10,000.
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries;
        self
    }

    /// Largest single entry; a larger result is served and not stored. Default: a sixteenth
    /// of [`max_bytes`](Self::max_bytes).
    ///
    /// The entries are split by key hash over up to 16 shards, each with its own lock and an
    /// equal share of the bounds, so that readers of different keys do not wait for each
    /// other: as many shards as leave each room for one entry of this size (a power of two;
    /// one when this is over half of `max_bytes`).
    pub fn max_entry_bytes(mut self, bytes: u64) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// How long an entry may be served. Default: none (until invalidated or evicted).
    /// [`Cached::ttl`] sets it per query.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The cache.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `max_bytes` or `max_entries`, or a
    /// `max_entry_bytes` larger than `max_bytes`.
    pub fn build(self) -> Result<Cache> {
        let invalid = |name, reason: &str| {
            Err(Error::InvalidArgument {
                name,
                reason: reason.into(),
            })
        };
        if self.max_bytes == 0 {
            return invalid("max_bytes", "a cache needs room for at least one byte");
        }
        let Some(entries) = NonZeroUsize::new(self.max_entries) else {
            return invalid("max_entries", "a cache needs room for at least one entry");
        };
        let max_entry_bytes = self.max_entry_bytes.unwrap_or(self.max_bytes / 16).max(1);
        if max_entry_bytes > self.max_bytes {
            return invalid(
                "max_entry_bytes",
                "an entry cannot be larger than the cache",
            );
        }
        Ok(Cache {
            inner: Arc::new(Inner {
                store: Store::new(self.max_bytes, entries.get(), max_entry_bytes),
                max_entry_bytes,
                ttl: self.ttl,
                misses: AtomicU64::new(0),
                fills: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                bypassed: AtomicU64::new(0),
                raced: AtomicU64::new(0),
                too_large: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
            }),
        })
    }
}

/// How a read may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Hits, fills, single-flight.
    Full,
    /// In a transaction: hits only; results are not stored.
    HitsOnly,
    /// Straight to the database.
    Bypass,
}

impl Cache {
    /// Starts configuring a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            max_bytes: 64 << 20,
            max_entries: 10_000,
            max_entry_bytes: None,
            ttl: None,
        }
    }

    /// Follows the writes of `db`'s connections: their committed writes invalidate this cache,
    /// and reads on them may use it. Attach before the pool's connections start transactions.
    /// A cache can follow several pools, and a pool feed several caches.
    pub fn attach<C: BudgetConnection>(&self, db: &Db<C>) {
        let me: Arc<dyn Invalidate> = self.inner.clone();
        attach_observer(me, db);
    }

    /// Drops every entry that read `table` (for writes this cache cannot see: other programs,
    /// other pools). Names are compared without case and schema.
    pub fn invalidate(&self, table: &str) {
        let mut written = Written::default();
        written.tables.insert(table.to_lowercase());
        self.inner.invalidate_written(&written);
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        let written = Written {
            all: true,
            ..Written::default()
        };
        self.inner.invalidate_written(&written);
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let held = self.inner.store.held();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let i = &self.inner;
        CacheStats {
            hits: held.hits,
            misses: get(&i.misses),
            fills: get(&i.fills),
            coalesced: get(&i.coalesced),
            bypassed: get(&i.bypassed),
            raced: get(&i.raced),
            too_large: get(&i.too_large),
            evictions: held.evictions,
            invalidations: get(&i.invalidations),
            invalidated: held.invalidated,
            entries: held.entries,
            bytes: held.bytes,
            ..CacheStats::default()
        }
    }

    /// Loads `query` through the cache: the rows from the cache when a current entry exists,
    /// otherwise from the database under the query's budget (and stored when they may be).
    /// Concurrent misses of the same key run the query once; the others wait for its rows.
    ///
    /// Strict budgets only (a truncated result is not cached).
    ///
    /// # Errors
    /// As [`RunBudgetedDsl::load`](crate::RunBudgetedDsl::load): the budget still applies.
    pub fn load<'q, X, Q, M, U>(
        &self,
        query: Budgeted<Q, M, Strict>,
        conn: &mut X,
    ) -> Result<Arc<[U]>>
    where
        X: Executor,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<<ConnectionOf<X> as Connection>::Backend>,
        <ConnectionOf<X> as Connection>::Backend: Default,
        <<ConnectionOf<X> as Connection>::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, ConnectionOf<X>, U, Output = Vec<U>>,
        U: get_size2::GetSize + Send + Sync + 'static,
    {
        self.load_ttl(query, self.inner.ttl, conn.connection(TOKEN))
    }

    fn mode<C: BudgetConnection>(&self, conn: &mut C) -> Mode {
        mode_of(Arc::as_ptr(&self.inner).cast(), conn)
    }

    fn load_ttl<'q, C, Q, M, U>(
        &self,
        query: Budgeted<Q, M, Strict>,
        ttl: Option<Duration>,
        conn: &mut C,
    ) -> Result<Arc<[U]>>
    where
        C: BudgetConnection,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<C::Backend>,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, C, U, Output = Vec<U>>,
        U: get_size2::GetSize + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let budgeted = Budgeted {
            query: query.query.as_query(),
            budget: query.budget,
        };
        let mode = self.mode(conn);
        if mode == Mode::Bypass {
            inner.bypassed.fetch_add(1, Ordering::Relaxed);
            return budgeted.internal_load(conn).map(Arc::from);
        }
        let mut query = String::with_capacity(256);
        {
            use std::fmt::Write as _;
            let _ = write!(
                query,
                "{:?}",
                diesel::debug_query::<C::Backend, _>(&budgeted.query)
            );
        }
        let key = Key {
            backend: C::KIND,
            row_type: TypeId::of::<U>(),
            row_type_name: std::any::type_name::<U>(),
            budget: budgeted.budget.spec(),
            query,
        };
        // A hit needs only the key; the tables read are worked out on a miss, outside the lock.
        let hit = inner.store.lookup::<Arc<[U]>>(&key, None, false);
        if let Some(Lookup::Hit(rows)) = hit {
            return Ok(rows);
        }
        let (sql, _) =
            crate::instrument::split_query(&diesel::debug_query::<C::Backend, _>(&budgeted.query));
        let deps = Arc::new(sql::read_tables(&sql));
        let found = inner
            .store
            .lookup::<Arc<[U]>>(&key, Some(&deps), mode == Mode::Full);
        let flight = match found {
            Some(Lookup::Hit(rows)) => {
                return Ok(rows);
            }
            Some(Lookup::Follow(flight)) => {
                if let Some(rows) = flight.wait::<Arc<[U]>>() {
                    inner.coalesced.fetch_add(1, Ordering::Relaxed);
                    return Ok(rows);
                }
                inner.misses.fetch_add(1, Ordering::Relaxed);
                return budgeted.internal_load(conn).map(Arc::from);
            }
            Some(Lookup::Lead(flight)) => flight,
            None => {
                inner.misses.fetch_add(1, Ordering::Relaxed);
                return budgeted.internal_load(conn).map(Arc::from);
            }
        };
        inner.misses.fetch_add(1, Ordering::Relaxed);
        // Followers are released however this ends (an error, a panic in the query).
        let mut lead = Lead {
            cache: inner,
            key: Some(key),
            flight,
        };
        let rows: Arc<[U]> = Arc::from(budgeted.internal_load(conn)?);
        let key = lead.key.take();
        let Some(key) = key else {
            return Ok(rows);
        };
        let bytes = key.bytes() + rows.iter().map(|r| r.get_size() as u64).sum::<u64>();
        let offer = if bytes > inner.max_entry_bytes {
            inner.too_large.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some((
                Box::new(Arc::clone(&rows)) as Box<dyn std::any::Any + Send + Sync>,
                bytes,
                deps,
                ttl.map(|t| Instant::now() + t),
            ))
        };
        let stored = inner.store.finish(key, &lead.flight, offer);
        match stored {
            Stored::Yes => {
                inner.fills.fetch_add(1, Ordering::Relaxed);
                lead.flight.publish(Some(Box::new(Arc::clone(&rows))));
            }
            Stored::Raced => {
                inner.raced.fetch_add(1, Ordering::Relaxed);
                // Its followers joined before the write committed: these rows are what the
                // database had when they asked.
                lead.flight.publish(Some(Box::new(Arc::clone(&rows))));
            }
            Stored::No | Stored::TooLarge => {
                lead.flight.publish(Some(Box::new(Arc::clone(&rows))));
            }
        }
        Ok(rows)
    }
}

/// Makes `me` follow `db`'s writes.
pub(crate) fn attach_observer<C: BudgetConnection>(me: Arc<dyn Invalidate>, db: &Db<C>) {
    let observers = &db.stats_cell().writes;
    if !observers.contains(&me) {
        observers.add(Arc::downgrade(&me));
    }
}

/// How a read on `conn` may use the cache at address `me` (compared, never dereferenced: no
/// reference count is touched on the hit path).
pub(crate) fn mode_of<C: BudgetConnection>(me: *const (), conn: &mut C) -> Mode {
    let (followed, written, tracked_tx) = match conn
        .instrumentation()
        .downcast_ref::<BudgetInstrumentation>()
    {
        Some(ours) => (
            ours.stats_cell().writes.follows(me),
            ours.writes.has_written(),
            ours.writes.in_transaction(),
        ),
        None => (false, false, false),
    };
    if !followed || written {
        return Mode::Bypass;
    }
    let diesel_tx = !matches!(
        <C as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth(),
        Ok(None)
    );
    if tracked_tx || diesel_tx {
        Mode::HitsOnly
    } else {
        Mode::Full
    }
}

/// A fill in progress: on drop without a result (error, panic) the flight ends empty and its
/// followers run the query themselves.
struct Lead<'a> {
    cache: &'a Inner,
    key: Option<Key>,
    flight: Arc<tier::memory::Flight>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache.store.finish(key, &self.flight, None);
        }
        self.flight.publish(None);
    }
}

/// `.cached(&cache)` on a budgeted query: [`Cache::load`] with a per-query TTL.
pub trait CacheDsl: Sized {
    /// This query, to be loaded through `cache`.
    fn cached(self, cache: &Cache) -> Cached<'_, Self>;
}

impl<Q, M> CacheDsl for Budgeted<Q, M, Strict> {
    fn cached(self, cache: &Cache) -> Cached<'_, Self> {
        Cached {
            query: self,
            cache,
            ttl: cache.inner.ttl,
        }
    }
}

/// A budgeted query bound to a [`Cache`] ([`CacheDsl::cached`]).
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(10)?;
/// use std::time::Duration;
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::{items, Item};
///
/// let cache = Cache::builder().build()?;
/// cache.attach(&db);
/// let rows = items::table
///     .order(items::id)
///     .budget(Budget::rows(10))
///     .cached(&cache)
///     .ttl(Duration::from_secs(30))
///     .load::<Item, _>(&mut conn)?;
/// assert_eq!(rows.len(), 10);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a cached query does nothing until it is loaded"]
pub struct Cached<'c, B> {
    query: B,
    cache: &'c Cache,
    ttl: Option<Duration>,
}

impl<Q, M> Cached<'_, Budgeted<Q, M, Strict>> {
    /// How long this query's result may be served. Default: the cache's
    /// ([`CacheBuilder::ttl`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// [`Cache::load`] with this query's TTL.
    ///
    /// # Errors
    /// As [`Cache::load`].
    pub fn load<'q, U, X>(self, conn: &mut X) -> Result<Arc<[U]>>
    where
        X: Executor,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<<ConnectionOf<X> as Connection>::Backend>,
        <ConnectionOf<X> as Connection>::Backend: Default,
        <<ConnectionOf<X> as Connection>::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, ConnectionOf<X>, U, Output = Vec<U>>,
        U: get_size2::GetSize + Send + Sync + 'static,
    {
        self.cache
            .load_ttl(self.query, self.ttl, conn.connection(TOKEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_refuses_what_cannot_work() {
        assert!(Cache::builder().max_bytes(0).build().is_err());
        assert!(Cache::builder().max_entries(0).build().is_err());
        assert!(Cache::builder()
            .max_bytes(10)
            .max_entry_bytes(11)
            .build()
            .is_err());
        assert!(Cache::builder().build().is_ok());
    }
}
