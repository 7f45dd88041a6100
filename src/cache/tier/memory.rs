//! The in-process tier: an `lru` map bounded by the bytes its entries hold and by their number,
//! per-table generations, and the single-flight table of fills in progress.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
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

/// Counters kept under the lock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    pub(crate) evictions: u64,
    pub(crate) invalidated: u64,
}

pub(crate) struct Store {
    lru: LruCache<Key, Entry>,
    max_bytes: u64,
    max_entries: usize,
    held: Held,
    /// Generation of each table named by a write since the cache was built.
    gens: HashMap<String, u64>,
    /// Bumped by every invalidation: what entries depending on [`Tables::All`] compare.
    version: u64,
    /// Bumped by invalidations of every table.
    epoch: u64,
    flights: HashMap<Key, Arc<Flight>>,
}

impl Store {
    pub(crate) fn new(max_bytes: u64, max_entries: usize) -> Self {
        Store {
            lru: LruCache::unbounded(),
            max_bytes,
            max_entries,
            held: Held::default(),
            gens: HashMap::new(),
            version: 0,
            epoch: 0,
            flights: HashMap::new(),
        }
    }

    pub(crate) fn held(&self) -> Held {
        self.held
    }

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

    /// A cached result for `key`, or what to do instead. `fill`: whether the caller may fill
    /// (lead or follow a flight) with the tables it reads, `deps`; otherwise (or without
    /// `deps`) a miss is `None`.
    pub(crate) fn lookup<T: Clone + 'static>(
        &mut self,
        key: &Key,
        deps: Option<&Tables>,
        fill: bool,
    ) -> Option<Lookup<T>> {
        let now = Instant::now();
        let mut expired = false;
        if let Some(entry) = self.lru.get(key) {
            if entry.expires.is_some_and(|at| at <= now) {
                expired = true;
            } else if let Some(rows) = entry.rows.downcast_ref::<T>() {
                return Some(Lookup::Hit(rows.clone()));
            }
        }
        if expired {
            self.remove(key);
        }
        let deps = deps.filter(|_| fill)?;
        let snapshot = self.snapshot(deps);
        if let Some(flight) = self.flights.get(key) {
            if flight.snapshot == snapshot {
                return Some(Lookup::Follow(Arc::clone(flight)));
            }
        }
        let flight = Arc::new(Flight {
            snapshot,
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        self.flights.insert(key.clone(), Arc::clone(&flight));
        Some(Lookup::Lead(flight))
    }

    /// Ends `flight` for `key`; stores `rows` when given and the generations are still the
    /// ones the fill saw. Returns whether it was stored, or why not.
    pub(crate) fn finish(
        &mut self,
        key: Key,
        flight: &Arc<Flight>,
        offer: Option<Offer>,
    ) -> Stored {
        if self
            .flights
            .get(&key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            self.flights.remove(&key);
        }
        let Some((rows, bytes, deps, expires)) = offer else {
            return Stored::No;
        };
        if self.snapshot(&deps) != flight.snapshot {
            return Stored::Raced;
        }
        if bytes > self.max_bytes {
            return Stored::TooLarge;
        }
        self.remove(&key);
        while self.held.bytes + bytes > self.max_bytes || self.lru.len() >= self.max_entries {
            match self.lru.pop_lru() {
                Some((_, old)) => {
                    self.held.bytes -= old.bytes;
                    self.held.evictions += 1;
                }
                None => break,
            }
        }
        self.held.bytes += bytes;
        self.lru.put(
            key,
            Entry {
                rows,
                bytes,
                deps,
                expires,
            },
        );
        self.held.entries = self.lru.len() as u64;
        Stored::Yes
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.lru.pop(key) {
            self.held.bytes -= old.bytes;
        }
        self.held.entries = self.lru.len() as u64;
    }

    /// Committed writes: bumps the generations and drops the entries that depend on them.
    pub(crate) fn invalidate(&mut self, written: &Written) {
        self.version += 1;
        if written.all {
            self.epoch += 1;
            self.held.invalidated += self.lru.len() as u64;
            self.lru.clear();
            self.held.bytes = 0;
            self.held.entries = 0;
            return;
        }
        for t in &written.tables {
            *self.gens.entry(t.clone()).or_insert(0) += 1;
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
