//! Page keys: which columns a page is ordered by, each ascending or descending, nullable ones
//! with an explicit NULLS FIRST / LAST rule; and the two query nodes built from a key, the seek
//! predicate ("strictly after this key value in page order") and the `ORDER BY`.

use std::cmp::Ordering;
use std::fmt::Debug;

use diesel::backend::Backend;
use diesel::expression::{AppearsOnTable, Expression, ValidGrouping};
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{
    is_nullable::{IsNullable, NotNull},
    Bool, HasSqlType, SingleValue, SqlType,
};
use diesel::{Column, QueryResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a backend's SQL can say for pages. Sealed: implemented for SQLite, PostgreSQL and
/// MySQL/MariaDB in `src/backend/<db>/page.rs`.
pub trait PageBackend: Backend + super::sealed::Sealed {
    /// Whether the planner turns a row-value comparison `(a, b) > (x, y)` into an index range
    /// (PostgreSQL and SQLite do; MariaDB does not), so it is used where every column of the
    /// key sorts the same way and none is nullable.
    const ROW_VALUES: bool;
    /// Whether `ORDER BY .. NULLS FIRST | LAST` is SQL the backend accepts; without it the
    /// rule is emulated as `col IS NULL DESC, col` (MySQL/MariaDB).
    const NULLS_ORDER_SYNTAX: bool;
}

/// A column of a page key, unsorted: no rule for NULLs, so only a non-nullable column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotNullable;

/// A nullable column of a page key, with its rule: NULLs first or last in the page's order (in
/// both directions, on every backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nulls {
    first: bool,
}

/// One column of a page key and its direction. Built by [`asc`] and [`desc`]; a nullable
/// column also needs [`Sorted::nulls_first`] or [`Sorted::nulls_last`], or the key does not
/// compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sorted<C, N = NotNullable> {
    column: C,
    descending: bool,
    nulls: N,
}

/// `column ASC` in a page key.
///
/// ```
/// use diesel_budget::page::{asc, desc};
/// use diesel_budget::demo::items;
///
/// let key = (desc(items::created_at), asc(items::id));
/// # let _ = key;
/// ```
pub fn asc<C: Column>(column: C) -> Sorted<C> {
    Sorted {
        column,
        descending: false,
        nulls: NotNullable,
    }
}

/// `column DESC` in a page key.
pub fn desc<C: Column>(column: C) -> Sorted<C> {
    Sorted {
        column,
        descending: true,
        nulls: NotNullable,
    }
}

impl<C> Sorted<C, NotNullable> {
    /// NULLs come before every value, in this direction and the reverse one alike (native
    /// `NULLS FIRST` on PostgreSQL and SQLite, emulated on MySQL).
    pub fn nulls_first(self) -> Sorted<C, Nulls> {
        Sorted {
            column: self.column,
            descending: self.descending,
            nulls: Nulls { first: true },
        }
    }

    /// NULLs come after every value.
    pub fn nulls_last(self) -> Sorted<C, Nulls> {
        Sorted {
            column: self.column,
            descending: self.descending,
            nulls: Nulls { first: false },
        }
    }
}

/// One sorted column of a page key: a non-nullable column, or a nullable one with its NULLs
/// rule. A nullable column without a rule is not a `KeyPart`, so such a key does not compile.
pub trait KeyPart: Copy {
    /// The column.
    type Column: Column + Expression + Copy;
    /// The column itself.
    fn column(&self) -> &Self::Column;
    /// Whether it sorts descending.
    fn descending(&self) -> bool;
    /// `None` for a non-nullable column; else whether NULLs come first.
    fn nulls_first(&self) -> Option<bool>;
}

impl<C> KeyPart for Sorted<C, NotNullable>
where
    C: Column + Expression + Copy,
    C::SqlType: SqlType<IsNull = NotNull> + SingleValue,
{
    type Column = C;
    fn column(&self) -> &C {
        &self.column
    }
    fn descending(&self) -> bool {
        self.descending
    }
    fn nulls_first(&self) -> Option<bool> {
        None
    }
}

impl<C> KeyPart for Sorted<C, Nulls>
where
    C: Column + Expression + Copy,
    C::SqlType: SqlType<IsNull = IsNullable> + SingleValue,
{
    type Column = C;
    fn column(&self) -> &C {
        &self.column
    }
    fn descending(&self) -> bool {
        self.descending
    }
    fn nulls_first(&self) -> Option<bool> {
        Some(self.nulls.first)
    }
}

/// A Rust value of one key column, as read from a row and carried in a page token: integers,
/// floats, `bool`, `String`, `Vec<u8>`, and `Option` of those for nullable columns.
pub trait PageValue: Clone + Debug + Serialize + DeserializeOwned {
    /// Whether this is SQL NULL (`None`).
    fn is_null(&self) -> bool {
        false
    }
    /// The order of two values in a column sorted `descending` with NULLs first or not
    /// (NULLs keep their place whatever the direction).
    fn page_cmp(&self, other: &Self, descending: bool, nulls_first: bool) -> Option<Ordering>;
}

macro_rules! page_value {
    ($($t:ty),*) => {$(
        impl PageValue for $t {
            fn page_cmp(&self, other: &Self, descending: bool, _: bool) -> Option<Ordering> {
                let o = self.partial_cmp(other)?;
                Some(if descending { o.reverse() } else { o })
            }
        }
    )*};
}
page_value!(
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    f32,
    f64,
    bool,
    String,
    Vec<u8>
);

impl<T: PageValue> PageValue for Option<T> {
    fn is_null(&self) -> bool {
        self.is_none()
    }
    fn page_cmp(&self, other: &Self, descending: bool, nulls_first: bool) -> Option<Ordering> {
        let null_side = if nulls_first {
            Ordering::Less
        } else {
            Ordering::Greater
        };
        match (self, other) {
            (None, None) => Some(Ordering::Equal),
            (None, Some(_)) => Some(null_side),
            (Some(_), None) => Some(null_side.reverse()),
            (Some(a), Some(b)) => a.page_cmp(b, descending, nulls_first),
        }
    }
}

/// The columns of a key, for Diesel's checks that a node belongs to the query's tables.
pub trait KeyColumns: Copy {
    /// The column, or the tuple of columns.
    type Columns;
    /// How many columns.
    const LEN: usize;
    /// Part `i`: (descending, NULLs first when nullable).
    fn part(&self, i: usize) -> (bool, Option<bool>);
    /// The column names, for errors and the query fingerprint.
    fn names(&self) -> Vec<&'static str>;
}

/// A page key whose row values are `V`: one [`KeyPart`] (`V` its value), or a tuple of two to
/// four (`V` the tuple of their values). The last column (or the key as a whole) must be
/// unique: pages check that rows come in strictly increasing key order.
pub trait PageKey<V>: KeyColumns {
    /// Whether part `i` of `value` is NULL.
    #[doc(hidden)]
    fn value_is_null(value: &V, i: usize) -> bool;
    /// Compares two key values in page order (directions and NULLs rules applied).
    #[doc(hidden)]
    fn compare(&self, a: &V, b: &V) -> Option<Ordering>;
}

/// A page key rendered on backend `DB`.
pub trait PageKeySql<V, DB: Backend>: PageKey<V> {
    /// Pushes column `i`.
    #[doc(hidden)]
    fn walk_column<'b>(&'b self, i: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()>;
    /// Pushes part `i` of `value` as a bind parameter.
    #[doc(hidden)]
    fn walk_value<'b>(
        &'b self,
        value: &'b V,
        i: usize,
        out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>;
}

impl<C, N> KeyColumns for Sorted<C, N>
where
    Self: KeyPart,
    C: Column,
{
    type Columns = C;
    const LEN: usize = 1;
    fn part(&self, _: usize) -> (bool, Option<bool>) {
        (self.descending(), self.nulls_first())
    }
    fn names(&self) -> Vec<&'static str> {
        vec![C::NAME]
    }
}

impl<C, N, V> PageKey<V> for Sorted<C, N>
where
    Self: KeyPart,
    C: Column,
    V: PageValue,
{
    fn value_is_null(value: &V, _: usize) -> bool {
        value.is_null()
    }
    fn compare(&self, a: &V, b: &V) -> Option<Ordering> {
        a.page_cmp(b, self.descending(), self.nulls_first().unwrap_or(false))
    }
}

impl<C, N, V, DB> PageKeySql<V, DB> for Sorted<C, N>
where
    Self: KeyPart<Column = C>,
    DB: Backend + HasSqlType<C::SqlType>,
    C: Column + Expression + QueryFragment<DB>,
    V: PageValue + ToSql<C::SqlType, DB>,
{
    fn walk_column<'b>(&'b self, _: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.column.walk_ast(out)
    }
    fn walk_value<'b>(
        &'b self,
        value: &'b V,
        _: usize,
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()> {
        out.push_bind_param::<C::SqlType, V>(value)
    }
}

macro_rules! page_key_tuple {
    ($len:expr; $($K:ident $V:ident $i:tt),+) => {
        impl<$($K: KeyPart),+> KeyColumns for ($($K,)+) {
            type Columns = ($($K::Column,)+);
            const LEN: usize = $len;
            fn part(&self, i: usize) -> (bool, Option<bool>) {
                match i {
                    $($i => (self.$i.descending(), self.$i.nulls_first()),)+
                    _ => (false, None),
                }
            }
            fn names(&self) -> Vec<&'static str> {
                vec![$(<$K::Column as Column>::NAME),+]
            }
        }

        impl<$($K: KeyPart,)+ $($V: PageValue),+> PageKey<($($V,)+)> for ($($K,)+) {
            fn value_is_null(value: &($($V,)+), i: usize) -> bool {
                match i {
                    $($i => value.$i.is_null(),)+
                    _ => false,
                }
            }
            fn compare(&self, a: &($($V,)+), b: &($($V,)+)) -> Option<Ordering> {
                $(
                    let o = a.$i.page_cmp(
                        &b.$i,
                        self.$i.descending(),
                        self.$i.nulls_first().unwrap_or(false),
                    )?;
                    if o != Ordering::Equal {
                        return Some(o);
                    }
                )+
                Some(Ordering::Equal)
            }
        }

        impl<DB, $($K,)+ $($V),+> PageKeySql<($($V,)+), DB> for ($($K,)+)
        where
            DB: Backend $(+ HasSqlType<<$K::Column as Expression>::SqlType>)+,
            $($K: KeyPart, $K::Column: QueryFragment<DB>,)+
            $($V: PageValue + ToSql<<$K::Column as Expression>::SqlType, DB>,)+
        {
            fn walk_column<'b>(&'b self, i: usize, out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
                match i {
                    $($i => self.$i.column().walk_ast(out),)+
                    _ => Ok(()),
                }
            }
            fn walk_value<'b>(
                &'b self,
                value: &'b ($($V,)+),
                i: usize,
                mut out: AstPass<'_, 'b, DB>,
            ) -> QueryResult<()> {
                match i {
                    $($i => out.push_bind_param::<<$K::Column as Expression>::SqlType, $V>(
                        &value.$i,
                    ),)+
                    _ => Ok(()),
                }
            }
        }
    };
}

page_key_tuple!(1; K0 V0 0);
page_key_tuple!(2; K0 V0 0, K1 V1 1);
page_key_tuple!(3; K0 V0 0, K1 V1 1, K2 V2 2);
page_key_tuple!(4; K0 V0 0, K1 V1 1, K2 V2 2, K3 V3 3);

/// The seek predicate: rows strictly after `value` in the key's order (or, `reversed`, in the
/// reverse order: strictly before), `1 = 1` without a value. Built as query nodes: the row
/// value `(a, b) > (?, ?)` where every column sorts the same way, none is nullable and the
/// backend plans row values ([`PageBackend::ROW_VALUES`]); else the conjunctive expansion
/// `a >= ? AND (a > ? OR (b >= ? AND (b > ? OR ..)))`, which an index on the key serves as a
/// range (never the bare `a > ? OR (a = ? AND ..)`, which PostgreSQL only filters).
#[derive(Debug, Clone)]
pub struct Seek<K, V> {
    pub(crate) key: K,
    pub(crate) value: Option<V>,
    pub(crate) reversed: bool,
}

impl<K, V> Expression for Seek<K, V> {
    type SqlType = Bool;
}

impl<K: KeyColumns, V, QS> AppearsOnTable<QS> for Seek<K, V> where K::Columns: AppearsOnTable<QS> {}

impl<K: KeyColumns, V, GB> ValidGrouping<GB> for Seek<K, V>
where
    K::Columns: ValidGrouping<GB>,
{
    type IsAggregate = <K::Columns as ValidGrouping<GB>>::IsAggregate;
}

impl<K, V> QueryId for Seek<K, V> {
    type QueryId = ();
    // The SQL differs with the direction, with and without a value and for NULL values: Diesel
    // keys its statement cache by the SQL text (still cached, still prepared once).
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<K: KeyColumns, V> Seek<K, V> {
    /// Part `i` in the order this predicate follows: (descending, NULLs first).
    fn effective(&self, i: usize) -> (bool, Option<bool>) {
        let (d, n) = self.key.part(i);
        (d ^ self.reversed, n.map(|f| f ^ self.reversed))
    }

    /// `col > ?` (strict) or `col >= ?` (wide) for part `i`, NULLs by the part's rule.
    fn walk_part<'b, DB>(
        &'b self,
        value: &'b V,
        i: usize,
        strict: bool,
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>
    where
        DB: PageBackend,
        K: PageKeySql<V, DB>,
    {
        let (descending, nulls) = self.effective(i);
        let op = match (descending, strict) {
            (false, true) => " > ",
            (false, false) => " >= ",
            (true, true) => " < ",
            (true, false) => " <= ",
        };
        let is_null = K::value_is_null(value, i);
        match (nulls, is_null) {
            // NULL is at the start: every value is after it; at or after it is everything.
            (Some(true), true) => {
                if strict {
                    self.key.walk_column(i, out.reborrow())?;
                    out.push_sql(" IS NOT NULL");
                } else {
                    out.push_sql("1 = 1");
                }
            }
            // NULL is at the end: nothing is after it; at or after it is NULL.
            (Some(false), true) => {
                if strict {
                    out.push_sql("1 = 0");
                } else {
                    self.key.walk_column(i, out.reborrow())?;
                    out.push_sql(" IS NULL");
                }
            }
            // A value with NULLs at the end: the NULLs are after it too.
            (Some(false), false) => {
                out.push_sql("(");
                self.key.walk_column(i, out.reborrow())?;
                out.push_sql(op);
                self.key.walk_value(value, i, out.reborrow())?;
                out.push_sql(" OR ");
                self.key.walk_column(i, out.reborrow())?;
                out.push_sql(" IS NULL)");
            }
            // Not nullable, or NULLs first (a comparison with NULL is never true).
            (None, _) | (Some(true), false) => {
                self.key.walk_column(i, out.reborrow())?;
                out.push_sql(op);
                self.key.walk_value(value, i, out.reborrow())?;
            }
        }
        Ok(())
    }

    /// `wide(i) AND (strict(i) OR <rest>)`, the last part strict alone.
    fn walk_expanded<'b, DB>(
        &'b self,
        value: &'b V,
        i: usize,
        mut out: AstPass<'_, 'b, DB>,
    ) -> QueryResult<()>
    where
        DB: PageBackend,
        K: PageKeySql<V, DB>,
    {
        if i + 1 == K::LEN {
            return self.walk_part(value, i, true, out);
        }
        out.push_sql("(");
        self.walk_part(value, i, false, out.reborrow())?;
        out.push_sql(" AND (");
        self.walk_part(value, i, true, out.reborrow())?;
        out.push_sql(" OR ");
        self.walk_expanded(value, i + 1, out.reborrow())?;
        out.push_sql("))");
        Ok(())
    }

    /// Whether the row value form applies (see [`Seek`]).
    fn row_value<DB: PageBackend>(&self) -> bool {
        DB::ROW_VALUES
            && K::LEN > 1
            && (0..K::LEN).all(|i| self.key.part(i).1.is_none())
            && (0..K::LEN).all(|i| self.effective(i).0 == self.effective(0).0)
    }
}

impl<K, V, DB> QueryFragment<DB> for Seek<K, V>
where
    DB: PageBackend,
    K: PageKeySql<V, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let Some(value) = &self.value else {
            out.push_sql("1 = 1");
            return Ok(());
        };
        if !self.row_value::<DB>() {
            return self.walk_expanded(value, 0, out);
        }
        out.push_sql("(");
        for i in 0..K::LEN {
            if i > 0 {
                out.push_sql(", ");
            }
            self.key.walk_column(i, out.reborrow())?;
        }
        out.push_sql(if self.effective(0).0 {
            ") < ("
        } else {
            ") > ("
        });
        for i in 0..K::LEN {
            if i > 0 {
                out.push_sql(", ");
            }
            self.key.walk_value(value, i, out.reborrow())?;
        }
        out.push_sql(")");
        Ok(())
    }
}

/// The `ORDER BY` of a page: the key's columns in its directions (`reversed`: the opposite
/// ones, for a backward page), NULLs by each nullable column's rule.
#[derive(Debug, Clone)]
pub struct SeekOrder<K, V> {
    pub(crate) key: K,
    pub(crate) reversed: bool,
    pub(crate) _value: std::marker::PhantomData<fn() -> V>,
}

impl<K, V> Expression for SeekOrder<K, V> {
    type SqlType = Bool;
}

impl<K: KeyColumns, V, QS> AppearsOnTable<QS> for SeekOrder<K, V> where
    K::Columns: AppearsOnTable<QS>
{
}

impl<K: KeyColumns, V, GB> ValidGrouping<GB> for SeekOrder<K, V>
where
    K::Columns: ValidGrouping<GB>,
{
    type IsAggregate = <K::Columns as ValidGrouping<GB>>::IsAggregate;
}

impl<K, V> QueryId for SeekOrder<K, V> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<K, V, DB> QueryFragment<DB> for SeekOrder<K, V>
where
    DB: PageBackend,
    K: PageKeySql<V, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let key = &self.key;
        for i in 0..K::LEN {
            if i > 0 {
                out.push_sql(", ");
            }
            let (d, n) = key.part(i);
            let (descending, nulls) = (d ^ self.reversed, n.map(|f| f ^ self.reversed));
            let dir = if descending { " DESC" } else { " ASC" };
            match nulls {
                Some(first) if !DB::NULLS_ORDER_SYNTAX => {
                    key.walk_column(i, out.reborrow())?;
                    out.push_sql(if first {
                        " IS NULL DESC, "
                    } else {
                        " IS NULL ASC, "
                    });
                    key.walk_column(i, out.reborrow())?;
                    out.push_sql(dir);
                }
                Some(first) => {
                    key.walk_column(i, out.reborrow())?;
                    out.push_sql(dir);
                    out.push_sql(if first { " NULLS FIRST" } else { " NULLS LAST" });
                }
                None => {
                    key.walk_column(i, out.reborrow())?;
                    out.push_sql(dir);
                }
            }
        }
        Ok(())
    }
}
