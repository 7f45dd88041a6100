//! The typed builder: `.budget(..)` on any Diesel select gives a [`Budgeted`] query, the only
//! kind of query the executor runs.
//!
//! # How the LIMIT is pushed down
//! The executor asks the server for at most `budget + 1` rows, so it can tell "fits" from
//! "too many" without ever receiving the excess. A second `.limit()` would silently *replace*
//! yours, so the executor reads the query's **type** instead (Diesel's
//! `SelectStatement<.., LimitOffsetClause<NoLimitClause | LimitClause<_>, _>, ..>`), and
//! never renders SQL to decide:
//!
//! - no `LIMIT` of its own: `LIMIT budget + 1` is added;
//! - a `LIMIT n` of its own: the statement keeps its `ORDER BY` and `OFFSET`, and its limit
//!   becomes the smaller of `n` and `budget + 1`. On PostgreSQL and MySQL `n` is read from the
//!   bind Diesel would send, so the SQL is the plain `LIMIT ?` bound to that smaller value. A
//!   limit no larger than the budget therefore bounds the rows by itself: the query fits, it
//!   is never "exceeded" on rows;
//! - SQLite keeps its binds private, so there the statement is sent **exactly as Diesel
//!   writes it** (its own `LIMIT ?`) and the executor stops stepping after `budget + 1` rows:
//!   SQLite computes rows one `sqlite3_step` at a time and Diesel's cursor holds one row, so
//!   the rows past the probe are never computed, let alone loaded (a sort is done before the
//!   first row, bounded by the query's own `LIMIT` as in plain Diesel);
//! - a boxed query (`into_boxed()`) holds its limit at run time: the same as above (its limit
//!   read from its bind on PostgreSQL and MySQL; sent as it is on SQLite). No derived table.
//!
//! # Locking reads
//! A query with `.for_update()`, `.for_no_key_update()`, `.for_share()`, `.for_key_share()`
//! (with or without `.skip_locked()` / `.no_wait()`) locks every row the server reads for it,
//! so probing for row `budget + 1` would lock a row that is never returned: in a job queue it
//! would stay claimed, unprocessed, until the transaction ends. A locking read therefore
//! fetches at most `budget` rows and locks exactly the rows it returns:
//!
//! - under [`Budget::truncate`](crate::Budget::truncate) the result is cut at the budget.
//!   With locks, whether more rows existed cannot be known without locking one more, so
//!   [`Truncated::is_truncated`](crate::Truncated::is_truncated) is true when the budget was
//!   filled: "more may exist" (claim again);
//! - under a strict budget, `load` and `get_result` are refused with
//!   [`Error::InvalidArgument`] (`name: "budget"`) before anything runs, as they cannot tell
//!   "fits" from "too many"; `first` (one row), or a `.limit(n)` of the query's own with `n` no
//!   larger than the budget, runs as is.
//!
//! SQLite has no row locks (Diesel offers no locking clause there).
//!
//! # What runs, and its cost
//! This module builds the statement as Diesel builds it and hands it by reference to the
//! executor ([`crate::exec`]), which runs it and still owns it afterwards: SQL text is rendered
//! only for an error (a failed statement, a result over its budget, `first` finding no row).
//! [`Budgeted::debug_sql`] shows the SQL `load` sends.

use diesel::backend::sql_dialect::select_statement_syntax::AnsiSqlSelectStatement;
use diesel::backend::Backend;
use diesel::connection::LoadConnection;
use diesel::deserialize::FromSqlRow;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{
    AsQuery, AstPass, BoxedSelectStatement, LimitClause, LimitOffsetClause, NoLimitClause, Query,
    QueryBuilder, QueryFragment, QueryId, SelectStatement,
};
use diesel::query_dsl::methods::LimitDsl;
use diesel::query_dsl::CompatibleType;
use diesel::QueryResult;

use crate::backend::{BudgetBackend, BudgetConnection};
use crate::budget::{Budget, Rows, Strict};
use crate::error::{Error, Result};
use crate::exec::RunStatement;
use crate::timeout::{Prefixed, TimeSql};

/// Adds [`budget`](BudgetDsl::budget) to every Diesel query that can take a `LIMIT`: tables,
/// select statements (plain, filtered, ordered, joined, grouped) and boxed selects.
///
/// # Example
/// ```
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::items;
///
/// let q = items::table.filter(items::category.eq(3)).budget(Budget::rows(500));
/// assert_eq!(q.budget_spec().rows, 500);
/// ```
pub trait BudgetDsl: Sized {
    /// Declares how much of the result may be loaded. See [`Budget`].
    fn budget<M, O>(self, budget: Budget<M, O>) -> Budgeted<Self, M, O> {
        Budgeted {
            query: self,
            budget,
        }
    }
}

impl<T: LimitDsl> BudgetDsl for T {}

/// A query with its budget: what the executor runs (`load`, `first`, `get_result(s)`,
/// `batches_by`). Built by [`BudgetDsl::budget`].
#[must_use = "a budgeted query does nothing until it is loaded"]
#[derive(Debug, Clone, Copy)]
pub struct Budgeted<Q, M = Rows, O = Strict> {
    pub(crate) query: Q,
    pub(crate) budget: Budget<M, O>,
}

impl<Q, M: crate::budget::Metering, O: crate::budget::Overflow> Budgeted<Q, M, O> {
    /// The budget as plain values.
    pub fn budget_spec(&self) -> crate::budget::BudgetSpec {
        self.budget.spec()
    }

    /// The query without its budget.
    pub fn into_inner(self) -> Q {
        self.query
    }

    /// The SQL (with placeholders, never the bound values) that
    /// [`load`](crate::RunBudgetedDsl::load) sends on backend `DB`, built as the executor
    /// builds it; nothing runs. `first` sends the same statement with `LIMIT 1`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a locking read under a strict budget (see the
    /// [module docs](crate::query#locking-reads)), [`Error::InvalidBudget`] for a budget of
    /// zero rows, [`Error::Query`] if Diesel cannot build the statement.
    ///
    /// # Example
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::items;
    /// # #[cfg(feature = "sqlite")]
    /// use diesel::sqlite::Sqlite;
    ///
    /// # #[cfg(feature = "sqlite")] {
    /// let q = items::table
    ///     .filter(items::category.eq(3))
    ///     .select((items::id, items::name))
    ///     .order(items::id.desc());
    /// assert_eq!(
    ///     q.budget(Budget::rows(100)).debug_sql::<Sqlite>()?,
    ///     "SELECT `items`.`id`, `items`.`name` FROM `items` \
    ///      WHERE (`items`.`category` = ?) ORDER BY `items`.`id` DESC LIMIT ?"
    /// );
    /// // The query's own LIMIT and OFFSET are kept: on SQLite the statement is Diesel's own
    /// // (the executor stops stepping after `budget + 1` rows).
    /// assert_eq!(
    ///     q.limit(20).offset(40).budget(Budget::rows(100)).debug_sql::<Sqlite>()?,
    ///     "SELECT `items`.`id`, `items`.`name` FROM `items` \
    ///      WHERE (`items`.`category` = ?) ORDER BY `items`.`id` DESC LIMIT ? OFFSET ?"
    /// );
    /// # }
    /// # #[cfg(feature = "postgres")] {
    /// # use diesel::pg::Pg;
    /// # let q = items::table
    /// #     .filter(items::category.eq(3))
    /// #     .select((items::id, items::name))
    /// #     .order(items::id.desc());
    /// // PostgreSQL (and MySQL): the plain `LIMIT $2`, bound to the smaller of the two.
    /// assert_eq!(
    ///     q.limit(20).offset(40).budget(Budget::rows(100)).debug_sql::<Pg>()?,
    ///     "SELECT \"items\".\"id\", \"items\".\"name\" FROM \"items\" \
    ///      WHERE (\"items\".\"category\" = $1) ORDER BY \"items\".\"id\" DESC LIMIT $2 OFFSET $3"
    /// );
    /// # }
    /// # Ok::<(), diesel_budget::Error>(())
    /// ```
    pub fn debug_sql<DB>(&self) -> Result<String>
    where
        DB: BudgetBackend,
        Q: AsQuery + Clone,
        Q::Query: BudgetShape<DB>,
        <Q::Query as BudgetShape<DB>>::Limited: QueryFragment<DB>,
    {
        self.budget.validate()?;
        let spec = self.budget.spec();
        let fetch = Fetch {
            limit: probe_limit(spec.rows),
            budget_rows: spec.rows,
            truncate: spec.truncate,
            timed: TimeSql::default(),
        };
        let query = shape::<DB, _>(self.query.clone().as_query(), fetch)?.statement;
        render_on::<DB, _>(&query).map_err(|e| Error::query(String::new(), e))
    }
}

/// `budget + 1` (saturating), the LIMIT that tells "fits" from "too many".
pub(crate) fn probe_limit(budget_rows: u64) -> i64 {
    i64::try_from(budget_rows.saturating_add(1)).unwrap_or(i64::MAX)
}

/// What one execution asks of the server.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Most rows to fetch: `budget + 1` to probe, the budget, or 1 for `first`.
    pub limit: i64,
    /// The row budget.
    pub budget_rows: u64,
    /// Whether the budget truncates (else it is strict).
    pub truncate: bool,
    /// What a time limit adds to the statement's SQL ([`crate::timeout`]).
    pub timed: TimeSql,
}

/// A `LIMIT` the query has of its own, as far as it can be known without rendering SQL.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnLimit {
    /// No `LIMIT` clause.
    None,
    /// A `LIMIT` whose value was read from its bind.
    Known(i64),
    /// A `LIMIT` whose value the backend does not expose (SQLite): the statement is sent as it
    /// is and the executor stops after its cap.
    Opaque,
}

/// How a Diesel select takes the executor's `LIMIT` on backend `DB`, decided by its type:
/// implemented for `SelectStatement` (with and without a `LIMIT` of its own, with and without
/// a locking clause) and `BoxedSelectStatement`. You never implement it.
pub trait BudgetShape<DB: BudgetBackend>: Sized {
    /// The statement with the executor's limit in place.
    type Limited: Query + QueryId;

    /// The query's own `LIMIT`.
    #[doc(hidden)]
    fn own_limit(&self) -> QueryResult<OwnLimit>;

    /// Whether the statement locks the rows it reads (`FOR UPDATE`, `FOR SHARE`, ..).
    #[doc(hidden)]
    fn locks(&self) -> bool;

    /// Whether [`limited`](Self::limited) puts its `hint` right after the statement's
    /// `SELECT` (MySQL's optimizer hints).
    #[doc(hidden)]
    const TAKES_HINT: bool = false;

    /// The statement fetching at most `cap` rows (and at most its own limit, `own`), with
    /// `hint` right after its `SELECT` where [`TAKES_HINT`](Self::TAKES_HINT).
    #[doc(hidden)]
    fn limited(self, cap: i64, own: OwnLimit, hint: Option<String>) -> Self::Limited;
}

/// Whether `locking`, a select statement's locking clause, renders anything. Diesel's
/// `NoLockingClause` renders nothing, so for it this is the constant `false` once inlined.
fn renders<DB: BudgetBackend, L: QueryFragment<DB>>(locking: &L) -> bool {
    // A clause that cannot say counts as locking: the cautious answer.
    !locking.is_noop(&DB::default()).unwrap_or(false)
}

impl<F, S, D, W, O, Of, G, H, LC, DB> BudgetShape<DB>
    for SelectStatement<F, S, D, W, O, LimitOffsetClause<NoLimitClause, Of>, G, H, LC>
where
    DB: BudgetBackend,
    LC: QueryFragment<DB>,
    Self: LimitDsl,
    diesel::dsl::Limit<Self>: Query + QueryId,
{
    type Limited = OwnLimited<diesel::dsl::Limit<Self>>;

    const TAKES_HINT: bool = true;

    fn own_limit(&self) -> QueryResult<OwnLimit> {
        Ok(OwnLimit::None)
    }

    fn locks(&self) -> bool {
        renders::<DB, _>(&self.locking)
    }

    fn limited(self, cap: i64, _own: OwnLimit, hint: Option<String>) -> Self::Limited {
        // Without a hint, Diesel's own statement (its limit is `cap`); with one, walked by us.
        OwnLimited {
            statement: self.limit(cap),
            value: hint.is_some().then_some(cap),
            hint,
        }
    }
}

/// A select statement with a `LIMIT` of its own.
type OwnLimitSelect<F, S, D, W, O, E, Of, G, H, LC> =
    SelectStatement<F, S, D, W, O, LimitOffsetClause<LimitClause<E>, Of>, G, H, LC>;

impl<F, S, D, W, O, E, Of, G, H, LC, DB> BudgetShape<DB>
    for OwnLimitSelect<F, S, D, W, O, E, Of, G, H, LC>
where
    DB: BudgetBackend,
    LC: QueryFragment<DB>,
    E: QueryFragment<DB>,
    Self: Query + QueryId,
{
    type Limited = OwnLimited<Self>;

    const TAKES_HINT: bool = true;

    fn own_limit(&self) -> QueryResult<OwnLimit> {
        Ok(match DB::limit_value(&self.limit_offset.limit_clause.0)? {
            Some(n) => OwnLimit::Known(n),
            None => OwnLimit::Opaque,
        })
    }

    fn locks(&self) -> bool {
        renders::<DB, _>(&self.locking)
    }

    fn limited(self, cap: i64, own: OwnLimit, hint: Option<String>) -> Self::Limited {
        let value = match own {
            OwnLimit::Known(n) => Some(n.min(cap)),
            OwnLimit::None | OwnLimit::Opaque => None,
        };
        OwnLimited {
            statement: self,
            value,
            hint,
        }
    }
}

/// A select statement with a `LIMIT` of its own, walked as Diesel walks it (ANSI select
/// syntax, every backend here) with one change where the backend lets us read the query's
/// limit (PostgreSQL, MySQL): it becomes the smaller of its value and the executor's cap,
/// bound as one value. Where it cannot be read (SQLite) the statement is Diesel's own, and the
/// executor caps the rows it steps. Which form a backend gets never varies, so the type still
/// identifies the SQL (Diesel's prepared-statement cache); a statement with a time limit's
/// hint (MySQL) runs inside [`Prefixed`], which has no static query id. Also the form of a
/// statement without a `LIMIT` of its own, whose limit is then the executor's cap.
#[derive(Debug, Clone)]
pub struct OwnLimited<St> {
    statement: St,
    /// The limit to bind (`min(theirs, cap)` when the query's own limit is known); `None`:
    /// the statement is sent as Diesel writes it.
    value: Option<i64>,
    /// Text right after `SELECT` (MySQL's `MAX_EXECUTION_TIME` hint); only with a `value`.
    hint: Option<String>,
}

impl<St: Query> Query for OwnLimited<St> {
    type SqlType = St::SqlType;
}

impl<St: QueryId> QueryId for OwnLimited<St> {
    type QueryId = OwnLimited<St::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = St::HAS_STATIC_QUERY_ID;
    const IS_WINDOW_FUNCTION: bool = St::IS_WINDOW_FUNCTION;
}

impl<F, S, D, W, O, E, Of, G, H, LC, DB> QueryFragment<DB>
    for OwnLimited<OwnLimitSelect<F, S, D, W, O, E, Of, G, H, LC>>
where
    DB: BudgetBackend<SelectStatementSyntax = AnsiSqlSelectStatement>,
    S: QueryFragment<DB>,
    F: QueryFragment<DB>,
    D: QueryFragment<DB>,
    W: QueryFragment<DB>,
    O: QueryFragment<DB>,
    E: QueryFragment<DB>,
    Of: QueryFragment<DB>,
    G: QueryFragment<DB>,
    H: QueryFragment<DB>,
    LC: QueryFragment<DB>,
    OwnLimitSelect<F, S, D, W, O, E, Of, G, H, LC>: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let Some(value) = &self.value else {
            // The limit cannot be read (SQLite): Diesel's own statement, capped by the executor.
            return self.statement.walk_ast(out);
        };
        let st = &self.statement;
        // Diesel's `SelectStatement::walk_ast` for `AnsiSqlSelectStatement`, clause by clause.
        out.push_sql("SELECT ");
        if let Some(hint) = &self.hint {
            out.push_sql(hint);
        }
        st.distinct.walk_ast(out.reborrow())?;
        st.select.walk_ast(out.reborrow())?;
        st.from.walk_ast(out.reborrow())?;
        st.where_clause.walk_ast(out.reborrow())?;
        st.group_by.walk_ast(out.reborrow())?;
        st.having.walk_ast(out.reborrow())?;
        st.order.walk_ast(out.reborrow())?;
        // With a limit, every backend here renders ` LIMIT l` then its offset clause.
        out.push_sql(" LIMIT ");
        DB::push_bigint(&mut out, value)?;
        st.limit_offset.offset_clause.walk_ast(out.reborrow())?;
        st.locking.walk_ast(out.reborrow())?;
        Ok(())
    }
}

impl<'a, ST, QS, DB, GB> BudgetShape<DB> for BoxedSelectStatement<'a, ST, QS, DB, GB>
where
    DB: BudgetBackend + 'a,
    Self: LimitDsl<Output = Self> + Query + QueryId,
{
    type Limited = Self;

    const TAKES_HINT: bool = true;

    fn own_limit(&self) -> QueryResult<OwnLimit> {
        Ok(match &self.limit_offset.limit {
            None => OwnLimit::None,
            // PostgreSQL boxes "no limit" as a `NoLimitClause`, which renders nothing.
            Some(clause) if clause.is_noop(&DB::default())? => OwnLimit::None,
            Some(clause) => match DB::limit_value(&**clause)? {
                Some(n) => OwnLimit::Known(n),
                None => OwnLimit::Opaque,
            },
        })
    }

    fn locks(&self) -> bool {
        // Diesel cannot box a locking query.
        false
    }

    fn limited(self, cap: i64, own: OwnLimit, hint: Option<String>) -> Self::Limited {
        let mut limited = match own {
            OwnLimit::None => self.limit(cap),
            OwnLimit::Known(n) => self.limit(n.min(cap)),
            // SQLite: sent as it is, capped by the executor.
            OwnLimit::Opaque => self,
        };
        if let Some(hint) = hint {
            // The distinct clause is walked right after `SELECT `: the hint goes before it.
            limited.distinct = Box::new(HintThen {
                hint,
                then: limited.distinct,
            });
        }
        limited
    }
}

/// `<hint><clause>`: a boxed statement's distinct clause with a hint before it.
struct HintThen<T> {
    hint: String,
    then: T,
}

impl<T: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for HintThen<T> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(&self.hint);
        self.then.walk_ast(out)
    }
}

/// A statement decided by [`shape`].
struct Shaped<L> {
    statement: L,
    /// A locking read gave up the probe row (see the module docs).
    lock_cut: bool,
    /// The statement is sent with its own limit, unread (SQLite): the executor steps at most
    /// this many rows.
    client_cap: Option<i64>,
}

/// Decides the statement for `fetch`: the shape's own limit, its locks, the executor's cap,
/// the time limit's hint.
fn shape<DB, Q>(query: Q, fetch: Fetch) -> Result<Shaped<Q::Limited>>
where
    DB: BudgetBackend,
    Q: BudgetShape<DB>,
{
    let hint = fetch.timed.hint;
    if hint.is_some() && !Q::TAKES_HINT {
        return Err(Error::InvalidArgument {
            name: "time",
            reason: "this statement cannot carry MySQL's MAX_EXECUTION_TIME hint: run it without \
                     a time limit"
                .to_owned(),
        });
    }
    let own = query
        .own_limit()
        .map_err(|e| Error::query(String::new(), e))?;
    let budget = i64::try_from(fetch.budget_rows).unwrap_or(i64::MAX);
    let probes = fetch.limit > budget;
    let own_bounds = matches!(own, OwnLimit::Known(n) if n <= budget);
    if probes && !own_bounds && query.locks() {
        if !fetch.truncate {
            return Err(Error::InvalidArgument {
                name: "budget",
                reason: "a locking read (FOR UPDATE / FOR SHARE) under a strict budget would \
                         lock one row more than it returns to tell \"fits\" from \"too many\"; \
                         use Budget::truncate(), first(), or a .limit(n) no larger than the \
                         budget"
                    .to_owned(),
            });
        }
        return Ok(Shaped {
            client_cap: (own == OwnLimit::Opaque).then_some(budget),
            statement: query.limited(budget, own, hint),
            lock_cut: true,
        });
    }
    Ok(Shaped {
        client_cap: (own == OwnLimit::Opaque).then_some(fetch.limit),
        statement: query.limited(fetch.limit, own, hint),
        lock_cut: false,
    })
}

/// A Diesel query the executor can run on connection `C`, loading rows of type `U`.
///
/// Implemented for every query Diesel itself could `load` into `U` and put a `LIMIT` on; you
/// never implement it. When a call does not compile, the cause is usually the same as for
/// Diesel's `load`: the row type does not match the selected columns.
pub trait BudgetQuery<'q, C: BudgetConnection, U>: Sized {
    /// Builds the statement `fetch` asks for and hands it to `run`, the executor (this module
    /// builds statements, never runs them).
    #[doc(hidden)]
    fn run_limited<R>(self, fetch: Fetch, run: R) -> Result<R::Output>
    where
        R: RunStatement<C, U>;
}

impl<'q, C, U, Q> BudgetQuery<'q, C, U> for Q
where
    C: BudgetConnection + LoadConnection<C::StreamMode>,
    Q: AsQuery,
    Q::Query: BudgetShape<C::Backend>,
    <Q::Query as BudgetShape<C::Backend>>::Limited: QueryFragment<C::Backend>,
    C::Backend: QueryMetadata<<<Q::Query as BudgetShape<C::Backend>>::Limited as Query>::SqlType>,
    <<Q::Query as BudgetShape<C::Backend>>::Limited as Query>::SqlType:
        CompatibleType<U, C::Backend>,
    U: FromSqlRow<
            <<<Q::Query as BudgetShape<C::Backend>>::Limited as Query>::SqlType as CompatibleType<
                U,
                C::Backend,
            >>::SqlType,
            C::Backend,
        > + 'static,
    <<<Q::Query as BudgetShape<C::Backend>>::Limited as Query>::SqlType as CompatibleType<
        U,
        C::Backend,
    >>::SqlType: 'static,
{
    fn run_limited<R>(self, fetch: Fetch, run: R) -> Result<R::Output>
    where
        R: RunStatement<C, U>,
    {
        let timed = fetch.timed.prefix.is_some() || fetch.timed.hint.is_some();
        let prefix = fetch.timed.prefix.clone().unwrap_or_default();
        let Shaped {
            statement,
            lock_cut,
            client_cap,
        } = shape::<C::Backend, _>(self.as_query(), fetch)?;
        // A time limit's SQL depends on the limit: no static query id (see `Prefixed`).
        match timed {
            false => run.run(&statement, lock_cut, client_cap),
            true => run.run(&Prefixed::new(prefix, statement), lock_cut, client_cap),
        }
    }
}

/// Renders `query` to SQL with placeholders, for errors and ledgers.
pub(crate) fn render<C: BudgetConnection, Q: QueryFragment<C::Backend> + ?Sized>(
    query: &Q,
) -> Result<String> {
    render_on::<C::Backend, Q>(query).map_err(Error::from)
}

fn render_on<DB: BudgetBackend, Q: QueryFragment<DB> + ?Sized>(query: &Q) -> QueryResult<String> {
    let mut out = DB::QueryBuilder::default();
    query.to_sql(&mut out, &DB::default())?;
    Ok(out.finish())
}
