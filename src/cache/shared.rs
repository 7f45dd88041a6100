//! A result cache kept in a server that several processes share (Redis, Memcached), so that they
//! share hits and invalidations.
//!
//! # Entries and generations
//! A result is stored under `{namespace}:e:{digest}`, where the digest (SHA-256) covers the
//! backend, the SQL with placeholders, the bound values, the budget and the row type's name.
//! Its value is the rows serialised with serde (postcard), after a header:
//!
//! `"DBC" | format version (1) | row identity (8) | n (2) | n generations (8 each) | rows | tag (32)`
//!
//! The generations are the counters, read from the server before the query ran, of the global
//! epoch (`{namespace}:epoch`) and of each table the query reads (`{namespace}:t:{table}`; a
//! query whose tables cannot be read with certainty depends on `{namespace}:any`, bumped by
//! every write). A committed write bumps its tables' counters (and `any`) in the server, so
//! every process sees it: an entry whose generations are not the current ones is a miss, and a
//! fill that raced a write stores an entry that is never served. Counters start at a value
//! made of the clock and random bits, so a counter that expired or was evicted never comes
//! back at a value an old entry carries.
//!
//! # Trust: the server is not trusted
//! The tag is HMAC-SHA256 with the application's key over the entry's key digest and
//! everything before the tag. An entry of another format version, one whose tag does not
//! verify (written by another program, or by anyone with access to the server, or moved from
//! another key), and one of another row identity (the row type's name, size and alignment, and
//! the [`row_version`](SharedCacheBuilder::row_version) you give) is a miss: rows are
//! deserialised only from an entry that verified. Counted in [`CacheStats::rejected`].
//!
//! # Expiry and size
//! Every key written has an expiry: entries the query's TTL (default one hour), counters the
//! [generation TTL](SharedCacheBuilder::generation_ttl). An entry larger than the tier's limit
//! (Memcached's item size, 1 MiB by default) or [`max_entry_bytes`](SharedCacheBuilder::max_entry_bytes)
//! is served and not stored ([`CacheStats::too_large`]).
//!
//! # When the server is down or slow
//! Every call to the server is bounded by the tier's timeout. A call that fails marks the tier
//! down for this process: reads go to the database (never an error) and store nothing. After
//! [`retry_after`](SharedCacheBuilder::retry_after), the next read tries the server again, and
//! its first command bumps the global epoch: every entry stored before is a miss from then on,
//! in every process. So the writes this process committed while it could not reach the server
//! (whose invalidations were lost) are never hidden by an older entry once it is back, and
//! neither are writes of other processes that lost the server at the same time (each bumps the
//! epoch when it gets it back). What no process can prevent: while one process alone cannot
//! reach the server, the others do not learn of its writes until it is back; keep the TTL as
//! short as such a window may be.
//!
//! Fills are not coalesced across processes (each process that misses runs the query once).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::backend::Backend;
use diesel::connection::Connection;
use diesel::query_builder::{AsQuery, QueryFragment};
use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::sql::{self, Tables};
use super::tier::SharedTier;
use super::track::{Invalidate, Written};
use super::{mode_of, CacheStats, Mode};
use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Metering, Strict};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::exec::sealed::TOKEN;
use crate::exec::{ConnectionOf, Executor, LoadBudgeted};
use crate::query::Budgeted;

/// The entry format this version writes and reads.
pub(crate) const FORMAT: u8 = 1;
const MAGIC: &[u8; 3] = b"DBC";
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 3 + 1 + 8 + 2;
/// Domain separation for the entry MAC and the key digest.
const CONTEXT: &[u8] = b"diesel-budget cache entry";

/// The shortest MAC key a [`SharedCache`] accepts.
pub const MIN_KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A result cache in a shared server ([`SharedTier`]): several processes share its hits, and
/// the committed writes of each invalidate for all. Cheap to clone. See the
/// [module docs](self) for the entry format, the trust model and the failure rule.
///
/// # Example
/// ```no_run
/// # include!("../../tests/doc_setup.rs");
/// # #[cfg(feature = "redis")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(100)?;
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::cache::SharedCache;
/// use diesel_budget::cache::tier::redis::RedisTier;
/// use diesel_budget::demo::{items, Item};
///
/// let key = [7u8; 32]; // the application's secret, from its configuration
/// let cache = SharedCache::builder(RedisTier::new("redis://127.0.0.1:6379/")?, &key)
///     .namespace("shop")
///     .row_version("2024-06-01") // change when a cached row type changes shape
///     .build()?;
/// cache.attach(&db);
/// let q = || items::table.filter(items::category.eq(3)).order(items::id).budget(Budget::rows(50));
/// let rows: Vec<Item> = cache.load(q(), &mut conn)?; // the database, then the server
/// let again: Vec<Item> = cache.load(q(), &mut conn)?; // the server (any process)
/// assert_eq!(rows, again);
/// # Ok(()) }
/// # #[cfg(not(feature = "redis"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct SharedCache {
    inner: Arc<Shared>,
}

struct Shared {
    tier: Box<dyn SharedTier>,
    mac_key: Vec<u8>,
    namespace: String,
    row_version: String,
    ttl: Duration,
    generation_ttl: Duration,
    retry_after: Duration,
    max_entry_bytes: usize,
    /// The tier failed and has not been reached since.
    down: AtomicBool,
    /// Times the tier was marked down: a fill stores only when this did not change.
    outages: AtomicU64,
    /// When to try the tier again; held while recovering, and by an invalidation that finds
    /// the tier down.
    retry_at: Mutex<Instant>,
    hits: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    bypassed: AtomicU64,
    too_large: AtomicU64,
    invalidations: AtomicU64,
    rejected: AtomicU64,
    tier_errors: AtomicU64,
    recoveries: AtomicU64,
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("tier", &self.inner.tier)
            .field("namespace", &self.inner.namespace)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Settings for a [`SharedCache`]; every setter says its default.
pub struct SharedCacheBuilder {
    tier: Box<dyn SharedTier>,
    mac_key: Vec<u8>,
    namespace: String,
    row_version: String,
    ttl: Duration,
    generation_ttl: Duration,
    retry_after: Duration,
    max_entry_bytes: Option<usize>,
}

impl fmt::Debug for SharedCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCacheBuilder")
            .field("tier", &self.tier)
            .field("namespace", &self.namespace)
            .field("row_version", &self.row_version)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SharedCacheBuilder {
    /// Prefix of every key this cache writes; caches that share hits share it. Letters,
    /// digits and `_-.:` only, at most 64 bytes. Default: `diesel-budget`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Part of the row identity every entry carries: change it when a cached row type changes
    /// shape in a way its name and size do not show (a field renamed, a type swapped for one
    /// of the same size), so entries written by the previous version are misses. Default:
    /// empty.
    pub fn row_version(mut self, version: &str) -> Self {
        self.row_version = version.to_owned();
        self
    }

    /// How long an entry may be served (the expiry set on its key). Default: one hour.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The expiry of the generation counters, refreshed by every write. Default: 7 days.
    pub fn generation_ttl(mut self, ttl: Duration) -> Self {
        self.generation_ttl = ttl;
        self
    }

    /// How long reads go straight to the database after the server failed, before it is
    /// tried again. Default: one second.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Largest entry stored (serialised, with its header). Default and upper bound: the
    /// tier's [`max_value_bytes`](SharedTier::max_value_bytes).
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = Some(bytes);
        self
    }

    /// The cache.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key shorter than [`MIN_KEY_LEN`], a namespace with
    /// other characters or longer than 64 bytes, or a zero TTL.
    pub fn build(self) -> Result<SharedCache> {
        let invalid = |name, reason: &str| {
            Err(Error::InvalidArgument {
                name,
                reason: reason.into(),
            })
        };
        if self.mac_key.len() < MIN_KEY_LEN {
            return invalid("key", "a MAC key needs at least 32 bytes");
        }
        if self.namespace.is_empty()
            || self.namespace.len() > 64
            || !self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        {
            return invalid(
                "namespace",
                "1 to 64 letters, digits and `_-.:` (it prefixes every key)",
            );
        }
        if self.ttl.is_zero() || self.generation_ttl.is_zero() {
            return invalid("ttl", "every key needs a non-zero expiry");
        }
        let limit = self.tier.max_value_bytes();
        let max_entry_bytes = self.max_entry_bytes.unwrap_or(limit).min(limit);
        Ok(SharedCache {
            inner: Arc::new(Shared {
                tier: self.tier,
                mac_key: self.mac_key,
                namespace: self.namespace,
                row_version: self.row_version,
                ttl: self.ttl,
                generation_ttl: self.generation_ttl,
                retry_after: self.retry_after,
                max_entry_bytes,
                down: AtomicBool::new(false),
                outages: AtomicU64::new(0),
                retry_at: Mutex::new(Instant::now()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                fills: AtomicU64::new(0),
                bypassed: AtomicU64::new(0),
                too_large: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                tier_errors: AtomicU64::new(0),
                recoveries: AtomicU64::new(0),
            }),
        })
    }
}

/// A starting value for a counter: the clock in milliseconds, shifted, plus random low bits,
/// so a counter created again (after it expired or was evicted) never repeats a value.
fn fresh_base() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let random = RandomState::new().hash_one(ms) & 0xF_FFFF;
    ((ms & ((1 << 42) - 1)) << 20) | random
}

fn parse_counter(v: &Option<Vec<u8>>) -> Option<u64> {
    v.as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Why an entry was not served.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<U> {
    Rows(Vec<U>),
    /// Not ours: another format version, a tag that does not verify, another row identity,
    /// rows that do not decode.
    Rejected,
    /// Ours, filled under older generations.
    Stale,
}

impl Shared {
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.namespace)
    }

    fn epoch_key(&self) -> String {
        self.key("g", "epoch")
    }

    fn any_key(&self) -> String {
        self.key("g", "any")
    }

    fn table_key(&self, table: &str) -> String {
        let plain = table.len() <= 64
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.$-".contains(&b));
        if plain {
            self.key("t", table)
        } else {
            let d = Sha256::digest(table.as_bytes());
            self.key("t", &format!("h{}", hex(&d[..8])))
        }
    }

    /// The counters an entry reading `deps` depends on: the epoch first.
    fn generation_keys(&self, deps: &Tables) -> Vec<String> {
        let mut keys = vec![self.epoch_key()];
        match deps {
            Tables::All => keys.push(self.any_key()),
            Tables::Some(ts) => keys.extend(ts.iter().map(|t| self.table_key(t))),
        }
        keys
    }

    fn mac(&self, key_id: &[u8; 16]) -> Option<HmacSha256> {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.mac_key).ok()?;
        mac.update(CONTEXT);
        mac.update(key_id);
        Some(mac)
    }

    fn row_identity<U>(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        for part in [
            std::any::type_name::<U>().as_bytes(),
            &(std::mem::size_of::<U>() as u64).to_le_bytes(),
            &(std::mem::align_of::<U>() as u64).to_le_bytes(),
            self.row_version.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        id
    }

    fn encode<U: Serialize>(
        &self,
        key_id: &[u8; 16],
        generations: &[u64],
        rows: &[U],
    ) -> Option<Vec<u8>> {
        let n = u16::try_from(generations.len()).ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + generations.len() * 8 + 64 + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.row_identity::<U>());
        out.extend_from_slice(&n.to_le_bytes());
        for g in generations {
            out.extend_from_slice(&g.to_le_bytes());
        }
        let mut out = postcard::to_extend(rows, out).ok()?;
        let mut mac = self.mac(key_id)?;
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        Some(out)
    }

    fn decode<U: DeserializeOwned>(
        &self,
        key_id: &[u8; 16],
        current: &[u64],
        bytes: &[u8],
    ) -> Verdict<U> {
        if bytes.len() < HEADER_LEN + TAG_LEN || &bytes[..3] != MAGIC || bytes[3] != FORMAT {
            return Verdict::Rejected;
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let Some(mut mac) = self.mac(key_id) else {
            return Verdict::Rejected;
        };
        mac.update(body);
        if mac.verify_slice(tag).is_err() {
            return Verdict::Rejected;
        }
        if body[4..12] != self.row_identity::<U>() {
            return Verdict::Rejected;
        }
        let n = usize::from(u16::from_le_bytes([body[12], body[13]]));
        let Some(gens) = body.get(HEADER_LEN..HEADER_LEN + n * 8) else {
            return Verdict::Rejected;
        };
        let same = n == current.len()
            && gens
                .chunks_exact(8)
                .zip(current)
                .all(|(g, c)| g == c.to_le_bytes());
        if !same {
            return Verdict::Stale;
        }
        match postcard::from_bytes::<Vec<U>>(&body[HEADER_LEN + n * 8..]) {
            Ok(rows) => Verdict::Rows(rows),
            Err(_) => Verdict::Rejected,
        }
    }

    fn mark_down(&self) {
        self.tier_errors.fetch_add(1, Ordering::Relaxed);
        let mut at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        *at = Instant::now() + self.retry_after;
        self.outages.fetch_add(1, Ordering::SeqCst);
        self.down.store(true, Ordering::SeqCst);
    }

    /// Whether the tier may be used now; after a failure, tries it again (at most once per
    /// `retry_after`), bumping the epoch first.
    fn usable(&self) -> bool {
        if !self.down.load(Ordering::SeqCst) {
            return true;
        }
        let mut at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        if !self.down.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now < *at {
            return false;
        }
        let keys = [self.epoch_key(), self.any_key()];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        match self
            .tier
            .bump_counters(&keys, fresh_base(), self.generation_ttl)
        {
            Ok(()) => {
                self.recoveries.fetch_add(1, Ordering::Relaxed);
                self.down.store(false, Ordering::SeqCst);
                true
            }
            Err(_) => {
                self.tier_errors.fetch_add(1, Ordering::Relaxed);
                *at = now + self.retry_after;
                false
            }
        }
    }

    /// The current generations of `keys`, creating the missing counters.
    fn generations(&self, keys: &[&str], read: &[Option<Vec<u8>>]) -> Option<Vec<u64>> {
        let parsed: Vec<Option<u64>> = read.iter().map(parse_counter).collect();
        if parsed.iter().all(Option::is_some) {
            return parsed.into_iter().collect();
        }
        let missing: Vec<&str> = keys
            .iter()
            .zip(&parsed)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if self
            .tier
            .init_counters(&missing, fresh_base(), self.generation_ttl)
            .is_err()
        {
            self.mark_down();
            return None;
        }
        match self.tier.get_many(keys) {
            Ok(again) => again.iter().map(parse_counter).collect(),
            Err(_) => {
                self.mark_down();
                None
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Invalidate for Shared {
    fn invalidate_written(&self, written: &Written) {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::SeqCst) {
            // Serialised with recovery: if the tier is still down, the epoch bump that ends
            // the outage comes after this write committed and covers it.
            let _recovering = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
            if self.down.load(Ordering::SeqCst) {
                return;
            }
        }
        let mut keys = vec![self.any_key()];
        if written.all {
            keys.push(self.epoch_key());
        } else {
            keys.extend(written.tables.iter().map(|t| self.table_key(t)));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if self
            .tier
            .bump_counters(&keys, fresh_base(), self.generation_ttl)
            .is_err()
        {
            self.mark_down();
        }
    }
}

impl SharedCache {
    /// Starts configuring a cache on `tier`, signing entries with `key` (at least
    /// [`MIN_KEY_LEN`] bytes; every process that shares the entries uses the same key).
    pub fn builder(tier: impl SharedTier + 'static, key: &[u8]) -> SharedCacheBuilder {
        SharedCacheBuilder {
            tier: Box::new(tier),
            mac_key: key.to_vec(),
            namespace: "diesel-budget".into(),
            row_version: String::new(),
            ttl: Duration::from_secs(3600),
            generation_ttl: Duration::from_secs(7 * 24 * 3600),
            retry_after: Duration::from_secs(1),
            max_entry_bytes: None,
        }
    }

    /// Follows the writes of `db`'s connections: their committed writes bump the generations
    /// in the server, and reads on them may use this cache. See [`Cache::attach`](super::Cache::attach).
    pub fn attach<C: BudgetConnection>(&self, db: &Db<C>) {
        let me: Arc<dyn Invalidate> = self.inner.clone();
        super::attach_observer(me, db);
    }

    /// Invalidates, in every process, the entries that read `table` (for writes no attached
    /// pool saw).
    pub fn invalidate(&self, table: &str) {
        let mut written = Written::default();
        written.tables.insert(table.to_lowercase());
        self.inner.invalidate_written(&written);
    }

    /// Invalidates every entry in the namespace, in every process.
    pub fn invalidate_all(&self) {
        let written = Written {
            all: true,
            ..Written::default()
        };
        self.inner.invalidate_written(&written);
    }

    /// What this cache has done so far (this process). `entries` and `bytes` are 0: what the
    /// server holds is the server's to tell.
    pub fn stats(&self) -> CacheStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let i = &self.inner;
        CacheStats {
            hits: get(&i.hits),
            misses: get(&i.misses),
            fills: get(&i.fills),
            bypassed: get(&i.bypassed),
            too_large: get(&i.too_large),
            invalidations: get(&i.invalidations),
            rejected: get(&i.rejected),
            tier_errors: get(&i.tier_errors),
            recoveries: get(&i.recoveries),
            ..CacheStats::default()
        }
    }

    /// The server key under which `query`'s result is stored when loaded as `U` on `conn`
    /// (to inspect the server, or to check an entry's expiry).
    pub fn entry_key<X, Q, M, U>(&self, query: &Budgeted<Q, M, Strict>, _conn: &mut X) -> String
    where
        X: Executor,
        M: Metering,
        Q: QueryFragment<<ConnectionOf<X> as Connection>::Backend>,
        <ConnectionOf<X> as Connection>::Backend: Default,
        <<ConnectionOf<X> as Connection>::Backend as Backend>::QueryBuilder: Default,
        ConnectionOf<X>: BudgetConnection,
    {
        let (sql, binds) = crate::instrument::split_query(&diesel::debug_query::<
            <ConnectionOf<X> as Connection>::Backend,
            _,
        >(&query.query));
        let id = key_id::<ConnectionOf<X>, U>(query.budget.spec(), &sql, &binds);
        self.inner.key("e", &hex(&id))
    }

    /// Loads `query` through the shared cache: the rows of a current, verified entry, or from
    /// the database under the query's budget (then stored when they may be). Never fails
    /// because of the server: see the [module docs](self).
    ///
    /// # Errors
    /// As [`RunBudgetedDsl::load`](crate::RunBudgetedDsl::load): the budget still applies.
    pub fn load<'q, X, Q, M, U>(
        &self,
        query: Budgeted<Q, M, Strict>,
        conn: &mut X,
    ) -> Result<Vec<U>>
    where
        X: Executor,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<<ConnectionOf<X> as Connection>::Backend>,
        <ConnectionOf<X> as Connection>::Backend: Default,
        <<ConnectionOf<X> as Connection>::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, ConnectionOf<X>, U, Output = Vec<U>>,
        U: Serialize + DeserializeOwned + 'static,
    {
        self.load_ttl(query, self.inner.ttl, conn.connection(TOKEN))
    }

    /// [`load`](Self::load) with this query's own TTL.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_with_ttl<'q, X, Q, M, U>(
        &self,
        query: Budgeted<Q, M, Strict>,
        ttl: Duration,
        conn: &mut X,
    ) -> Result<Vec<U>>
    where
        X: Executor,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<<ConnectionOf<X> as Connection>::Backend>,
        <ConnectionOf<X> as Connection>::Backend: Default,
        <<ConnectionOf<X> as Connection>::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, ConnectionOf<X>, U, Output = Vec<U>>,
        U: Serialize + DeserializeOwned + 'static,
    {
        self.load_ttl(query, ttl, conn.connection(TOKEN))
    }

    fn load_ttl<'q, C, Q, M, U>(
        &self,
        query: Budgeted<Q, M, Strict>,
        ttl: Duration,
        conn: &mut C,
    ) -> Result<Vec<U>>
    where
        C: BudgetConnection,
        Q: AsQuery,
        M: Metering,
        Q::Query: QueryFragment<C::Backend>,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Budgeted<Q::Query, M, Strict>: LoadBudgeted<'q, C, U, Output = Vec<U>>,
        U: Serialize + DeserializeOwned + 'static,
    {
        let inner = &*self.inner;
        let budgeted = Budgeted {
            query: query.query.as_query(),
            budget: query.budget,
        };
        let mode = mode_of(Arc::as_ptr(&self.inner).cast(), conn);
        if mode == Mode::Bypass || !inner.usable() {
            inner.bypassed.fetch_add(1, Ordering::Relaxed);
            return budgeted.internal_load(conn);
        }
        let outages = inner.outages.load(Ordering::SeqCst);
        let (sql, binds) =
            crate::instrument::split_query(&diesel::debug_query::<C::Backend, _>(&budgeted.query));
        let id = key_id::<C, U>(budgeted.budget.spec(), &sql, &binds);
        let entry_key = inner.key("e", &hex(&id));
        let gen_keys = inner.generation_keys(&sql::read_tables(&sql));
        let mut keys: Vec<&str> = Vec::with_capacity(gen_keys.len() + 1);
        keys.push(&entry_key);
        keys.extend(gen_keys.iter().map(String::as_str));
        let read = match inner.tier.get_many(&keys) {
            Ok(read) => read,
            Err(_) => {
                inner.mark_down();
                inner.misses.fetch_add(1, Ordering::Relaxed);
                return budgeted.internal_load(conn);
            }
        };
        let Some(current) = inner.generations(&keys[1..], &read[1..]) else {
            inner.misses.fetch_add(1, Ordering::Relaxed);
            return budgeted.internal_load(conn);
        };
        if let Some(bytes) = &read[0] {
            match inner.decode::<U>(&id, &current, bytes) {
                Verdict::Rows(rows) => {
                    inner.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(rows);
                }
                Verdict::Rejected => {
                    inner.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Stale => {}
            }
        }
        inner.misses.fetch_add(1, Ordering::Relaxed);
        let rows = budgeted.internal_load(conn)?;
        if mode != Mode::Full {
            return Ok(rows);
        }
        let Some(value) = inner.encode(&id, &current, &rows) else {
            return Ok(rows);
        };
        if value.len() > inner.max_entry_bytes {
            inner.too_large.fetch_add(1, Ordering::Relaxed);
            return Ok(rows);
        }
        // Not across an outage: a write whose invalidation was lost may have committed.
        if inner.down.load(Ordering::SeqCst) || inner.outages.load(Ordering::SeqCst) != outages {
            return Ok(rows);
        }
        match inner.tier.set(&entry_key, &value, ttl) {
            Ok(true) => {
                inner.fills.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                inner.too_large.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => inner.mark_down(),
        }
        Ok(rows)
    }
}

/// The digest naming an entry: backend, SQL, binds, budget, row type name.
fn key_id<C: BudgetConnection, U>(spec: BudgetSpec, sql: &str, binds: &[String]) -> [u8; 16] {
    let mut h = Sha256::new();
    let spec = format!("{spec:?}");
    let mut part = |p: &[u8]| {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    };
    part(CONTEXT);
    part(C::KIND.name().as_bytes());
    part(std::any::type_name::<U>().as_bytes());
    part(spec.as_bytes());
    part(sql.as_bytes());
    for b in binds {
        part(b.as_bytes());
    }
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}
