//! Plan checks: the backend's `EXPLAIN` of a query, reduced to what a budget cares about —
//! which tables are read in full, which indexes are used, how many rows the planner expects.
//!
//! - PostgreSQL: `EXPLAIN (FORMAT JSON)`; a `Seq Scan` node is a full scan.
//! - SQLite: `EXPLAIN QUERY PLAN`; `SCAN <table>` without an index is a full scan, `SEARCH` is
//!   not.
//! - MySQL/MariaDB: `EXPLAIN FORMAT=JSON`; access type `ALL` is a full scan.
//!
//! On a small test database the planner may prefer a scan although an index would serve.
//! [`check_index_usable`] asks whether an index *can* serve instead: on PostgreSQL it plans
//! with `SET LOCAL enable_seqscan = off` in a transaction that is rolled back; on MySQL a table
//! read in full with a usable index (`possible_keys`) counts as served; SQLite plans without
//! statistics and uses an index it has whatever the table's size.
//!
//! The statements run as the library's own: a recording does not see them and strict mode
//! lets them through. Plans can hold bound values (PostgreSQL writes them into its filters):
//! they stay in [`Plan::raw`], never in a message.

use std::fmt;
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AsQuery, AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

use crate::backend::{BackendKind, BudgetConnection};
use crate::error::Result;
use crate::exec::{sealed, ConnectionOf, Executor};
use crate::instrument::{fingerprint, InternalScope};

/// How a plan node reads its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Access {
    /// Every row of the table (`Seq Scan`, `SCAN t`, `ALL`).
    FullScan,
    /// Through an index (including a scan of a whole index).
    Index,
    /// Anything else (joins, sorts, constant tables).
    Other,
}

/// One table access of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanNode {
    /// The table read, when the node reads one.
    pub table: Option<String>,
    /// How.
    pub access: Access,
    /// The index used, if any.
    pub index: Option<String>,
    /// Indexes the planner considered usable (MySQL's `possible_keys`; empty elsewhere).
    pub possible_indexes: Vec<String>,
    /// The planner's estimate of the rows this node yields, when it gives one.
    pub estimated_rows: Option<u64>,
}

/// A query's plan as diesel-budget reads it ([`explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Which backend planned it.
    pub backend: BackendKind,
    /// The table accesses, in the order of the backend's output.
    pub nodes: Vec<PlanNode>,
    /// The planner's estimate of the rows the query returns (PostgreSQL: the top node's; MySQL:
    /// the product of each table's; SQLite: none).
    pub estimated_rows: Option<u64>,
    /// The backend's own output (JSON, or SQLite's lines). May hold bound values.
    pub raw: String,
}

impl Plan {
    /// Tables read in full, in plan order, each once.
    pub fn full_scans(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for n in &self.nodes {
            if n.access == Access::FullScan {
                let t = n.table.as_deref().unwrap_or("?");
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Indexes used, in plan order, each once.
    pub fn indexes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for i in self.nodes.iter().filter_map(|n| n.index.as_deref()) {
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The plan's shape, for lockfiles and messages: each table access, no values
    /// (`full scan items`, `index items_category on items`).
    pub fn shape(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.access != Access::Other)
            .map(|n| {
                let table = n.table.as_deref().unwrap_or("?");
                match (n.access, &n.index) {
                    (Access::FullScan, _) => format!("full scan {table}"),
                    (_, Some(i)) => format!("index {i} on {table}"),
                    _ => format!("index on {table}"),
                }
            })
            .collect();
        if parts.is_empty() {
            "no table read".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// A plan check failed: the query reads a table in full.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanError {
    /// The query's SQL shape (placeholders only).
    pub fingerprint: String,
    /// The tables read in full.
    pub tables: Vec<String>,
    /// Whether the check asked if an index is usable (rather than chosen).
    pub index_usable_check: bool,
    /// The plan.
    pub plan: Box<Plan>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.index_usable_check {
            "no usable index"
        } else {
            "full scan"
        };
        write!(
            f,
            "plan check failed on {}: {what}: full scan of {} (plan: {}) in: {}",
            self.plan.backend,
            self.tables.join(", "),
            self.plan.shape(),
            self.fingerprint
        )
    }
}

impl std::error::Error for PlanError {}

mod seal {
    pub trait Sealed {}
}

pub(crate) use seal::Sealed;

/// A connection whose backend diesel-budget can `EXPLAIN` on. Sealed: implemented for each
/// backend's connection (in `src/backend/<db>/explain.rs`).
pub trait ExplainConnection: BudgetConnection + seal::Sealed {
    /// Plans `query`; with `index_usable`, plans it as [`check_index_usable`] does.
    #[doc(hidden)]
    fn explain_plan<Q>(&mut self, query: &Q, index_usable: bool) -> QueryResult<Plan>
    where
        Q: QueryFragment<Self::Backend> + QueryId;

    /// The rows of `table`, counted up to `cap + 1` ([`CappedCount`]).
    #[doc(hidden)]
    fn count_rows_capped(&mut self, table: &str, cap: u64) -> QueryResult<u64>;
}

/// How many rows a table holds, counted up to a cap: `SELECT COUNT(*) FROM (SELECT 1 FROM
/// <table> LIMIT <cap + 1>) AS diesel_budget_rows`; the table is an identifier, the cap a bound
/// value. Never cached as a prepared statement.
#[doc(hidden)]
#[derive(Debug)]
pub struct CappedCount<'a> {
    table: &'a str,
    limit: i64,
}

impl<'a> CappedCount<'a> {
    pub(crate) fn new(table: &'a str, cap: u64) -> Self {
        CappedCount {
            table,
            limit: i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX),
        }
    }
}

impl QueryId for CappedCount<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for CappedCount<'_> {
    type SqlType = diesel::sql_types::BigInt;
}

impl<DB: crate::backend::BudgetBackend> QueryFragment<DB> for CappedCount<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("SELECT COUNT(*) FROM (SELECT 1 FROM ");
        out.push_identifier(self.table)?;
        out.push_sql(" LIMIT ");
        DB::push_bigint(&mut out, &self.limit)?;
        out.push_sql(") AS diesel_budget_rows");
        Ok(())
    }
}

impl<Conn> diesel::RunQueryDsl<Conn> for CappedCount<'_> {}

/// SQL text given by the operator of the `diesel-budget explain` command (the tool's input, never
/// a value from an application's user), explained as it is. Never cached as a prepared
/// statement.
#[derive(Debug, Clone, Copy)]
struct SqlText<'a>(&'a str);

impl QueryId for SqlText<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend> QueryFragment<DB> for SqlText<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql(self.0);
        Ok(())
    }
}

/// What [`explain_sql`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExplainOptions {
    /// Ask whether an index *can* serve the query (as [`check_index_usable`]) and fail on any
    /// full scan, whatever the table's size. Default: `false` (the plan the planner chooses).
    pub require_index: bool,
    /// A full scan fails only on a table of more rows than this (counted up to this number plus
    /// one): small lookup tables, and the nearly empty tables of a CI database where the planner
    /// prefers a scan, pass. Default: 1,000.
    pub max_scan_rows: u64,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            require_index: false,
            max_scan_rows: 1_000,
        }
    }
}

impl ExplainOptions {
    /// Sets [`ExplainOptions::require_index`].
    pub fn require_index(mut self, on: bool) -> Self {
        self.require_index = on;
        self
    }

    /// Sets [`ExplainOptions::max_scan_rows`].
    pub fn max_scan_rows(mut self, rows: u64) -> Self {
        self.max_scan_rows = rows;
        self
    }
}

/// A table read in full by an explained query, and its size as far as it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScannedTable {
    /// The table, as the plan names it.
    pub table: String,
    /// Its rows, counted up to [`ExplainOptions::max_scan_rows`] plus one (`None`: the name in
    /// the plan is not a table that can be counted, such as an alias or a derived table).
    pub rows: Option<u64>,
    /// Whether this scan fails the check: a table over the threshold (or of unknown size), or
    /// any table under [`ExplainOptions::require_index`].
    pub fails: bool,
}

/// The outcome of [`explain_sql`]: the plan and each table it reads in full.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlExplain {
    /// The plan.
    pub plan: Plan,
    /// The tables read in full, in plan order, each once.
    pub scans: Vec<ScannedTable>,
    /// The options it was checked with.
    pub options: ExplainOptions,
}

impl SqlExplain {
    /// Whether any full scan fails the check.
    pub fn failed(&self) -> bool {
        self.scans.iter().any(|s| s.fails)
    }
}

/// Explains `sql` on `conn` and sizes the tables it reads in full (the generic half of
/// [`explain_sql`]; each backend connects and calls it).
pub(crate) fn explain_text<C: ExplainConnection>(
    conn: &mut C,
    sql: &str,
    options: ExplainOptions,
) -> Result<SqlExplain> {
    let _internal = InternalScope::enter();
    let plan = conn
        .explain_plan(&SqlText(sql), options.require_index)
        .map_err(|e| crate::Error::query(fingerprint(sql), e))?;
    let mut scans = Vec::new();
    for table in plan.full_scans() {
        let rows = conn.count_rows_capped(table, options.max_scan_rows).ok();
        let over = rows.is_none_or(|n| n > options.max_scan_rows);
        scans.push(ScannedTable {
            table: table.to_owned(),
            rows,
            fails: options.require_index || over,
        });
    }
    Ok(SqlExplain {
        plan,
        scans,
        options,
    })
}

/// Connects to the database at `url` and explains `sql` there: the plan (full scans, indexes,
/// estimated rows) and, for each table read in full, its rows counted up to
/// [`ExplainOptions::max_scan_rows`]. What `diesel-budget explain` runs.
///
/// `url` picks the backend: `postgres://` or `postgresql://` (feature `postgres`), `mysql://`
/// (feature `mysql`, MySQL and MariaDB), anything else an SQLite file (feature `sqlite`; a
/// `sqlite://` prefix is dropped; the file must exist). `sql` is the operator's SQL text, run
/// as given under `EXPLAIN` (PostgreSQL's planner does not execute it; neither do the others),
/// so it must not come from an application's users. Bound values cannot be given: write
/// literals.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] for a backend this build lacks or an SQLite file that is
/// not there; [`crate::Error::Connection`]; [`crate::Error::Query`] when the database rejects
/// the `EXPLAIN`.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # #[cfg(feature = "sqlite")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("app.db");
/// # let url = path.to_str().ok_or("path")?;
/// # let db: diesel_budget::Db<DbConnection> =
/// #     diesel_budget::Db::builder(url).migrations(diesel_budget::demo::MIGRATIONS).build()?;
/// use diesel_budget::testing::{explain_sql, ExplainOptions};
///
/// let strict = ExplainOptions::default().require_index(true);
/// let report = explain_sql(url, "SELECT * FROM items WHERE payload = 'x'", strict)?;
/// assert_eq!(report.plan.full_scans(), ["items"]);
/// assert!(report.failed());
/// let report = explain_sql(url, "SELECT * FROM items WHERE id = 3", strict)?;
/// assert!(!report.failed());
/// # Ok(()) }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub fn explain_sql(url: &str, sql: &str, options: ExplainOptions) -> Result<SqlExplain> {
    crate::backend::explain_at(url, sql, options)
}

/// `<prefix><query>`: the query, explained. Loaded as rows of `ST`. Never cached as a prepared
/// statement.
pub(crate) struct ExplainQuery<'a, Q, ST> {
    prefix: &'static str,
    query: &'a Q,
    _st: PhantomData<ST>,
}

impl<'a, Q, ST> ExplainQuery<'a, Q, ST> {
    pub(crate) fn new(prefix: &'static str, query: &'a Q) -> Self {
        ExplainQuery {
            prefix,
            query,
            _st: PhantomData,
        }
    }
}

impl<Q, ST> QueryId for ExplainQuery<'_, Q, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q, ST: 'static> Query for ExplainQuery<'_, Q, ST> {
    type SqlType = ST;
}

impl<DB: Backend, Q: QueryFragment<DB>, ST> QueryFragment<DB> for ExplainQuery<'_, Q, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql(self.prefix);
        self.query.walk_ast(out.reborrow())
    }
}

impl<Q, ST, Conn> diesel::RunQueryDsl<Conn> for ExplainQuery<'_, Q, ST> {}

fn run<X, Q>(query: &Q, conn: &mut X, index_usable: bool) -> Result<Plan>
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    let c = conn.connection(sealed::TOKEN);
    let sql = ConnectionOf::<X>::render_sql(query).unwrap_or_default();
    let _internal = InternalScope::enter();
    c.explain_plan(query, index_usable)
        .map_err(|e| crate::Error::query(sql, e))
}

/// The plan of `query` (any Diesel query, a bare table too; for a budgeted one, the query
/// inside it: [`crate::Budgeted::into_inner`]) on `conn`.
///
/// # Errors
/// When the database rejects the `EXPLAIN`, or its output cannot be read.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(10)?;
/// use diesel::prelude::*;
/// use diesel_budget::demo::items;
/// use diesel_budget::testing;
///
/// // The payload column has no index: every row is read.
/// let plan = testing::explain(&items::table.filter(items::payload.eq("x")), &mut conn)?;
/// assert_eq!(plan.full_scans(), ["items"]);
/// // The primary key has one.
/// let plan = testing::check_index_usable(&items::table.filter(items::id.eq(3)), &mut conn)??;
/// assert!(plan.full_scans().is_empty());
/// # Ok(()) }
/// ```
pub fn explain<X, Q>(query: &Q, conn: &mut X) -> Result<Plan>
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    run(&query.clone().as_query(), conn, false)
}

fn verdict<C: BudgetConnection, Q>(
    query: &Q,
    plan: Plan,
    index_usable_check: bool,
) -> std::result::Result<Plan, PlanError>
where
    Q: QueryFragment<C::Backend>,
{
    let tables: Vec<String> = plan.full_scans().into_iter().map(str::to_owned).collect();
    if tables.is_empty() {
        return Ok(plan);
    }
    Err(PlanError {
        fingerprint: fingerprint(&C::render_sql(query).unwrap_or_default()),
        tables,
        index_usable_check,
        plan: Box::new(plan),
    })
}

/// The plan of `query`, or a [`PlanError`] when it reads a table in full.
///
/// # Errors
/// [`PlanError`] inside `Ok(Err(..))` when the plan has a full scan; the outer error when
/// `EXPLAIN` itself fails.
pub fn check_no_full_scan<X, Q>(
    query: &Q,
    conn: &mut X,
) -> Result<std::result::Result<Plan, PlanError>>
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    let query = query.clone().as_query();
    let plan = run(&query, conn, false)?;
    Ok(verdict::<ConnectionOf<X>, _>(&query, plan, false))
}

/// Whether an index can serve `query` without reading a table in full, however small the
/// table (see the module docs for how on each backend): the plan, or a [`PlanError`] naming
/// the tables no index serves.
///
/// # Errors
/// [`PlanError`] inside `Ok(Err(..))` when no index serves; the outer error when `EXPLAIN`
/// itself fails.
pub fn check_index_usable<X, Q>(
    query: &Q,
    conn: &mut X,
) -> Result<std::result::Result<Plan, PlanError>>
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    let query = query.clone().as_query();
    let plan = run(&query, conn, true)?;
    Ok(verdict::<ConnectionOf<X>, _>(&query, plan, true))
}

/// [`check_no_full_scan`], panicking with the message of [`PlanError`] (or of the `EXPLAIN`
/// error).
#[track_caller]
pub fn assert_no_full_scan<X, Q>(query: &Q, conn: &mut X) -> Plan
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    match check_no_full_scan(query, conn) {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("EXPLAIN failed: {e}"),
    }
}

/// [`check_index_usable`], panicking with the message of [`PlanError`] (or of the `EXPLAIN`
/// error).
#[track_caller]
pub fn assert_index_usable<X, Q>(query: &Q, conn: &mut X) -> Plan
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
{
    match check_index_usable(query, conn) {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("EXPLAIN failed: {e}"),
    }
}

/// A pre-flight check refused a query: the planner expects more rows than its budget allows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreflightError {
    /// The query's SQL shape (placeholders only).
    pub fingerprint: String,
    /// The planner's estimate of the rows the query returns.
    pub estimated_rows: u64,
    /// The row budget.
    pub budget_rows: u64,
    /// The plan.
    pub plan: Box<Plan>,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pre-flight check failed on {}: the planner expects {} rows, the budget allows {} \
             (plan: {}) in: {}",
            self.plan.backend,
            self.estimated_rows,
            self.budget_rows,
            self.plan.shape(),
            self.fingerprint
        )
    }
}

impl std::error::Error for PreflightError {}

/// Pre-flight: plans the query inside `budgeted` (without the budget's `LIMIT`) and refuses it,
/// before it runs, when the planner expects more rows than the row budget. Estimates come from
/// the server's statistics (PostgreSQL, MySQL/MariaDB: keep them fresh with `ANALYZE`); SQLite's
/// `EXPLAIN QUERY PLAN` gives none, so there it never refuses.
///
/// # Errors
/// [`PreflightError`] inside `Ok(Err(..))` when the estimate exceeds the budget; the outer
/// error when `EXPLAIN` fails.
pub fn preflight<X, Q, M, O>(
    budgeted: &crate::Budgeted<Q, M, O>,
    conn: &mut X,
) -> Result<std::result::Result<Plan, PreflightError>>
where
    X: Executor,
    ConnectionOf<X>: ExplainConnection,
    Q: AsQuery + Clone,
    Q::Query: QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend> + QueryId,
    M: crate::budget::Metering,
    O: crate::budget::Overflow,
{
    let budget_rows = budgeted.budget_spec().rows;
    let query = budgeted.query.clone().as_query();
    let plan = run(&query, conn, false)?;
    match plan.estimated_rows {
        Some(estimated_rows) if estimated_rows > budget_rows => Ok(Err(PreflightError {
            fingerprint: fingerprint(&ConnectionOf::<X>::render_sql(&query).unwrap_or_default()),
            estimated_rows,
            budget_rows,
            plan: Box::new(plan),
        })),
        _ => Ok(Ok(plan)),
    }
}
