//! [`Conn`]: the pooled handle on which only budgeted queries run.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, Instrumentation, TransactionManager};
use diesel::r2d2::PooledConnection;

use crate::timeout::PoolManager as ConnectionManager;

#[cfg(doc)]
use super::{Db, DbBuilder};
use crate::backend::{BackendKind, BudgetConnection};
use crate::exec::sealed::{Access, Token};
use crate::instrument::{BudgetInstrumentation, Stats, StatsCell};

/// A pooled connection on which only budgeted queries run. Returned to the pool on drop.
///
/// Not a Diesel `Connection`: `items::table.load(&mut conn)` does not compile, while
/// `items::table.budget(Budget::rows(100)).load(&mut conn)` does. For statements that have no
/// budget (writes, DDL, `sql_query`), [`Conn::unbudgeted`] is the named escape hatch; what runs
/// through it is recorded as unbudgeted.
///
/// The compile error for `items::table.load(&mut conn)` says what to do: "`Conn<..>` runs only
/// budgeted queries: add `.budget(Budget::rows(n))` to the query". Rust lets a crate word
/// `#[diagnostic::on_unimplemented]` only for its own traits, and the unmet bound would be
/// Diesel's `LoadConnection`; so `Conn` implements Diesel's connection traits under a bound of
/// ours that never holds (`NeedsBudget`), and rustc reports that bound with our message. Those
/// impls show in the trait list below; no code can use them.
pub struct Conn<C: BudgetConnection> {
    pub(super) inner: PooledConnection<ConnectionManager<C>>,
    /// The pool's statistics (also behind the connection's instrumentation).
    pub(super) stats: Arc<StatsCell>,
    /// The pool's default time limit ([`DbBuilder::time_limit`]).
    pub(super) time_limit: Option<Duration>,
}

impl<C: BudgetConnection> fmt::Debug for Conn<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("backend", &C::KIND).finish()
    }
}

/// Rolls back a transaction still open (a test transaction: Diesel's r2d2 manager returns
/// those to the pool as healthy), so the next checkout starts clean.
impl<C: BudgetConnection> Drop for Conn<C> {
    fn drop(&mut self) {
        use diesel::connection::TransactionManagerStatus;
        type Tm<C> = <C as Connection>::TransactionManager;
        let conn: &mut C = &mut self.inner;
        // The borrower's own instrumentation stays with them: forwarding stops
        // ([`Conn::set_instrumentation`]), and one that replaced ours gives way to ours again
        // before the pool's next checkout test runs.
        let replaced = match conn
            .instrumentation()
            .downcast_mut::<BudgetInstrumentation>()
        {
            Some(ours) => {
                ours.stop_forwarding();
                false
            }
            None => {
                conn.set_instrumentation(BudgetInstrumentation::with_stats(Arc::clone(
                    &self.stats,
                )));
                true
            }
        };
        while matches!(
            Tm::<C>::transaction_manager_status_mut(conn),
            TransactionManagerStatus::Valid(ref s) if s.transaction_depth().is_some()
        ) {
            // On failure the manager is in error and r2d2 closes the connection.
            if Tm::<C>::rollback_transaction(conn).is_err() {
                break;
            }
        }
        // The note of the session's time limit went with the replaced instrumentation: set
        // the session again, now that no transaction is open (a failure here means a broken
        // connection, which the pool's checkout test then replaces).
        if replaced && self.time_limit.is_some() {
            let _ = conn.set_session_time_limit(self.time_limit);
        }
    }
}

impl<C: BudgetConnection> Access for Conn<C> {
    type Connection = C;
    fn connection(&mut self, _: Token) -> &mut C {
        &mut self.inner
    }
    fn default_time_limit(&self) -> Option<Duration> {
        self.time_limit
    }
}

impl<C: BudgetConnection> Conn<C> {
    /// The Diesel connection, for statements without a budget. Everything run through it is
    /// counted as unbudgeted ([`Stats::unbudgeted`]) and fails
    /// [`no_unbudgeted_queries`](crate::testing::LedgerAssert::no_unbudgeted_queries).
    ///
    /// Session state set here (`SET ..`, session variables, pragmas) stays on this physical
    /// connection after it goes back to the pool, for whoever checks it out next: the pool does
    /// not reset sessions. Set such state for every connection in
    /// [`DbBuilder::on_connect`] instead. A pool's default time limit
    /// ([`DbBuilder::time_limit`]) is such a session setting on PostgreSQL and MariaDB: what
    /// runs here runs under it, and a session value you change here is not seen by the
    /// executor (see [`crate::timeout`]).
    ///
    /// To add an `Instrumentation` of your own, use [`Conn::set_instrumentation`]: Diesel's
    /// `set_instrumentation` on this connection would replace ours, so nothing would be counted
    /// or recorded on it until it goes back to the pool ([`Db::get`] puts ours back).
    pub fn unbudgeted(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Sends every event of this connection to `instrumentation` too, after ours has counted
    /// it, until the connection goes back to the pool (the next borrower does not inherit it).
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(3)?;
    /// use diesel::connection::InstrumentationEvent;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let started = Arc::new(Mutex::new(0));
    /// let counter = Arc::clone(&started);
    /// conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
    ///     if matches!(event, InstrumentationEvent::StartQuery { .. }) {
    ///         *counter.lock().expect("not poisoned") += 1;
    ///     }
    /// });
    /// let before = db.stats();
    /// items::table.budget(Budget::rows(3)).load::<Item>(&mut conn)?;
    /// assert_eq!(*started.lock().expect("not poisoned"), 1); // yours saw it
    /// assert_eq!(db.stats().since(&before).budgeted, 1); // and so did the pool
    /// # Ok(()) }
    /// ```
    pub fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        let conn: &mut C = &mut self.inner;
        match conn
            .instrumentation()
            .downcast_mut::<BudgetInstrumentation>()
        {
            Some(ours) => ours.set_forward(Box::new(instrumentation)),
            None => conn.set_instrumentation(
                BudgetInstrumentation::with_stats(Arc::clone(&self.stats))
                    .forward_to(instrumentation),
            ),
        }
    }

    /// What this connection's pool has run so far.
    pub fn stats(&mut self) -> Stats {
        self.stats.snapshot()
    }

    /// Which backend this connection talks to.
    pub fn backend(&self) -> BackendKind {
        C::KIND
    }
}
