//! PostgreSQL's half of time budgets: `SET LOCAL statement_timeout` inside a transaction around
//! the statement. Outside a transaction, one of our own (`BEGIN; SET LOCAL ..` in one round
//! trip, the statement, `COMMIT`): the setting ends with it. Inside the caller's transaction, a savepoint: the
//! previous value is read first and set again after the statement (a `SET LOCAL` would
//! otherwise last to the end of the caller's transaction); when the statement fails the
//! savepoint is rolled back, which undoes the setting and keeps the caller's transaction
//! usable. Never a session `SET`: it would stay on the pooled connection for the next user.

use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::result::Error as D;
use diesel::sql_types::Text;
use diesel::RunQueryDsl;

use crate::error::{Error, Result};
use crate::timeout::{millis, sealed, TimeLimit, TimeSql};

impl sealed::Sealed for PgConnection {}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    statement_timeout: String,
}

impl TimeLimit for PgConnection {
    const CLIENT_DEADLINE: bool = false;

    fn time_sql(&mut self, _: Duration) -> Result<TimeSql> {
        Ok(TimeSql::default())
    }

    fn within_time_limit<R>(
        &mut self,
        limit: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        let ms = millis(limit).to_string();
        let nested = AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()
            .map_err(Error::from)?
            .is_some();
        if !nested {
            // Our own transaction: `BEGIN` and `SET LOCAL` in one round trip (a simple-protocol
            // batch; the number is ours, never user input), the statement, `COMMIT`.
            let begin = format!("BEGIN; SET LOCAL statement_timeout = {ms}");
            AnsiTransactionManager::begin_transaction_sql(self, &begin)
                .map_err(|e| Error::query(begin.as_str(), e))?;
            return match run(self) {
                Ok(out) => {
                    AnsiTransactionManager::commit_transaction(self)
                        .map_err(|e| Error::query("COMMIT", e))?;
                    Ok(out)
                }
                Err(e) => match AnsiTransactionManager::rollback_transaction(self) {
                    Ok(()) | Err(D::BrokenTransactionManager) => Err(e),
                    Err(rollback) => Err(Error::query("ROLLBACK", rollback)),
                },
            };
        }
        self.transaction::<R, Error, _>(|conn| {
            let previous = if nested {
                let s: Setting = diesel::sql_query("SHOW statement_timeout")
                    .get_result(conn)
                    .map_err(|e| Error::query("SHOW statement_timeout", e))?;
                Some(s.statement_timeout)
            } else {
                None
            };
            set_local(conn, &ms)?;
            let out = run(conn)?;
            if let Some(previous) = previous {
                set_local(conn, &previous)?;
            }
            Ok(out)
        })
    }

    fn within_session_limit<R>(&mut self, run: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let nested = AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()
            .map_err(Error::from)?
            .is_some();
        if nested {
            // A savepoint, so that a cancelled statement leaves the caller's transaction
            // usable (PostgreSQL aborts a transaction at its first failed statement).
            self.transaction::<R, Error, _>(run)
        } else {
            run(self)
        }
    }

    fn set_session_time_limit(&mut self, limit: Option<Duration>) -> diesel::QueryResult<()> {
        use diesel::connection::SimpleConnection as _;
        // A number of ours, never user input; 0 is "no limit".
        let ms = limit.map_or(0, millis);
        self.batch_execute(&format!("SET statement_timeout = {ms}"))?;
        crate::timeout::note_session_time(self, limit);
        Ok(())
    }

    fn is_time_out(e: &D) -> bool {
        // SQLSTATE 57014, which Diesel reports as `Unknown` with the server's message.
        matches!(e, D::DatabaseError(_, info)
            if info.message().contains("canceling statement due to statement timeout"))
    }
}

/// `set_config('statement_timeout', $1, true)`: `SET LOCAL` with the value bound.
fn set_local(conn: &mut PgConnection, value: &str) -> Result<()> {
    const SQL: &str = "SELECT set_config('statement_timeout', $1, true)";
    diesel::sql_query(SQL)
        .bind::<Text, _>(value)
        .execute(conn)
        .map(drop)
        .map_err(|e| Error::query(SQL, e))
}
