//! The in-process tier: an `lru` map bounded by the bytes its entries hold and by their number,
//! per-table generations, and the single-flight table of fills in progress.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use lru::LruCache;

use crate::backend::BackendKind;
use crate::budget::BudgetSpec;
use crate::cache::sql::Tables;
use crate::cache::track::Written;

/// What identifies a cached result: backend, SQL with placeholders, bound values, budget and
/// row type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) backend: BackendKind,
    pub(crate) row_type: TypeId,
    pub(crate) row_type_name: &'static str,
    pub(crate) budget: BudgetSpec,
    /// Diesel's `Debug` form of the query: the SQL with placeholders and the bound values,
    /// unambiguous (strings escaped). Rendered once per read, not parsed: a hit needs nothing
    /// else.
    pub(crate) query: String,
}

impl Key {
    /// Bytes the key holds (counted with the entry).
    pub(crate) fn bytes(&self) -> u64 {
        (std::mem::size_of::<Key>() + self.query.capacity()) as u64
    }
}

/// The generations a fill saw before it ran: stored only if they are still current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    epoch: u64,
    gens: Vec<u64>,
}

/// A fill's result offered for storing: rows (`Arc<[U]>`, type-erased), bytes, the tables
/// read, the expiry.
pub(crate) type Offer = (
    Box<dyn Any + Send + Sync>,
    u64,
    Arc<Tables>,
    Option<Instant>,
);

/// One cached result.
struct Entry {
    /// `Arc<[U]>`, type-erased.
    rows: Box<dyn Any + Send + Sync>,
    bytes: u64,
    deps: Arc<Tables>,
    expires: Option<Instant>,
}

/// A fill in progress that others may wait for.
pub(crate) struct Flight {
    pub(crate) snapshot: Snapshot,
    /// `None` while running; then `Some(Some(rows))` or `Some(None)` (failed / discarded).
    result: Mutex<Option<Option<Box<dyn Any + Send + Sync>>>>,
    done: Condvar,
}

impl Flight {
    /// Hands the result to the waiters.
    pub(crate) fn publish(&self, rows: Option<Box<dyn Any + Send + Sync>>) {
        let mut slot = self.result.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(rows);
        }
        self.done.notify_all();
    }

    /// Waits for the leader; returns its rows, `None` when it failed.
    pub(crate) fn wait<T: Clone + 'static>(&self) -> Option<T> {
        let mut slot = self.result.lock().unwrap_or_else(|e| e.into_inner());
        while slot.is_none() {
            slot = self.done.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot.as_ref()
            .and_then(|r| r.as_ref())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }
}

/// What a lookup found.
pub(crate) enum Lookup<T> {
    Hit(T),
    /// Run the query and offer the result with this snapshot (and publish it to the flight).
    Lead(Arc<Flight>),
    /// Another thread is filling this key with a current snapshot: wait for it.
    Follow(Arc<Flight>),
}

/// Counters kept by the shards, summed over them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    pub(crate) evictions: u64,
    pub(crate) invalidated: u64,
    /// Reads answered by a shard (each shard counts its own: no counter shared by every hit).
    pub(crate) hits: u64,
}

/// Most shards a store is split into.
const MAX_SHARDS: u64 = 16;

/// The in-process store: entries split by key hash over up to 16 shards, each its own `lru`
/// map behind its own lock, each bounded by an equal share of the bytes and entries. The
/// per-table generations are shared.
///
/// A hit takes its shard's lock for reading (`peek`: readers never wait for each other, nor
/// for a reader the scheduler preempted) and moves the entry to the front only when the write
/// lock is free at once: under contention the order is approximately least recently used.
/// Fills, evictions and invalidations take the write lock.
///
/// Lock order: a shard, then the generations; an invalidation bumps the generations and
/// releases them before it sweeps the shards. A fill that read the generations before a bump
/// stored its entry under the shard's lock, so the sweep that follows the bump finds it.
pub(crate) struct Store {
    shards: Box<[ShardCell]>,
    hasher: lru::DefaultHasher,
    gens: Mutex<Gens>,
}

/// A shard and its hit counter, a cache line apart from the next shard's.
#[repr(align(128))]
struct ShardCell {
    lock: RwLock<Shard>,
    hits: AtomicU64,
}

struct Shard {
    lru: LruCache<Key, Entry>,
    max_bytes: u64,
    max_entries: usize,
    held: Held,
    flights: HashMap<Key, Arc<Flight>>,
}

#[derive(Default)]
struct Gens {
    /// Generation of each table named by a write since the cache was built.
    gens: HashMap<String, u64>,
    /// Bumped by every invalidation: what entries depending on [`Tables::All`] compare.
    version: u64,
    /// Bumped by invalidations of every table.
    epoch: u64,
}

impl Gens {
    fn snapshot(&self, deps: &Tables) -> Snapshot {
        let gens = match deps {
            Tables::All => vec![self.version],
            Tables::Some(ts) => ts
                .iter()
                .map(|t| self.gens.get(t).copied().unwrap_or(0))
                .collect(),
        };
        Snapshot {
            epoch: self.epoch,
            gens,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// A store of at most `max_bytes` and `max_entries`, able to hold an entry of
    /// `max_entry_bytes`: as many shards (a power of two, at most 16) as leave each shard room
    /// for one such entry and one entry slot.
    pub(crate) fn new(max_bytes: u64, max_entries: usize, max_entry_bytes: u64) -> Self {
        let fit = (max_bytes / max_entry_bytes.max(1))
            .min(max_entries as u64)
            .clamp(1, MAX_SHARDS);
        // The largest power of two not above `fit`.
        let n = 1u64 << (63 - fit.leading_zeros());
        let shards = (0..n)
            .map(|_| ShardCell {
                lock: RwLock::new(Shard {
                    lru: LruCache::unbounded(),
                    max_bytes: max_bytes / n,
                    max_entries: usize::try_from(max_entries as u64 / n).unwrap_or(1).max(1),
                    held: Held::default(),
                    flights: HashMap::new(),
                }),
                hits: AtomicU64::new(0),
            })
            .collect();
        Store {
            shards,
            hasher: lru::DefaultHasher::default(),
            gens: Mutex::new(Gens::default()),
        }
    }

    fn shard(&self, key: &Key) -> &ShardCell {
        use std::hash::BuildHasher as _;
        let h = self.hasher.hash_one(key);
        // High bits: the map inside the shard indexes by the low ones.
        let i = (h >> 32) as usize % self.shards.len();
        &self.shards[i]
    }

    /// The counters summed over the shards.
    pub(crate) fn held(&self) -> Held {
        self.shards.iter().fold(Held::default(), |acc, s| {
            let h = read(&s.lock).held;
            Held {
                bytes: acc.bytes + h.bytes,
                entries: acc.entries + h.entries,
                evictions: acc.evictions + h.evictions,
                invalidated: acc.invalidated + h.invalidated,
                hits: acc.hits + s.hits.load(Ordering::Relaxed),
            }
        })
    }

    /// A cached result for `key`, or what to do instead. `fill`: whether the caller may fill
    /// (lead or follow a flight) with the tables it reads, `deps`; otherwise (or without
    /// `deps`) a miss is `None`. A hit is counted in [`Held::hits`].
    pub(crate) fn lookup<T: Clone + 'static>(
        &self,
        key: &Key,
        deps: Option<&Tables>,
        fill: bool,
    ) -> Option<Lookup<T>> {
        let cell = self.shard(key);
        let now = Instant::now();
        let live = |entry: &Entry| entry.expires.is_none_or(|at| at > now);
        {
            let shard = read(&cell.lock);
            let hit = shard
                .lru
                .peek(key)
                .filter(|e| live(e))
                .and_then(|e| e.rows.downcast_ref::<T>())
                .cloned();
            drop(shard);
            if let Some(rows) = hit {
                cell.hits.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut shard) = cell.lock.try_write() {
                    shard.lru.promote(key);
                }
                return Some(Lookup::Hit(rows));
            }
        }
        let mut shard = write(&cell.lock);
        // Stored or expired since the read lock was let go.
        let mut expired = false;
        if let Some(entry) = shard.lru.get(key) {
            if !live(entry) {
                expired = true;
            } else if let Some(rows) = entry.rows.downcast_ref::<T>() {
                let rows = rows.clone();
                cell.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Lookup::Hit(rows));
            }
        }
        if expired {
            shard.remove(key);
        }
        let deps = deps.filter(|_| fill)?;
        let snapshot = lock(&self.gens).snapshot(deps);
        if let Some(flight) = shard.flights.get(key) {
            if flight.snapshot == snapshot {
                return Some(Lookup::Follow(Arc::clone(flight)));
            }
        }
        let flight = Arc::new(Flight {
            snapshot,
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        shard.flights.insert(key.clone(), Arc::clone(&flight));
        Some(Lookup::Lead(flight))
    }

    /// Ends `flight` for `key`; stores `rows` when given and the generations are still the
    /// ones the fill saw. Returns whether it was stored, or why not.
    pub(crate) fn finish(&self, key: Key, flight: &Arc<Flight>, offer: Option<Offer>) -> Stored {
        let mut shard = write(&self.shard(&key).lock);
        if shard
            .flights
            .get(&key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            shard.flights.remove(&key);
        }
        let Some((rows, bytes, deps, expires)) = offer else {
            return Stored::No;
        };
        // Read under the shard's lock: an invalidation after this read sweeps this shard only
        // once the entry is in it.
        if lock(&self.gens).snapshot(&deps) != flight.snapshot {
            return Stored::Raced;
        }
        if bytes > shard.max_bytes {
            return Stored::TooLarge;
        }
        shard.remove(&key);
        while shard.held.bytes + bytes > shard.max_bytes || shard.lru.len() >= shard.max_entries {
            match shard.lru.pop_lru() {
                Some((_, old)) => {
                    shard.held.bytes -= old.bytes;
                    shard.held.evictions += 1;
                }
                None => break,
            }
        }
        shard.held.bytes += bytes;
        shard.lru.put(
            key,
            Entry {
                rows,
                bytes,
                deps,
                expires,
            },
        );
        shard.held.entries = shard.lru.len() as u64;
        Stored::Yes
    }

    /// Committed writes: bumps the generations, then drops the entries that depend on them.
    pub(crate) fn invalidate(&self, written: &Written) {
        {
            let mut gens = lock(&self.gens);
            gens.version += 1;
            if written.all {
                gens.epoch += 1;
            } else {
                for t in &written.tables {
                    *gens.gens.entry(t.clone()).or_insert(0) += 1;
                }
            }
        }
        for shard in self.shards.iter() {
            write(&shard.lock).invalidate(written);
        }
    }
}

impl Shard {
    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.lru.pop(key) {
            self.held.bytes -= old.bytes;
        }
        self.held.entries = self.lru.len() as u64;
    }

    fn invalidate(&mut self, written: &Written) {
        if written.all {
            self.held.invalidated += self.lru.len() as u64;
            self.lru.clear();
            self.held.bytes = 0;
            self.held.entries = 0;
            return;
        }
        let stale: Vec<Key> = self
            .lru
            .iter()
            .filter(|(_, e)| depends(&e.deps, &written.tables))
            .map(|(k, _)| k.clone())
            .collect();
        self.held.invalidated += stale.len() as u64;
        for k in stale {
            self.remove(&k);
        }
    }
}

fn depends(deps: &Tables, written: &BTreeSet<String>) -> bool {
    match deps {
        Tables::All => true,
        Tables::Some(ts) => ts.iter().any(|t| written.contains(t)),
    }
}

/// What became of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Yes,
    /// Nothing to store (the query failed).
    No,
    /// A write to a table it read was committed while it ran.
    Raced,
    /// Over the per-entry limit.
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            backend: BackendKind::Sqlite,
            row_type: TypeId::of::<i32>(),
            row_type_name: "i32",
            budget: crate::Budget::rows(1).spec(),
            query: name.to_owned(),
        }
    }

    /// Fills `name` with `[v]` (one entry of 100 bytes).
    fn fill(store: &Store, name: &str, v: i32) {
        let deps = Arc::new(Tables::Some(BTreeSet::from(["t".to_owned()])));
        let Some(Lookup::Lead(flight)) = store.lookup::<Arc<[i32]>>(&key(name), Some(&deps), true)
        else {
            panic!("{name}: expected to lead a fill");
        };
        let rows: Arc<[i32]> = Arc::from(vec![v]);
        let offer: Offer = (Box::new(rows), 100, deps, None);
        assert_eq!(store.finish(key(name), &flight, Some(offer)), Stored::Yes);
    }

    fn hit(store: &Store, name: &str) -> Option<i32> {
        match store.lookup::<Arc<[i32]>>(&key(name), None, false) {
            Some(Lookup::Hit(rows)) => rows.first().copied(),
            _ => None,
        }
    }

    #[test]
    fn a_hit_moves_its_entry_to_the_front() {
        // One shard of two entries: filling a third evicts the least recently used.
        let store = Store::new(1_000, 2, 1_000);
        assert_eq!(store.shards.len(), 1);
        fill(&store, "a", 1);
        fill(&store, "b", 2);
        assert_eq!(hit(&store, "a"), Some(1));
        fill(&store, "c", 3);
        assert_eq!(hit(&store, "b"), None, "b was the least recently used");
        assert_eq!((hit(&store, "a"), hit(&store, "c")), (Some(1), Some(3)));
        let held = store.held();
        assert_eq!((held.entries, held.evictions, held.hits), (2, 1, 3));
        // An invalidation of the table read empties the shard.
        let mut written = Written::default();
        written.tables.insert("t".to_owned());
        store.invalidate(&written);
        assert_eq!((hit(&store, "a"), store.held().entries), (None, 0));
    }

    #[test]
    fn shards_leave_room_for_the_largest_entry() {
        let shards = |bytes, entries, entry| Store::new(bytes, entries, entry).shards.len();
        assert_eq!(shards(64 << 20, 10_000, 4 << 20), 16);
        assert_eq!(shards(64 << 20, 10_000, 16 << 20), 4);
        assert_eq!(shards(6_000, 10_000, 2_000), 2);
        assert_eq!(shards(6_000, 10_000, 6_000), 1);
        assert_eq!(shards(1 << 30, 3, 1), 2, "and room for one entry each");
        assert_eq!(shards(1 << 30, 10_000, 1), 16);
        for (bytes, entries, entry) in [(64 << 20, 10_000, 4 << 20), (6_000, 7, 2_000), (1, 1, 1)] {
            let store = Store::new(bytes, entries, entry);
            let n = store.shards.len() as u64;
            for shard in store.shards.iter() {
                let shard = read(&shard.lock);
                assert!(shard.max_bytes >= entry && shard.max_bytes * n <= bytes);
                assert!(shard.max_entries >= 1 && shard.max_entries as u64 * n <= entries as u64);
            }
        }
    }
}
