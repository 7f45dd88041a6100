//! SQLite: this backend's half of every capability (session set-up, streaming, bind limits, and
//! each capability's per-backend path), the way sea-query's `backend/<db>/` mirrors its
//! `query/`. Capabilities declare a sealed trait in their own folder and implement it here.

use std::time::Duration;

use diesel::connection::DefaultLoadingMode;
use diesel::query_builder::QueryFragment;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::QueryResult;

use super::{sealed, BackendKind, BudgetBackend, SessionSettings};
use crate::db::{Db, DbBuilder};
use crate::error::Result;

impl_budget_connection!(
    SqliteConnection,
    Sqlite,
    DefaultLoadingMode,
    BackendKind::Sqlite,
    true,
    sqlite_session
);

/// SQLite's session set-up: each pragma that `settings` asks for, and nothing else, so an
/// existing file keeps its journal mode and foreign-key setting unless the builder says
/// otherwise. Every statement is constant text but the busy timeout, an integer (pragmas take
/// no bound parameters).
fn sqlite_session(conn: &mut SqliteConnection, settings: &SessionSettings) -> QueryResult<()> {
    use diesel::connection::SimpleConnection as _;
    if let Some(ms) = settings.busy_timeout_ms {
        conn.batch_execute(&format!("PRAGMA busy_timeout = {ms}"))?;
    }
    if let Some(mode) = settings.journal_mode {
        conn.batch_execute(mode.pragma())?;
    }
    match settings.foreign_keys {
        Some(true) => conn.batch_execute("PRAGMA foreign_keys = ON")?,
        Some(false) => conn.batch_execute("PRAGMA foreign_keys = OFF")?,
        None => {}
    }
    Ok(())
}

impl sealed::Sealed for Sqlite {}

impl BudgetBackend for Sqlite {
    fn limit_value<F: QueryFragment<Self> + ?Sized>(_: &F) -> QueryResult<Option<i64>> {
        // `SqliteBindCollector` keeps its values private: the statement goes as it is and the
        // executor stops stepping at its cap (`crate::query`).
        Ok(None)
    }

    push_bigint_impl!(Sqlite);
}

/// A plain `SqliteConnection` runs budgeted queries too (see [`crate::Executor`]).
impl crate::exec::sealed::Access for SqliteConnection {
    type Connection = SqliteConnection;
    fn connection(&mut self, _: crate::exec::sealed::Token) -> &mut SqliteConnection {
        self
    }
}

impl Db<SqliteConnection> {
    /// A pool over the SQLite database file at `path` (created if missing), with default
    /// settings and no migrations. Use [`Db::builder`] for more.
    ///
    /// # Errors
    /// As [`DbBuilder::build`](crate::DbBuilder::build).
    pub fn sqlite(path: &str) -> Result<Self> {
        Db::builder(path).build()
    }
}

impl DbBuilder<SqliteConnection> {
    /// How long a statement waits for another connection's lock before failing with
    /// `SQLITE_BUSY` (`PRAGMA busy_timeout`, per connection). Default: 10 s, so the pool's
    /// connections wait for each other instead of failing. `Duration::ZERO` turns waiting off;
    /// values are taken in whole milliseconds, at most `i32::MAX`.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        self.session.busy_timeout_ms = Some(ms.min(i32::MAX.unsigned_abs()));
        self
    }

    /// Sets the database's journal mode on every new connection (`PRAGMA journal_mode`).
    /// Default: none, the file keeps the mode it has (a new file: SQLite's `DELETE`).
    ///
    /// [`JournalMode::Wal`](crate::backend::JournalMode::Wal) lets readers run while one
    /// connection writes, which suits a pool of several connections; but it is *stored in the
    /// file*: it stays after the pool is gone, for every program that opens the file, and does
    /// not work on network file systems. So the pool never chooses it for you.
    pub fn journal_mode(mut self, mode: crate::backend::JournalMode) -> Self {
        self.session.journal_mode = Some(mode);
        self
    }

    /// Turns enforcement of foreign keys on or off on every new connection
    /// (`PRAGMA foreign_keys`, per connection). Default: none, what a plain `SqliteConnection`
    /// has, which is how SQLite was compiled: on with the bundled SQLite this crate builds
    /// (`libsqlite3-sys` compiles it with `SQLITE_DEFAULT_FOREIGN_KEYS=1`), off with SQLite's
    /// stock build.
    pub fn foreign_keys(mut self, enforce: bool) -> Self {
        self.session.foreign_keys = Some(enforce);
        self
    }
}

mod bulk;
#[cfg(feature = "ci")]
pub(super) mod explain;
#[cfg(feature = "page")]
mod page;
mod timeout;
