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
//!   bind Diesel would send, so the SQL is the plain `LIMIT ?`; SQLite keeps its binds private
//!   and gets `LIMIT min(budget + 1, n)`. A limit no larger than the budget therefore bounds
//!   the rows by itself: the query fits, it is never "exceeded" on rows;
//! - a boxed query (`into_boxed()`) holds its limit at run time: the same on PostgreSQL and
//!   MySQL (the value is read from its bind). On SQLite a boxed query with a `LIMIT` of its own
//!   is the one case left that is wrapped in a derived table,
//!   `SELECT * FROM (<query>) AS diesel_budget_capped LIMIT ?` (SQLite accepts duplicate
//!   column names there and reads the inner ordered result in order).
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
//! The statement is built as Diesel builds it and run through a by-reference node, so the
//! executor still owns it afterwards: SQL text is rendered only for an error (a failed
//! statement, a result over its budget, `first` finding no row). [`Budgeted::debug_sql`]
//! shows the SQL `load` sends.

use std::ops::ControlFlow;

use diesel::backend::sql_dialect::select_statement_syntax::AnsiSqlSelectStatement;
use diesel::backend::Backend;
use diesel::connection::{DefaultLoadingMode, LoadConnection};
use diesel::deserialize::FromSqlRow;
use diesel::expression::QueryMetadata;
use diesel::query_builder::{
    AsQuery, AstPass, BoxedSelectStatement, LimitClause, LimitOffsetClause, NoLimitClause, Query,
    QueryBuilder, QueryFragment, QueryId, SelectStatement,
};
use diesel::query_dsl::methods::LimitDsl;
use diesel::query_dsl::{CompatibleType, RunQueryDsl};
use diesel::QueryResult;

use crate::backend::{BudgetBackend, BudgetConnection};
use crate::budget::{Budget, Rows, Strict};
use crate::error::{Error, Result};
use crate::timeout::Prefixed;

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
    /// // The query's own LIMIT and OFFSET are kept (SQLite takes the smaller of the two).
    /// assert_eq!(
    ///     q.limit(20).offset(40).budget(Budget::rows(100)).debug_sql::<Sqlite>()?,
    ///     "SELECT `items`.`id`, `items`.`name` FROM `items` \
    ///      WHERE (`items`.`category` = ?) ORDER BY `items`.`id` DESC LIMIT min(?, ?) OFFSET ?"
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
            prefix: None,
        };
        let (query, _) = shape::<DB, _>(self.query.clone().as_query(), fetch)?;
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
    /// Constant text put before the statement (a time limit's prefix, [`crate::timeout`]).
    pub prefix: Option<String>,
}

/// A `LIMIT` the query has of its own, as far as it can be known without rendering SQL.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnLimit {
    /// No `LIMIT` clause.
    None,
    /// A `LIMIT` whose value was read from its bind.
    Known(i64),
    /// A `LIMIT` whose value the backend does not expose (SQLite).
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

    /// The statement fetching at most `cap` rows (and at most its own limit, `own`).
    #[doc(hidden)]
    fn limited(self, cap: i64, own: OwnLimit) -> Self::Limited;
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
    type Limited = diesel::dsl::Limit<Self>;

    fn own_limit(&self) -> QueryResult<OwnLimit> {
        Ok(OwnLimit::None)
    }

    fn locks(&self) -> bool {
        renders::<DB, _>(&self.locking)
    }

    fn limited(self, cap: i64, _own: OwnLimit) -> Self::Limited {
        self.limit(cap)
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

    fn own_limit(&self) -> QueryResult<OwnLimit> {
        Ok(match DB::limit_value(&self.limit_offset.limit_clause.0)? {
            Some(n) => OwnLimit::Known(n),
            None => OwnLimit::Opaque,
        })
    }

    fn locks(&self) -> bool {
        renders::<DB, _>(&self.locking)
    }

    fn limited(self, cap: i64, own: OwnLimit) -> Self::Limited {
        let value = match own {
            OwnLimit::Known(n) => Some(n.min(cap)),
            OwnLimit::None | OwnLimit::Opaque => None,
        };
        OwnLimited {
            statement: self,
            cap,
            value,
        }
    }
}

/// A select statement with a `LIMIT` of its own, walked as Diesel walks it (ANSI select
/// syntax, every backend here) with one change: its limit becomes the smaller of its value
/// and the executor's `cap`, bound as one value where the backend lets us read the query's
/// (PostgreSQL, MySQL), else `min(cap, theirs)` (SQLite). Which form a backend gets never
/// varies, so the type still identifies the SQL (Diesel's prepared-statement cache).
#[derive(Debug, Clone, Copy)]
pub struct OwnLimited<St> {
    statement: St,
    cap: i64,
    /// `min(theirs, cap)` when the query's own limit is known.
    value: Option<i64>,
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
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let st = &self.statement;
        // Diesel's `SelectStatement::walk_ast` for `AnsiSqlSelectStatement`, clause by clause.
        out.push_sql("SELECT ");
        st.distinct.walk_ast(out.reborrow())?;
        st.select.walk_ast(out.reborrow())?;
        st.from.walk_ast(out.reborrow())?;
        st.where_clause.walk_ast(out.reborrow())?;
        st.group_by.walk_ast(out.reborrow())?;
        st.having.walk_ast(out.reborrow())?;
        st.order.walk_ast(out.reborrow())?;
        // With a limit, every backend here renders ` LIMIT l` then its offset clause.
        out.push_sql(" LIMIT ");
        match &self.value {
            Some(value) => DB::push_bigint(&mut out, value)?,
            None => {
                out.push_sql(DB::LIMIT_MIN);
                out.push_sql("(");
                DB::push_bigint(&mut out, &self.cap)?;
                out.push_sql(", ");
                st.limit_offset.limit_clause.0.walk_ast(out.reborrow())?;
                out.push_sql(")");
            }
        }
        st.limit_offset.offset_clause.walk_ast(out.reborrow())?;
        st.locking.walk_ast(out.reborrow())?;
        Ok(())
    }
}

impl<'a, ST, QS, DB, GB> BudgetShape<DB> for BoxedSelectStatement<'a, ST, QS, DB, GB>
where
    DB: BudgetBackend,
    Self: LimitDsl<Output = Self> + Query + QueryId,
{
    type Limited = Either<Self, Capped<Self>>;

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

    fn limited(self, cap: i64, own: OwnLimit) -> Self::Limited {
        match own {
            OwnLimit::None => Either::Left(self.limit(cap)),
            OwnLimit::Known(n) => Either::Left(self.limit(n.min(cap))),
            OwnLimit::Opaque => Either::Right(Capped {
                query: self,
                limit: cap,
            }),
        }
    }
}

/// `SELECT * FROM (<query>) AS diesel_budget_capped LIMIT <limit>`: caps a boxed query whose
/// own `LIMIT` cannot be read (SQLite), without replacing it.
#[derive(Debug, Clone, Copy)]
pub struct Capped<Q> {
    query: Q,
    limit: i64,
}

impl<Q: Query> Query for Capped<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryId> QueryId for Capped<Q> {
    type QueryId = Capped<Q::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q, DB> QueryFragment<DB> for Capped<Q>
where
    DB: BudgetBackend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT * FROM (");
        self.query.walk_ast(out.reborrow())?;
        out.push_sql(") AS diesel_budget_capped LIMIT ");
        DB::push_bigint(&mut out, &self.limit)
    }
}

/// One of two statements of the same SQL type, chosen at run time (a boxed query: capped in
/// place, or wrapped).
#[derive(Debug, Clone, Copy)]
pub enum Either<A, B> {
    /// The first form.
    Left(A),
    /// The second form.
    Right(B),
}

impl<A: Query, B: Query<SqlType = A::SqlType>> Query for Either<A, B> {
    type SqlType = A::SqlType;
}

impl<A, B> QueryId for Either<A, B> {
    type QueryId = ();
    // The SQL depends on the value: let Diesel key its statement cache by the SQL.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<A, B, DB> QueryFragment<DB> for Either<A, B>
where
    DB: Backend,
    A: QueryFragment<DB>,
    B: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        match self {
            Either::Left(a) => a.walk_ast(out),
            Either::Right(b) => b.walk_ast(out),
        }
    }
}

/// Runs a statement the executor keeps owning (so it can render it for an error afterwards).
struct ByRef<'a, P>(&'a P);

impl<P: Query> Query for ByRef<'_, P> {
    type SqlType = P::SqlType;
}

impl<P: QueryId> QueryId for ByRef<'_, P> {
    type QueryId = P::QueryId;
    const HAS_STATIC_QUERY_ID: bool = P::HAS_STATIC_QUERY_ID;
    const IS_WINDOW_FUNCTION: bool = P::IS_WINDOW_FUNCTION;
}

impl<P: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for ByRef<'_, P> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

impl<P, C> RunQueryDsl<C> for ByRef<'_, P> {}

/// Decides the statement for `fetch`: the shape's own limit, its locks, the executor's cap.
/// Returns it with whether a locking read gave up the probe row (see the module docs).
fn shape<DB, Q>(query: Q, fetch: Fetch) -> Result<(Q::Limited, bool)>
where
    DB: BudgetBackend,
    Q: BudgetShape<DB>,
{
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
        return Ok((query.limited(budget, own), true));
    }
    Ok((query.limited(fetch.limit, own), false))
}

/// Where the executor hands the rows of one execution.
#[doc(hidden)]
pub trait RowSink<U> {
    /// The result holds `rows` rows (known when the client buffered it); called before any row.
    fn expect(&mut self, rows: usize);
    /// One row; `Break` stops loading.
    fn push(&mut self, row: U) -> ControlFlow<()>;
    /// Whether the outcome is an error that shows the SQL (over budget, no row for `first`):
    /// only then is the statement rendered.
    fn needs_sql(&self) -> bool {
        false
    }
}

/// What one execution reports besides its rows.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Ran {
    /// The SQL with placeholders, rendered only when the sink asked for it.
    pub sql: Option<String>,
    /// A locking read fetched at most the budget (no probe row): a full result may have more.
    pub lock_cut: bool,
}

/// A Diesel query the executor can run on connection `C`, loading rows of type `U`.
///
/// Implemented for every query Diesel itself could `load` into `U` and put a `LIMIT` on; you
/// never implement it. When a call does not compile, the cause is usually the same as for
/// Diesel's `load`: the row type does not match the selected columns.
pub trait BudgetQuery<'q, C: BudgetConnection, U>: Sized {
    /// Runs the query as `fetch` asks, handing rows to `sink` until it breaks. `stream` picks
    /// the connection's streaming loading mode.
    #[doc(hidden)]
    fn run_limited<S>(self, fetch: Fetch, stream: bool, conn: &mut C, sink: &mut S) -> Result<Ran>
    where
        S: RowSink<U>;
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
    fn run_limited<S>(self, fetch: Fetch, stream: bool, conn: &mut C, sink: &mut S) -> Result<Ran>
    where
        S: RowSink<U>,
    {
        let prefix = fetch.prefix.clone();
        let (query, lock_cut) = shape::<C::Backend, _>(self.as_query(), fetch)?;
        let sql = match prefix {
            None => run(&query, stream, conn, sink)?,
            Some(prefix) => run(&Prefixed::new(prefix, query), stream, conn, sink)?,
        };
        Ok(Ran { sql, lock_cut })
    }
}

/// Runs `query` through [`drive`]; renders it only for an error or when `sink` asks.
fn run<C, U, P, S>(query: &P, stream: bool, conn: &mut C, sink: &mut S) -> Result<Option<String>>
where
    C: BudgetConnection + LoadConnection<C::StreamMode>,
    P: Query + QueryFragment<C::Backend> + QueryId,
    C::Backend: QueryMetadata<P::SqlType>,
    P::SqlType: CompatibleType<U, C::Backend>,
    U: FromSqlRow<<P::SqlType as CompatibleType<U, C::Backend>>::SqlType, C::Backend> + 'static,
    <P::SqlType as CompatibleType<U, C::Backend>>::SqlType: 'static,
    S: RowSink<U>,
{
    crate::instrument::hint_statement::<C::Backend, P>(query);
    let outcome = if stream {
        drive(ByRef(query).load_iter::<U, C::StreamMode>(conn), sink)
    } else {
        drive(ByRef(query).load_iter::<U, DefaultLoadingMode>(conn), sink)
    };
    crate::instrument::clear_hint();
    match outcome {
        Ok(()) if sink.needs_sql() => render::<C, _>(query).map(Some),
        Ok(()) => Ok(None),
        Err(e) => Err(Error::query(render::<C, _>(query).unwrap_or_default(), e)),
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

/// Hands each row to `sink` until it breaks or the rows end. Breaking drops the iterator:
/// SQLite stops at once, PostgreSQL row-by-row reads (and discards) the rest of a result the
/// `LIMIT` already bounded, MySQL had it buffered.
fn drive<U, S, I>(rows: QueryResult<I>, sink: &mut S) -> QueryResult<()>
where
    I: Iterator<Item = QueryResult<U>>,
    S: RowSink<U>,
{
    let rows = rows?;
    sink.expect(rows.size_hint().0);
    for row in rows {
        if sink.push(row?).is_break() {
            break;
        }
    }
    Ok(())
}
