//! Running budgeted queries: `load`, `get_results`, `get_result`, `first`.
//!
//! Rows and bytes are counted as rows arrive and loading stops at the first one past the
//! budget. The server never sends more than `budget + 1` rows: the LIMIT is in the SQL
//! (see [`crate::query`]).

use std::marker::PhantomData;
use std::ops::ControlFlow;

use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage, Metering, Overflow};
use crate::error::{Error, Result};
use crate::instrument::{BudgetScope, StatementTag};
use crate::query::{BudgetQuery, Budgeted, RowSink};

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
/// `MysqlConnection`). Sealed.
pub trait Executor: sealed::Access {}

impl<T: sealed::Access> Executor for T {}

macro_rules! plain_connection_executor {
    ($feature:literal, $conn:ty) => {
        #[cfg(feature = $feature)]
        impl sealed::Access for $conn {
            type Connection = $conn;
            fn connection(&mut self, _: sealed::Token) -> &mut $conn {
                self
            }
        }
    };
}
plain_connection_executor!("sqlite", diesel::sqlite::SqliteConnection);
plain_connection_executor!("postgres", diesel::pg::PgConnection);
plain_connection_executor!("mysql", diesel::mysql::MysqlConnection);

/// The Diesel connection type behind an executor.
pub type ConnectionOf<X> = <X as sealed::Access>::Connection;

/// Rows loaded under a budget, with what was counted.
pub(crate) struct Loaded<U> {
    pub(crate) rows: Vec<U>,
    pub(crate) sql: String,
    pub(crate) meter: Meterage,
    pub(crate) exceeded: Option<Exceeded>,
    /// The statement that loaded them, for the ledger's count of rows delivered.
    pub(crate) tag: StatementTag,
}

impl<U> Loaded<U> {
    pub(crate) fn into_error(mut self, budget: BudgetSpec, exceeded: Exceeded) -> Error {
        self.tag.delivered(0);
        Error::BudgetExceeded {
            sql: self.sql,
            budget,
            exceeded,
            seen_rows: self.meter.rows,
            seen_bytes: self.meter.bytes,
        }
    }
}

/// Collects the rows of one execution, metering them against the budget.
struct Collector<U, M> {
    rows: Vec<U>,
    /// Rows the client library holds for this result (buffered results only).
    buffered: u64,
    /// When the client itself stops the statement (SQLite under a time limit).
    deadline: Option<std::time::Instant>,
    meter: Meterage,
    exceeded: Option<Exceeded>,
    spec: BudgetSpec,
    _meter: PhantomData<fn() -> M>,
}

impl<U, M: Meter<U>> RowSink<U> for Collector<U, M> {
    fn expect(&mut self, rows: usize) {
        // A buffered result (PostgreSQL's default mode, MySQL) knows its size, bounded by the
        // LIMIT: reserve it once, as Diesel's `load` does through `collect`.
        self.rows.reserve_exact(rows);
        self.buffered = rows as u64;
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            self.exceeded = Some(Exceeded::Time);
            return ControlFlow::Break(());
        }
        match self.meter.add(M::size_of(&row), &self.spec) {
            None => {
                self.rows.push(row);
                ControlFlow::Continue(())
            }
            Some(e) => {
                self.exceeded = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// Runs `query` with at most `limit` rows fetched, metering rows against `spec` and bytes with
/// `M`; stops at the first row past the budget (that row is dropped and counted).
pub(crate) fn load_metered<'q, C, U, Q, M>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    conn: &mut C,
) -> Result<Loaded<U>>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    M: Meter<U>,
{
    let mut sink = Collector::<U, M> {
        rows: Vec::new(),
        buffered: 0,
        deadline: None,
        meter: Meterage::default(),
        exceeded: None,
        spec,
        _meter: PhantomData,
    };
    let mut tag = StatementTag::next_on(conn.instrumentation());
    let result = {
        let _scope = BudgetScope::enter(spec);
        match spec.time {
            None => query.run_limited(limit, M::METERS_BYTES, None, conn, &mut sink),
            Some(time) => {
                if C::CLIENT_DEADLINE {
                    sink.deadline = std::time::Instant::now().checked_add(time);
                }
                let prefix = C::statement_prefix(time);
                let sink = &mut sink;
                conn.within_time_limit(time, |conn| {
                    query.run_limited(limit, M::METERS_BYTES, prefix, conn, sink)
                })
            }
        }
    };
    // The server cancelled the statement for its time limit.
    let result = match result {
        Err(Error::Query {
            sql: Some(sql),
            source,
        }) if spec.time.is_some() && C::is_time_out(&source) => {
            sink.exceeded = Some(Exceeded::Time);
            Ok(sql)
        }
        other => other,
    };
    let timed_out = sink.exceeded == Some(Exceeded::Time);
    // Received: decoded (with the row that stopped loading), or buffered by the client.
    // Delivered, for now: what was kept, unless the query failed.
    tag.note(
        sink.meter.rows.max(sink.buffered),
        if result.is_ok() && !timed_out {
            sink.rows.len() as u64
        } else {
            0
        },
        M::METERS_BYTES.then_some(sink.meter.bytes),
    );
    let sql = result?;
    if timed_out {
        // Always an error, whatever the overflow policy: the rows are not a prefix the
        // budget chose.
        return Err(Error::BudgetExceeded {
            sql,
            budget: spec,
            exceeded: Exceeded::Time,
            seen_rows: sink.meter.rows,
            seen_bytes: sink.meter.bytes,
        });
    }
    Ok(Loaded {
        rows: sink.rows,
        sql,
        meter: sink.meter,
        exceeded: sink.exceeded,
        tag,
    })
}

/// `budget + 1`, the LIMIT that tells "fits" from "too many". The budget is validated first.
fn probe_limit(spec: &BudgetSpec) -> i64 {
    i64::try_from(spec.rows.saturating_add(1)).unwrap_or(i64::MAX)
}

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
        let loaded = load_metered::<_, U, Q, M>(self.query, spec, probe_limit(&spec), conn)?;
        match loaded.exceeded {
            None => Ok(O::finish(loaded.rows, false)),
            Some(_) if O::TRUNCATES => Ok(O::finish(loaded.rows, true)),
            Some(e) => Err(loaded.into_error(spec, e)),
        }
    }

    fn internal_get_result(self, conn: &mut C) -> Result<U> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let loaded = load_metered::<_, U, Q, M>(self.query, spec, probe_limit(&spec), conn)?;
        match loaded.exceeded {
            // Not even the first row fits: that is an overflow, not a missing row.
            Some(e) if !O::TRUNCATES || loaded.rows.is_empty() => Err(loaded.into_error(spec, e)),
            _ => first_or_not_found(loaded),
        }
    }

    fn internal_first(self, conn: &mut C) -> Result<U> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let loaded = load_metered::<_, U, Q, M>(self.query, spec, 1, conn)?;
        if let Some(e) = loaded.exceeded {
            return Err(loaded.into_error(spec, e));
        }
        first_or_not_found(loaded)
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
    /// # Example
    /// ```
    /// # include!("../tests/doc_setup.rs");
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
    fn load<'q, U>(
        self,
        conn: &mut X,
    ) -> Result<<Self as LoadBudgeted<'q, ConnectionOf<X>, U>>::Output>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_load(conn.connection(sealed::TOKEN))
    }

    /// Same as [`load`](Self::load), named as in Diesel.
    fn get_results<'q, U>(
        self,
        conn: &mut X,
    ) -> Result<<Self as LoadBudgeted<'q, ConnectionOf<X>, U>>::Output>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
        let default = conn.default_time_limit();
        self.with_default_time(default)
            .internal_load(conn.connection(sealed::TOKEN))
    }

    /// The first row of the result, which must fit the budget like [`load`](Self::load)
    /// (a truncating budget keeps the first row of what fits; when not even that row fits the
    /// byte budget, it is [`Error::BudgetExceeded`]). No row: an error for which
    /// [`Error::is_not_found`] is true; use [`OptionalExtension::optional`](crate::OptionalExtension).
    fn get_result<'q, U>(self, conn: &mut X) -> Result<U>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
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
    /// # include!("../tests/doc_setup.rs");
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
    fn first<'q, U>(self, conn: &mut X) -> Result<U>
    where
        Self: LoadBudgeted<'q, ConnectionOf<X>, U>,
    {
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

fn first_or_not_found<U>(mut loaded: Loaded<U>) -> Result<U> {
    loaded.tag.delivered(u64::from(!loaded.rows.is_empty()));
    match loaded.rows.into_iter().next() {
        Some(row) => Ok(row),
        None => Err(Error::query(loaded.sql, diesel::result::Error::NotFound)),
    }
}
