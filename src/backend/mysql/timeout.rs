//! MariaDB's half of time budgets: `SET STATEMENT max_statement_time=<seconds> FOR ` before the
//! statement, so the limit costs no round trip and ends with the statement. (A
//! `?max_statement_time=` in the URL is silently ignored by the client library; a session `SET`
//! would stay on the pooled connection.) MySQL proper has no `SET STATEMENT`: see
//! [`crate::timeout`].

use std::time::Duration;

use diesel::mysql::MysqlConnection;
use diesel::result::Error as D;

use crate::error::Result;
use crate::timeout::{millis, sealed, TimeLimit};

impl sealed::Sealed for MysqlConnection {}

impl TimeLimit for MysqlConnection {
    const CLIENT_DEADLINE: bool = false;

    fn statement_prefix(limit: Duration) -> Option<String> {
        let ms = millis(limit);
        // A number of ours, not user input: `SET STATEMENT` takes no bound parameter.
        Some(format!(
            "SET STATEMENT max_statement_time={}.{:03} FOR ",
            ms / 1000,
            ms % 1000
        ))
    }

    fn within_time_limit<R>(
        &mut self,
        _: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        run(self)
    }

    fn is_time_out(e: &D) -> bool {
        match e {
            D::DatabaseError(_, info) => {
                let m = info.message();
                // MariaDB 1969; MySQL 3024 (for a hint set by hand).
                m.contains("max_statement_time exceeded")
                    || m.contains("maximum statement execution time exceeded")
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_in_seconds() {
        assert_eq!(
            MysqlConnection::statement_prefix(Duration::from_millis(1500)).as_deref(),
            Some("SET STATEMENT max_statement_time=1.500 FOR ")
        );
        assert_eq!(
            MysqlConnection::statement_prefix(Duration::from_micros(1)).as_deref(),
            Some("SET STATEMENT max_statement_time=0.001 FOR ")
        );
    }
}
