//! The integration suite: the same test bodies on SQLite, PostgreSQL and MySQL/MariaDB, against
//! real databases (`cargo test --all-features --test backends`).
//!
//! `backends/suite.rs` holds the tests; it is included once per backend into a module that
//! names the connection type `C`, so no backend is tested less than another; the other files
//! (`ledger.rs`, `pool.rs`, `layout.rs`, ...) likewise. Tests that kill a server session
//! (`backends/killed.rs`, `backends/ledger_killed.rs`) run on PostgreSQL and MySQL only: SQLite
//! is embedded, there is no server connection to kill. `backends/pool_sqlite.rs` (the SQLite-only
//! builder settings: journal mode, foreign keys, busy timeout) runs on SQLite only. See
//! `common/mod.rs` for databases and isolation.

mod common;

#[path = "backends/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

#[cfg(feature = "sqlite")]
mod sqlite {
    type C = diesel::sqlite::SqliteConnection;
    include!("backends/suite.rs");
    include!("backends/walks.rs");
    include!("backends/offset.rs");
    include!("backends/pool.rs");
    include!("backends/pool_sqlite.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/bulk.rs");
}

#[cfg(feature = "postgres")]
mod postgres {
    type C = diesel::pg::PgConnection;
    include!("backends/suite.rs");
    include!("backends/walks.rs");
    include!("backends/offset.rs");
    include!("backends/killed.rs");
    include!("backends/pool.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/ledger_killed.rs");
    include!("backends/bulk.rs");
}

#[cfg(feature = "mysql")]
mod mysql {
    type C = diesel::mysql::MysqlConnection;
    include!("backends/suite.rs");
    include!("backends/walks.rs");
    include!("backends/killed.rs");
    include!("backends/pool.rs");
    include!("backends/layout.rs");
    include!("backends/ledger.rs");
    include!("backends/ledger_killed.rs");
    include!("backends/bulk.rs");
}
