//! The one metered cursor: the rows of one statement, taken one at a time under a budget.
//!
//! Every read goes through [`Cursor`]: `load`, `get_result` and `first` (one statement read to
//! its end, or to the first row past the budget), each batch of a keyset walk, pages and cache
//! fills (through `load`), and a streamed walk, whose one statement stays open across batches
//! ([`Stream`]) and is metered a window at a time ([`Cursor::new_window`]: a batch, or a row).
//! The cursor counts the rows taken off the result, meters them (rows, and bytes where the
//! budget counts them) against the budget, reads a client-side deadline, keeps the row that
//! did not fit for the next window, and builds the errors, rendering the statement's SQL only
//! then. What runs around it (the budget's instrumentation scope, the time limit, the ledger
//! entry) is in `run.rs` for a statement read at once, and in [`Stream`] for one held open.

use std::marker::PhantomData;
use std::time::Instant;

use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::{LoadQuery, RunQueryDsl};
use diesel::QueryResult;

use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage};
use crate::error::{Error, Result};
use crate::instrument::{BudgetScope, StatementTag};
use crate::query::render;

/// Where a cursor finds its statement's SQL, for errors only.
pub(crate) trait Sql {
    /// The SQL with placeholders.
    fn sql(&self) -> Result<String>;
}

/// SQL rendered up front (a stream: its statement is moved into Diesel's cursor).
impl Sql for String {
    fn sql(&self) -> Result<String> {
        Ok(self.clone())
    }
}

/// SQL rendered from the statement when an error asks for it (a statement read at once: the
/// executor keeps owning it while it runs, see [`ByRef`]).
pub(crate) struct Render<'s, C, P: ?Sized> {
    statement: &'s P,
    _conn: PhantomData<fn() -> C>,
}

impl<'s, C, P: ?Sized> Render<'s, C, P> {
    pub(crate) fn new(statement: &'s P) -> Self {
        Render {
            statement,
            _conn: PhantomData,
        }
    }
}

impl<C: BudgetConnection, P: QueryFragment<C::Backend> + ?Sized> Sql for Render<'_, C, P> {
    fn sql(&self) -> Result<String> {
        render::<C, P>(self.statement)
    }
}

/// The rows of one statement (`rows`, Diesel's row iterator), metered against `spec` with `M`.
pub(crate) struct Cursor<I, S, U, M> {
    rows: I,
    sql: S,
    spec: BudgetSpec,
    /// When the client itself stops the statement (SQLite under a time limit).
    deadline: Option<Instant>,
    /// Rows and bytes metered in the current window, with the row that did not fit.
    window: Meterage,
    /// Rows and bytes handed out, over the whole statement.
    kept: Meterage,
    /// Rows taken off the result (handed out or not).
    received: u64,
    /// Rows the client library holds for this result (0 when rows are decoded one at a time).
    buffered: u64,
    /// The row that did not fit the window: the first of the next one.
    pending: Option<U>,
    /// Which limit the row that did not fit the window passed.
    exceeded: Option<Exceeded>,
    /// The client's deadline passed: the statement was stopped.
    timed_out: bool,
    /// The result has no more rows.
    ended: bool,
    _meter: PhantomData<fn() -> M>,
}

/// What a cursor counted, for the ledger and for errors.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    /// Rows and bytes of the current window, with the row that did not fit.
    pub(crate) meter: Meterage,
    /// Rows taken off the result.
    pub(crate) received: u64,
    /// Rows the client library buffered.
    pub(crate) buffered: u64,
    /// Rows handed out.
    pub(crate) delivered: u64,
    /// The client's deadline passed.
    pub(crate) timed_out: bool,
}

impl<I, S, U, M> Cursor<I, S, U, M>
where
    I: Iterator<Item = QueryResult<U>>,
    S: Sql,
    M: Meter<U>,
{
    /// A cursor over `rows`; `deadline`: when the client stops reading (else the server
    /// enforces any time limit).
    pub(crate) fn new(rows: I, sql: S, spec: BudgetSpec, deadline: Option<Instant>) -> Self {
        // A buffered result (PostgreSQL's default mode, MySQL) knows its size, bounded by the
        // LIMIT.
        let buffered = rows.size_hint().0 as u64;
        Cursor {
            rows,
            sql,
            spec,
            deadline,
            window: Meterage::default(),
            kept: Meterage::default(),
            received: 0,
            buffered,
            pending: None,
            exceeded: None,
            timed_out: false,
            ended: false,
            _meter: PhantomData,
        }
    }

    /// The next row that fits the window. `None` at the end of the result, when the deadline
    /// passed, or at the first row that does not fit: [`Cursor::exceeded`] says which limit it
    /// passed, and it stays for the next window.
    #[inline]
    pub(crate) fn next_fitting(&mut self) -> Result<Option<U>> {
        if self.exceeded.is_some() {
            return Ok(None);
        }
        let row = match self.pending.take() {
            Some(row) => row,
            None => match self.pull()? {
                Some(row) => row,
                None => return Ok(None),
            },
        };
        let size = M::size_of(&row);
        match self.window.add(size, &self.spec) {
            None => {
                self.kept.rows += 1;
                self.kept.bytes = self.kept.bytes.saturating_add(size);
                Ok(Some(row))
            }
            Some(exceeded) => {
                self.exceeded = Some(exceeded);
                self.pending = Some(row);
                Ok(None)
            }
        }
    }

    /// The next row off the result, before any metering. Always inlined: it is the per-row
    /// path of [`Cursor::next_fitting`] (out of line, moving the row out costs ~50
    /// instructions a row).
    #[inline(always)]
    fn pull(&mut self) -> Result<Option<U>> {
        if self.ended || self.timed_out {
            return Ok(None);
        }
        match self.rows.next() {
            None => {
                self.ended = true;
                Ok(None)
            }
            Some(Err(e)) => Err(Error::query(self.sql.sql().unwrap_or_default(), e)),
            Some(Ok(row)) => {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.timed_out = true;
                    return Ok(None);
                }
                self.received += 1;
                Ok(Some(row))
            }
        }
    }

    /// The row after the ones handed out, as a look at what follows rather than a row of the
    /// window: the row that did not fit (the window is then no longer over its budget), else
    /// the next row off the result. Not metered, not counted as handed out.
    #[inline]
    pub(crate) fn lookahead(&mut self) -> Result<Option<U>> {
        match self.pending.take() {
            Some(row) => {
                self.exceeded = None;
                Ok(Some(row))
            }
            None => self.pull(),
        }
    }

    /// Starts a new window (the next batch of a stream, or its next row): nothing metered
    /// yet, the row that did not fit the last one first.
    pub(crate) fn new_window(&mut self) {
        self.window = Meterage::default();
        self.exceeded = None;
    }

    /// Which limit the row that ended the window passed, if one did.
    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded
    }

    /// Whether the result has no more rows.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Rows the client library buffered for this result.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Whether the outcome is an error that shows the SQL: over the budget, past the deadline,
    /// or, with `empty_is_error`, no row handed out.
    pub(crate) fn needs_sql(&self, empty_is_error: bool) -> bool {
        self.exceeded.is_some() || self.timed_out || (empty_is_error && self.kept.rows == 0)
    }

    /// The statement's SQL with placeholders.
    pub(crate) fn sql(&self) -> Result<String> {
        self.sql.sql()
    }

    /// The error for a window over its budget (`exceeded`): the SQL, and what the window saw.
    pub(crate) fn over_budget(&self, exceeded: Exceeded) -> Error {
        Error::BudgetExceeded {
            sql: self.sql.sql().unwrap_or_default(),
            budget: self.spec,
            exceeded,
            seen_rows: self.window.rows,
            seen_bytes: self.window.bytes,
        }
    }

    /// What the cursor counted so far.
    pub(crate) fn seen(&self) -> Seen {
        Seen {
            meter: self.window,
            received: self.received,
            buffered: self.buffered,
            delivered: self.kept.rows,
            timed_out: self.timed_out,
        }
    }
}

/// What a streamed walk needs of its open statement: a [`Stream`] on a database, a bare
/// [`Cursor`] over rows in memory in the walk's unit tests.
pub(crate) trait Pull<U> {
    /// [`Cursor::next_fitting`].
    fn next_fitting(&mut self) -> Result<Option<U>>;
    /// [`Cursor::new_window`].
    fn new_window(&mut self);
    /// [`Cursor::exceeded`].
    fn exceeded(&self) -> Option<Exceeded>;
    /// [`Cursor::over_budget`].
    fn over_budget(&self, exceeded: Exceeded) -> Error;
    /// [`Cursor::ended`].
    fn ended(&self) -> bool;
}

impl<I, S, U, M> Pull<U> for Cursor<I, S, U, M>
where
    I: Iterator<Item = QueryResult<U>>,
    S: Sql,
    M: Meter<U>,
{
    #[inline]
    fn next_fitting(&mut self) -> Result<Option<U>> {
        Cursor::next_fitting(self)
    }
    fn new_window(&mut self) {
        Cursor::new_window(self);
    }
    fn exceeded(&self) -> Option<Exceeded> {
        Cursor::exceeded(self)
    }
    fn over_budget(&self, exceeded: Exceeded) -> Error {
        Cursor::over_budget(self, exceeded)
    }
    fn ended(&self) -> bool {
        Cursor::ended(self)
    }
}

/// Diesel's row iterator of a statement held open across calls.
pub(crate) type RowStream<'c, U> = Box<dyn Iterator<Item = QueryResult<U>> + 'c>;

/// A statement held open across calls (a streamed walk): its cursor, and its entry in the
/// ledger and the pool's statistics, noted when it ends or is dropped part-way.
pub(crate) struct Stream<'c, U, M> {
    cursor: Cursor<RowStream<'c, U>, String, U, M>,
    tag: StatementTag,
    meters_bytes: bool,
}

impl<'c, U: 'c, M: Meter<U>> Stream<'c, U, M> {
    /// Opens `query` on `conn` in the connection's streaming mode, under `spec`'s
    /// instrumentation scope. Its SQL is rendered first: the statement moves into Diesel's
    /// cursor.
    pub(crate) fn open<C, P>(query: P, spec: BudgetSpec, conn: &'c mut C) -> Result<Self>
    where
        C: BudgetConnection,
        P: LoadQuery<'c, C, U, C::StreamMode> + QueryFragment<C::Backend> + 'c,
    {
        let sql = render::<C, _>(&query)?;
        let tag = StatementTag::next_on(conn.instrumentation());
        let _scope = BudgetScope::enter(spec);
        let rows = query
            .load_iter::<U, C::StreamMode>(conn)
            .map_err(|e| Error::query(sql.clone(), e))?;
        Ok(Stream {
            cursor: Cursor::new(Box::new(rows), sql, spec, None),
            tag,
            meters_bytes: M::METERS_BYTES,
        })
    }
}

impl<U, M: Meter<U>> Pull<U> for Stream<'_, U, M> {
    #[inline]
    fn next_fitting(&mut self) -> Result<Option<U>> {
        self.cursor.next_fitting()
    }
    fn new_window(&mut self) {
        self.cursor.new_window();
    }
    fn exceeded(&self) -> Option<Exceeded> {
        self.cursor.exceeded()
    }
    fn over_budget(&self, exceeded: Exceeded) -> Error {
        self.cursor.over_budget(exceeded)
    }
    fn ended(&self) -> bool {
        self.cursor.ended()
    }
}

impl<U, M> Drop for Stream<'_, U, M> {
    fn drop(&mut self) {
        let c = &self.cursor;
        self.tag.note(
            c.received,
            c.kept.rows,
            self.meters_bytes.then_some(c.kept.bytes),
        );
    }
}

/// How many rows a read keeps: every row that fits ([`All`]: `load`, `get_result`), the
/// first ([`One`]: `first`, without a vector), or a keyset batch and the row after it
/// ([`Lookahead`]).
pub(crate) trait Take<U> {
    /// The rows kept.
    type Rows;
    /// Reads `cursor` as far as this read goes; `limit`: the statement's `LIMIT`.
    fn take<I, S, M>(cursor: &mut Cursor<I, S, U, M>, limit: i64) -> Result<Self::Rows>
    where
        I: Iterator<Item = QueryResult<U>>,
        S: Sql,
        M: Meter<U>;
}

/// Every row that fits.
pub(crate) enum All {}

impl<U> Take<U> for All {
    type Rows = Vec<U>;

    #[inline]
    fn take<I, S, M>(cursor: &mut Cursor<I, S, U, M>, _limit: i64) -> Result<Vec<U>>
    where
        I: Iterator<Item = QueryResult<U>>,
        S: Sql,
        M: Meter<U>,
    {
        // A buffered result's size is bounded by the LIMIT: reserve it once, as Diesel's
        // `load` does through `collect`.
        let mut rows = Vec::new();
        rows.reserve_exact(usize::try_from(cursor.buffered()).unwrap_or(0));
        while let Some(row) = cursor.next_fitting()? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// The first row.
pub(crate) enum One {}

impl<U> Take<U> for One {
    type Rows = Option<U>;

    #[inline]
    fn take<I, S, M>(cursor: &mut Cursor<I, S, U, M>, _limit: i64) -> Result<Option<U>>
    where
        I: Iterator<Item = QueryResult<U>>,
        S: Sql,
        M: Meter<U>,
    {
        cursor.next_fitting()
    }
}

/// A keyset batch: the rows that fit, at most `LIMIT - 1` of them, and the row after them
/// (the one that did not fit, or the last the `LIMIT` let through), if the result had one. The
/// walk compares its key with the batch's last and drops it: the next batch reads it again.
pub(crate) enum Lookahead {}

impl<U> Take<U> for Lookahead {
    type Rows = (Vec<U>, Option<U>);

    #[inline]
    fn take<I, S, M>(cursor: &mut Cursor<I, S, U, M>, limit: i64) -> Result<(Vec<U>, Option<U>)>
    where
        I: Iterator<Item = QueryResult<U>>,
        S: Sql,
        M: Meter<U>,
    {
        let batch = usize::try_from(limit.saturating_sub(1)).unwrap_or(0);
        let mut rows = Vec::new();
        rows.reserve_exact(batch.min(usize::try_from(cursor.buffered()).unwrap_or(0)));
        while rows.len() < batch {
            match cursor.next_fitting()? {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        // No row fitted: a single row over the byte budget stays an overflow, for the error.
        let next = if rows.is_empty() {
            None
        } else {
            cursor.lookahead()?
        };
        Ok((rows, next))
    }
}

/// Runs a statement the executor keeps owning (so it can render it for an error afterwards).
pub(crate) struct ByRef<'a, P>(pub(crate) &'a P);

impl<P: Query> Query for ByRef<'_, P> {
    type SqlType = P::SqlType;
}

impl<P: QueryId> QueryId for ByRef<'_, P> {
    type QueryId = P::QueryId;
    const HAS_STATIC_QUERY_ID: bool = P::HAS_STATIC_QUERY_ID;
    const IS_WINDOW_FUNCTION: bool = P::IS_WINDOW_FUNCTION;
}

impl<P: QueryFragment<DB>, DB: diesel::backend::Backend> QueryFragment<DB> for ByRef<'_, P> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

impl<P, C> RunQueryDsl<C> for ByRef<'_, P> {}
