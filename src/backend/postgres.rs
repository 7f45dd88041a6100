//! PostgreSQL: this backend's half of every capability (session set-up, streaming, bind limits, and
//! each capability's per-backend path), the way sea-query's `backend/<db>/` mirrors its
//! `query/`. Capabilities declare a sealed trait in their own folder and implement it here.

use diesel::pg::{Pg, PgConnection, PgRowByRowLoadingMode};
use diesel::query_builder::QueryFragment;
use diesel::QueryResult;

use super::{no_session_settings, one_bigint, sealed, BackendKind, BudgetBackend};
use crate::db::Db;
use crate::error::Result;

impl_budget_connection!(
    PgConnection,
    Pg,
    PgRowByRowLoadingMode,
    BackendKind::Postgres,
    true,
    no_session_settings
);

/// Type lookups are never needed for the `BIGINT` of a `LIMIT` (its OID is static).
struct NoTypeLookup;

impl diesel::pg::PgMetadataLookup for NoTypeLookup {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> diesel::pg::PgTypeMetadata {
        let key = diesel::pg::PgMetadataCacheKey::new(
            schema.map(|s| std::borrow::Cow::Owned(s.to_owned())),
            std::borrow::Cow::Owned(type_name.to_owned()),
        );
        diesel::pg::PgTypeMetadata::from_result(Err(diesel::pg::FailedToLookupTypeError::new(key)))
    }
}

impl sealed::Sealed for Pg {}

impl BudgetBackend for Pg {
    fn limit_value<F: QueryFragment<Self> + ?Sized>(fragment: &F) -> QueryResult<Option<i64>> {
        let mut out = diesel::query_builder::bind_collector::RawBytesBindCollector::<Pg>::new();
        fragment.collect_binds(&mut out, &mut NoTypeLookup, &Pg)?;
        // `ToSql<BigInt, Pg> for i64` writes network (big-endian) order.
        one_bigint(&out.binds, i64::from_be_bytes)
    }

    push_bigint_impl!(Pg);
}

/// A plain `PgConnection` runs budgeted queries too (see [`crate::Executor`]).
impl crate::exec::sealed::Access for PgConnection {
    type Connection = PgConnection;
    fn connection(&mut self, _: crate::exec::sealed::Token) -> &mut PgConnection {
        self
    }
}

impl Db<PgConnection> {
    /// A pool over the PostgreSQL database at `url`, with default settings and no migrations.
    ///
    /// # Errors
    /// As [`DbBuilder::build`](crate::DbBuilder::build).
    pub fn postgres(url: &str) -> Result<Self> {
        Db::builder(url).build()
    }
}

mod bulk;
#[cfg(feature = "ci")]
pub(super) mod explain;
#[cfg(feature = "page")]
mod page;
mod timeout;
