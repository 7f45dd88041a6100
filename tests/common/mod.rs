//! Shared set-up for the integration tests: one database per backend, id ranges per test, and
//! connections that begin their test transaction or fail the test.
//!
//! - PostgreSQL and MySQL/MariaDB: the URL comes from `PG_DATABASE_URL` / `MYSQL_DATABASE_URL`
//!   (falling back to `DATABASE_URL`, then to a database named `diesel_budget_test` on the local
//!   server: [`demo::url_from_env`]). The database is created when missing
//!   ([`demo::create_database`]), migrated once, and one [`Db`] per backend is shared by every
//!   test of the process. An unreachable server is a test *failure*, never a skip.
//! - SQLite: a fresh temporary file per test, migrated.
//!
//! Tests run in parallel threads on the shared pools. Each test takes a connection, opens a test
//! transaction ([`TestConn::begin_test_transaction`]), inserts its own rows in its own id range
//! ([`id_base`]) and filters every query to that range, so no test sees another's rows.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use diesel::prelude::*;
use diesel_budget::demo::{self, items, Item, MIGRATIONS};
use diesel_budget::{BudgetConnection, Conn, Db};

pub mod slow;

/// How long a checkout waits before failing the test (parallel tests share small pools).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections in each shared server pool.
const SHARED_POOL_SIZE: u32 = 6;

/// The first id of test number `test_no`'s range: `(pid % 20) * 10^8 + test_no * 10^6`, within
/// the `INTEGER` key. Distinct per test (concurrent uncommitted inserts of the same key block
/// each other on PostgreSQL and MySQL) and, most likely, per process (another engineer may run
/// the suite against the same database at the same time).
pub fn id_base(test_no: i32) -> i32 {
    assert!(
        (1..100).contains(&test_no),
        "test numbers are 1..100, got {test_no}"
    );
    let process = i32::try_from(std::process::id() % 20).unwrap_or(0);
    process * 100_000_000 + test_no * 1_000_000
}

/// `items.id BETWEEN base AND base + n - 1`: the `n` rows of a test's range starting at `base`.
pub fn in_range(base: i32, n: i32) -> diesel::dsl::Between<items::id, i32, i32> {
    items::id.between(base, base + n - 1)
}

/// A database for one test: the backend's shared pool, or a private one (SQLite always; the
/// servers when a test needs counters nobody else touches). Holds the SQLite temp dir alive.
pub struct TestDb<C: BudgetConnection> {
    pub db: Db<C>,
    _dir: Option<tempfile::TempDir>,
}

impl<C: BudgetConnection> TestDb<C> {
    /// A pooled connection, wrapped in a [`TestConn`] guard.
    pub fn conn(&self) -> TestConn<C> {
        TestConn {
            conn: self
                .db
                .get()
                .unwrap_or_else(|e| panic!("checking out a {} connection: {e}", C::KIND)),
        }
    }
}

/// A pooled [`Conn`] whose test transaction fails the test when it cannot begin. A transaction
/// still open when it is dropped is rolled back by `Conn`'s own `Drop` (see the
/// `dropped_test_transaction_is_not_handed_out_again` test).
pub struct TestConn<C: BudgetConnection> {
    conn: Conn<C>,
}

impl<C: BudgetConnection> TestConn<C> {
    /// Begins the never-committed test transaction, failing the test if that is impossible.
    pub fn begin_test_transaction(&mut self) {
        self.conn
            .begin_test_transaction()
            .unwrap_or_else(|e| panic!("begin test transaction on {}: {e}", C::KIND));
    }
}

impl<C: BudgetConnection> Deref for TestConn<C> {
    type Target = Conn<C>;
    fn deref(&self) -> &Conn<C> {
        &self.conn
    }
}

impl<C: BudgetConnection> DerefMut for TestConn<C> {
    fn deref_mut(&mut self) -> &mut Conn<C> {
        &mut self.conn
    }
}

/// One test's world: a database, a connection in a test transaction, and the test's id range.
pub struct Ctx<C: BudgetConnection> {
    pub conn: TestConn<C>,
    pub base: i32,
    pub tdb: TestDb<C>,
}

impl<C: BudgetConnection> Ctx<C> {
    /// The pool behind this test.
    pub fn db(&self) -> &Db<C> {
        &self.tdb.db
    }
}

/// Per-backend set-up. Implemented for each connection type whose feature is enabled.
pub trait Backend: BudgetConnection + Sized {
    /// The pool the tests of this backend share (SQLite: a fresh migrated file).
    fn test_db() -> TestDb<Self>;

    /// A pool of its own (max `size` connections), on the same database, already migrated.
    fn private_db(size: u32) -> TestDb<Self> {
        Self::private_db_with(size, CHECKOUT_TIMEOUT)
    }

    /// [`Backend::private_db`] whose checkouts give up after `timeout`.
    fn private_db_with(size: u32, timeout: Duration) -> TestDb<Self>;

    /// Inserts the generated rows `from..to` through the escape hatch (in a savepoint).
    fn seed(conn: &mut Conn<Self>, from: i32, to: i32);

    /// Deletes the rows `from..to` through the escape hatch; returns how many there were.
    fn delete_range(conn: &mut Conn<Self>, from: i32, to: i32) -> usize;

    /// A plain Diesel connection (no pool, no instrumentation) to the test database; SQLite:
    /// a fresh in-memory database (no tables).
    fn plain() -> Self;

    /// The URL of `tdb`'s database, for the backend's command-line client (SQLite: the file's
    /// path).
    fn url(tdb: &TestDb<Self>) -> String;

    /// Starts a test: connection, test transaction, id range of test `test_no`.
    fn ctx(test_no: i32) -> Ctx<Self> {
        let tdb = Self::test_db();
        let mut conn = tdb.conn();
        conn.begin_test_transaction();
        Ctx {
            conn,
            base: id_base(test_no),
            tdb,
        }
    }

    /// [`Backend::ctx`] with `n` rows inserted: ids `base..base + n`.
    fn seeded(test_no: i32, n: i32) -> Ctx<Self> {
        let mut ctx = Self::ctx(test_no);
        Self::seed(&mut ctx.conn, ctx.base, ctx.base + n);
        ctx
    }
}

macro_rules! seed_impl {
    () => {
        fn seed(conn: &mut Conn<Self>, from: i32, to: i32) {
            diesel_budget::testing::allow_unbudgeted("fixture: seed rows", || {
                demo::seed(conn, from, to, |_| {})
            })
            .unwrap_or_else(|e| panic!("seeding ids {from}..{to} on {}: {e}", Self::KIND));
        }

        fn delete_range(conn: &mut Conn<Self>, from: i32, to: i32) -> usize {
            diesel_budget::testing::allow_unbudgeted("fixture: delete rows", || {
                diesel::delete(items::table.filter(in_range(from, to - from)))
                    .execute(conn.unbudgeted())
            })
            .unwrap_or_else(|e| panic!("deleting ids {from}..{to} on {}: {e}", Self::KIND))
        }
    };
}

/// Whether the pools built here are strict. The integration suite runs in strict mode: a
/// statement without a budget fails the test that ran it, unless the test allows it by name
/// (`testing::allow_unbudgeted`). The fault suite turns it off: its subject is faults, and it
/// writes through the escape hatch from many threads.
pub static STRICT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

fn build<C: BudgetConnection>(url: &str, size: u32, min_idle: u32, timeout: Duration) -> Db<C> {
    let db = build_lax::<C>(url, size, min_idle, timeout);
    db.set_strict(STRICT.load(std::sync::atomic::Ordering::Relaxed));
    db
}

fn build_lax<C: BudgetConnection>(url: &str, size: u32, min_idle: u32, timeout: Duration) -> Db<C> {
    Db::<C>::builder(url)
        .max_size(size)
        .min_idle(min_idle)
        .connection_timeout(timeout)
        .migrations(MIGRATIONS)
        .build()
        .unwrap_or_else(|e| {
            panic!(
                "cannot open a migrated {} pool on {url}: {e}\n\
                 The servers must be running (see ../shared/FACTS.md for the start commands); \
                 the suite fails rather than skips.",
                C::KIND
            )
        })
}

/// The server URL for `C` from `var` (see [`demo::url_from_env`]), failing the test when it is
/// unusable.
fn url_from_env<C: BudgetConnection>(var: &str) -> String {
    match demo::url_from_env(var, C::KIND, "diesel_budget_test") {
        Ok(Some(url)) => url,
        Ok(None) => panic!("{} has no server URL", C::KIND),
        Err(e) => panic!("{var}: {e}"),
    }
}

/// Creates the test database of `url` when it is missing (a concurrent creator, in this
/// process or another, is fine); `start` says how to start the server.
fn ensure_database<C: BudgetConnection>(url: &str, start: &str) {
    demo::create_database::<C>(url).unwrap_or_else(|e| {
        panic!(
            "creating the {} test database: {e}\nIs the server up? Start it: {start}",
            C::KIND
        )
    });
}

// ---------------------------------------------------------------------------------------------
// SQLite: a fresh file per test.

#[cfg(feature = "sqlite")]
impl Backend for diesel::sqlite::SqliteConnection {
    fn test_db() -> TestDb<Self> {
        Self::private_db(2)
    }

    fn plain() -> Self {
        Self::establish(":memory:").expect("in-memory SQLite")
    }

    fn url(tdb: &TestDb<Self>) -> String {
        let dir = tdb
            ._dir
            .as_ref()
            .expect("an SQLite test database has its directory");
        dir.path().join("test.db").to_string_lossy().into_owned()
    }

    fn private_db_with(size: u32, timeout: Duration) -> TestDb<Self> {
        let dir = tempfile::Builder::new()
            .prefix("diesel-budget-test")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("test.db");
        let path = path.to_str().expect("utf-8 temp path");
        TestDb {
            db: build(path, size, 1, timeout),
            _dir: Some(dir),
        }
    }

    seed_impl!();
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

#[cfg(feature = "postgres")]
pub fn pg_url() -> String {
    url_from_env::<diesel::pg::PgConnection>("PG_DATABASE_URL")
}

#[cfg(feature = "postgres")]
impl Backend for diesel::pg::PgConnection {
    fn test_db() -> TestDb<Self> {
        static DB: std::sync::OnceLock<Db<diesel::pg::PgConnection>> = std::sync::OnceLock::new();
        let db = DB.get_or_init(|| {
            let url = pg_url();
            ensure_database::<Self>(
                &url,
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            );
            build(&url, SHARED_POOL_SIZE, 2, CHECKOUT_TIMEOUT)
        });
        TestDb {
            db: db.clone(),
            _dir: None,
        }
    }

    fn plain() -> Self {
        let _shared = Self::test_db(); // creates and migrates the database first
        Self::establish(&pg_url()).expect("plain PostgreSQL connection")
    }

    fn url(_: &TestDb<Self>) -> String {
        pg_url()
    }

    fn private_db_with(size: u32, timeout: Duration) -> TestDb<Self> {
        let _shared = Self::test_db(); // creates and migrates the database first
        TestDb {
            db: build(&pg_url(), size, 1, timeout),
            _dir: None,
        }
    }

    seed_impl!();
}

// ---------------------------------------------------------------------------------------------
// MySQL / MariaDB.

#[cfg(feature = "mysql")]
pub fn mysql_url() -> String {
    url_from_env::<diesel::mysql::MysqlConnection>("MYSQL_DATABASE_URL")
}

#[cfg(feature = "mysql")]
impl Backend for diesel::mysql::MysqlConnection {
    fn test_db() -> TestDb<Self> {
        static DB: std::sync::OnceLock<Db<diesel::mysql::MysqlConnection>> =
            std::sync::OnceLock::new();
        let db = DB.get_or_init(|| {
            let url = mysql_url();
            ensure_database::<Self>(
                &url,
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
            );
            build(&url, SHARED_POOL_SIZE, 2, CHECKOUT_TIMEOUT)
        });
        TestDb {
            db: db.clone(),
            _dir: None,
        }
    }

    fn plain() -> Self {
        let _shared = Self::test_db();
        Self::establish(&mysql_url()).expect("plain MySQL connection")
    }

    fn url(_: &TestDb<Self>) -> String {
        mysql_url()
    }

    fn private_db_with(size: u32, timeout: Duration) -> TestDb<Self> {
        let _shared = Self::test_db();
        TestDb {
            db: build(&mysql_url(), size, 1, timeout),
            _dir: None,
        }
    }

    seed_impl!();
}

/// The generated rows `from..to`, as the tests expect to load them.
pub fn expected(from: i32, to: i32) -> Vec<Item> {
    (from..to).map(Item::generate).collect()
}

// ---------------------------------------------------------------------------------------------
// Killing a session from another connection (servers only: SQLite has no server).

/// A backend whose sessions can be killed from another connection.
pub trait Killable: Backend {
    /// The server's id of the session behind `conn`.
    fn session_id(conn: &mut Conn<Self>) -> i64;
    /// Kills session `id` from `conn` (another session) and waits until it is gone.
    fn kill(conn: &mut Conn<Self>, id: i64);
}

#[cfg(feature = "postgres")]
impl Killable for diesel::pg::PgConnection {
    fn session_id(conn: &mut Conn<Self>) -> i64 {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("fixture: session id");
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "pg_backend_pid()",
        ))
        .get_result::<i32>(conn.unbudgeted())
        .map(i64::from)
        .expect("SELECT pg_backend_pid()")
    }

    fn kill(conn: &mut Conn<Self>, id: i64) {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("fixture: kill a session");
        // The second argument (PostgreSQL 14+) waits up to 5 s for the backend to exit.
        let killed = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_terminate_backend({id}, 5000)"
        )))
        .get_result::<bool>(conn.unbudgeted())
        .expect("SELECT pg_terminate_backend(..)");
        assert!(killed, "pg_terminate_backend({id}) found no such backend");
    }
}

#[cfg(feature = "mysql")]
impl Killable for diesel::mysql::MysqlConnection {
    fn session_id(conn: &mut Conn<Self>) -> i64 {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("fixture: session id");
        diesel::select(diesel::dsl::sql::<
            diesel::sql_types::Unsigned<diesel::sql_types::BigInt>,
        >("CONNECTION_ID()"))
        .get_result::<u64>(conn.unbudgeted())
        .map(|id| i64::try_from(id).expect("connection id fits i64"))
        .expect("SELECT CONNECTION_ID()")
    }

    fn kill(conn: &mut Conn<Self>, id: i64) {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("fixture: kill a session");
        diesel::sql_query(format!("KILL CONNECTION {id}"))
            .execute(conn.unbudgeted())
            .unwrap_or_else(|e| panic!("KILL CONNECTION {id}: {e}"));
    }
}

/// Committed rows `from..to` (for tests that kill connections: a killed transaction is lost),
/// deleted again when dropped, also when the test panics.
pub struct CommittedRows<C: Backend> {
    db: Db<C>,
    pub from: i32,
    pub to: i32,
}

impl<C: Backend> CommittedRows<C> {
    /// Removes leftovers of an earlier run in `from..to`, then commits the generated rows.
    pub fn insert(db: &Db<C>, from: i32, to: i32) -> Self {
        let guard = CommittedRows {
            db: db.clone(),
            from,
            to,
        };
        let mut conn = db.get().expect("checkout for seeding");
        C::delete_range(&mut conn, from, to);
        C::seed(&mut conn, from, to);
        guard
    }
}

impl<C: Backend> Drop for CommittedRows<C> {
    fn drop(&mut self) {
        match self.db.get() {
            Ok(mut conn) => {
                C::delete_range(&mut conn, self.from, self.to);
            }
            Err(e) => eprintln!("cannot clean up ids {}..{}: {e}", self.from, self.to),
        }
    }
}

/// Another pool on `tdb`'s database: to a cache attached to only one of the two, the other is
/// another process (its writes are seen only through a shared tier).
pub fn another_pool<C: BudgetConnection>(tdb: &TestDb<C>, size: u32) -> Db<C> {
    let url = match (&tdb._dir, C::KIND) {
        (Some(dir), _) => dir.path().join("test.db").to_string_lossy().into_owned(),
        #[cfg(feature = "postgres")]
        (None, diesel_budget::BackendKind::Postgres) => pg_url(),
        #[cfg(feature = "mysql")]
        (None, diesel_budget::BackendKind::Mysql) => mysql_url(),
        (None, kind) => panic!("no second pool for {kind}"),
    };
    build(&url, size, 1, CHECKOUT_TIMEOUT)
}
