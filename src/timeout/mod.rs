//! Time budgets: how long one statement may run, enforced by the server where it can be.
//!
//! A budget with [`Budget::time`](crate::Budget::time) (or a pool with
//! [`DbBuilder::time_limit`](crate::DbBuilder::time_limit)) runs each of its statements under a
//! time limit. When the limit is reached the statement is cancelled and the query fails with
//! [`Error::BudgetExceeded`](crate::Error::BudgetExceeded) whose `exceeded` is
//! [`Exceeded::Time`](crate::Exceeded::Time); the connection stays usable and nothing of the
//! statement keeps running.
//!
//! **The pool's default is free.** A [`Db`](crate::Db) with
//! [`DbBuilder::time_limit`](crate::DbBuilder::time_limit) makes it a session setting of each of
//! its connections when it opens them (PostgreSQL `SET statement_timeout = <ms>`, MariaDB
//! `SET SESSION max_statement_time = <s>`), and notes the value in the connection's
//! instrumentation. A statement whose limit is that value sends nothing more; a budget with a
//! limit of its own ([`Budget::time`](crate::Budget::time)) uses the per-statement mechanism
//! below, which overrides the session's for that statement alone; a budget with
//! [`Budget::no_time_limit`](crate::Budget::no_time_limit) gets the same mechanism with 0 (no
//! limit). The session value is never changed inside a transaction (a `SET` there is undone by a
//! rollback): only when the pool opens a connection, around [`Db::run_migrations`](crate::Db::run_migrations)
//! (migrations run without it), and when [`Db::get`](crate::Db::get) re-installs an
//! instrumentation a borrower replaced. Consequences:
//! - statements through [`Conn::unbudgeted`](crate::Conn::unbudgeted) (writes, DDL) run under the
//!   pool's default too, on PostgreSQL and MariaDB (not on SQLite or MySQL proper, where the
//!   limit stays per statement);
//! - a session value changed through `unbudgeted()` (`SET statement_timeout ..`) is not seen: it
//!   stays on that physical connection, and budgeted statements at the pool's default then run
//!   under your value. Change it with `SET LOCAL` inside a transaction, or not at all;
//! - a plain connection, or another pool's, never carries it (the note lives in each
//!   connection's own instrumentation);
//! - a streamed walk on such a connection walks in keyset batches (one statement would run
//!   under the session's limit).
//!
//! | Backend | How (a limit other than the pool's default) | Extra round trips |
//! |---|---|---|
//! | PostgreSQL | `SET LOCAL statement_timeout` in a transaction around the statement (a savepoint inside yours, the previous value restored after) | 2 (`BEGIN; SET LOCAL ..` as one batch, `COMMIT`); in your transaction 5 (savepoint, `SHOW`, `SET LOCAL` twice, release). At the pool's default: 0, in your transaction 2 (a savepoint and its release: a cancelled statement would otherwise abort your transaction) |
//! | MariaDB | `SET STATEMENT max_statement_time=<s> FOR <statement>`: a prefix of the statement itself (its SQL then depends on the limit and is rendered on every run) | 0 (1 per connection: `SELECT VERSION()`, once). At the pool's default: nothing added |
//! | MySQL (Oracle's) | `SELECT /*+ MAX_EXECUTION_TIME(<ms>) */ ..`: the optimizer hint right after `SELECT` (read-only `SELECT`s); **untested against a MySQL server** | 0 (1 per connection, as MariaDB) |
//! | SQLite | a progress handler interrupts the statement inside its step (`SQLITE_INTERRUPT`), checked every 1,000 virtual-machine instructions; the clock is also read between rows | 0 |
//!
//! Limits:
//! - SQLite: the progress handler is installed on the connections of a [`Db`](crate::Db)
//!   pool, while each is opened (Diesel exposes no raw handle; see
//!   `src/backend/sqlite/timeout.rs`). A plain `SqliteConnection` you open yourself keeps the
//!   client deadline only: the clock is read between rows, so a single long step there (a big
//!   aggregate or sort before its first row) runs to its end. A single virtual-machine
//!   instruction is not divided either (the final merge of a very large sort).
//! - MySQL and MariaDB: which server a connection talks to is read once per connection from
//!   its version string and noted in its instrumentation (a plain `MysqlConnection` without
//!   [`instrument()`](crate::instrument()) asks again for each timed statement). MySQL proper
//!   has no `SET STATEMENT`; its hint is checked only for rendering (unit tests): no MySQL
//!   server was available to test it against.
//! - A streamed walk ([`BatchMode::Stream`](crate::BatchMode::Stream)) under a time limit walks
//!   in keyset batches instead, so that each statement, not the whole walk, has the limit.
//!
//! With no time limit (and no session limit) the executor runs exactly as before: no wrapper, no
//! extra statement.

use std::time::Duration;

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::RunQueryDsl;
use diesel::QueryResult;

use crate::error::Result;

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// How a backend puts a time limit on one statement. Sealed: implemented for every
/// [`BudgetConnection`](crate::BudgetConnection), in `src/backend/<db>/timeout.rs`.
pub trait TimeLimit: Sized + sealed::Sealed {
    /// Whether the executor checks the deadline itself between rows (SQLite: nothing on a
    /// server can cancel the statement).
    #[doc(hidden)]
    const CLIENT_DEADLINE: bool;

    /// What a time limit of `limit` adds to this connection's statements: MariaDB's
    /// `SET STATEMENT .. FOR ` prefix, MySQL's `MAX_EXECUTION_TIME` hint, or nothing.
    #[doc(hidden)]
    fn time_sql(&mut self, limit: Duration) -> Result<TimeSql>;

    /// Runs `run` with `limit` in force for the statements it sends (PostgreSQL: inside a
    /// transaction with `SET LOCAL statement_timeout`).
    #[doc(hidden)]
    fn within_time_limit<R>(
        &mut self,
        limit: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R>;

    /// Makes `limit` this connection's session time limit (`None`: none), for a pool's default
    /// ([`DbBuilder::time_limit`](crate::DbBuilder::time_limit)), and notes it in the
    /// connection's [`BudgetInstrumentation`](crate::BudgetInstrumentation) so that statements
    /// at that limit send nothing more. Called outside any transaction only (a session `SET`
    /// in a transaction that rolls back is undone). Backends without a session setting
    /// (SQLite, MySQL proper) note nothing and keep the per-statement mechanism.
    #[doc(hidden)]
    fn set_session_time_limit(&mut self, _limit: Option<Duration>) -> QueryResult<()> {
        Ok(())
    }

    /// Runs `run`, whose statements are under the session's own time limit (the pool's
    /// default, [`set_session_time_limit`](Self::set_session_time_limit)): nothing to send,
    /// except what keeps a caller's transaction usable when the statement is cancelled
    /// (PostgreSQL: a savepoint inside a transaction, as a failed statement aborts it).
    #[doc(hidden)]
    fn within_session_limit<R>(&mut self, run: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        run(self)
    }

    /// Whether `e` is the server cancelling a statement for its time limit.
    #[doc(hidden)]
    fn is_time_out(e: &diesel::result::Error) -> bool;

    /// Opens a connection for a [`Db`](crate::Db) pool (SQLite: with its statement interrupt,
    /// see the module docs); elsewhere as `establish`.
    #[doc(hidden)]
    fn establish_for_pool(url: &str) -> diesel::ConnectionResult<Self>
    where
        Self: diesel::Connection,
    {
        Self::establish(url)
    }
}

/// The time limit `conn`'s session carries, as noted by
/// [`TimeLimit::set_session_time_limit`]; `None` for a connection without our
/// instrumentation (a plain connection, or one whose instrumentation was replaced).
#[inline]
pub(crate) fn session_time<C: diesel::Connection>(conn: &mut C) -> Option<Duration> {
    conn.instrumentation()
        .downcast_ref::<crate::instrument::BudgetInstrumentation>()
        .and_then(|ours| ours.session_time)
}

/// Notes `limit` as `conn`'s session time limit (see [`session_time`]).
#[allow(dead_code)]
pub(crate) fn note_session_time<C: diesel::Connection>(conn: &mut C, limit: Option<Duration>) {
    if let Some(ours) = conn
        .instrumentation()
        .downcast_mut::<crate::instrument::BudgetInstrumentation>()
    {
        ours.session_time = limit;
    }
}

/// The pool's connection manager: Diesel's r2d2 `ConnectionManager`, but connections are opened
/// by [`TimeLimit::establish_for_pool`], so that a backend can set up its statement interrupt
/// while the connection is being opened (SQLite). Checks and breakage as Diesel's.
pub(crate) struct PoolManager<C> {
    url: String,
    diesel: diesel::r2d2::ConnectionManager<C>,
}

impl<C> PoolManager<C> {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        PoolManager {
            diesel: diesel::r2d2::ConnectionManager::new(url.clone()),
            url,
        }
    }
}

impl<C> std::fmt::Debug for PoolManager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolManager").finish_non_exhaustive()
    }
}

impl<C: crate::backend::BudgetConnection> diesel::r2d2::ManageConnection for PoolManager<C> {
    type Connection = C;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> std::result::Result<C, Self::Error> {
        C::establish_for_pool(&self.url).map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut C) -> std::result::Result<(), Self::Error> {
        diesel::r2d2::ManageConnection::is_valid(&self.diesel, conn)
    }

    fn has_broken(&self, conn: &mut C) -> bool {
        diesel::r2d2::ManageConnection::has_broken(&self.diesel, conn)
    }
}

/// What a time limit adds to a statement's SQL: constant text made by the backend from a number,
/// never from user input.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeSql {
    /// Text before the statement (MariaDB's `SET STATEMENT max_statement_time=.. FOR `).
    pub prefix: Option<String>,
    /// Text right after the statement's `SELECT` (MySQL's `/*+ MAX_EXECUTION_TIME(..) */ `).
    pub hint: Option<String>,
}

/// `limit` in whole milliseconds, a fraction rounded up (at least 1 for a non-zero limit).
/// Used by the server backends (unused in a SQLite-only build).
#[allow(dead_code)]
pub(crate) fn millis(limit: Duration) -> u64 {
    u64::try_from(limit.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// `<prefix><statement>`: a statement with constant text before it (MariaDB's
/// `SET STATEMENT max_statement_time=.. FOR `). The prefix is made by the backend from a
/// number, never from user input. Its SQL depends on the limit, so it has no static query id:
/// Diesel caches its prepared statement by SQL text.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Prefixed<P> {
    prefix: String,
    query: P,
}

impl<P> Prefixed<P> {
    pub(crate) fn new(prefix: String, query: P) -> Self {
        Prefixed { prefix, query }
    }
}

impl<P: Query> Query for Prefixed<P> {
    type SqlType = P::SqlType;
}

impl<P> QueryId for Prefixed<P> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<P: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Prefixed<P> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(&self.prefix);
        self.query.walk_ast(out.reborrow())
    }
}

impl<P, C> RunQueryDsl<C> for Prefixed<P> {}

#[cfg(test)]
mod tests {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_millis(250)), 250);
        assert_eq!(millis(Duration::from_micros(250_001)), 251);
    }
}
