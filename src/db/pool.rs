//! [`Db`], the pool, and [`DbBuilder`], its settings; the r2d2 customizer that sets up each
//! of its connections.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::Connection;
use diesel::r2d2::{CustomizeConnection, Pool};
use diesel::QueryResult;
use diesel_migrations::EmbeddedMigrations;

use super::Conn;
use crate::backend::{BackendKind, BudgetConnection, SessionSettings};
use crate::error::{Error, Result};
use crate::instrument::{BudgetInstrumentation, InternalScope, Stats, StatsCell};
// Diesel's manager, opening connections through the backend (SQLite's statement interrupt).
use crate::timeout::PoolManager as ConnectionManager;

/// A pool of instrumented connections to one database.
///
/// Connections come out as [`Conn`] handles, which are not Diesel connections: Diesel's own
/// `.load(&mut conn)` does not compile on them, only budgeted queries run there
/// ([`crate::BudgetDsl::budget`]). Every statement on every connection is seen by
/// [`BudgetInstrumentation`] and counted in [`Db::stats`].
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
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
    time_limit: Option<Duration>,
}

impl<C: BudgetConnection> Clone for Db<C> {
    fn clone(&self) -> Self {
        Db {
            pool: self.pool.clone(),
            stats: Arc::clone(&self.stats),
            time_limit: self.time_limit,
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

impl<C: BudgetConnection> Db<C> {
    /// Starts configuring a pool for the database at `url` (a file path for SQLite).
    pub fn builder(url: impl Into<String>) -> DbBuilder<C> {
        DbBuilder {
            url: url.into(),
            max_size: 10,
            min_idle: None,
            connection_timeout: Duration::from_secs(30),
            migrations: None,
            session: SessionSettings::default(),
            on_connect: None,
            time_limit: None,
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
            // The note of the session's time limit went with the replaced instrumentation:
            // set the session again (one statement, outside any transaction: the pool's
            // connections come back with none open).
            if self.time_limit.is_some() {
                inner
                    .set_session_time_limit(self.time_limit)
                    .map_err(|source| Error::SessionSetup { source })?;
            }
        }
        Ok(Conn {
            inner,
            stats: Arc::clone(&self.stats),
            time_limit: self.time_limit,
        })
    }

    /// The pool's shared statistics (and the caches following its writes).
    pub(crate) fn stats_cell(&self) -> &Arc<StatsCell> {
        &self.stats
    }

    /// What all connections of this pool have run so far.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Which backend this pool talks to.
    pub fn backend(&self) -> BackendKind {
        C::KIND
    }

    /// Strict mode for this pool (default: off): a statement that starts without a budget on
    /// any of its connections (through [`Conn::unbudgeted`] or code that bypasses the
    /// executor) panics before it reaches the server, failing the test that ran it, unless it
    /// runs inside [`crate::testing::allow_unbudgeted`]. Transaction control and the library's
    /// own statements are not affected. [`crate::testing::strict`] does the same for every
    /// instrumented connection of the process.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(3)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::demo::items;
    /// use diesel_budget::testing;
    ///
    /// db.set_strict(true);
    /// let n = testing::allow_unbudgeted("count for the example", || {
    ///     items::table.count().get_result::<i64>(conn.unbudgeted())
    /// })?;
    /// assert_eq!(n, 3);
    /// let unallowed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    ///     items::table.count().get_result::<i64>(conn.unbudgeted())
    /// }));
    /// assert!(unallowed.is_err());
    /// # db.set_strict(false);
    /// # Ok(()) }
    /// ```
    pub fn set_strict(&self, on: bool) {
        self.stats
            .strict
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs the pending migrations of `migrations` (from `diesel_migrations::embed_migrations!`)
    /// on one connection; returns how many ran.
    pub fn run_migrations(&self, migrations: EmbeddedMigrations) -> Result<usize> {
        let mut conn = self.get()?;
        let _internal = InternalScope::enter();
        // Migrations run without the pool's time limit (a session setting of its connections):
        // lifted for them, set again after.
        let limited = crate::timeout::session_time(&mut *conn.inner).is_some();
        if limited {
            conn.inner
                .set_session_time_limit(None)
                .map_err(|source| Error::SessionSetup { source })?;
        }
        let ran = conn
            .inner
            .run_migrations(migrations)
            .map_err(Error::Migration);
        if limited {
            conn.inner
                .set_session_time_limit(self.time_limit)
                .map_err(|source| Error::SessionSetup { source })?;
        }
        ran
    }
}

/// A per-connection set-up hook ([`DbBuilder::on_connect`]).
type Hook<C> = Arc<dyn Fn(&mut C) -> QueryResult<()> + Send + Sync>;

/// Settings for a [`Db`]. Built by [`Db::builder`]; every setter says its default.
///
/// Out-of-range settings never reach r2d2 (whose builder panics on them): [`DbBuilder::build`]
/// refuses them with [`Error::InvalidArgument`] before anything connects.
pub struct DbBuilder<C> {
    url: String,
    max_size: u32,
    min_idle: Option<u32>,
    connection_timeout: Duration,
    migrations: Option<EmbeddedMigrations>,
    pub(crate) session: SessionSettings,
    on_connect: Option<Hook<C>>,
    time_limit: Option<Duration>,
}

impl<C> fmt::Debug for DbBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbBuilder")
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("connection_timeout", &self.connection_timeout)
            .field("migrations", &self.migrations.is_some())
            .field("session", &self.session)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: BudgetConnection> DbBuilder<C> {
    /// Most connections the pool holds. Default: 10.
    ///
    /// # Errors
    /// [`build`](Self::build) returns [`Error::InvalidArgument`] (`name: "max_size"`) for 0.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.max_size = max_size;
        self
    }

    /// Idle connections the pool keeps open. Default: `max_size`.
    ///
    /// # Errors
    /// [`build`](Self::build) returns [`Error::InvalidArgument`] (`name: "min_idle"`) when it
    /// is larger than [`max_size`](Self::max_size).
    pub fn min_idle(mut self, min_idle: u32) -> Self {
        self.min_idle = Some(min_idle);
        self
    }

    /// How long [`Db::get`] (and `build`) wait for a connection. Default: 30 s.
    ///
    /// # Errors
    /// [`build`](Self::build) returns [`Error::InvalidArgument`]
    /// (`name: "connection_timeout"`) for a zero duration.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// A set-up hook run once on every new physical connection (including the one
    /// [`build`](Self::build) opens first to check the server), after the pool's own set-up
    /// (instrumentation, and on SQLite the pragmas of [`busy_timeout`](Self::busy_timeout),
    /// [`journal_mode`](Self::journal_mode) and [`foreign_keys`](Self::foreign_keys)).
    /// Default: none.
    ///
    /// This is the supported place for session state: time zone, `search_path`, `sql_mode`,
    /// session variables, pragmas. Whatever a user changes through [`Conn::unbudgeted`] stays
    /// on that physical connection when it goes back to the pool and the next
    /// [`Db::get`] may hand it to someone else: the pool does not reset sessions. Set such
    /// state here, for every connection alike, rather than per checkout. What the hook runs is
    /// counted as internal in [`Db::stats`], not as unbudgeted. Calling `on_connect` again
    /// replaces the hook.
    ///
    /// # Errors
    /// When the hook fails on the first connection, [`build`](Self::build) returns
    /// [`Error::SessionSetup`]; a connection whose hook fails later is not handed out (r2d2
    /// retries until [`connection_timeout`](Self::connection_timeout), then [`Db::get`]
    /// returns [`Error::Pool`]).
    ///
    /// # Example
    /// ```
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// # #[cfg(feature = "sqlite")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel::connection::SimpleConnection;
    /// use diesel::prelude::*;
    /// use diesel::sql_types::BigInt;
    /// use diesel::SqliteConnection;
    /// use diesel_budget::prelude::*;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.db");
    /// let db = Db::<SqliteConnection>::builder(path.to_str().ok_or("utf-8 path")?)
    ///     .on_connect(|conn: &mut SqliteConnection| conn.batch_execute("PRAGMA cache_size = -8000"))
    ///     .build()?;
    /// let mut conn = db.get()?;
    /// let cache_size: i64 = diesel::select(diesel::dsl::sql::<BigInt>(
    ///     "(SELECT cache_size FROM pragma_cache_size())",
    /// ))
    /// .get_result(conn.unbudgeted())?;
    /// assert_eq!(cache_size, -8000);
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut C) -> QueryResult<()> + Send + Sync + 'static,
    {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// The time limit of every budget that has none of its own
    /// ([`Budget::time`](crate::Budget::time)): each statement a budgeted query runs through
    /// this pool's connections is cancelled by the server after `limit` (see
    /// [`crate::timeout`]). Default: none.
    ///
    /// On PostgreSQL and MariaDB it is a session setting of each connection, made when the pool
    /// opens it (after the [`on_connect`](Self::on_connect) hook): a query at this limit sends
    /// nothing more than its statement. Statements through [`Conn::unbudgeted`] run under it
    /// too; [`Budget::no_time_limit`](crate::Budget::no_time_limit) lifts it for one query;
    /// migrations run without it.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diesel_budget::Db;
    ///
    /// let db = Db::<DbConnection>::builder(database_url()?)
    ///     .time_limit(Duration::from_secs(2))
    ///     .build()?;
    /// # let _ = db;
    /// # Ok(()) }
    /// ```
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Migrations to run when the pool is built (from `diesel_migrations::embed_migrations!`).
    /// Default: none.
    pub fn migrations(mut self, migrations: EmbeddedMigrations) -> Self {
        self.migrations = Some(migrations);
        self
    }

    /// Opens the pool (connecting `min_idle` connections) and runs the migrations.
    ///
    /// One connection is opened and set up first, outside r2d2, so that a server that cannot
    /// be reached (or a set-up that fails) is reported at once rather than after
    /// [`connection_timeout`](Self::connection_timeout) of retries.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`] for settings r2d2 would panic on: `max_size` 0, `min_idle`
    ///   over `max_size`, a zero `connection_timeout`. Nothing connects.
    /// - [`Error::Connection`] when the first connection cannot be established (server down,
    ///   wrong credentials, SQLite file in a missing directory).
    /// - [`Error::SessionSetup`] when the session set-up or the [`on_connect`](Self::on_connect)
    ///   hook fails on the first connection.
    /// - [`Error::Pool`] when r2d2 cannot open `min_idle` connections within
    ///   `connection_timeout` after that; [`Error::Migration`] when a migration fails.
    pub fn build(self) -> Result<Db<C>> {
        self.validate()?;
        let stats = Arc::new(StatsCell::default());
        let customizer = Instrument {
            stats: Arc::clone(&stats),
            session: self.session,
            on_connect: self.on_connect,
            time_limit: self.time_limit,
        };
        // r2d2's `build` retries a failing connect until `connection_timeout` (30 s by default)
        // and then reports only the last error: one connection of our own fails fast instead.
        let mut first = C::establish(&self.url)?;
        customizer
            .set_up(&mut first)
            .map_err(|source| Error::SessionSetup { source })?;
        drop(first);
        let pool = Pool::builder()
            .max_size(self.max_size)
            .min_idle(self.min_idle)
            .connection_timeout(self.connection_timeout)
            .connection_customizer(Box::new(customizer))
            .build(ConnectionManager::<C>::new(self.url))?;
        let db = Db {
            pool,
            stats,
            time_limit: self.time_limit,
        };
        if let Some(migrations) = self.migrations {
            db.run_migrations(migrations)?;
        }
        Ok(db)
    }
}

impl<C: BudgetConnection> DbBuilder<C> {
    /// Refuses the settings on which r2d2's builder would panic.
    fn validate(&self) -> Result<()> {
        if self.max_size == 0 {
            return Err(Error::InvalidArgument {
                name: "max_size",
                reason: "a pool needs at least one connection".into(),
            });
        }
        if let Some(min_idle) = self.min_idle.filter(|&n| n > self.max_size) {
            return Err(Error::InvalidArgument {
                name: "min_idle",
                reason: format!(
                    "{min_idle} idle connections do not fit max_size {}",
                    self.max_size
                ),
            });
        }
        if self.connection_timeout.is_zero() {
            return Err(Error::InvalidArgument {
                name: "connection_timeout",
                reason: "a checkout needs a positive time to wait".into(),
            });
        }
        if let Some(t) = self.time_limit {
            if t.is_zero() || t > crate::budget::MAX_TIME {
                return Err(Error::InvalidArgument {
                    name: "time_limit",
                    reason: "a time limit must be at least 1 ms and at most MAX_TIME".into(),
                });
            }
        }
        Ok(())
    }
}

/// The r2d2 customizer: installs [`BudgetInstrumentation`], runs the backend's session set-up
/// and then the user's hook on every new connection.
struct Instrument<C> {
    stats: Arc<StatsCell>,
    session: SessionSettings,
    on_connect: Option<Hook<C>>,
    /// The pool's default time limit, made a session setting of each connection.
    time_limit: Option<Duration>,
}

impl<C> fmt::Debug for Instrument<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrument")
            .field("session", &self.session)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: BudgetConnection> Instrument<C> {
    fn set_up(&self, conn: &mut C) -> QueryResult<()> {
        conn.set_instrumentation(BudgetInstrumentation::with_stats(Arc::clone(&self.stats)));
        let _internal = InternalScope::enter();
        conn.set_up_session(&self.session)?;
        if let Some(hook) = &self.on_connect {
            hook(conn)?;
        }
        // After the hook: the pool's default is what the session carries and what is noted.
        if self.time_limit.is_some() {
            conn.set_session_time_limit(self.time_limit)?;
        }
        Ok(())
    }
}

impl<C: BudgetConnection> CustomizeConnection<C, diesel::r2d2::Error> for Instrument<C> {
    fn on_acquire(&self, conn: &mut C) -> std::result::Result<(), diesel::r2d2::Error> {
        self.set_up(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}
