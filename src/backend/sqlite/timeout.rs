//! SQLite's half of time budgets: the statement is interrupted inside its step, by a progress
//! handler SQLite calls every [`PROGRESS_OPS`] virtual-machine instructions.
//!
//! Diesel does not expose the raw `sqlite3*` handle, so the handler is installed while the
//! connection is being opened: `sqlite3_auto_extension` (from `libsqlite3-sys`, the same SQLite
//! Diesel links: `links = "sqlite3"` lets a build hold only one) registers [`on_open`], which
//! SQLite calls synchronously, on the opening thread, for every connection opened in the
//! process. It does nothing unless this thread set [`CAPTURE`], which only
//! [`TimeLimit::establish_for_pool`] does, around the one `SqliteConnection::establish` of a
//! connection our pool opens: only our pool's connections get the handler.
//!
//! The handler has no state of its own: it reads [`DEADLINE`], a thread-local set by
//! [`TimeLimit::within_time_limit`] around the budgeted statement and restored after it. A
//! statement steps only on the thread that calls `sqlite3_step`, the one running the executor
//! (Diesel's connection is `!Sync`), so the thread-local is that statement's deadline. Nothing
//! points into a connection or is freed with it: the handler dies with the connection.
//!
//! When the handler returns non-zero the step fails with `SQLITE_INTERRUPT` ("interrupted"),
//! which the executor turns into `BudgetExceeded { exceeded: Time }`. Diesel resets the
//! statement; the connection stays usable, and an interrupted `SELECT` leaves an open
//! transaction as it was (SQLite rolls a transaction back only for an interrupted write, and
//! budgets only run reads).
//!
//! A plain `SqliteConnection` (opened by you, outside a [`Db`](crate::Db)) has no handler: there
//! the executor's clock between rows is the only limit (it stays on for pooled connections
//! too, and for a build whose SQLite lacks auto-extensions).

// The one module of the crate with unsafe code: two FFI calls into SQLite and the two
// callbacks it calls back. Each is justified where it is.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel::connection::Connection as _;
use diesel::result::Error as D;
use diesel::sqlite::SqliteConnection;
use diesel::ConnectionResult;
use libsqlite3_sys as ffi;

use crate::error::Result;
use crate::timeout::{sealed, TimeLimit, TimeSql};

/// How many virtual-machine instructions run between two calls of the progress handler. About
/// 10-50 µs of work each on this machine: the deadline is seen that late at most, and a query
/// without a time limit pays one thread-local read per call.
const PROGRESS_OPS: c_int = 1_000;

/// Where a connection being opened on this thread stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// Not opening one of our pool's connections: [`on_open`] does nothing.
    Off,
    /// Opening one: [`on_open`] installs the handler on the next connection opened.
    Armed,
    /// [`on_open`] installed it.
    Installed,
}

thread_local! {
    /// Set by [`TimeLimit::establish_for_pool`] around the open, read by [`on_open`].
    static CAPTURE: Cell<Capture> = const { Cell::new(Capture::Off) };
    /// The deadline of the budgeted statement this thread runs, read by [`on_progress`].
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The auto-extension entry point: SQLite calls it inside `sqlite3_open_v2` for every new
/// connection of the process, on the opening thread, with that connection's handle.
///
/// # Safety
/// Called by SQLite only, with `db` a valid connection that is being opened.
unsafe extern "C" fn on_open(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // `try_with`: never panic across the FFI boundary (a thread being torn down has no TLS).
    let ours = CAPTURE
        .try_with(|c| {
            let armed = c.get() == Capture::Armed;
            if armed {
                c.set(Capture::Installed);
            }
            armed
        })
        .unwrap_or(false);
    if ours {
        // SAFETY: `db` is the live handle SQLite passes to its entry point, used on the thread
        // that opens it, before `sqlite3_open_v2` returns. `on_progress` has the signature
        // SQLite expects, reads no argument (null), and is a plain function that outlives every
        // connection.
        unsafe {
            ffi::sqlite3_progress_handler(db, PROGRESS_OPS, Some(on_progress), std::ptr::null_mut())
        };
    }
    ffi::SQLITE_OK
}

/// The progress handler: non-zero (interrupt) once this thread's [`DEADLINE`] has passed.
///
/// # Safety
/// Called by SQLite only; it reads nothing through its argument.
unsafe extern "C" fn on_progress(_: *mut c_void) -> c_int {
    let past = DEADLINE
        .try_with(|d| d.get().is_some_and(|d| Instant::now() >= d))
        .unwrap_or(false);
    c_int::from(past)
}

/// Registers [`on_open`] with SQLite, once per process; whether it is registered.
fn registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: `on_open` has exactly the entry-point signature of `sqlite3_auto_extension`
        // (the binding declares it), is a plain function valid for the life of the process,
        // and is never unregistered. SQLite initializes itself inside this call if needed.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(on_open)) };
        rc == ffi::SQLITE_OK
    })
}

/// Puts `CAPTURE` back to `Off` when the open returns (or unwinds).
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        let _ = CAPTURE.try_with(|c| c.set(Capture::Off));
    }
}

/// Restores the previous deadline when the statement is over (or unwinds): budgets may nest
/// (a row type's deserializer running a query of its own).
struct Restore(Option<Instant>);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = DEADLINE.try_with(|d| d.set(self.0));
    }
}

impl sealed::Sealed for SqliteConnection {}

impl TimeLimit for SqliteConnection {
    // Kept on: a plain connection has no handler, and a single instruction (the final merge of
    // a large sort) is not divided by the handler.
    const CLIENT_DEADLINE: bool = true;

    fn time_sql(&mut self, _: Duration) -> Result<TimeSql> {
        Ok(TimeSql::default())
    }

    fn within_time_limit<R>(
        &mut self,
        limit: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        let _restore = Restore(DEADLINE.replace(Instant::now().checked_add(limit)));
        run(self)
    }

    fn is_time_out(e: &D) -> bool {
        // SQLITE_INTERRUPT: only our progress handler interrupts (Diesel offers no
        // `sqlite3_interrupt`), and only past a deadline.
        matches!(e, D::DatabaseError(_, info) if info.message() == "interrupted")
    }

    fn establish_for_pool(url: &str) -> ConnectionResult<Self> {
        if !registered() {
            return SqliteConnection::establish(url);
        }
        CAPTURE.set(Capture::Armed);
        let _disarm = Disarm;
        SqliteConnection::establish(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::RunQueryDsl;

    const LONG: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                        WHERE x < 1000) SELECT count(*) AS n FROM c a, c b, c d";

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        #[allow(dead_code)]
        n: i64,
    }

    #[test]
    fn only_pool_connections_get_the_handler() {
        let mut pooled = SqliteConnection::establish_for_pool(":memory:").expect("open");
        assert_eq!(CAPTURE.get(), Capture::Off);
        let start = Instant::now();
        let err = pooled
            .within_time_limit(Duration::from_millis(50), |c| {
                diesel::sql_query(LONG)
                    .get_result::<N>(c)
                    .map_err(|e| crate::Error::query(LONG, e))
            })
            .err()
            .expect("interrupted");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        match err {
            crate::Error::Query { source, .. } => assert!(SqliteConnection::is_time_out(&source)),
            other => panic!("{other:?}"),
        }
        assert_eq!(DEADLINE.get(), None);
        // Usable after, and no deadline outside `within_time_limit`.
        diesel::sql_query("SELECT 1 AS n")
            .get_result::<N>(&mut pooled)
            .expect("usable");
        // A connection opened by anyone else has no handler: a deadline set does nothing.
        let mut plain = SqliteConnection::establish(":memory:").expect("open");
        plain
            .within_time_limit(Duration::from_nanos(1), |c| {
                diesel::sql_query(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                                   WHERE x < 100000) SELECT count(*) AS n FROM c",
                )
                .get_result::<N>(c)
                .map_err(|e| crate::Error::query("", e))
            })
            .map(drop)
            .expect("not interrupted");
    }
}
