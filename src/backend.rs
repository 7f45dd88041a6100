//! What differs between backends: how SQL is rendered, which loading mode streams rows.
//!
//! [`BudgetConnection`] is sealed and implemented for `SqliteConnection`, `PgConnection` and
//! `MysqlConnection` (each behind its cargo feature).

use diesel::connection::{Connection, DefaultLoadingMode, LoadConnection};
use diesel::query_builder::QueryFragment;
use diesel::r2d2::R2D2Connection;
use diesel::QueryResult;

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// SQLite (embedded).
    Sqlite,
    /// PostgreSQL and wire-compatible engines.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl BackendKind {
    /// Lower-case name: `sqlite`, `postgres`, `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Mysql => "mysql",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

mod sealed {
    pub trait Sealed {}
}

/// SQLite's journal mode (`PRAGMA journal_mode`), for
/// [`DbBuilder::journal_mode`](crate::DbBuilder::journal_mode).
///
/// The journal mode is stored in the database file for `Wal` (it outlives the pool and applies
/// to every program that opens the file); the other modes last as long as the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JournalMode {
    /// `DELETE`: SQLite's default rollback journal, deleted after each transaction.
    Delete,
    /// `TRUNCATE`: a rollback journal truncated instead of deleted.
    Truncate,
    /// `PERSIST`: a rollback journal whose header is zeroed instead of deleted.
    Persist,
    /// `MEMORY`: the rollback journal is kept in memory.
    Memory,
    /// `WAL`: write-ahead log; readers do not block the writer nor the writer the readers.
    /// Persistent: the file stays in WAL mode for every later user.
    Wal,
    /// `OFF`: no journal; a crash mid-transaction can corrupt the database.
    Off,
}

impl JournalMode {
    /// The pragma that selects this mode, as constant text.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    fn pragma(self) -> &'static str {
        match self {
            JournalMode::Delete => "PRAGMA journal_mode = DELETE",
            JournalMode::Truncate => "PRAGMA journal_mode = TRUNCATE",
            JournalMode::Persist => "PRAGMA journal_mode = PERSIST",
            JournalMode::Memory => "PRAGMA journal_mode = MEMORY",
            JournalMode::Wal => "PRAGMA journal_mode = WAL",
            JournalMode::Off => "PRAGMA journal_mode = OFF",
        }
    }
}

/// The session set-up a pool applies to each new connection before the user's
/// [`on_connect`](crate::DbBuilder::on_connect) hook. Only SQLite has settings today; the
/// other backends ignore them (their builders have no setters for them).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub struct SessionSettings {
    /// `PRAGMA busy_timeout`, in milliseconds; `None` leaves SQLite's default (0: fail at once).
    pub(crate) busy_timeout_ms: Option<u32>,
    /// `PRAGMA journal_mode`; `None` leaves the file's mode as it is.
    pub(crate) journal_mode: Option<JournalMode>,
    /// `PRAGMA foreign_keys`; `None` leaves SQLite's default (off).
    pub(crate) foreign_keys: Option<bool>,
}

impl Default for SessionSettings {
    /// Wait up to 10 s for a lock; journal mode and foreign keys as the file and SQLite have
    /// them.
    fn default() -> Self {
        SessionSettings {
            busy_timeout_ms: Some(10_000),
            journal_mode: None,
            foreign_keys: None,
        }
    }
}

/// A Diesel connection diesel-budget can run budgeted queries on. Sealed: implemented for
/// `SqliteConnection`, `PgConnection` and `MysqlConnection`.
pub trait BudgetConnection:
    Connection + LoadConnection<DefaultLoadingMode> + R2D2Connection + Send + 'static + sealed::Sealed
{
    /// The loading mode that hands rows over one at a time with the least client-side
    /// buffering: `PgRowByRowLoadingMode` on PostgreSQL, the default mode elsewhere.
    type StreamMode: 'static;

    /// Which backend this is.
    const KIND: BackendKind;

    /// Whether [`Self::StreamMode`] really streams (PostgreSQL row-by-row, SQLite's stepping
    /// cursor) rather than buffering the whole result in the client (MySQL's
    /// `mysql_stmt_store_result`).
    const STREAMS: bool;

    /// Renders `query` to SQL text with placeholders (bound values are never inlined).
    #[doc(hidden)]
    fn render_sql<Q: QueryFragment<Self::Backend> + ?Sized>(query: &Q) -> QueryResult<String>;

    /// Runs the pending migrations of `migrations`; returns how many ran.
    #[doc(hidden)]
    fn run_migrations(
        &mut self,
        migrations: diesel_migrations::EmbeddedMigrations,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>>;

    /// Applies `settings` to a new pooled connection (the pool's session set-up, before the
    /// user's hook).
    #[doc(hidden)]
    fn set_up_session(&mut self, settings: &SessionSettings) -> QueryResult<()>;
}

macro_rules! impl_budget_connection {
    ($feature:literal, $conn:ty, $backend:ty, $mode:ty, $kind:expr, $streams:expr, $setup:path) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for $conn {}

        #[cfg(feature = $feature)]
        impl BudgetConnection for $conn {
            type StreamMode = $mode;
            const KIND: BackendKind = $kind;
            const STREAMS: bool = $streams;

            fn set_up_session(&mut self, settings: &SessionSettings) -> QueryResult<()> {
                $setup(self, settings)
            }

            fn render_sql<Q: QueryFragment<$backend> + ?Sized>(query: &Q) -> QueryResult<String> {
                use diesel::query_builder::QueryBuilder as _;
                let mut out = <<$backend as diesel::backend::Backend>::QueryBuilder>::default();
                query.to_sql(&mut out, &<$backend>::default())?;
                Ok(out.finish())
            }

            fn run_migrations(
                &mut self,
                migrations: diesel_migrations::EmbeddedMigrations,
            ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
                use diesel_migrations::MigrationHarness as _;
                Ok(self.run_pending_migrations(migrations)?.len())
            }
        }
    };
}

impl_budget_connection!(
    "sqlite",
    diesel::sqlite::SqliteConnection,
    diesel::sqlite::Sqlite,
    DefaultLoadingMode,
    BackendKind::Sqlite,
    true,
    sqlite_session
);
impl_budget_connection!(
    "postgres",
    diesel::pg::PgConnection,
    diesel::pg::Pg,
    diesel::pg::PgRowByRowLoadingMode,
    BackendKind::Postgres,
    true,
    no_session_settings
);
impl_budget_connection!(
    "mysql",
    diesel::mysql::MysqlConnection,
    diesel::mysql::Mysql,
    DefaultLoadingMode,
    BackendKind::Mysql,
    false,
    no_session_settings
);

/// SQLite's session set-up: each pragma that `settings` asks for, and nothing else, so an
/// existing file keeps its journal mode and foreign-key setting unless the builder says
/// otherwise. Every statement is constant text but the busy timeout, an integer (pragmas take
/// no bound parameters).
#[cfg(feature = "sqlite")]
fn sqlite_session(
    conn: &mut diesel::sqlite::SqliteConnection,
    settings: &SessionSettings,
) -> QueryResult<()> {
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

/// PostgreSQL and MySQL: no session settings of ours (see [`SessionSettings`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn no_session_settings<C>(_: &mut C, _: &SessionSettings) -> QueryResult<()> {
    Ok(())
}

/// Whether `sql`, as Diesel renders it, ends in a top-level `LIMIT` with a bound value.
///
/// Diesel renders a select's limit clause last (before any locking clause) as ` LIMIT ` and a
/// placeholder (`$n` or `?`); bind values are never inlined, so the user's data cannot fake it.
/// An offset without a limit renders as `LIMIT -1` (SQLite) or `LIMIT 18446744073709551615`
/// (MySQL), which does not count. A `LIMIT` inside a subquery is followed by a `)`.
pub(crate) fn has_top_level_limit(sql: &str) -> bool {
    has_top_level_bound_clause(sql, " LIMIT ")
}

/// Whether `sql` has a top-level `OFFSET` with a bound value (see [`has_top_level_limit`]).
pub(crate) fn has_top_level_offset(sql: &str) -> bool {
    has_top_level_bound_clause(sql, " OFFSET ")
}

/// The last `keyword` in `sql` is followed by a placeholder and is not inside parentheses.
fn has_top_level_bound_clause(sql: &str, keyword: &str) -> bool {
    let Some(at) = sql.rfind(keyword) else {
        return false;
    };
    let rest = &sql[at + keyword.len()..];
    (rest.starts_with('?') || rest.starts_with('$')) && !rest.contains(')')
}

/// `ON CONFLICT (key) DO NOTHING`, or `ON CONFLICT (key) DO UPDATE SET c = excluded.c, ..` for
/// every inserted column but the key: PostgreSQL's and SQLite's upsert clause of bulk writes.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn on_conflict_clause<'b, DB: diesel::backend::Backend>(
    conflict: &'b crate::bulk::Conflict,
    columns: &'b [String],
    mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
) -> QueryResult<()> {
    out.push_sql(" ON CONFLICT (");
    out.push_identifier(conflict.key)?;
    out.push_sql(")");
    let mut updates = columns.iter().filter(|c| c.as_str() != conflict.key);
    match updates.next() {
        Some(first) if conflict.update => {
            out.push_sql(" DO UPDATE SET ");
            for (i, column) in std::iter::once(first).chain(updates).enumerate() {
                if i > 0 {
                    out.push_sql(", ");
                }
                out.push_identifier(column)?;
                out.push_sql(" = excluded.");
                out.push_identifier(column)?;
            }
        }
        _ => out.push_sql(" DO NOTHING"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{has_top_level_limit, has_top_level_offset};

    #[test]
    fn detects_only_a_top_level_bound_limit() {
        assert!(has_top_level_limit("SELECT a FROM t LIMIT ?"));
        assert!(has_top_level_limit("SELECT a FROM t LIMIT $1 OFFSET $2"));
        assert!(has_top_level_limit("SELECT a FROM t LIMIT $3 FOR UPDATE"));
        assert!(!has_top_level_limit("SELECT a FROM t"));
        assert!(!has_top_level_limit("SELECT a FROM t LIMIT -1 OFFSET ?"));
        assert!(!has_top_level_limit(
            "SELECT a FROM t LIMIT 18446744073709551615 OFFSET ?"
        ));
        assert!(!has_top_level_limit(
            "SELECT a FROM t WHERE a IN (SELECT b FROM u LIMIT ?)"
        ));
        assert!(has_top_level_offset("SELECT a FROM t LIMIT -1 OFFSET ?"));
        assert!(has_top_level_offset("SELECT a FROM t OFFSET $1"));
        assert!(!has_top_level_offset("SELECT a FROM t LIMIT ?"));
        assert!(!has_top_level_offset(
            "SELECT a FROM t WHERE EXISTS (SELECT b FROM u OFFSET ?)"
        ));
    }
}
