//! Batched loading: any number of rows, with memory bounded by one batch.
//!
//! [`Budgeted::batches_by`] walks a query in key order. In [`BatchMode::Keyset`] (the default)
//! each batch is its own query, `WHERE key > <last key> ORDER BY key LIMIT <batch>`, so nothing
//! stays open between batches and the server does the skipping through the key's index (OFFSET
//! would rescan). In [`BatchMode::Stream`] the whole walk is one query whose rows arrive one at
//! a time (PostgreSQL's row-by-row mode, SQLite's cursor); MySQL's client buffers whole
//! results, so there `Stream` runs keyset batches.
//!
//! The key must be unique and not null: a primary key, or a tuple of columns that is
//! ([`Composite`]). A failure part-way is [`Error::Interrupted`], which carries the last key
//! delivered; [`Batches::after`] starts a new walk right after it.

use std::fmt::{self, Debug};
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AsQuery, AstPass, QueryFragment, QueryId};
use diesel::query_dsl::methods::{FilterDsl, OrderDsl};
use diesel::query_dsl::LoadQuery;
use diesel::serialize::ToSql;
use diesel::sql_types::{is_nullable::NotNull, Bool, HasSqlType, SqlType};
use diesel::{Column, QueryResult, RunQueryDsl};

use crate::backend::{has_top_level_limit, has_top_level_offset, BudgetConnection};
use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage, Metering, Overflow};
use crate::error::{Error, Result};
use crate::exec::{load_metered, ConnectionOf, Executor};
use crate::instrument::{BudgetScope, StatementTag};
use crate::query::{render, BudgetQuery, Budgeted};

/// How [`Budgeted::batches_by`] reads the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchMode {
    /// One query per batch, `WHERE key > last ORDER BY key LIMIT batch`. Portable, holds nothing
    /// open between batches, and can be resumed from any key. The default.
    #[default]
    Keyset,
    /// One query for the whole walk, rows handed over one at a time: PostgreSQL row-by-row mode,
    /// SQLite's cursor. Fewer round trips; the connection is busy until the walk ends, and on
    /// PostgreSQL stopping early makes libpq read (and discard) the rest of the result. On MySQL
    /// this runs keyset batches, as MySQL's client buffers whole results.
    Stream,
}

/// A unique, non-null key to walk a query by: a column (`items::id`), or a [`Composite`] of
/// columns. Implemented for every non-nullable Diesel column; you do not implement it.
pub trait Keyset: Copy {
    /// What `ORDER BY` gets: the column, or the tuple of columns.
    type Order: Expression + Copy;
    /// The ordering expression.
    fn order(&self) -> Self::Order;
}

/// Renders `key > value` for a key and its Rust value `V` on backend `DB`.
pub trait KeysetAfter<V, DB: Backend>: Keyset {
    /// Pushes the SQL of "strictly after `value` in key order".
    #[doc(hidden)]
    fn walk_after<'b>(&'b self, value: &'b V, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;
}

impl<C> Keyset for C
where
    C: Column + Expression + Copy,
    C::SqlType: SqlType<IsNull = NotNull>,
{
    type Order = C;
    fn order(&self) -> C {
        *self
    }
}

impl<C, V, DB> KeysetAfter<V, DB> for C
where
    DB: Backend + HasSqlType<C::SqlType>,
    C: Column + Expression + Copy + QueryFragment<DB>,
    C::SqlType: SqlType<IsNull = NotNull>,
    V: ToSql<C::SqlType, DB>,
{
    fn walk_after<'b>(&'b self, value: &'b V, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.walk_ast(out.reborrow())?;
        out.push_sql(" > ");
        out.push_bind_param::<C::SqlType, V>(value)
    }
}

/// A key of two columns, compared as a tuple: `(a, b) > (x, y)`, written as
/// `a >= x AND (a > x OR b > y)` so every backend uses an index on `(a, b)`.
///
/// # Example
/// ```
/// # include!("../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(100)?;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::{items, Item};
///
/// let mut last = None;
/// for batch in items::table.budget(Budget::rows(7)).batches_by(
///     Composite(items::category, items::id),
///     |i: &Item| (i.category, i.id),
///     &mut conn,
/// ) {
///     for item in batch? {
///         assert!(last < Some((item.category, item.id)));
///         last = Some((item.category, item.id));
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Composite<A, B>(pub A, pub B);

impl<A, B> Keyset for Composite<A, B>
where
    A: Column + Expression + Copy,
    B: Column + Expression + Copy,
    A::SqlType: SqlType<IsNull = NotNull>,
    B::SqlType: SqlType<IsNull = NotNull>,
    (A, B): Expression,
{
    type Order = (A, B);
    fn order(&self) -> (A, B) {
        (self.0, self.1)
    }
}

impl<A, B, VA, VB, DB> KeysetAfter<(VA, VB), DB> for Composite<A, B>
where
    Self: Keyset,
    DB: Backend + HasSqlType<A::SqlType> + HasSqlType<B::SqlType>,
    A: Column + Expression + Copy + QueryFragment<DB>,
    B: Column + Expression + Copy + QueryFragment<DB>,
    VA: ToSql<A::SqlType, DB>,
    VB: ToSql<B::SqlType, DB>,
{
    fn walk_after<'b>(
        &'b self,
        value: &'b (VA, VB),
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        out.push_sql("(");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(" >= ");
        out.push_bind_param::<A::SqlType, VA>(&value.0)?;
        out.push_sql(" AND (");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(" > ");
        out.push_bind_param::<A::SqlType, VA>(&value.0)?;
        out.push_sql(" OR ");
        self.1.walk_ast(out.reborrow())?;
        out.push_sql(" > ");
        out.push_bind_param::<B::SqlType, VB>(&value.1)?;
        out.push_sql("))");
        Ok(())
    }
}

/// The keyset predicate: `key > value`, or `1 = 1` before the first batch.
#[derive(Debug, Clone)]
pub struct After<K, V> {
    key: K,
    value: Option<V>,
}

impl<K, V> Expression for After<K, V> {
    type SqlType = Bool;
}

impl<K: Keyset, V, QS> AppearsOnTable<QS> for After<K, V> where K::Order: AppearsOnTable<QS> {}

impl<K: Keyset, V, GB> ValidGrouping<GB> for After<K, V>
where
    K::Order: ValidGrouping<GB>,
{
    type IsAggregate = <K::Order as ValidGrouping<GB>>::IsAggregate;
}

impl<K, V> QueryId for After<K, V> {
    type QueryId = ();
    // The SQL differs with and without a value: let Diesel key its statement cache by SQL.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<K, V, DB> QueryFragment<DB> for After<K, V>
where
    DB: Backend,
    K: KeysetAfter<V, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        match &self.value {
            Some(value) => self.key.walk_after(value, out.reborrow()),
            None => {
                out.push_sql("1 = 1");
                Ok(())
            }
        }
    }
}

/// The query of one batch (or of the whole stream).
pub type BatchQuery<Q, K, V> = diesel::dsl::Order<
    diesel::dsl::Filter<<Q as AsQuery>::Query, After<K, V>>,
    <K as Keyset>::Order,
>;

/// A query [`Budgeted::batches_by`] can walk on connection `C` by key `K` (whose Rust value is
/// `V`), loading rows of type `U`: any Diesel select that can take the keyset predicate and
/// an `ORDER BY` on the key, and that Diesel could load into `U`. You never implement it; when a
/// walk does not compile, the cause is usually the row type or a key from another table.
pub trait Walk<'c, C: BudgetConnection, K, V, U>: Sized {
    /// The query of one batch (or of the whole stream).
    type Batch: BudgetQuery<'c, C, U>
        + LoadQuery<'c, C, U, C::StreamMode>
        + QueryFragment<C::Backend>
        + 'c;

    /// This query, filtered to rows after `after` in key order and ordered by the key.
    #[doc(hidden)]
    fn batch(&self, key: K, after: Option<V>) -> Self::Batch;

    /// The SQL of the query as given (to find a LIMIT or OFFSET of its own).
    #[doc(hidden)]
    fn own_sql(&self) -> Result<String>;
}

impl<'c, C, Q, K, V, U> Walk<'c, C, K, V, U> for Q
where
    C: BudgetConnection,
    Q: AsQuery + Clone,
    Q::Query: FilterDsl<After<K, V>> + QueryFragment<C::Backend>,
    diesel::dsl::Filter<Q::Query, After<K, V>>: OrderDsl<K::Order>,
    BatchQuery<Q, K, V>:
        BudgetQuery<'c, C, U> + LoadQuery<'c, C, U, C::StreamMode> + QueryFragment<C::Backend> + 'c,
    K: KeysetAfter<V, C::Backend>,
{
    type Batch = BatchQuery<Q, K, V>;

    fn batch(&self, key: K, after: Option<V>) -> Self::Batch {
        self.clone()
            .as_query()
            .filter(After { key, value: after })
            .order(key.order())
    }

    fn own_sql(&self) -> Result<String> {
        render::<C, _>(&self.clone().as_query())
    }
}

type RowStream<'c, U> = Box<dyn Iterator<Item = QueryResult<U>> + 'c>;

/// An open single-query stream and what it has delivered. Reports its rows to the ledger and
/// the pool's statistics when it ends (or is dropped part-way).
struct Streamed<'c, U> {
    rows: RowStream<'c, U>,
    sql: String,
    meter: Meterage,
    meters_bytes: bool,
    /// Rows taken off the stream (delivered or not).
    received: u64,
    /// The streamed statement, in the ledger and the pool's statistics.
    tag: StatementTag,
}

impl<U> Drop for Streamed<'_, U> {
    fn drop(&mut self) {
        self.tag.note(
            self.received,
            self.meter.rows,
            self.meters_bytes.then_some(self.meter.bytes),
        );
    }
}

/// Iterator over the batches of a query: `Result<Vec<U>>`, each at most the budget's rows (and
/// bytes). Built by [`Budgeted::batches_by`]. Ends after the first error.
#[must_use = "batches are loaded only when iterated"]
pub struct Batches<'c, C, Q, K, V, U, F, M> {
    conn: Option<&'c mut C>,
    stream: Option<Streamed<'c, U>>,
    /// A streamed row that did not fit the previous batch's byte budget.
    pending: Option<U>,
    query: Q,
    key: K,
    key_of: F,
    last: Option<V>,
    spec: BudgetSpec,
    mode: BatchMode,
    rows_done: u64,
    started: bool,
    done: bool,
    deferred: Option<Error>,
    _meter: PhantomData<fn() -> M>,
}

impl<C, Q, K: Debug, V: Debug, U, F, M> Debug for Batches<'_, C, Q, K, V, U, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batches")
            .field("key", &self.key)
            .field("after", &self.last)
            .field("budget", &self.spec)
            .field("mode", &self.mode)
            .field("rows_done", &self.rows_done)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// Walks the whole result in batches of at most the budget's rows (and bytes), in order of
    /// `key`, which must be unique and not null. `key_of` reads the key of a loaded row; it is
    /// where the next batch starts. Any `ORDER BY` on the query is replaced by the key; a query
    /// with its own `LIMIT` or `OFFSET` is rejected ([`Error::InvalidArgument`]), as batches
    /// cover all rows (an offset would apply to every batch).
    ///
    /// Memory is bounded by one batch whatever the size of the table. The overflow policy does
    /// not apply: batching *is* the answer to "more rows than the budget". A single row larger
    /// than a byte budget is [`Error::BudgetExceeded`] (inside [`Error::Interrupted`]).
    ///
    /// # Example
    /// ```
    /// # include!("../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(1_000)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::batch::BatchMode;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let mut total = 0;
    /// let mut batches = items::table
    ///     .filter(items::category.eq(2))
    ///     .budget(Budget::rows(30))
    ///     .batches_by(items::id, |i: &Item| i.id, &mut conn)
    ///     .mode(BatchMode::Stream);
    /// for batch in &mut batches {
    ///     let batch = batch?;
    ///     assert!(batch.len() <= 30);
    ///     total += batch.len();
    /// }
    /// assert_eq!(total, 100);
    /// assert_eq!(batches.resume_key(), Some(&992));
    /// # Ok(()) }
    /// ```
    pub fn batches_by<'c, K, V, U, F, X>(
        self,
        key: K,
        key_of: F,
        conn: &'c mut X,
    ) -> Batches<'c, ConnectionOf<X>, Q, K, V, U, F, M>
    where
        X: Executor,
        K: Keyset,
        F: FnMut(&U) -> V,
    {
        Batches {
            conn: Some(conn.connection(crate::exec::sealed::TOKEN)),
            stream: None,
            pending: None,
            query: self.query,
            key,
            key_of,
            last: None,
            spec: self.budget.spec(),
            mode: BatchMode::Keyset,
            rows_done: 0,
            started: false,
            done: false,
            deferred: self.budget.validate().err(),
            _meter: PhantomData,
        }
    }
}

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// Walks the whole result one row at a time, in order of `key`: the cheapest bounded way
    /// to read everything. Short for
    /// `batches_by(key, key_of, conn).mode(BatchMode::Stream).rows()`.
    ///
    /// On PostgreSQL (row-by-row mode) and SQLite (the cursor) this is one query and the client
    /// holds one row at a time; on MySQL, whose client buffers whole results, rows come out of
    /// keyset batches of the budget's size. A byte budget bounds each row (each batch on
    /// MySQL). Stopping early on PostgreSQL makes libpq read and discard the rest of the
    /// result; walk with [`BatchMode::Keyset`] if you often stop early.
    ///
    /// # Example
    /// ```
    /// # include!("../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(1_000)?;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let mut rows = items::table
    ///     .budget(Budget::rows(100))
    ///     .stream_by(items::id, |i: &Item| i.id, &mut conn);
    /// let mut sum = 0;
    /// for item in &mut rows {
    ///     sum += item?.id;
    /// }
    /// assert_eq!(sum, 500_500);
    /// assert_eq!(rows.rows_done(), 1_000);
    /// # Ok(()) }
    /// ```
    pub fn stream_by<'c, K, V, U, F, X>(
        self,
        key: K,
        key_of: F,
        conn: &'c mut X,
    ) -> RowsOf<'c, ConnectionOf<X>, Q, K, V, U, F, M>
    where
        X: Executor,
        K: Keyset,
        F: FnMut(&U) -> V,
    {
        self.batches_by(key, key_of, conn)
            .mode(BatchMode::Stream)
            .rows()
    }
}

impl<C, Q, K, V, U, F, M> Batches<'_, C, Q, K, V, U, F, M> {
    /// Reads the rows with `mode`. Default: [`BatchMode::Keyset`]. Call before iterating.
    pub fn mode(mut self, mode: BatchMode) -> Self {
        self.mode = mode;
        self
    }

    /// Starts right after `key` (exclusive), e.g. the [`Batches::resume_key`] of a walk that
    /// failed. Default: from the first row. Call before iterating.
    pub fn after(mut self, key: V) -> Self {
        self.last = Some(key);
        self
    }

    /// The key of the last row delivered: where a new walk resumes ([`Batches::after`]).
    pub fn resume_key(&self) -> Option<&V> {
        self.last.as_ref()
    }

    /// Rows delivered so far.
    pub fn rows_done(&self) -> u64 {
        self.rows_done
    }
}

impl<'c, C, Q, K, V, U, F, M> Iterator for Batches<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug,
    F: FnMut(&U) -> V,
    M: Meter<U>,
    U: 'static,
{
    type Item = Result<Vec<U>>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.deferred.take() {
            return Some(Err(self.fail(e)));
        }
        if self.done {
            return None;
        }
        let result = self.start().and_then(|()| {
            if self.streams() {
                self.next_streamed()
            } else {
                self.next_keyset()
            }
        });
        match result {
            Ok(Some(rows)) => {
                self.rows_done += rows.len() as u64;
                if let Some(row) = rows.last() {
                    self.last = Some((self.key_of)(row));
                }
                Some(Ok(rows))
            }
            Ok(None) => {
                self.finish();
                None
            }
            Err(e) => Some(Err(self.fail(e))),
        }
    }
}

impl<C: BudgetConnection, Q, K, V: Debug, U, F, M> Batches<'_, C, Q, K, V, U, F, M> {
    /// Whether rows come from one streamed query rather than keyset batches.
    fn streams(&self) -> bool {
        self.mode == BatchMode::Stream && C::STREAMS
    }

    fn finish(&mut self) {
        self.done = true;
        self.stream = None;
    }

    /// Ends the walk on `e`; a failure after the start says where to resume.
    fn fail(&mut self, e: Error) -> Error {
        self.finish();
        match e {
            e @ (Error::InvalidArgument { .. } | Error::InvalidBudget { .. }) => e,
            e => Error::Interrupted {
                rows_done: self.rows_done,
                resume_after: self.last.as_ref().map(|v| format!("{v:?}")),
                source: Box::new(e),
            },
        }
    }
}

impl<'c, C, Q, K, V, U, F, M> Batches<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug,
    M: Meter<U>,
    U: 'static,
{
    /// Once, before the first batch: a query with its own LIMIT cannot be walked.
    fn start(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        let sql = self.query.own_sql()?;
        if has_top_level_limit(&sql) || has_top_level_offset(&sql) {
            return Err(Error::InvalidArgument {
                name: "query",
                reason: format!(
                    "batches walk the whole result, but the query has a LIMIT or OFFSET of \
                     its own; drop it (start a walk part-way with `after`) or load with a \
                     budget instead: {sql}"
                ),
            });
        }
        Ok(())
    }

    fn batch_query(&self) -> Q::Batch {
        self.query.batch(self.key, self.last.clone())
    }

    fn next_keyset(&mut self) -> Result<Option<Vec<U>>> {
        let query = self.batch_query();
        let Some(conn) = self.conn.as_deref_mut() else {
            return Ok(None);
        };
        let limit = i64::try_from(self.spec.rows).unwrap_or(i64::MAX);
        let loaded = load_metered::<C, U, _, M>(query, self.spec, limit, conn)?;
        match loaded.exceeded {
            Some(e) if loaded.rows.is_empty() => Err(loaded.into_error(self.spec, e)),
            // Cut short by bytes: the row that did not fit is read again by the next batch.
            Some(_) => Ok(Some(loaded.rows)),
            None if loaded.rows.is_empty() => Ok(None),
            None => {
                // A short batch is the last one: no need to ask again.
                if (loaded.rows.len() as u64) < self.spec.rows {
                    self.conn = None;
                }
                Ok(Some(loaded.rows))
            }
        }
    }

    /// The next row of the single streamed query, opening it on first use; `None` at its end.
    fn pull(&mut self) -> Result<Option<U>> {
        if let Some(row) = self.pending.take() {
            return Ok(Some(row));
        }
        if self.stream.is_none() {
            let Some(conn) = self.conn.take() else {
                return Ok(None);
            };
            let query = self.batch_query();
            let sql = render::<C, _>(&query)?;
            let tag = StatementTag::next_on(conn.instrumentation());
            let _scope = BudgetScope::enter(self.spec);
            let rows = query
                .load_iter::<U, C::StreamMode>(conn)
                .map_err(|e| Error::query(sql.clone(), e))?;
            self.stream = Some(Streamed {
                rows: Box::new(rows),
                sql,
                meter: Meterage::default(),
                meters_bytes: M::METERS_BYTES,
                received: 0,
                tag,
            });
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.rows.next() {
            None => {
                self.stream = None;
                Ok(None)
            }
            Some(Err(e)) => Err(Error::query(stream.sql.clone(), e)),
            Some(Ok(row)) => {
                stream.received += 1;
                Ok(Some(row))
            }
        }
    }

    /// Counts a streamed row as delivered.
    fn delivered(&mut self, size: u64) {
        if let Some(stream) = self.stream.as_mut() {
            stream.meter.rows += 1;
            stream.meter.bytes = stream.meter.bytes.saturating_add(size);
        }
    }

    /// The error for a single row larger than the byte budget.
    fn row_too_large(&self, exceeded: Exceeded, size: u64) -> Error {
        Error::BudgetExceeded {
            sql: self
                .stream
                .as_ref()
                .map(|s| s.sql.clone())
                .unwrap_or_default(),
            budget: self.spec,
            exceeded,
            seen_rows: 1,
            seen_bytes: size,
        }
    }

    fn next_streamed(&mut self) -> Result<Option<Vec<U>>> {
        let mut rows = Vec::new();
        let mut batch = Meterage::default();
        while batch.rows < self.spec.rows {
            let Some(row) = self.pull()? else {
                break;
            };
            let size = M::size_of(&row);
            match batch.add(size, &self.spec) {
                None => {
                    self.delivered(size);
                    rows.push(row);
                }
                Some(exceeded) if rows.is_empty() => {
                    return Err(self.row_too_large(exceeded, size));
                }
                Some(_) => {
                    self.pending = Some(row);
                    break;
                }
            }
        }
        Ok((!rows.is_empty()).then_some(rows))
    }

    /// One row of the walk: straight from the stream, or from the current keyset batch.
    fn next_row(&mut self, buffer: &mut std::vec::IntoIter<U>) -> Result<Option<U>>
    where
        F: FnMut(&U) -> V,
    {
        if let Some(row) = buffer.next() {
            return Ok(Some(row));
        }
        self.start()?;
        if self.streams() {
            let Some(row) = self.pull()? else {
                return Ok(None);
            };
            let size = M::size_of(&row);
            if self.spec.bytes.is_some_and(|b| size > b) {
                return Err(self.row_too_large(Exceeded::Bytes, size));
            }
            self.delivered(size);
            self.rows_done += 1;
            self.last = Some((self.key_of)(&row));
            return Ok(Some(row));
        }
        let Some(rows) = self.next_keyset()? else {
            return Ok(None);
        };
        self.rows_done += rows.len() as u64;
        if let Some(row) = rows.last() {
            self.last = Some((self.key_of)(row));
        }
        *buffer = rows.into_iter();
        Ok(buffer.next())
    }
}

impl<'c, C, Q, K, V, U, F, M> Batches<'c, C, Q, K, V, U, F, M> {
    /// The same walk, one row at a time: `Result<U>`.
    ///
    /// In [`BatchMode::Stream`] on PostgreSQL and SQLite each row comes straight off the
    /// streamed query, with no batch vector in between, so the client holds one row (plus
    /// libpq's buffer) whatever the budget; a byte budget then bounds each row. Elsewhere rows
    /// are handed out of keyset batches of the budget's size. [`Budgeted::stream_by`] is the
    /// short form.
    pub fn rows(self) -> RowsOf<'c, C, Q, K, V, U, F, M> {
        RowsOf {
            batches: self,
            buffer: Vec::new().into_iter(),
        }
    }
}

/// The rows of a walk one at a time; built by [`Batches::rows`] or [`Budgeted::stream_by`].
/// Ends after the first error, which is [`Error::Interrupted`] once rows were delivered.
#[must_use = "rows are loaded only when iterated"]
pub struct RowsOf<'c, C, Q, K, V, U, F, M> {
    batches: Batches<'c, C, Q, K, V, U, F, M>,
    buffer: std::vec::IntoIter<U>,
}

impl<C, Q, K: Debug, V: Debug, U, F, M> Debug for RowsOf<'_, C, Q, K, V, U, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowsOf")
            .field("batches", &self.batches)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<C, Q, K, V, U, F, M> RowsOf<'_, C, Q, K, V, U, F, M> {
    /// The key of the last row delivered: where a new walk resumes ([`Batches::after`]).
    ///
    /// Exact after an error (rows are fetched only once the previous ones were handed out).
    /// While iterating over keyset batches it is the last key of the current batch.
    pub fn resume_key(&self) -> Option<&V> {
        self.batches.resume_key()
    }

    /// Rows delivered so far.
    pub fn rows_done(&self) -> u64 {
        self.batches.rows_done() - self.buffer.len() as u64
    }
}

impl<'c, C, Q, K, V, U, F, M> Iterator for RowsOf<'c, C, Q, K, V, U, F, M>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    V: Clone + Debug,
    F: FnMut(&U) -> V,
    M: Meter<U>,
    U: 'static,
{
    type Item = Result<U>;

    fn next(&mut self) -> Option<Result<U>> {
        let batches = &mut self.batches;
        if let Some(e) = batches.deferred.take() {
            return Some(Err(batches.fail(e)));
        }
        if batches.done && self.buffer.len() == 0 {
            return None;
        }
        match batches.next_row(&mut self.buffer) {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                batches.finish();
                None
            }
            Err(e) => Some(Err(batches.fail(e))),
        }
    }
}
