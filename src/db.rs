//! `Db`: an r2d2 pool whose connections are instrumented, and the handle it lends out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, Instrumentation, TransactionManager};
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::EmbeddedMigrations;

use crate::backend::{BackendKind, BudgetConnection};
use crate::error::{Error, Result};
use crate::exec::sealed::Access;
use crate::instrument::{BudgetInstrumentation, InternalScope, Stats, StatsCell};

/// A pool of instrumented connections to one database.
///
/// Connections come out as [`Conn`] handles, which are not Diesel connections: Diesel's own
/// `.load(&mut conn)` does not compile on them, only budgeted queries run there
/// ([`crate::BudgetDsl::budget`]). Every statement on every connection is seen by
/// [`BudgetInstrumentation`] and counted in [`Db::stats`].
///
/// # Example
/// ```
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo;
///
/// # fn main() -> Result<(), diesel_budget::Error> {
/// let dir = tempfile::tempdir().expect("tempdir");
/// let path = dir.path().join("app.db");
/// let db = Db::<diesel::SqliteConnection>::builder(path.to_str().expect("utf-8 path"))
///     .migrations(demo::MIGRATIONS)
///     .max_size(4)
///     .build()?;
/// let mut conn = db.get()?;
/// assert_eq!(db.stats().unbudgeted, 0);
/// # Ok(()) }
/// ```
pub struct Db<C: BudgetConnection> {
    pool: Pool<ConnectionManager<C>>,
    stats: Arc<StatsCell>,
}

impl<C: BudgetConnection> Clone for Db<C> {
    fn clone(&self) -> Self {
        Db {
            pool: self.pool.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<C: BudgetConnection> fmt::Debug for Db<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &C::KIND)
            .field("pool", &self.pool.state())
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

#[cfg(feature = "sqlite")]
impl Db<diesel::sqlite::SqliteConnection> {
    /// A pool over the SQLite database file at `path` (created if missing), with default
    /// settings and no migrations. Use [`Db::builder`] for more.
    pub fn sqlite(path: &str) -> Result<Self> {
        Db::builder(path).build()
    }
}

#[cfg(feature = "postgres")]
impl Db<diesel::pg::PgConnection> {
    /// A pool over the PostgreSQL database at `url`, with default settings and no migrations.
    pub fn postgres(url: &str) -> Result<Self> {
        Db::builder(url).build()
    }
}

#[cfg(feature = "mysql")]
impl Db<diesel::mysql::MysqlConnection> {
    /// A pool over the MySQL/MariaDB database at `url`, with default settings and no migrations.
    pub fn mysql(url: &str) -> Result<Self> {
        Db::builder(url).build()
    }
}

impl<C: BudgetConnection> Db<C> {
    /// Starts configuring a pool for the database at `url` (a file path for SQLite).
    pub fn builder(url: impl Into<String>) -> DbBuilder<C> {
        DbBuilder {
            url: url.into(),
            max_size: 10,
            min_idle: None,
            connection_timeout: Duration::from_secs(30),
            migrations: None,
            _conn: std::marker::PhantomData,
        }
    }

    /// Checks a connection out of the pool. r2d2 tests it first (`SELECT 1`, counted as
    /// internal), so a connection that died while idle is replaced, not handed out.
    ///
    /// The connection handed out always carries this pool's [`BudgetInstrumentation`]: if a
    /// previous borrower replaced it (`conn.unbudgeted().set_instrumentation(..)`), it is
    /// installed again, counting into the same [`Db::stats`].
    pub fn get(&self) -> Result<Conn<C>> {
        let _internal = InternalScope::enter();
        let mut inner = self.pool.get()?;
        let ours = inner
            .instrumentation()
            .downcast_ref::<BudgetInstrumentation>()
            .is_some_and(|i| i.counts_into(&self.stats));
        if !ours {
            inner.set_instrumentation(BudgetInstrumentation::with_stats(Arc::clone(&self.stats)));
        }
        Ok(Conn {
            inner,
            stats: Arc::clone(&self.stats),
        })
    }

    /// What all connections of this pool have run so far.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Which backend this pool talks to.
    pub fn backend(&self) -> BackendKind {
        C::KIND
    }

    /// Runs the pending migrations of `migrations` (from `diesel_migrations::embed_migrations!`)
    /// on one connection; returns how many ran.
    pub fn run_migrations(&self, migrations: EmbeddedMigrations) -> Result<usize> {
        let mut conn = self.get()?;
        let _internal = InternalScope::enter();
        conn.inner
            .run_migrations(migrations)
            .map_err(Error::Migration)
    }
}

/// Settings for a [`Db`]. Built by [`Db::builder`]; every setter says its default.
pub struct DbBuilder<C> {
    url: String,
    max_size: u32,
    min_idle: Option<u32>,
    connection_timeout: Duration,
    migrations: Option<EmbeddedMigrations>,
    _conn: std::marker::PhantomData<fn() -> C>,
}

impl<C> fmt::Debug for DbBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbBuilder")
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("connection_timeout", &self.connection_timeout)
            .field("migrations", &self.migrations.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: BudgetConnection> DbBuilder<C> {
    /// Most connections the pool holds. Default: 10.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.max_size = max_size;
        self
    }

    /// Idle connections the pool keeps open. Default: `max_size`.
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.min_idle = Some(min_idle);
        self
    }

    /// How long [`Db::get`] (and `build`) wait for a connection. Default: 30 s.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Migrations to run when the pool is built (from `diesel_migrations::embed_migrations!`).
    /// Default: none.
    pub fn migrations(mut self, migrations: EmbeddedMigrations) -> Self {
        self.migrations = Some(migrations);
        self
    }

    /// Opens the pool (connecting `min_idle` connections) and runs the migrations.
    pub fn build(self) -> Result<Db<C>> {
        if self.max_size == 0 {
            return Err(Error::InvalidArgument {
                name: "max_size",
                reason: "a pool needs at least one connection".into(),
            });
        }
        let stats = Arc::new(StatsCell::default());
        let pool = Pool::builder()
            .max_size(self.max_size)
            .min_idle(self.min_idle)
            .connection_timeout(self.connection_timeout)
            .connection_customizer(Box::new(Instrument {
                stats: Arc::clone(&stats),
            }))
            .build(ConnectionManager::<C>::new(self.url))?;
        let db = Db { pool, stats };
        if let Some(migrations) = self.migrations {
            db.run_migrations(migrations)?;
        }
        Ok(db)
    }
}

/// The r2d2 customizer: installs [`BudgetInstrumentation`] and runs the backend's session
/// set-up on every new connection.
#[derive(Debug)]
struct Instrument {
    stats: Arc<StatsCell>,
}

impl<C: BudgetConnection> CustomizeConnection<C, diesel::r2d2::Error> for Instrument {
    fn on_acquire(&self, conn: &mut C) -> std::result::Result<(), diesel::r2d2::Error> {
        conn.set_instrumentation(BudgetInstrumentation::with_stats(Arc::clone(&self.stats)));
        if !C::ON_ACQUIRE_SQL.is_empty() {
            let _internal = InternalScope::enter();
            conn.batch_execute(C::ON_ACQUIRE_SQL)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// Installs [`BudgetInstrumentation`] on a connection you opened yourself, so that what it
/// runs is counted and can be recorded by [`crate::testing::record`]. Pooled connections from
/// [`Db`] have it already.
///
/// It takes the connection's one instrumentation slot, replacing whatever was there. To keep an
/// instrumentation of your own, install ours in front of it:
/// `conn.set_instrumentation(BudgetInstrumentation::default().forward_to(yours))`.
pub fn instrument<C: BudgetConnection>(conn: &mut C) {
    conn.set_instrumentation(BudgetInstrumentation::default());
}

/// A pooled connection on which only budgeted queries run. Returned to the pool on drop.
///
/// Not a Diesel `Connection`: `items::table.load(&mut conn)` does not compile, while
/// `items::table.budget(Budget::rows(100)).load(&mut conn)` does. For statements that have no
/// budget (writes, DDL, `sql_query`), [`Conn::unbudgeted`] is the named escape hatch; what runs
/// through it is recorded as unbudgeted.
pub struct Conn<C: BudgetConnection> {
    inner: PooledConnection<ConnectionManager<C>>,
    /// The pool's statistics (also behind the connection's instrumentation).
    stats: Arc<StatsCell>,
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
        match conn
            .instrumentation()
            .downcast_mut::<BudgetInstrumentation>()
        {
            Some(ours) => ours.stop_forwarding(),
            None => {
                conn.set_instrumentation(BudgetInstrumentation::with_stats(Arc::clone(&self.stats)))
            }
        }
        while matches!(
            Tm::<C>::transaction_manager_status_mut(conn),
            TransactionManagerStatus::Valid(ref s) if s.transaction_depth().is_some()
        ) {
            // On failure the manager is in error and r2d2 closes the connection.
            if Tm::<C>::rollback_transaction(conn).is_err() {
                break;
            }
        }
    }
}

impl<C: BudgetConnection> Access for Conn<C> {
    type Connection = C;
    fn connection(&mut self) -> &mut C {
        &mut self.inner
    }
}

impl<C: BudgetConnection> Conn<C> {
    /// The Diesel connection, for statements without a budget. Everything run through it is
    /// counted as unbudgeted ([`Stats::unbudgeted`]) and fails
    /// [`no_unbudgeted_queries`](crate::testing::LedgerAssert::no_unbudgeted_queries).
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
    /// # include!("../tests/doc_setup.rs");
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

    /// Runs `f` in a transaction (a savepoint when nested): committed when `f` returns `Ok`,
    /// rolled back when it returns `Err`. Same semantics as Diesel's `Connection::transaction`.
    ///
    /// # Errors
    /// `f`'s error; or [`Error::Query`] whose [`sql`](Error::sql) is `BEGIN`, `COMMIT` or
    /// `ROLLBACK` (a savepoint's when nested) when that step fails.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Self) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        type Tm<C> = <C as Connection>::TransactionManager;
        Tm::<C>::begin_transaction(&mut *self.inner).map_err(|e| Error::query("BEGIN", e))?;
        match f(self) {
            Ok(value) => {
                Tm::<C>::commit_transaction(&mut *self.inner)
                    .map_err(|e| Error::query("COMMIT", e))?;
                Ok(value)
            }
            Err(user_error) => match Tm::<C>::rollback_transaction(&mut *self.inner) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(Error::query("ROLLBACK", rollback_error).into()),
            },
        }
    }

    /// Starts a transaction that is never committed (Diesel's `begin_test_transaction`): for
    /// tests that must leave nothing behind. It is rolled back when the `Conn` is dropped, so
    /// the pool never hands out a connection with a test transaction open.
    pub fn begin_test_transaction(&mut self) -> Result<()> {
        self.inner
            .begin_test_transaction()
            .map_err(|e| Error::query("BEGIN", e))
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
