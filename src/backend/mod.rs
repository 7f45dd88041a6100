//! What differs between backends, in one place: the sealed [`BudgetConnection`] and
//! [`BudgetBackend`] traits with their capability constants (streaming mode, how a `LIMIT` is
//! read), session set-up, and one module per backend (`sqlite`, `postgres`, `mysql`, each
//! behind its cargo feature) holding that backend's half of every capability: its trait impls,
//! the plain-connection executor, `Db::sqlite`/`postgres`/`mysql`, and later its bulk path and
//! EXPLAIN parser. No file outside `src/backend/` names a connection type or a backend feature
//! (`scripts/test.sh` checks it).

use diesel::backend::Backend;
use diesel::connection::{Connection, DefaultLoadingMode, LoadConnection};
use diesel::query_builder::QueryFragment;
use diesel::r2d2::R2D2Connection;
use diesel::sql_types::{BigInt, HasSqlType};
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

pub(crate) mod sealed {
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
    Connection<Backend: BudgetBackend>
    + LoadConnection<DefaultLoadingMode>
    + R2D2Connection
    + crate::timeout::TimeLimit
    + Send
    + 'static
    + sealed::Sealed
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
    ($conn:ty, $backend:ty, $mode:ty, $kind:expr, $streams:expr, $setup:path) => {
        impl $crate::backend::sealed::Sealed for $conn {}

        impl $crate::backend::BudgetConnection for $conn {
            type StreamMode = $mode;
            const KIND: $crate::backend::BackendKind = $kind;
            const STREAMS: bool = $streams;

            fn set_up_session(
                &mut self,
                settings: &$crate::backend::SessionSettings,
            ) -> diesel::QueryResult<()> {
                $setup(self, settings)
            }

            fn render_sql<Q: diesel::query_builder::QueryFragment<$backend> + ?Sized>(
                query: &Q,
            ) -> diesel::QueryResult<String> {
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

/// A Diesel backend diesel-budget shapes SQL for: `Sqlite`, `Pg`, `Mysql` (each behind its cargo
/// feature). Sealed; what the executor needs to know of the backend's SQL without rendering it.
pub trait BudgetBackend:
    Backend<QueryBuilder: Default> + HasSqlType<BigInt> + Default + sealed::Sealed
{
    /// The value bound by `fragment`, a query's `LIMIT` clause or its expression, read from the
    /// bind the backend would send (no SQL is rendered). `None` where the backend's binds are
    /// opaque (SQLite: the statement is then sent as it is and the executor caps the rows it
    /// steps); an error when `fragment` binds anything but one `BIGINT`.
    #[doc(hidden)]
    fn limit_value<F: QueryFragment<Self> + ?Sized>(fragment: &F) -> QueryResult<Option<i64>>;

    /// `value` as a `BIGINT` bind of this backend.
    #[doc(hidden)]
    fn push_bigint<'b>(
        out: &mut diesel::query_builder::AstPass<'_, 'b, Self>,
        value: &'b i64,
    ) -> QueryResult<()>;
}

/// The one `BIGINT` of a raw-bytes bind collector, decoded with `decode`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn one_bigint(
    binds: &[Option<Vec<u8>>],
    decode: fn([u8; 8]) -> i64,
) -> QueryResult<Option<i64>> {
    match binds {
        [Some(bytes)] => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(raw) => Ok(Some(decode(raw))),
            Err(_) => Err(not_a_limit()),
        },
        _ => Err(not_a_limit()),
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn not_a_limit() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        "diesel-budget: a LIMIT clause that binds anything but one BIGINT".into(),
    )
}

macro_rules! push_bigint_impl {
    ($backend:ty) => {
        fn push_bigint<'b>(
            out: &mut diesel::query_builder::AstPass<'_, 'b, $backend>,
            value: &'b i64,
        ) -> diesel::QueryResult<()> {
            out.push_bind_param::<diesel::sql_types::BigInt, i64>(value)
        }
    };
}

/// PostgreSQL and MySQL: no session settings of ours (see [`SessionSettings`]).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn no_session_settings<C>(_: &mut C, _: &SessionSettings) -> QueryResult<()> {
    Ok(())
}

/// The backend unit tests render SQL for: the first enabled one.
#[cfg(all(test, feature = "sqlite"))]
pub(crate) type TestBackend = diesel::sqlite::Sqlite;
/// The backend unit tests render SQL for: the first enabled one.
#[cfg(all(test, feature = "postgres", not(feature = "sqlite")))]
pub(crate) type TestBackend = diesel::pg::Pg;
/// The backend unit tests render SQL for: the first enabled one.
#[cfg(all(
    test,
    feature = "mysql",
    not(feature = "sqlite"),
    not(feature = "postgres")
))]
pub(crate) type TestBackend = diesel::mysql::Mysql;

// The backends, each behind its feature; the macros above are in scope in them.
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!(
    "diesel-budget needs a backend: enable at least one of its features `sqlite` (the default), \
     `postgres` or `mysql`, e.g. `diesel-budget = { version = \"0.1\", default-features = false, \
     features = [\"postgres\"] }`"
);

/// `ON CONFLICT (key) DO NOTHING`, or `ON CONFLICT (key) DO UPDATE SET c = excluded.c, ..` for
/// every inserted column but the key: PostgreSQL's and SQLite's upsert clause of bulk writes.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn on_conflict_clause<'b, DB: diesel::backend::Backend>(
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

/// `diesel-budget explain`: which backend `url` names, then that backend connects and explains.
/// `postgres://` / `postgresql://`, `mysql://`, anything else an SQLite file (`sqlite://`
/// dropped), which must exist (connecting would create an empty one).
#[cfg(feature = "ci")]
pub(crate) fn explain_at(
    url: &str,
    sql: &str,
    options: crate::testing::ExplainOptions,
) -> crate::error::Result<crate::testing::SqlExplain> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return explain_postgres(url, sql, options);
    }
    if url.starts_with("mysql://") {
        return explain_mysql(url, sql, options);
    }
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    let in_memory = path == ":memory:" || path.starts_with("file:");
    if !in_memory && !std::path::Path::new(path).is_file() {
        return Err(crate::Error::InvalidArgument {
            name: "url",
            reason: format!(
                "no SQLite database file at {path} (or give a postgres:// or mysql:// URL)"
            ),
        });
    }
    explain_sqlite(path, sql, options)
}

/// This build lacks the backend a URL names.
#[cfg(all(
    feature = "ci",
    not(all(feature = "sqlite", feature = "postgres", feature = "mysql"))
))]
fn missing_backend(backend: &str, feature: &str) -> crate::Error {
    crate::Error::InvalidArgument {
        name: "url",
        reason: format!(
            "this build of diesel-budget has no {backend} backend: build it with the `{feature}` \
             feature (`--features cli,{feature}`)"
        ),
    }
}

macro_rules! explain_backend {
    ($fn:ident, $feature:literal, $module:ident, $name:literal) => {
        #[cfg(all(feature = "ci", feature = $feature))]
        fn $fn(
            url: &str,
            sql: &str,
            options: crate::testing::ExplainOptions,
        ) -> crate::error::Result<crate::testing::SqlExplain> {
            $module::explain::explain_at(url, sql, options)
        }

        #[cfg(all(feature = "ci", not(feature = $feature)))]
        fn $fn(
            _: &str,
            _: &str,
            _: crate::testing::ExplainOptions,
        ) -> crate::error::Result<crate::testing::SqlExplain> {
            Err(missing_backend($name, $feature))
        }
    };
}

explain_backend!(explain_postgres, "postgres", postgres, "PostgreSQL");
explain_backend!(explain_mysql, "mysql", mysql, "MySQL");
explain_backend!(explain_sqlite, "sqlite", sqlite, "SQLite");
