//! Following each connection's writes and transactions, and telling the caches when writes
//! become visible: at the end of an autocommit statement, or when the outermost transaction
//! commits. Hooked into [`crate::instrument::BudgetInstrumentation`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};

use super::sql::{Effect, Tables};

/// Tables written and not yet committed, or committed and to be invalidated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Every table (a write that could not be read with certainty).
    pub(crate) all: bool,
    /// These tables.
    pub(crate) tables: BTreeSet<String>,
}

impl Written {
    fn add(&mut self, tables: &Tables) {
        match tables {
            Tables::All => self.all = true,
            Tables::Some(ts) => self.tables.extend(ts.iter().cloned()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.all && self.tables.is_empty()
    }
}

/// Something told about committed writes: a cache.
pub(crate) trait Invalidate: Send + Sync {
    /// `written` has been committed: drop what depends on it.
    fn invalidate_written(&self, written: &Written);
}

/// The caches that follow one pool's writes. Lives in the pool's shared statistics, so every
/// connection of the pool reaches it.
#[derive(Default)]
pub(crate) struct Observers {
    any: AtomicBool,
    list: RwLock<Vec<Weak<dyn Invalidate>>>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("any", &self.any.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Observers {
    /// Whether any cache follows this pool (statements are only read then).
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    pub(crate) fn add(&self, observer: Weak<dyn Invalidate>) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|o| o.strong_count() > 0);
        list.push(observer);
        self.any.store(true, Ordering::Release);
    }

    /// Whether `observer` follows this pool.
    pub(crate) fn contains(&self, observer: &Arc<dyn Invalidate>) -> bool {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .any(|o| o.upgrade().is_some_and(|o| Arc::ptr_eq(&o, observer)))
    }

    fn notify(&self, written: &Written) {
        if written.is_empty() {
            return;
        }
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        for o in list.iter().filter_map(Weak::upgrade) {
            o.invalidate_written(written);
        }
    }
}

/// One connection's transaction depth and the writes of its open transaction.
#[derive(Debug, Default)]
pub(crate) struct WriteTracker {
    depth: u32,
    pending: Written,
    /// A statement that may have committed implicitly (DDL on MySQL) ran in the transaction:
    /// from then on writes are announced at once *and* again when it ends, and a rollback
    /// announces them too.
    uncertain: bool,
}

impl WriteTracker {
    /// Whether the connection is inside a transaction it has written in.
    pub(crate) fn has_written(&self) -> bool {
        self.depth > 0 && (!self.pending.is_empty() || self.uncertain)
    }

    /// Whether the connection is inside a transaction (as far as its statements showed).
    pub(crate) fn in_transaction(&self) -> bool {
        self.depth > 0
    }

    /// A statement with `effects` finished (`failed`: with an error).
    pub(crate) fn finish(&mut self, effects: &[Effect], failed: bool, observers: &Observers) {
        for effect in effects {
            match effect {
                Effect::Begin => {
                    if !failed {
                        self.depth += 1;
                    }
                }
                Effect::Release => {
                    // Never below 1: only COMMIT and ROLLBACK end the transaction.
                    if !failed && self.depth > 1 {
                        self.depth -= 1;
                    }
                }
                Effect::Commit => self.end(true, observers),
                // A failed ROLLBACK may have left the writes in place: announce them.
                Effect::Rollback => self.end(failed || self.uncertain, observers),
                Effect::Write(tables) => self.write(tables, observers),
                Effect::Ddl => {
                    if self.depth > 0 {
                        self.uncertain = true;
                        observers.notify(&self.pending);
                    }
                    self.write(&Tables::All, observers);
                }
            }
        }
    }

    fn write(&mut self, tables: &Tables, observers: &Observers) {
        if self.depth == 0 || self.uncertain {
            let mut now = Written::default();
            now.add(tables);
            observers.notify(&now);
        }
        if self.depth > 0 {
            self.pending.add(tables);
        }
    }

    fn end(&mut self, announce: bool, observers: &Observers) {
        let pending = std::mem::take(&mut self.pending);
        if announce {
            observers.notify(&pending);
        }
        self.depth = 0;
        self.uncertain = false;
    }
}
