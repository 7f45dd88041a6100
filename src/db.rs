//! `Db`: an r2d2 pool whose connections are instrumented, and the handle it lends out.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, TransactionManager};
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
/// # include!("../tests/doc_setup.rs");
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = database_url()?;
/// // `url`: a file path for SQLite, `postgres://..` or `mysql://..` for the servers;
/// // `DbConnection`: `SqliteConnection`, `PgConnection` or `MysqlConnection`.
/// let db = Db::<DbConnection>::builder(url)
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
    pub fn get(&self) -> Result<Conn<C>> {
        let _internal = InternalScope::enter();
        Ok(Conn {
            inner: self.pool.get()?,
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
    pub fn unbudgeted(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Runs `f` in a transaction (a savepoint when nested): committed when `f` returns `Ok`,
    /// rolled back when it returns `Err`. Same semantics as Diesel's `Connection::transaction`.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Self) -> std::result::Result<T, E>,
        E: From<diesel::result::Error>,
    {
        type Tm<C> = <C as Connection>::TransactionManager;
        Tm::<C>::begin_transaction(&mut *self.inner)?;
        match f(self) {
            Ok(value) => {
                Tm::<C>::commit_transaction(&mut *self.inner)?;
                Ok(value)
            }
            Err(user_error) => match Tm::<C>::rollback_transaction(&mut *self.inner) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
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
        self.inner
            .instrumentation()
            .downcast_ref::<BudgetInstrumentation>()
            .map(BudgetInstrumentation::stats)
            .unwrap_or_default()
    }

    /// Which backend this connection talks to.
    pub fn backend(&self) -> BackendKind {
        C::KIND
    }
}
