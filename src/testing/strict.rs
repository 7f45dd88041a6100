//! Strict mode: a statement without a budget fails the test that ran it.

use crate::instrument::{set_strict_process, AllowUnbudgeted};

/// Strict mode for every instrumented connection of this process (pooled ones, and plain ones
/// given [`crate::instrument()`] or recorded with [`super::record`]): a statement that starts
/// without a budget (through [`crate::Conn::unbudgeted`], or code that bypasses the executor)
/// panics before it reaches the server, so the test that ran it fails, with the statement's SQL
/// shape in the message. Transaction control and the library's own statements are not
/// affected; [`allow_unbudgeted`] lets a test's own fixtures through by name.
///
/// The environment variable `DIESEL_BUDGET_STRICT=1` turns it on for a whole test binary
/// (read when the first instrumentation is created); [`crate::Db::set_strict`] for one pool.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(3)?;
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::{items, Item};
/// use diesel_budget::testing;
///
/// testing::strict(true);
/// // Budgeted: runs.
/// let rows = items::table.budget(Budget::rows(10)).load::<Item>(&mut conn)?;
/// // A fixture, allowed by name.
/// testing::allow_unbudgeted("clean-up in the example", || {
///     diesel::delete(items::table).execute(conn.unbudgeted())
/// })?;
/// // Anything else without a budget panics before it runs.
/// let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     items::table.count().get_result::<i64>(conn.unbudgeted())
/// }));
/// let message = caught.unwrap_err();
/// let message = message.downcast_ref::<String>().expect("a formatted message");
/// assert!(message.contains("strict mode"), "{message}");
/// testing::strict(false);
/// # assert_eq!(rows.len(), 3);
/// # Ok(()) }
/// ```
pub fn strict(on: bool) {
    set_strict_process(on);
}

/// Runs `f` with unbudgeted statements allowed on this thread under strict mode ([`strict`],
/// [`crate::Db::set_strict`]); `name` says why (a fixture, a migration, a known exception), so
/// that every exception is named where it is made. Nests.
pub fn allow_unbudgeted<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let _allowed = AllowUnbudgeted::enter(name);
    f()
}

/// The scope form of [`allow_unbudgeted`]: unbudgeted statements are allowed on this thread
/// until the returned guard is dropped. Not `Send`: it belongs to the thread that made it.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(3)?;
/// use diesel::prelude::*;
/// use diesel_budget::demo::items;
/// use diesel_budget::testing;
///
/// db.set_strict(true);
/// let _fixture = testing::allow_unbudgeted_scope("fixture: count");
/// assert_eq!(items::table.count().get_result::<i64>(conn.unbudgeted())?, 3);
/// # Ok(()) }
/// ```
pub fn allow_unbudgeted_scope(name: &'static str) -> Allowed {
    Allowed {
        _allowed: AllowUnbudgeted::enter(name),
        _not_send: std::marker::PhantomData,
    }
}

/// Unbudgeted statements are allowed on this thread while it lives
/// ([`allow_unbudgeted_scope`]).
#[must_use = "the allowance ends when the guard is dropped"]
pub struct Allowed {
    _allowed: AllowUnbudgeted,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Allowed")
    }
}
