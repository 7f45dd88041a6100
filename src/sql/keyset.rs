//! Keyset predicates as Diesel AST nodes: a key ([`Keyset`]: a column or a [`Composite`]) and
//! "strictly after this key value" ([`After`]), with bound values, never formatted SQL. Walks
//! (`crate::batch`) use them; they are re-exported there.

use std::fmt::Debug;

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{is_nullable::NotNull, Bool, HasSqlType, SingleValue, SqlType};
use diesel::{Column, QueryResult};

/// A unique, non-null key to walk a query by: a column (`items::id`), or a [`Composite`] of
/// columns. Implemented for every non-nullable Diesel column; you do not implement it.
pub trait Keyset: Copy {
    /// What `ORDER BY` gets: the column, or the tuple of columns.
    type Order: Expression + Copy;
    /// The descending ordering (for the check at the end of a keyset walk).
    #[doc(hidden)]
    type Desc: Expression + Copy;
    /// The ordering expression.
    fn order(&self) -> Self::Order;
    /// The descending ordering expression.
    #[doc(hidden)]
    fn order_desc(&self) -> Self::Desc;
    /// The key's column names (Diesel's `Column::NAME`), for errors.
    fn columns(&self) -> Vec<&'static str>;
}

/// Renders `key > value` (and `key <= value`) for a key and its Rust value `V` on backend `DB`.
pub trait KeysetAfter<V, DB: Backend>: Keyset {
    /// Pushes the SQL of "strictly after `value` in key order", or, with `at_or_before`, of
    /// "at or before `value`".
    #[doc(hidden)]
    fn walk_after<'b>(
        &'b self,
        value: &'b V,
        at_or_before: bool,
        out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>;
}

impl<C> Keyset for C
where
    C: Column + Expression + Copy,
    C::SqlType: SqlType<IsNull = NotNull> + SingleValue,
{
    type Order = C;
    type Desc = diesel::dsl::Desc<C>;
    fn order(&self) -> C {
        *self
    }
    fn order_desc(&self) -> Self::Desc {
        diesel::ExpressionMethods::desc(*self)
    }
    fn columns(&self) -> Vec<&'static str> {
        vec![C::NAME]
    }
}

impl<C, V, DB> KeysetAfter<V, DB> for C
where
    DB: Backend + HasSqlType<C::SqlType>,
    C: Column + Expression + Copy + QueryFragment<DB>,
    C::SqlType: SqlType<IsNull = NotNull> + SingleValue,
    V: ToSql<C::SqlType, DB>,
{
    fn walk_after<'b>(
        &'b self,
        value: &'b V,
        at_or_before: bool,
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        self.walk_ast(out.reborrow())?;
        out.push_sql(if at_or_before { " <= " } else { " > " });
        out.push_bind_param::<C::SqlType, V>(value)
    }
}

/// A key of two columns, compared as a tuple: `(a, b) > (x, y)`, written as
/// `a >= x AND (a > x OR b > y)` so every backend uses an index on `(a, b)`.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
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
    A::SqlType: SqlType<IsNull = NotNull> + SingleValue,
    B::SqlType: SqlType<IsNull = NotNull> + SingleValue,
    (A, B): Expression,
    (diesel::dsl::Desc<A>, diesel::dsl::Desc<B>): Expression,
{
    type Order = (A, B);
    type Desc = (diesel::dsl::Desc<A>, diesel::dsl::Desc<B>);
    fn order(&self) -> (A, B) {
        (self.0, self.1)
    }
    fn order_desc(&self) -> Self::Desc {
        (
            diesel::ExpressionMethods::desc(self.0),
            diesel::ExpressionMethods::desc(self.1),
        )
    }
    fn columns(&self) -> Vec<&'static str> {
        vec![A::NAME, B::NAME]
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
        at_or_before: bool,
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        // After: `a >= x AND (a > x OR b > y)`; at or before: `a <= x AND (a < x OR b <= y)`.
        let (wide, strict, last) = if at_or_before {
            (" <= ", " < ", " <= ")
        } else {
            (" >= ", " > ", " > ")
        };
        out.push_sql("(");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(wide);
        out.push_bind_param::<A::SqlType, VA>(&value.0)?;
        out.push_sql(" AND (");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(strict);
        out.push_bind_param::<A::SqlType, VA>(&value.0)?;
        out.push_sql(" OR ");
        self.1.walk_ast(out.reborrow())?;
        out.push_sql(last);
        out.push_bind_param::<B::SqlType, VB>(&value.1)?;
        out.push_sql("))");
        Ok(())
    }
}

/// The keyset predicate: `key > value`, or `1 = 1` before the first batch (or `key <= value`
/// for the check at the end of a walk).
#[derive(Debug, Clone)]
pub struct After<K, V> {
    pub(crate) key: K,
    pub(crate) value: Option<V>,
    pub(crate) at_or_before: bool,
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
            Some(value) => self
                .key
                .walk_after(value, self.at_or_before, out.reborrow()),
            None => {
                out.push_sql("1 = 1");
                Ok(())
            }
        }
    }
}
