//! Running budgeted queries: `load`, `get_results`, `get_result`, `first`.
//!
//! Rows and bytes are counted as rows arrive and loading stops at the first one past the
//! budget. The server never sends more than `budget + 1` rows: the LIMIT is in the SQL
//! (see [`crate::query`]).
//!
//! `mod.rs` holds the entry points ([`RunBudgetedDsl`], [`LoadBudgeted`], [`Executor`]);
//! `cursor.rs` the one metered cursor every read goes through (`load`, `first`, walks, streams,
//! pages, cache fills); `run.rs` runs one statement through it under a budget (scope, time
//! limit, ledger).

use crate::backend::BudgetConnection;
use crate::budget::{Meter, Metering, Overflow};
use crate::error::{Error, Result};
use crate::instrument::CallSite;
use crate::query::{probe_limit, BudgetQuery, Budgeted};

mod cursor;
mod run;

pub(crate) use cursor::All;
use cursor::One;
#[cfg(test)]
pub(crate) use cursor::{Cursor, Lookahead, Take};
pub(crate) use cursor::{Pull, Stream};
use run::execute;
#[doc(hidden)]
pub use run::RunStatement;
pub(crate) use run::{load_batch, load_metered, Loaded};

pub(crate) mod sealed {
    /// Proof that the caller is diesel-budget itself. Its field is private to this module and
    /// nothing outside the crate can name or build one, so [`Access::connection`] cannot be
    /// called from outside (not even through an `X: Executor` bound, which makes the method
    /// visible): the budget has no way around it but the named, recorded
    /// [`crate::Conn::unbudgeted`].
    #[derive(Debug, Clone, Copy)]
    pub struct Token(());

    /// The one [`Token`]: for the crate's executors only.
    pub(crate) const TOKEN: Token = Token(());

    /// Gives the executor the Diesel connection behind a handle; callable only with a
    /// [`Token`].
    pub trait Access {
        type Connection: crate::backend::BudgetConnection;
        fn connection(&mut self, token: Token) -> &mut Self::Connection;
        /// The time limit for budgets without one of their own (a pool's default).
        fn default_time_limit(&self) -> Option<std::time::Duration> {
            None
        }
    }
}

/// Something budgeted queries run on: a pooled [`crate::Conn`] from [`crate::Db::get`], or a
/// plain Diesel connection of a supported backend (`SqliteConnection`, `PgConnection`,
/// `MysqlConnection`: those impls live in `src/backend/`). Sealed.
pub trait Executor: sealed::Access {}

impl<T: sealed::Access> Executor for T {}

/// The Diesel connection type behind an executor.
pub type ConnectionOf<X> = <X as sealed::Access>::Connection;

/// A budgeted query that loads rows of type `U` on connection `C`: implemented for every
/// [`Budgeted`] whose query Diesel could load into `U` (and whose byte budget, if any, can
/// measure `U`). It is the bound of [`RunBudgetedDsl`]'s methods, as Diesel's `LoadQuery` is
/// of `RunQueryDsl`'s; you never implement it.
pub trait LoadBudgeted<'q, C: BudgetConnection, U>: Sized {
    /// What `load` returns: `Vec<U>`, or [`Truncated<U>`](crate::Truncated) under a truncating
    /// budget.
    type Output;

    #[doc(hidden)]
    fn internal_load(self, conn: &mut C) -> Result<Self::Output>;

    #[doc(hidden)]
    fn internal_get_result(self, conn: &mut C) -> Result<U>;

    #[doc(hidden)]
    fn internal_first(self, conn: &mut C) -> Result<U>;
}

impl<'q, C, U, Q, M, O> LoadBudgeted<'q, C, U> for Budgeted<Q, M, O>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
    O: Overflow,
{
    type Output = O::Output<U>;

    fn internal_load(self, conn: &mut C) -> Result<Self::Output> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let loaded =
            execute::<_, U, Q, M, All>(self.query, spec, probe_limit(spec.rows), false, conn)?;
        match loaded.exceeded {
            // A locking read cannot probe: a full result may have more (see `crate::query`).
            None => {
                let full = loaded.lock_cut && loaded.rows.len() as u64 >= spec.rows;
                Ok(O::finish(loaded.rows, full))
            }
            Some(_) if O::TRUNCATES => Ok(O::finish(loaded.rows, true)),
            Some(e) => Err(loaded.into_error(spec, e)),
        }
    }

    fn internal_get_result(self, conn: &mut C) -> Result<U> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let loaded =
            execute::<_, U, Q, M, All>(self.query, spec, probe_limit(spec.rows), true, conn)?;
        match loaded.exceeded {
            // Not even the first row fits: that is an overflow, not a missing row.
            Some(e) if !O::TRUNCATES || loaded.rows.is_empty() => Err(loaded.into_error(spec, e)),
            _ => first_or_not_found(loaded),
        }
    }

    fn internal_first(self, conn: &mut C) -> Result<U> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let loaded = execute::<_, U, Q, M, One>(self.query, spec, 1, true, conn)?;
        match loaded.exceeded {
            Some(exceeded) => Err(loaded.into_error(spec, exceeded)),
            None => match loaded.rows {
                Some(row) => Ok(row),
                None => Err(Error::query(loaded.sql, diesel::result::Error::NotFound)),
            },
        }
    }
}

/// `load`, `get_results`, `get_result` and `first` for budgeted queries: the counterpart of
/// Diesel's `RunQueryDsl`, in [`crate::prelude`]. `X` is where the query runs: a pooled
/// [`crate::Conn`] or a plain Diesel connection ([`Executor`]).
pub trait RunBudgetedDsl<X: Executor>: Sized {
    /// Loads all rows if they fit the budget.
    ///
    /// Under a strict budget: `Vec<U>`, or [`Error::BudgetExceeded`] when the query has more
    /// rows (or bytes) than the budget; at most `budget + 1` rows are fetched. Under
    /// [`Budget::truncate`](crate::Budget::truncate): [`Truncated<U>`](crate::Truncated), the
    /// rows that fit and whether more existed.
    ///
    /// A locking read (`.for_update()`, `.for_share()`, ..) fetches at most the budget and locks
    /// exactly the rows it returns: truncating, a full result counts as truncated (more may
    /// exist); strict, it is refused unless its own `.limit(n)` is within the budget. See
    /// [locking reads](crate::query#locking-reads).
    ///
    /// # Errors
    /// [`Error::BudgetExceeded`] (strict budget), [`Error::InvalidBudget`],
    /// [`Error::InvalidArgument`] (a strict locking read), [`Error::Query`] from the database.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(120)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let few: Vec<Item> = items::table
    ///     .filter(items::category.eq(1))
    ///     .order(items::id)
    ///     .budget(Budget::rows(100))
    ///     .load(&mut conn)?;
    /// assert_eq!(few.len(), 12);
    ///
    /// let err = items::table
    ///     .budget(Budget::rows(100))
    ///     .load::<Item>(&mut conn)
    ///     .unwrap_err();
    /// assert!(err.is_budget_exceeded());
    ///
    /// let some = items::table
    ///     .order(items::id)
    ///     .budget(Budget::rows(100).truncate())
    ///     .load::<Item>(&mut conn)?;
    /// assert_eq!(some.len(), 100);
    /// assert!(some.is_truncated());
    /// # Ok(()) }
    /// ```
    #[track_caller]
    fn load<'q, U>(
        self,
        conn: &mut X,
    ) -> Result<<Self as LoadBudgeted<'q, ConnectionOf<X>, U>>::Output>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let _site = CallSite::enter(std::panic::Location::caller());
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_load(conn.connection(sealed::TOKEN))
    }

    /// Same as [`load`](Self::load), named as in Diesel.
    #[track_caller]
    fn get_results<'q, U>(
        self,
        conn: &mut X,
    ) -> Result<<Self as LoadBudgeted<'q, ConnectionOf<X>, U>>::Output>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let _site = CallSite::enter(std::panic::Location::caller());
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_load(conn.connection(sealed::TOKEN))
    }

    /// The first row of the result, which must fit the budget like [`load`](Self::load)
    /// (a truncating budget keeps the first row of what fits; when not even that row fits the
    /// byte budget, it is [`Error::BudgetExceeded`]). No row: an error for which
    /// [`Error::is_not_found`] is true; use [`OptionalExtension::optional`](crate::OptionalExtension).
    #[track_caller]
    fn get_result<'q, U>(self, conn: &mut X) -> Result<U>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let _site = CallSite::enter(std::panic::Location::caller());
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_get_result(conn.connection(sealed::TOKEN))
    }

    /// This query with `default` as its time limit unless its budget has one.
    #[doc(hidden)]
    fn with_default_time(self, default: Option<std::time::Duration>) -> Self;

    /// The first row, fetching one (`LIMIT 1`, or your own smaller limit). A row over a byte
    /// budget is [`Error::BudgetExceeded`] whatever the overflow policy. No row: an error for
    /// which [`Error::is_not_found`] is true.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(10)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let first: Item = items::table.order(items::id).budget(Budget::rows(1)).first(&mut conn)?;
    /// assert_eq!(first.id, 1);
    /// let none = items::table
    ///     .filter(items::id.eq(-1))
    ///     .budget(Budget::rows(1))
    ///     .first::<Item>(&mut conn)
    ///     .optional()?;
    /// assert!(none.is_none());
    /// # Ok(()) }
    /// ```
    #[track_caller]
    fn first<'q, U>(self, conn: &mut X) -> Result<U>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let _site = CallSite::enter(std::panic::Location::caller());
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_first(conn.connection(sealed::TOKEN))
    }
}

impl<Q, M: Metering, O: Overflow, X: Executor> RunBudgetedDsl<X> for Budgeted<Q, M, O> {
    fn with_default_time(mut self, default: Option<std::time::Duration>) -> Self {
        self.budget = self.budget.or_time(default);
        self
    }
}

fn first_or_not_found<U>(mut loaded: Loaded<Vec<U>>) -> Result<U> {
    loaded.tag.delivered(u64::from(!loaded.rows.is_empty()));
    match loaded.rows.into_iter().next() {
        Some(row) => Ok(row),
        None => Err(Error::query(loaded.sql, diesel::result::Error::NotFound)),
    }
}
