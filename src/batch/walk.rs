//! Which queries a walk can run: [`Walk`] derives each batch's query (keyset predicate, key
//! order) from the query as given, or from a closure that builds it per batch ([`PerBatch`],
//! for boxed queries).

use std::fmt::{self, Debug};

use diesel::query_builder::{AsQuery, QueryFragment};
use diesel::query_dsl::methods::{FilterDsl, OrderDsl};
use diesel::query_dsl::LoadQuery;

use crate::backend::BudgetConnection;
use crate::budget::Budget;
use crate::error::Result;
use crate::query::{render, BudgetQuery, Budgeted};
use crate::sql::keyset::{After, Keyset, KeysetAfter};

/// The query of one batch (or of the whole stream).
pub type BatchQuery<Q, K, V> = diesel::dsl::Order<
    diesel::dsl::Filter<<Q as AsQuery>::Query, After<K, V>>,
    <K as Keyset>::Order,
>;

/// The check at the end of a keyset walk: rows at or before a key, last first.
#[doc(hidden)]
pub type ProbeQuery<Q, K, V> = diesel::dsl::Order<
    diesel::dsl::Filter<<Q as AsQuery>::Query, After<K, V>>,
    <K as Keyset>::Desc,
>;

/// A query [`Budgeted::batches_by`] can walk on connection `C` by key `K` (whose Rust value is
/// `V`), loading rows of type `U`: any Diesel select that can take the keyset predicate and
/// an `ORDER BY` on the key, and that Diesel could load into `U` (or a [`PerBatch`] closure
/// building one). You never implement it; when a walk does not compile, the cause is usually
/// the row type, a key from another table, or a query that is not `Clone` (walk it with
/// [`Budget::walk`]).
pub trait Walk<'c, C: BudgetConnection, K, V, U>: Sized {
    /// The query of one batch (or of the whole stream).
    type Batch: BudgetQuery<'c, C, U>
        + LoadQuery<'c, C, U, C::StreamMode>
        + QueryFragment<C::Backend>
        + 'c;

    /// The check at the end of a keyset walk: rows at or before a key, last first.
    #[doc(hidden)]
    type Probe: BudgetQuery<'c, C, U> + 'c;

    /// This query, filtered to rows after `after` in key order and ordered by the key.
    #[doc(hidden)]
    fn batch(&self, key: K, after: Option<V>) -> Self::Batch;

    /// This query, filtered to rows at or before `at`, in descending key order.
    #[doc(hidden)]
    fn probe(&self, key: K, at: V) -> Self::Probe;

    /// The SQL of the query as given (to find a LIMIT or OFFSET of its own).
    #[doc(hidden)]
    fn own_sql(&self) -> Result<String>;
}

/// The batch query and the end probe of query `$query` (an expression of type `Q`).
macro_rules! walk_queries {
    ($query:expr) => {
        fn batch(&self, key: K, after: Option<V>) -> Self::Batch {
            let query: Q = $query(self);
            query
                .as_query()
                .filter(After {
                    key,
                    value: after,
                    at_or_before: false,
                })
                .order(key.order())
        }

        fn probe(&self, key: K, at: V) -> Self::Probe {
            let query: Q = $query(self);
            query
                .as_query()
                .filter(After {
                    key,
                    value: Some(at),
                    at_or_before: true,
                })
                .order(key.order_desc())
        }

        fn own_sql(&self) -> Result<String> {
            let query: Q = $query(self);
            render::<C, _>(&query.as_query())
        }
    };
}

impl<'c, C, Q, K, V, U> Walk<'c, C, K, V, U> for Q
where
    C: BudgetConnection,
    Q: AsQuery + Clone,
    Q::Query: FilterDsl<After<K, V>> + QueryFragment<C::Backend>,
    diesel::dsl::Filter<Q::Query, After<K, V>>: OrderDsl<K::Order> + OrderDsl<K::Desc>,
    BatchQuery<Q, K, V>:
        BudgetQuery<'c, C, U> + LoadQuery<'c, C, U, C::StreamMode> + QueryFragment<C::Backend> + 'c,
    ProbeQuery<Q, K, V>: BudgetQuery<'c, C, U> + 'c,
    K: KeysetAfter<V, C::Backend>,
{
    type Batch = BatchQuery<Q, K, V>;
    type Probe = ProbeQuery<Q, K, V>;
    walk_queries!(|q: &Q| q.clone());
}

/// A query built anew for each statement of a walk, by a closure: how queries that are not
/// `Clone` (boxed queries, built from run-time filters with `into_boxed()`) are walked. Built by
/// [`Budget::walk`].
#[derive(Clone, Copy)]
pub struct PerBatch<F>(F);

impl<F> Debug for PerBatch<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PerBatch(..)")
    }
}

impl<'c, C, F, Q, K, V, U> Walk<'c, C, K, V, U> for PerBatch<F>
where
    C: BudgetConnection,
    F: Fn() -> Q,
    Q: AsQuery,
    Q::Query: FilterDsl<After<K, V>> + QueryFragment<C::Backend>,
    diesel::dsl::Filter<Q::Query, After<K, V>>: OrderDsl<K::Order> + OrderDsl<K::Desc>,
    BatchQuery<Q, K, V>:
        BudgetQuery<'c, C, U> + LoadQuery<'c, C, U, C::StreamMode> + QueryFragment<C::Backend> + 'c,
    ProbeQuery<Q, K, V>: BudgetQuery<'c, C, U> + 'c,
    K: KeysetAfter<V, C::Backend>,
{
    type Batch = BatchQuery<Q, K, V>;
    type Probe = ProbeQuery<Q, K, V>;
    walk_queries!(|w: &PerBatch<F>| (w.0)());
}

impl<M, O> Budget<M, O> {
    /// A walk over the query `build` returns, called once per statement: the way to walk a
    /// query that is not `Clone`, such as a boxed query whose filters are chosen at run time.
    /// Then [`Budgeted::batches_by`] or [`Budgeted::stream_by`] as usual (the result is not
    /// loadable otherwise). `build` must return the same query each time.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(100)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let category: Option<i32> = Some(3); // from a request, say
    /// let query = || {
    ///     let mut q = items::table.into_boxed::<DbBackend>();
    ///     if let Some(c) = category {
    ///         q = q.filter(items::category.eq(c));
    ///     }
    ///     q
    /// };
    /// let mut ids = Vec::new();
    /// for batch in Budget::rows(4)
    ///     .walk(query)
    ///     .batches_by(items::id, |i: &Item| i.id, &mut conn)
    /// {
    ///     ids.extend(batch?.iter().map(|i| i.id));
    /// }
    /// assert_eq!(ids, (0..10).map(|n| 3 + 10 * n).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    pub fn walk<F, Q>(self, build: F) -> Budgeted<PerBatch<F>, M, O>
    where
        F: Fn() -> Q,
    {
        Budgeted {
            query: PerBatch(build),
            budget: self,
        }
    }
}
