//! MySQL / MariaDB: this backend's half of every capability (session set-up, streaming, bind limits, and
//! each capability's per-backend path), the way sea-query's `backend/<db>/` mirrors its
//! `query/`. Capabilities declare a sealed trait in their own folder and implement it here.

use diesel::connection::DefaultLoadingMode;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::query_builder::QueryFragment;
use diesel::QueryResult;

use super::{no_session_settings, one_bigint, sealed, BackendKind, BudgetBackend};
use crate::db::Db;
use crate::error::Result;

impl_budget_connection!(
    MysqlConnection,
    Mysql,
    DefaultLoadingMode,
    BackendKind::Mysql,
    false,
    no_session_settings
);

impl sealed::Sealed for Mysql {}

impl BudgetBackend for Mysql {
    fn limit_value<F: QueryFragment<Self> + ?Sized>(fragment: &F) -> QueryResult<Option<i64>> {
        let mut out = diesel::query_builder::bind_collector::RawBytesBindCollector::<Mysql>::new();
        fragment.collect_binds(&mut out, &mut (), &Mysql)?;
        // `ToSql<BigInt, Mysql> for i64` writes native byte order.
        one_bigint(&out.binds, i64::from_ne_bytes)
    }

    push_bigint_impl!(Mysql);
}

/// A plain `MysqlConnection` runs budgeted queries too (see [`crate::Executor`]).
impl crate::exec::sealed::Access for MysqlConnection {
    type Connection = MysqlConnection;
    fn connection(&mut self, _: crate::exec::sealed::Token) -> &mut MysqlConnection {
        self
    }
}

impl Db<MysqlConnection> {
    /// A pool over the MySQL/MariaDB database at `url`, with default settings and no migrations.
    ///
    /// # Errors
    /// As [`DbBuilder::build`](crate::DbBuilder::build).
    pub fn mysql(url: &str) -> Result<Self> {
        Db::builder(url).build()
    }
}

mod bulk;
#[cfg(feature = "ci")]
pub(super) mod explain;
#[cfg(feature = "page")]
mod page;
mod timeout;
