//! Slow statements on each backend, for time budgets: a filter that sleeps per row, the set-up
//! it needs (SQLite: a registered function), how many statements carrying it still run on the
//! server, and a pool whose default time limit is set.

use std::time::Duration;

use diesel::expression::SqlLiteral;
use diesel::sql_types::Bool;
use diesel_budget::{Conn, Db};

use super::{Backend, TestDb};

/// A backend on which a query can be made slow.
pub trait Slow: Backend {
    /// A predicate that sleeps `ms` milliseconds per row it is evaluated on and is true. `ms`
    /// also marks the statement, for [`Slow::running`]: give each test its own.
    fn sleepy(ms: u32) -> SqlLiteral<Bool> {
        diesel::dsl::sql(&Self::sleepy_sql(ms))
    }

    /// The SQL of [`Slow::sleepy`].
    fn sleepy_sql(ms: u32) -> String;

    /// Makes [`Slow::sleepy`] available on `conn` (SQLite: registers the function).
    fn prepare(_conn: &mut Conn<Self>) {}

    /// How many statements with [`Slow::sleepy`]`(ms)` other sessions are running on the
    /// server now (SQLite: 0, there is no server).
    fn running(_conn: &mut Conn<Self>, _ms: u32) -> i64 {
        0
    }

    /// The session's own statement time limit setting, to show none leaks (SQLite: none).
    fn session_limit(_conn: &mut Conn<Self>) -> String {
        "none".into()
    }

    /// What [`Slow::session_limit`] reads on a connection of a pool whose default is `ms`
    /// (`None`: a pool without one): the pool's default is a session setting on the servers.
    fn session_limit_of(_ms: Option<u32>) -> String {
        "none".into()
    }

    /// A migrated pool of `size` connections whose budgets default to `limit`.
    fn timed_db(size: u32, limit: Duration) -> TestDb<Self>;

    /// The error of building a pool with time limit `limit` (which must be refused).
    fn timed_db_builder_error(limit: Duration) -> diesel_budget::Error {
        Db::<Self>::builder("unused")
            .time_limit(limit)
            .build()
            .expect_err("the builder refuses the time limit")
    }
}

fn seconds(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(feature = "sqlite")]
diesel::define_sql_function! {
    /// Sleeps `ms` milliseconds; true.
    fn diesel_budget_sleep(ms: diesel::sql_types::Integer) -> Bool;
}

#[cfg(feature = "sqlite")]
impl Slow for diesel::sqlite::SqliteConnection {
    fn sleepy_sql(ms: u32) -> String {
        format!("diesel_budget_sleep({ms})")
    }

    fn prepare(conn: &mut Conn<Self>) {
        diesel_budget_sleep_utils::register_nondeterministic_impl(conn.unbudgeted(), |ms: i32| {
            std::thread::sleep(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            true
        })
        .expect("registering diesel_budget_sleep");
    }

    fn timed_db(size: u32, limit: Duration) -> TestDb<Self> {
        let dir = tempfile::Builder::new()
            .prefix("diesel-budget-timed")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("test.db");
        let path = path.to_str().expect("utf-8 temp path");
        TestDb {
            db: timed(path, size, limit),
            _dir: Some(dir),
        }
    }
}

#[cfg(feature = "postgres")]
impl Slow for diesel::pg::PgConnection {
    fn sleepy_sql(ms: u32) -> String {
        format!("pg_sleep({})::text = ''", seconds(ms))
    }

    fn running(conn: &mut Conn<Self>, ms: u32) -> i64 {
        use diesel::RunQueryDsl;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep({})%')",
            seconds(ms)
        )))
        .get_result(conn.unbudgeted())
        .expect("pg_stat_activity")
    }

    fn session_limit(conn: &mut Conn<Self>) -> String {
        use diesel::RunQueryDsl;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "current_setting('statement_timeout')",
        ))
        .get_result(conn.unbudgeted())
        .expect("current_setting('statement_timeout')")
    }

    fn session_limit_of(ms: Option<u32>) -> String {
        // PostgreSQL shows the largest unit that divides the value.
        match ms {
            None | Some(0) => "0".into(),
            Some(ms) if ms % 1000 == 0 => format!("{}s", ms / 1000),
            Some(ms) => format!("{ms}ms"),
        }
    }

    fn timed_db(size: u32, limit: Duration) -> TestDb<Self> {
        let _shared = Self::test_db();
        TestDb {
            db: timed(&super::pg_url(), size, limit),
            _dir: None,
        }
    }
}

#[cfg(feature = "mysql")]
impl Slow for diesel::mysql::MysqlConnection {
    fn sleepy_sql(ms: u32) -> String {
        format!("SLEEP({}) = 0", seconds(ms))
    }

    fn running(conn: &mut Conn<Self>, ms: u32) -> i64 {
        use diesel::RunQueryDsl;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
             AND INFO LIKE '%SLEEP({})%')",
            seconds(ms)
        )))
        .get_result(conn.unbudgeted())
        .expect("PROCESSLIST")
    }

    fn session_limit(conn: &mut Conn<Self>) -> String {
        use diesel::RunQueryDsl;
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "CAST(@@SESSION.max_statement_time AS CHAR)",
        ))
        .get_result(conn.unbudgeted())
        .expect("@@max_statement_time")
    }

    fn session_limit_of(ms: Option<u32>) -> String {
        let ms = ms.unwrap_or(0);
        format!("{}.{:03}000", ms / 1000, ms % 1000)
    }

    fn timed_db(size: u32, limit: Duration) -> TestDb<Self> {
        let _shared = Self::test_db();
        TestDb {
            db: timed(&super::mysql_url(), size, limit),
            _dir: None,
        }
    }
}

fn timed<C: Backend>(url: &str, size: u32, limit: Duration) -> Db<C> {
    Db::<C>::builder(url)
        .max_size(size)
        .min_idle(1)
        .time_limit(limit)
        .migrations(diesel_budget::demo::MIGRATIONS)
        .build()
        .unwrap_or_else(|e| panic!("a timed {} pool on {url}: {e}", C::KIND))
}
