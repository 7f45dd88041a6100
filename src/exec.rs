//! Running budgeted queries: `load`, `get_results`, `get_result`, `first`.
//!
//! Rows and bytes are counted as rows arrive and loading stops at the first one past the
//! budget. The server never sends more than `budget + 1` rows: the LIMIT is in the SQL
//! (see [`crate::query`]).

use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::time::Instant;

use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage, Metering, Overflow};
use crate::error::{Error, Result};
use crate::instrument::{BudgetScope, CallSite, StatementTag};
use crate::query::{probe_limit, BudgetQuery, Budgeted, Fetch, Ran, RowSink};

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

/// Rows loaded under a budget, with what was counted.
pub(crate) struct Loaded<U> {
    pub(crate) rows: Vec<U>,
    /// The SQL with placeholders; rendered only when the outcome is an error that shows it
    /// (over budget, or no row where one was asked for), else empty.
    pub(crate) sql: String,
    pub(crate) meter: Meterage,
    pub(crate) exceeded: Option<Exceeded>,
    /// A locking read fetched at most the budget: a full result may have more rows.
    pub(crate) lock_cut: bool,
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
    /// `first`/`get_result`: no row is an error that shows the SQL.
    sql_if_empty: bool,
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

    fn needs_sql(&self) -> bool {
        self.exceeded.is_some() || (self.sql_if_empty && self.rows.is_empty())
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
    load::<C, U, Q, M>(query, spec, limit, false, conn)
}

/// [`load_metered`]; `sql_if_empty`: an empty result is an error that shows the SQL.
#[inline]
fn load<'q, C, U, Q, M>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    sql_if_empty: bool,
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
        sql_if_empty,
        _meter: PhantomData,
    };
    let (ran, tag) = execute(query, spec, limit, M::METERS_BYTES, conn, &mut sink, |s| {
        Seen {
            meter: s.meter,
            buffered: s.buffered,
            delivered: s.rows.len() as u64,
        }
    })?;
    Ok(Loaded {
        rows: sink.rows,
        sql: ran.sql.unwrap_or_default(),
        meter: sink.meter,
        exceeded: sink.exceeded,
        lock_cut: ran.lock_cut,
        tag,
    })
}

/// What a sink saw of one execution, for the ledger.
struct Seen {
    meter: Meterage,
    /// Rows the client library buffered (0 when rows were decoded one at a time).
    buffered: u64,
    /// Rows the sink kept for the caller.
    delivered: u64,
}

/// Runs `query` into `sink` inside the budget's instrumentation scope, then reports what
/// `seen` reads off the sink to the ledger and the pool's statistics: rows received (decoded,
/// with the row that stopped loading, or buffered by the client) and, for now, rows delivered
/// (what the sink kept, unless the query failed; callers correct it with the returned tag).
#[inline]
fn execute<'q, C, U, Q, S>(
    query: Q,
    spec: BudgetSpec,
    limit: i64,
    meters_bytes: bool,
    conn: &mut C,
    sink: &mut S,
    seen: impl Fn(&S) -> Seen,
) -> Result<(Ran, StatementTag)>
where
    C: BudgetConnection,
    Q: BudgetQuery<'q, C, U>,
    S: RowSink<U>,
{
    let mut fetch = Fetch {
        limit,
        budget_rows: spec.rows,
        truncate: spec.truncate,
        timed: Default::default(),
    };
    let mut tag = StatementTag::next_on(conn.instrumentation());
    let mut sink = Deadline {
        sink,
        deadline: None,
        passed: false,
    };
    let result = {
        let _scope = BudgetScope::enter(spec);
        match spec.time {
            None => query.run_limited(fetch, meters_bytes, conn, &mut sink),
            Some(time) => {
                if C::CLIENT_DEADLINE {
                    sink.deadline = Instant::now().checked_add(time);
                }
                fetch.timed = conn.time_sql(time)?;
                conn.within_time_limit(time, |conn| {
                    query.run_limited(fetch, meters_bytes, conn, &mut sink)
                })
            }
        }
    };
    // Out of time: the server cancelled the statement, or the client's clock ran out.
    let timed_out = match &result {
        Err(Error::Query { source, .. }) => spec.time.is_some() && C::is_time_out(source),
        _ => sink.passed,
    };
    let seen = seen(sink.sink);
    tag.note(
        seen.meter.rows.max(seen.buffered),
        if result.is_ok() && !timed_out {
            seen.delivered
        } else {
            0
        },
        meters_bytes.then_some(seen.meter.bytes),
    );
    if timed_out {
        // Always an error, whatever the overflow policy: the rows are not a prefix the budget
        // chose.
        let sql = match result {
            Err(Error::Query { sql, .. }) => sql.unwrap_or_default(),
            Ok(ran) => ran.sql.unwrap_or_default(),
            Err(_) => String::new(),
        };
        return Err(Error::BudgetExceeded {
            sql,
            budget: spec,
            exceeded: Exceeded::Time,
            seen_rows: seen.meter.rows,
            seen_bytes: seen.meter.bytes,
        });
    }
    result.map(|ran| (ran, tag))
}

/// A sink that stops at a deadline the client keeps itself (SQLite under a time limit:
/// nothing on a server can cancel the statement, so the clock is read between rows).
struct Deadline<'s, S> {
    sink: &'s mut S,
    deadline: Option<Instant>,
    passed: bool,
}

impl<U, S: RowSink<U>> RowSink<U> for Deadline<'_, S> {
    fn expect(&mut self, rows: usize) {
        self.sink.expect(rows);
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.passed = true;
            return ControlFlow::Break(());
        }
        self.sink.push(row)
    }

    fn needs_sql(&self) -> bool {
        self.passed || self.sink.needs_sql()
    }
}

/// Keeps the one row `first` fetches, without a vector.
struct FirstRow<U, M> {
    row: Option<U>,
    /// Rows the client library holds for this result (buffered results only).
    buffered: u64,
    meter: Meterage,
    exceeded: Option<Exceeded>,
    spec: BudgetSpec,
    _meter: PhantomData<fn() -> M>,
}

impl<U, M: Meter<U>> RowSink<U> for FirstRow<U, M> {
    fn expect(&mut self, rows: usize) {
        self.buffered = rows as u64;
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        match self.meter.add(M::size_of(&row), &self.spec) {
            None => self.row = Some(row),
            Some(e) => self.exceeded = Some(e),
        }
        ControlFlow::Break(())
    }

    fn needs_sql(&self) -> bool {
        self.exceeded.is_some() || self.row.is_none()
    }
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
        let loaded = load::<_, U, Q, M>(self.query, spec, probe_limit(spec.rows), false, conn)?;
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
        let loaded = load::<_, U, Q, M>(self.query, spec, probe_limit(spec.rows), true, conn)?;
        match loaded.exceeded {
            // Not even the first row fits: that is an overflow, not a missing row.
            Some(e) if !O::TRUNCATES || loaded.rows.is_empty() => Err(loaded.into_error(spec, e)),
            _ => first_or_not_found(loaded),
        }
    }

    fn internal_first(self, conn: &mut C) -> Result<U> {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let mut sink = FirstRow::<U, M> {
            row: None,
            buffered: 0,
            meter: Meterage::default(),
            exceeded: None,
            spec,
            _meter: PhantomData,
        };
        let (ran, _tag) = execute(self.query, spec, 1, M::METERS_BYTES, conn, &mut sink, |s| {
            Seen {
                meter: s.meter,
                buffered: s.buffered,
                delivered: u64::from(s.row.is_some()),
            }
        })?;
        let sql = ran.sql.unwrap_or_default();
        match (sink.row, sink.exceeded) {
            (_, Some(exceeded)) => Err(Error::BudgetExceeded {
                sql,
                budget: spec,
                exceeded,
                seen_rows: sink.meter.rows,
                seen_bytes: sink.meter.bytes,
            }),
            (Some(row), None) => Ok(row),
            (None, None) => Err(Error::query(sql, diesel::result::Error::NotFound)),
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

fn first_or_not_found<U>(mut loaded: Loaded<U>) -> Result<U> {
    loaded.tag.delivered(u64::from(!loaded.rows.is_empty()));
    match loaded.rows.into_iter().next() {
        Some(row) => Ok(row),
        None => Err(Error::query(loaded.sql, diesel::result::Error::NotFound)),
    }
}
