//! Update many rows by key: one statement per chunk, joining the table to the chunk's rows.

use std::num::NonZeroUsize;

use diesel::query_builder::{QueryId, ValuesClause};
use diesel::{Column, Insertable, Table};

use super::{insert_into, BulkInsert, BulkWrite, Checkpoint, Conflict, KeyOf, NoProgress};
use super::{OnProgress, Op, Progress, Report};
use crate::error::Result;
use crate::exec::{ConnectionOf, Executor};

/// Starts a bulk update of `table`: each row (any `Insertable<table>`: a slice, a `Vec` or an
/// iterator, never collected whole) sets the columns it holds on the row whose `key` column
/// equals its key. Rows whose key is not in the table change nothing. `key_of` reads the key
/// of a row: among rows with the same key **the last one wins**, wherever chunk boundaries
/// fall (a chunk drops the earlier ones before it is sent).
///
/// One statement per chunk, chunked by the bind limit like [`insert_into`]:
/// - PostgreSQL and SQLite (3.33+): `WITH "__rows" (k, c, ..) AS (VALUES ($1, $2), ..) UPDATE
///   t SET c = "__rows".c, .. FROM "__rows" WHERE t.k = "__rows".k`;
/// - MySQL/MariaDB: `UPDATE t JOIN (WITH __rows (k, c, ..) AS (SELECT ?, ? UNION ALL SELECT
///   ?, ? ..) SELECT * FROM __rows) AS __rows ON t.k = __rows.k SET t.c = __rows.c, ..`.
///
/// Every row must bind each column it names (derive `Insertable` with
/// `treat_none_as_default_value = false`: a `DEFAULT` cannot stand in a derived table) and set
/// the key and at least one other column, else [`Error::InvalidArgument`](crate::Error) before
/// its chunk is sent. One key column. The [`Report`]'s `affected` counts the rows matched.
/// Transaction modes, progress and resume as for [`insert_into`].
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_db, mut conn) = demo_db(100)?;
/// use diesel::prelude::*;
/// use diesel_budget::bulk;
/// use diesel_budget::demo::{items, Item};
/// use diesel_budget::prelude::*;
///
/// let renamed = (1..=100).map(|id| Item { name: format!("renamed-{id}"), ..Item::generate(id) });
/// let report = bulk::update(items::table, items::id, |i: &Item| i.id, renamed)
///     .per_chunk()
///     .execute(&mut conn)?;
/// assert_eq!((report.rows, report.affected), (100, 100));
/// let one: Item = items::table.find(7).budget(Budget::rows(1)).first(&mut conn)?;
/// assert_eq!(one.name, "renamed-7");
/// # Ok(()) }
/// ```
pub fn update<T, Col, F, I>(table: T, key: Col, key_of: F, rows: I) -> BulkUpdate<T, I::IntoIter, F>
where
    T: Table,
    Col: Column<Table = T>,
    I: IntoIterator,
{
    let _ = key;
    let mut inner = insert_into(table, rows).with_conflict(
        Conflict {
            key: Col::NAME,
            update: true,
        },
        key_of,
    );
    inner.op = Op::Update;
    BulkUpdate { inner }
}

/// A bulk update being configured; run it with [`execute`](Self::execute). Built by
/// [`update`].
#[must_use = "a bulk update does nothing until `.execute(&mut conn)`"]
#[derive(Debug)]
pub struct BulkUpdate<T, I, F, P = NoProgress> {
    inner: BulkInsert<T, I, F, P>,
}

impl<T, I, F, P> BulkUpdate<T, I, F, P> {
    /// All or nothing (the default), as [`BulkInsert::atomic`].
    pub fn atomic(self) -> Self {
        BulkUpdate {
            inner: self.inner.atomic(),
        }
    }

    /// Each chunk commits, as [`BulkInsert::per_chunk`]; a failure is
    /// [`Error::BulkInterrupted`](crate::Error::BulkInterrupted) with a [`Checkpoint`].
    pub fn per_chunk(self) -> Self {
        BulkUpdate {
            inner: self.inner.per_chunk(),
        }
    }

    /// Continues an interrupted [`per_chunk`](Self::per_chunk) update, as
    /// [`BulkInsert::resume`] (same input, same order).
    pub fn resume(self, checkpoint: Checkpoint) -> Self {
        BulkUpdate {
            inner: self.inner.resume(checkpoint),
        }
    }

    /// At most `rows` rows a chunk, as [`BulkInsert::chunk_rows`]. Default: as many as the
    /// bind limit allows.
    pub fn chunk_rows(self, rows: NonZeroUsize) -> Self {
        BulkUpdate {
            inner: self.inner.chunk_rows(rows),
        }
    }

    /// Calls `callback` after each chunk, as [`BulkInsert::on_progress`]. Default: none.
    pub fn on_progress<G: FnMut(Progress)>(self, callback: G) -> BulkUpdate<T, I, F, G> {
        BulkUpdate {
            inner: self.inner.on_progress(callback),
        }
    }
}

impl<T, I, F, P> BulkUpdate<T, I, F, P>
where
    T: Table + Copy,
    P: OnProgress,
{
    /// Updates the rows; returns what was done ([`Report::affected`]: rows matched).
    ///
    /// # Errors
    /// As [`BulkInsert::execute`], and [`Error::InvalidArgument`](crate::Error) for a row that
    /// leaves a column to its `DEFAULT` or sets no column but the key.
    pub fn execute<X, R, V>(self, conn: &mut X) -> Result<Report>
    where
        X: Executor,
        I: Iterator<Item = R>,
        R: Insertable<T, Values = ValuesClause<V, T>>,
        V: QueryId,
        F: KeyOf<R>,
        ConnectionOf<X>: BulkWrite<T, V>,
    {
        self.inner.execute(conn)
    }
}
