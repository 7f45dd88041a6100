//! Offset pages: `LIMIT size + 1 OFFSET (number - 1) * size`, a maximum depth, and a count that
//! is itself budgeted (capped).

use diesel::backend::Backend;
use diesel::query_builder::{AsQuery, AstPass, Query, QueryFragment, QueryId};
use diesel::query_dsl::methods::{LimitDsl, OffsetDsl};
use diesel::sql_types::BigInt;
use diesel::{QueryResult, RunQueryDsl};

use super::keyset::check_no_limit;
use super::{Page, Pager, Total};
use crate::budget::{Budget, Exceeded, Meter, Metering, Overflow, Rows};
use crate::error::{Error, Result};
use crate::exec::{load_metered, ConnectionOf, Executor};
use crate::query::{BudgetQuery, Budgeted};

/// `SELECT COUNT(*) FROM (<query> LIMIT cap + 1) AS diesel_budget_count`: a count that reads at
/// most `cap + 1` rows, however large the table. One row; a budget's LIMIT on it is a no-op.
#[derive(Debug, Clone, Copy)]
pub struct CountQuery<Q> {
    inner: Q,
}

impl<Q> Query for CountQuery<Q> {
    type SqlType = BigInt;
}

impl<Q: QueryId> QueryId for CountQuery<Q> {
    type QueryId = CountQuery<Q::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for CountQuery<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT COUNT(*) FROM (");
        self.inner.walk_ast(out.reborrow())?;
        out.push_sql(") AS diesel_budget_count");
        Ok(())
    }
}

impl<Q> LimitDsl for CountQuery<Q> {
    type Output = Self;
    /// A count is one row: nothing to limit.
    fn limit(self, _: i64) -> Self {
        self
    }
}

impl<Q, C> RunQueryDsl<C> for CountQuery<Q> {}

/// A count is one row and takes no `LIMIT`: the executor runs it as it is.
impl<Q, DB> crate::query::BudgetShape<DB> for CountQuery<Q>
where
    DB: crate::backend::BudgetBackend,
    Self: Query + QueryId,
{
    type Limited = Self;

    fn own_limit(&self) -> QueryResult<crate::query::OwnLimit> {
        Ok(crate::query::OwnLimit::None)
    }

    fn locks(&self) -> bool {
        false
    }

    fn limited(self, _cap: i64, _own: crate::query::OwnLimit, _hint: Option<String>) -> Self {
        self
    }
}

/// The statement of one offset page.
pub type OffsetPageQuery<Q> = diesel::dsl::Offset<diesel::dsl::Limit<<Q as AsQuery>::Query>>;

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// Page `number` (1 is the first) of this query, in its own `ORDER BY` (give it one that is
    /// unique, or pages may overlap); the row budget is the page size. `next` and `prev` are the
    /// neighbouring page numbers as text.
    ///
    /// A page past the end is empty, with `has_more` false and `prev` pointing back.
    ///
    /// # Errors
    /// [`Error::PageTooDeep`] when the page would skip more than [`Pager::max_depth`] rows (use
    /// keyset pages), [`Error::PageSizeTooLarge`], [`Error::InvalidArgument`] for page 0 or a
    /// query with its own LIMIT/OFFSET; the errors of [`crate::RunBudgetedDsl::load`].
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(25)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::page::{PageKeys, Pager};
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let pager = Pager::new(PageKeys::new(1, &[42u8; 32])?).max_depth(1_000);
    /// let page = items::table
    ///     .order(items::id)
    ///     .budget(Budget::rows(10))
    ///     .offset_page::<_, Item>(&pager, 3, &mut conn)?;
    /// assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [21, 22, 23, 24, 25]);
    /// assert_eq!((page.prev.as_deref(), page.next, page.has_more), (Some("2"), None, false));
    /// # Ok(()) }
    /// ```
    pub fn offset_page<'q, X, U>(self, pager: &Pager, number: u64, conn: &mut X) -> Result<Page<U>>
    where
        X: Executor,
        Q: AsQuery,
        Q::Query: LimitDsl + QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend>,
        diesel::dsl::Limit<Q::Query>: OffsetDsl,
        OffsetPageQuery<Q>: BudgetQuery<'q, ConnectionOf<X>, U>,
        M: Meter<U>,
    {
        let spec = self.budget.spec();
        self.budget.validate()?;
        let query = self.query.as_query();
        let offset = prepare::<ConnectionOf<X>, _>(pager, spec.rows, number, &query)?;
        let statement = query
            .limit(i64::try_from(spec.rows.saturating_add(1)).unwrap_or(i64::MAX))
            .offset(i64::try_from(offset).unwrap_or(i64::MAX));
        let conn = conn.connection(crate::exec::sealed::TOKEN);
        let limit = i64::try_from(spec.rows.saturating_add(1)).unwrap_or(i64::MAX);
        let loaded = load_metered::<ConnectionOf<X>, U, _, M>(statement, spec, limit, conn)?;
        let has_more = match loaded.exceeded {
            Some(e @ Exceeded::Bytes) if loaded.rows.is_empty() => {
                return Err(loaded.into_error(spec, e))
            }
            Some(_) => true,
            None => false,
        };
        Ok(Page {
            items: loaded.rows,
            next: has_more.then(|| (number + 1).to_string()),
            prev: (number > 1).then(|| (number - 1).to_string()),
            has_more,
            total: None,
        })
    }

    /// [`offset_page`](Self::offset_page) with the query's row count, counted up to `cap` rows
    /// (`SELECT COUNT(*) FROM (<query> LIMIT cap + 1)`): past the cap, [`Total::capped`] says
    /// "more than `cap`". The count is right whichever page is asked for, also past the end.
    ///
    /// # Example
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(25)?;
    /// use diesel::prelude::*;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::page::{PageKeys, Pager, Total};
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let pager = Pager::new(PageKeys::new(1, &[42u8; 32])?);
    /// let q = || items::table.order(items::id).budget(Budget::rows(10));
    /// let past_the_end = q().offset_page_with_total::<_, Item>(&pager, 9, 100, &mut conn)?;
    /// assert!(past_the_end.items.is_empty());
    /// assert_eq!(past_the_end.total, Some(Total { rows: 25, capped: false }));
    /// let capped = q().offset_page_with_total::<_, Item>(&pager, 1, 20, &mut conn)?;
    /// assert_eq!(capped.total, Some(Total { rows: 20, capped: true }));
    /// # Ok(()) }
    /// ```
    pub fn offset_page_with_total<'q, X, U>(
        self,
        pager: &Pager,
        number: u64,
        cap: u64,
        conn: &mut X,
    ) -> Result<Page<U>>
    where
        X: Executor,
        Q: AsQuery + Clone,
        Q::Query: LimitDsl + QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend>,
        diesel::dsl::Limit<Q::Query>: OffsetDsl,
        OffsetPageQuery<Q>: BudgetQuery<'q, ConnectionOf<X>, U>,
        CountQuery<diesel::dsl::Limit<Q::Query>>: BudgetQuery<'q, ConnectionOf<X>, i64>,
        M: Meter<U>,
    {
        let query = self.query.clone().as_query();
        prepare::<ConnectionOf<X>, _>(pager, self.budget.spec().rows, number, &query)?;
        let counted = CountQuery {
            inner: query.limit(i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX)),
        };
        let one = Budget::rows(1).spec();
        let loaded = load_metered::<ConnectionOf<X>, i64, _, Rows>(
            counted,
            one,
            1,
            conn.connection(crate::exec::sealed::TOKEN),
        )?;
        let counted = loaded
            .rows
            .first()
            .map_or(0, |n| u64::try_from(*n).unwrap_or(0));
        let mut page = self.offset_page(pager, number, conn)?;
        page.total = Some(Total {
            rows: counted.min(cap),
            capped: counted > cap,
        });
        Ok(page)
    }
}

/// Checks page number, size and depth, and the query; returns the offset.
fn prepare<C: crate::BudgetConnection, Q: QueryFragment<C::Backend>>(
    pager: &Pager,
    size: u64,
    number: u64,
    query: &Q,
) -> Result<u64> {
    pager.check_size(size)?;
    if number == 0 {
        return Err(Error::InvalidArgument {
            name: "number",
            reason: "page numbers start at 1".into(),
        });
    }
    let offset = (number - 1).saturating_mul(size);
    if offset > pager.max_depth {
        return Err(Error::PageTooDeep {
            offset,
            max_depth: pager.max_depth,
        });
    }
    check_no_limit::<C, _>(query)?;
    Ok(offset)
}
