//! SQLite's half of time budgets: the executor checks the clock between rows
//! ([`TimeLimit::CLIENT_DEADLINE`]). Diesel exposes neither `sqlite3_interrupt` nor a progress
//! handler, and reaching the raw handle would take unsafe code against Diesel's private layout,
//! so a single long step before the first row is not interrupted (see [`crate::timeout`]).

use std::time::Duration;

use diesel::sqlite::SqliteConnection;

use crate::error::Result;
use crate::timeout::{sealed, TimeLimit};

impl sealed::Sealed for SqliteConnection {}

impl TimeLimit for SqliteConnection {
    const CLIENT_DEADLINE: bool = true;

    fn statement_prefix(_: Duration) -> Option<String> {
        None
    }

    fn within_time_limit<R>(
        &mut self,
        _: Duration,
        run: impl FnOnce(&mut Self) -> Result<R>,
    ) -> Result<R> {
        run(self)
    }

    fn is_time_out(_: &diesel::result::Error) -> bool {
        false
    }
}
