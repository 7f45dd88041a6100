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

    /// Whether the observer at address `me` follows this pool: compared by address, without
    /// upgrading (no reference count touched).
    pub(crate) fn follows(&self, me: *const ()) -> bool {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .any(|o| std::ptr::eq(o.as_ptr().cast::<()>(), me) && o.strong_count() > 0)
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cache::sql::effects;

    /// Records what it is told.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Written>>);

    impl Invalidate for Seen {
        fn invalidate_written(&self, written: &Written) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(written.clone());
        }
    }

    /// Runs `statements` (SQL, failed) through a tracker; returns what was announced after
    /// each one.
    fn run(statements: &[(&str, bool)]) -> Vec<Vec<Written>> {
        let seen = Arc::new(Seen::default());
        let observers = Observers::default();
        let dyn_seen: Arc<dyn Invalidate> = seen.clone();
        observers.add(Arc::downgrade(&dyn_seen));
        let mut tracker = WriteTracker::default();
        statements
            .iter()
            .map(|(sql, failed)| {
                tracker.finish(&effects(sql), *failed, &observers);
                std::mem::take(&mut *seen.0.lock().unwrap_or_else(|e| e.into_inner()))
            })
            .collect()
    }

    fn items() -> Written {
        Written {
            all: false,
            tables: BTreeSet::from(["items".to_owned()]),
        }
    }

    #[test]
    fn autocommit_writes_are_announced_when_they_finish() {
        let seen = run(&[("UPDATE items SET x = 1", false), ("SELECT 1", false)]);
        assert_eq!(seen, vec![vec![items()], vec![]]);
        // A failed write may still have written something: announced too.
        assert_eq!(run(&[("DELETE FROM items", true)]), vec![vec![items()]]);
    }

    #[test]
    fn transactions_announce_at_commit_and_never_for_a_rollback() {
        let seen = run(&[
            ("BEGIN", false),
            ("SAVEPOINT s1", false),
            ("INSERT INTO items (id) VALUES (1)", false),
            ("ROLLBACK TO SAVEPOINT s1", false),
            ("UPDATE other SET x = 1", false),
            ("COMMIT", false),
        ]);
        assert!(seen[..5].iter().all(Vec::is_empty), "{seen:?}");
        let mut both = items();
        both.tables.insert("other".into());
        assert_eq!(seen[5], vec![both], "the savepoint's write counts too");

        let seen = run(&[
            ("BEGIN", false),
            ("UPDATE items SET x = 1", false),
            ("ROLLBACK", false),
            ("UPDATE other SET x = 1", false),
        ]);
        assert!(seen[..3].iter().all(Vec::is_empty), "{seen:?}");
        assert_eq!(seen[3].len(), 1, "after the rollback, autocommit again");
    }

    #[test]
    fn a_begin_that_failed_does_not_defer_later_writes() {
        let seen = run(&[("BEGIN", true), ("UPDATE items SET x = 1", false)]);
        assert_eq!(seen[1], vec![items()]);
    }

    #[test]
    fn ddl_in_a_transaction_announces_now_and_again_at_the_end_even_on_rollback() {
        let seen = run(&[
            ("BEGIN", false),
            ("UPDATE items SET x = 1", false),
            ("ALTER TABLE t ADD COLUMN y INT", false),
            ("UPDATE items SET x = 2", false),
            ("ROLLBACK", false),
        ]);
        assert!(seen[1].is_empty());
        assert!(
            seen[2].iter().any(|w| w.all),
            "DDL: everything, at once: {seen:?}"
        );
        assert_eq!(
            seen[3],
            vec![items()],
            "after DDL, writes are announced at once"
        );
        assert!(
            seen[4].iter().any(|w| w.all),
            "and again at the end: {seen:?}"
        );
    }

    #[test]
    fn a_batch_announces_after_its_commit() {
        let seen = run(&[("BEGIN; UPDATE items SET x = 1; COMMIT", false)]);
        assert_eq!(seen[0], vec![items()]);
        let seen = run(&[("BEGIN; UPDATE items SET x = 1", false), ("COMMIT", false)]);
        assert!(seen[0].is_empty());
        assert_eq!(seen[1], vec![items()]);
    }
}
