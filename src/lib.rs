//! # diesel-budget
//!
//! Memory budgets for [Diesel](https://diesel.rs) queries. Every query declares how many rows
//! (and, where the row type can say its size, how many bytes) it may bring into memory; the
//! executor enforces it *before* the excess is loaded: the row budget becomes `LIMIT budget + 1`
//! in the SQL, and loading stops at the first row past the budget.
//!
//! ```
//! # include!("../tests/doc_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, mut conn) = demo_db(1_000)?;
//! use diesel::prelude::*;
//! use diesel_budget::prelude::*;
//! use diesel_budget::demo::{items, Item};
//!
//! // `db` is a `Db<C>` (C: the connection type of your backend): an r2d2 pool with
//! // instrumentation on every connection.
//! let mut conn = db.get()?;
//!
//! // 1. Fits: the rows come back.
//! let rows: Vec<Item> = items::table
//!     .filter(items::category.eq(3))
//!     .order(items::id)
//!     .budget(Budget::rows(500).bytes(2 << 20))
//!     .load(&mut conn)?;
//! assert_eq!(rows.len(), 100);
//!
//! // 2. Does not fit: a typed error; the server sent 11 rows, not 1,000.
//! let err = items::table.budget(Budget::rows(10)).load::<Item>(&mut conn).unwrap_err();
//! assert!(matches!(err, diesel_budget::Error::BudgetExceeded { seen_rows: 11, .. }));
//!
//! // 3. Any number of rows, 250 at a time.
//! let mut seen = 0;
//! for batch in items::table
//!     .budget(Budget::rows(250))
//!     .batches_by(items::id, |i: &Item| i.id, &mut conn)
//! {
//!     seen += batch?.len();
//! }
//! assert_eq!(seen, 1_000);
//! # Ok(()) }
//! ```
//!
//! A query without a budget does not run on a [`Conn`]: it is not a Diesel connection, so
//! `items::table.load(&mut conn)` is a compile error. See the README for the guide.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(unreachable_pub, missing_debug_implementations, clippy::unwrap_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod batch;
pub mod budget;
pub mod bulk;
pub mod cache;
pub mod db;
#[cfg(feature = "demo")]
#[doc(hidden)]
pub mod demo;
pub mod error;
pub mod exec;
pub mod instrument;
#[cfg(feature = "page")]
pub mod page;
pub mod query;
mod sql;
pub mod testing;
pub mod timeout;

pub use backend::{BackendKind, BudgetConnection, JournalMode};
pub use batch::{BatchMode, Batches, Composite, RowsOf};
pub use budget::{Budget, BudgetSpec, Exceeded, Truncated, MAX_TIME};
pub use cache::{Cache, CacheBuilder, CacheDsl, CacheStats};
#[cfg(feature = "shared-cache")]
pub use cache::{SharedCache, SharedCacheBuilder};
pub use db::{instrument, Conn, Db, DbBuilder};
pub use error::{Error, OptionalExtension, Result};
pub use exec::{Executor, LoadBudgeted, RunBudgetedDsl};
pub use instrument::{StatementId, StatementKind, Stats};
pub use query::{BudgetDsl, Budgeted};

/// Re-exported so `#[derive(GetSize)]` and its bounds resolve against the same version.
pub use get_size2;
pub use get_size2::GetSize;

/// `use diesel_budget::prelude::*;` next to `use diesel::prelude::*;`.
pub mod prelude {
    pub use crate::batch::{BatchMode, Composite};
    pub use crate::budget::Budget;
    pub use crate::cache::{Cache, CacheDsl};
    pub use crate::db::{Conn, Db};
    pub use crate::error::OptionalExtension as _;
    pub use crate::exec::RunBudgetedDsl;
    pub use crate::query::BudgetDsl;
}

/// The README's Rust blocks, compiled and run as doctests so the guide cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
