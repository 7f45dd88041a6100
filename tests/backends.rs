//! The integration suite: the same test bodies on SQLite, PostgreSQL and MySQL/MariaDB, against
//! real databases (`cargo test --all-features --test backends`).
//!
//! One file per topic under `backends/`, each included into every backend module that has the
//! capability it tests (the module names the connection type `C`), so no backend is tested less
//! than another:
//! - all backends: `helpers.rs` (shared imports and helpers, first), `budgets.rs`,
//!   `own_limit.rs` and `limits.rs` (the query's own LIMIT, ORDER BY, locks), `batches.rs` and
//!   `walks.rs` (keyset walks and streams), `instrumentation.rs` and `ledger.rs`, `hygiene.rs`
//!   and `pool.rs` (pools, transactions, migrations), `layout.rs`;
//! - a server to kill sessions on (PostgreSQL, MySQL): `killed.rs`, `ledger_killed.rs`,
//!   `bulk_killed.rs`;
//! - an OFFSET without a LIMIT (SQLite, PostgreSQL): `offset.rs`;
//! - row locks (PostgreSQL, MySQL): `row_lock_tests!()` from `limits.rs`;
//! - SQLite's own builder settings: `pool_sqlite.rs`;
//! - PostgreSQL's custom types through bulk writes: `bulk_pg.rs`.
//!
//! Test numbers (each gives a test its own id range, `common::id_base`; pick a free one):
//! 1-12, 20-25, 30-31 (budgets, own limits, batches, instrumentation, hygiene), 40-41 (killed),
//! 42-48 (limits), 50-53, 60, 70 (suite), 80-84 (ledger), 85-86 (pool), 90 (layout),
//! 49, 91-97 (walks), 13-19 and 68-69 (time budgets: `timeout.rs`), 89 and 98 (shared cache
//! tiers, `cache_shared.rs`: Redis and Memcached, only with both features), 38 (tests/cli.rs:
//! the tables of `diesel-budget explain`), 26-28 (bulk: 64 columns, killed between chunks,
//! command-line read-back), 39 and 99 (bulk update and delete killed between chunks), 29 (the
//! fault suite's shared-tier case); reserved: 32-37 (CI budgets), 54-59, 87-88 (cache), 61-67
//! (pages), 71-79 (bulk). Free: none.

mod common;

#[path = "backends/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[cfg(feature = "sqlite")]
mod sqlite {
    type C = diesel::sqlite::SqliteConnection;
    include!("backends/helpers.rs");
    include!("backends/budgets.rs");
    include!("backends/own_limit.rs");
    include!("backends/batches.rs");
    include!("backends/instrumentation.rs");
    include!("backends/hygiene.rs");
    include!("backends/walks.rs");
    include!("backends/offset.rs");
    include!("backends/pool.rs");
    include!("backends/pool_sqlite.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/limits.rs");
    include!("backends/ci.rs");
    include!("backends/pages.rs");
    include!("backends/cache.rs");
    include!("backends/cache_shared.rs");
    include!("backends/timeout.rs");
    include!("backends/bulk.rs");
}

#[cfg(feature = "postgres")]
mod postgres {
    type C = diesel::pg::PgConnection;
    include!("backends/helpers.rs");
    include!("backends/budgets.rs");
    include!("backends/own_limit.rs");
    include!("backends/batches.rs");
    include!("backends/instrumentation.rs");
    include!("backends/hygiene.rs");
    include!("backends/walks.rs");
    include!("backends/offset.rs");
    include!("backends/killed.rs");
    include!("backends/pool.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/ci.rs");
    include!("backends/timeout.rs");
    include!("backends/ledger_killed.rs");
    include!("backends/limits.rs");
    row_lock_tests!();
    include!("backends/pages.rs");
    include!("backends/cache.rs");
    include!("backends/cache_shared.rs");
    include!("backends/bulk.rs");
    include!("backends/bulk_killed.rs");
    include!("backends/bulk_pg.rs");
}

#[cfg(feature = "mysql")]
mod mysql {
    type C = diesel::mysql::MysqlConnection;
    include!("backends/helpers.rs");
    include!("backends/budgets.rs");
    include!("backends/own_limit.rs");
    include!("backends/batches.rs");
    include!("backends/instrumentation.rs");
    include!("backends/hygiene.rs");
    include!("backends/walks.rs");
    include!("backends/killed.rs");
    include!("backends/pool.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/ci.rs");
    include!("backends/timeout.rs");
    include!("backends/ledger_killed.rs");
    include!("backends/limits.rs");
    row_lock_tests!();
    include!("backends/pages.rs");
    include!("backends/cache.rs");
    include!("backends/cache_shared.rs");
    include!("backends/bulk.rs");
    include!("backends/bulk_killed.rs");
}
