//! `Db`: an r2d2 pool whose connections are instrumented, and the handle it lends out.
//!
//! `pool.rs` holds the pool ([`Db`]), its settings ([`DbBuilder`]) and the r2d2 customizer
//! that sets up each connection; `conn.rs` the handle it lends out ([`Conn`]);
//! `transaction.rs` transactions on that handle; `needs_budget.rs` the compile error for
//! Diesel's own `load` on it.

use crate::backend::BudgetConnection;
use crate::instrument::BudgetInstrumentation;

mod conn;
mod pool;
mod transaction;

pub use conn::Conn;
pub use pool::{Db, DbBuilder};

/// Installs [`BudgetInstrumentation`] on a connection you opened yourself, so that what it
/// runs is counted and can be recorded by [`crate::testing::record`]. Pooled connections from
/// [`Db`] have it already.
///
/// It takes the connection's one instrumentation slot, replacing whatever was there. To keep an
/// instrumentation of your own, install ours in front of it:
/// `conn.set_instrumentation(BudgetInstrumentation::default().forward_to(yours))`.
pub fn instrument<C: BudgetConnection>(conn: &mut C) {
    conn.set_instrumentation(BudgetInstrumentation::default());
}

/// The compiler's answer to Diesel's own `load`/`first`/`execute` on a [`Conn`].
///
/// `Conn` implements Diesel's connection traits only where `Conn<C>: NeedsBudget`, which never
/// holds: nothing can run through these impls (every body is unreachable by construction), but
/// rustc then reports the unsatisfied `NeedsBudget` bound, whose message says what to do,
/// instead of Diesel's "`LoadConnection` is not implemented for `Conn`". (Rust lets a crate
/// word `#[diagnostic::on_unimplemented]` only for its own traits.)
mod needs_budget;
