//! Serving a keyset page: token check, one `WHERE seek ORDER BY key LIMIT size + 1` statement,
//! the order check, and the tokens of the neighbouring pages.

use std::cmp::Ordering;
use std::marker::PhantomData;

use diesel::backend::Backend;
use diesel::query_builder::{AsQuery, QueryFragment};
use diesel::query_dsl::methods::{FilterDsl, OrderDsl};

use super::key::{PageBackend, PageKeySql, Seek, SeekOrder};
use super::token::{self, Body};
use super::{Page, PageRequest, Pager};
use crate::backend::BudgetConnection;
use crate::budget::{Exceeded, Meter, Metering, Overflow};
use crate::error::{Error, Result};
use crate::exec::{load_metered, ConnectionOf, Executor};
use crate::query::{render, BudgetQuery, Budgeted};
use crate::sql::inspect::{has_top_level_limit, has_top_level_offset};

/// The statement of one keyset page.
pub type KeysetPageQuery<Q, K, V> =
    diesel::dsl::Order<diesel::dsl::Filter<<Q as AsQuery>::Query, Seek<K, V>>, SeekOrder<K, V>>;

/// The fingerprint of a listing: backend, the query's SQL and bound values (Diesel's
/// `debug_query`), the key's columns and directions, and the Rust types of the key values.
/// Also refuses a query with a LIMIT or OFFSET of its own (checked on the same rendering).
pub(crate) fn listing_fingerprint<C, Q, K, V>(kind: &str, query: &Q, key: &K) -> Result<[u8; 32]>
where
    C: BudgetConnection,
    C::Backend: Default,
    <C::Backend as Backend>::QueryBuilder: Default,
    Q: QueryFragment<C::Backend>,
    K: super::KeyColumns,
{
    let shown = diesel::debug_query::<C::Backend, _>(query).to_string();
    // `<sql> -- binds: [..]`: bound values are never inlined, so the SQL part is Diesel's own.
    let sql = shown
        .rsplit_once(" -- binds: ")
        .map_or(shown.as_str(), |(sql, _)| sql);
    refuse_limit(sql)?;
    let mut shape = String::new();
    for (i, name) in key.names().into_iter().enumerate() {
        let (descending, nulls) = key.part(i);
        shape.push_str(name);
        shape.push_str(if descending { " desc" } else { " asc" });
        shape.push_str(match nulls {
            None => ";",
            Some(true) => " nulls first;",
            Some(false) => " nulls last;",
        });
    }
    Ok(token::fingerprint([
        kind.as_bytes(),
        C::KIND.name().as_bytes(),
        shown.as_bytes(),
        shape.as_bytes(),
        std::any::type_name::<V>().as_bytes(),
    ]))
}

/// Refuses a query with a LIMIT or OFFSET of its own: the page sets both.
pub(crate) fn check_no_limit<C: BudgetConnection, Q: QueryFragment<C::Backend>>(
    query: &Q,
) -> Result<()> {
    refuse_limit(&render::<C, _>(query)?)
}

fn refuse_limit(sql: &str) -> Result<()> {
    if has_top_level_limit(sql) || has_top_level_offset(sql) {
        return Err(Error::InvalidArgument {
            name: "query",
            reason: "a page sets its own LIMIT and OFFSET; drop the query's (the budget is the \
                     page size)"
                .into(),
        });
    }
    Ok(())
}

impl<Q, M: Metering, O: Overflow> Budgeted<Q, M, O> {
    /// One keyset page of this query, ordered by `key`; the row budget is the page size.
    ///
    /// `key` is one sorted column ([`asc`](super::asc)`(col)`, [`desc`](super::desc)`(col)`) or a
    /// tuple of two to four, the last one unique (say the primary key); `key_of` reads the key's
    /// values from a row, in the same order (`|i: &Item| (i.created_at, i.id)`). `request` is
    /// [`PageRequest::First`], [`PageRequest::Last`], or a token from a previous page's
    /// [`Page::next`] / [`Page::prev`] (an `Option<&str>` converts: `None` is the first page).
    /// The query's own `ORDER BY` is replaced by the key's; it must have no LIMIT or OFFSET.
    ///
    /// Rows are in the key's order on every page, backward ones included. A page cut short by a
    /// byte budget is still a page: `has_more` is set and `next` starts right after its last row.
    ///
    /// # Errors
    /// [`Error::InvalidPageToken`] (before any SQL) for a token this query did not issue, or one
    /// altered, over [`Pager::max_token_len`], of an unknown version, signed by a key the ring
    /// does not hold, or for another page size; [`Error::PageSizeTooLarge`] for a budget over
    /// [`Pager::max_page_size`]; [`Error::KeyOrder`] when rows do not come in strictly increasing
    /// key order (the key is not unique); and the errors of [`crate::RunBudgetedDsl::load`].
    ///
    /// # Example
    /// Walking backward from the last page:
    /// ```
    /// # include!("../../tests/doc_setup.rs");
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (db, mut conn) = demo_db(10)?;
    /// use diesel_budget::prelude::*;
    /// use diesel_budget::page::{asc, PageKeys, PageRequest, Pager};
    /// use diesel_budget::demo::{items, Item};
    ///
    /// let pager = Pager::new(PageKeys::new(1, &[42u8; 32])?);
    /// let mut page = |request| {
    ///     items::table
    ///         .budget(Budget::rows(4))
    ///         .keyset_page(&pager, asc(items::id), |i: &Item| i.id, request, &mut conn)
    /// };
    /// let last = page(PageRequest::Last)?;
    /// assert_eq!(last.items.iter().map(|i| i.id).collect::<Vec<_>>(), [7, 8, 9, 10]);
    /// let before = page(PageRequest::Token(last.prev.as_deref().ok_or("no prev")?))?;
    /// assert_eq!(before.items.iter().map(|i| i.id).collect::<Vec<_>>(), [3, 4, 5, 6]);
    /// # Ok(()) }
    /// ```
    pub fn keyset_page<'q, X, K, V, U, F>(
        self,
        pager: &Pager,
        key: K,
        key_of: F,
        request: impl Into<PageRequest<'q>>,
        conn: &mut X,
    ) -> Result<Page<U>>
    where
        X: Executor,
        Q: AsQuery,
        Q::Query:
            FilterDsl<Seek<K, V>> + QueryFragment<<ConnectionOf<X> as diesel::Connection>::Backend>,
        diesel::dsl::Filter<Q::Query, Seek<K, V>>: OrderDsl<SeekOrder<K, V>>,
        KeysetPageQuery<Q, K, V>: BudgetQuery<'q, ConnectionOf<X>, U>,
        <ConnectionOf<X> as diesel::Connection>::Backend: PageBackend + Default,
        <<ConnectionOf<X> as diesel::Connection>::Backend as Backend>::QueryBuilder: Default,
        K: PageKeySql<V, <ConnectionOf<X> as diesel::Connection>::Backend>,
        V: Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
        F: Fn(&U) -> V,
        M: Meter<U>,
    {
        type C<X> = ConnectionOf<X>;
        let spec = self.budget.spec();
        self.budget.validate()?;
        let size = spec.rows;
        pager.check_size(size)?;
        let query = self.query.as_query();
        let fingerprint = listing_fingerprint::<C<X>, _, K, V>("keyset", &query, &key)?;

        let (backward, boundary) = match request.into() {
            PageRequest::First => (false, None),
            PageRequest::Last => (true, None),
            PageRequest::Token(t) => {
                let body: Body<V> =
                    token::decode(&pager.keys, &fingerprint, t, pager.max_token_len)?;
                if body.size != size {
                    return Err(Error::InvalidPageToken {
                        reason: "issued for another page size",
                    });
                }
                (body.backward, Some(body.values))
            }
        };

        let statement = query
            .filter(Seek {
                key,
                value: boundary.clone(),
                reversed: backward,
            })
            .order(SeekOrder {
                key,
                reversed: backward,
                _value: PhantomData,
            });
        let limit = i64::try_from(size.saturating_add(1)).unwrap_or(i64::MAX);
        let conn = conn.connection(crate::exec::sealed::TOKEN);
        let loaded = load_metered::<C<X>, U, _, M>(statement, spec, limit, conn)?;
        let has_more = match loaded.exceeded {
            Some(e @ Exceeded::Bytes) if loaded.rows.is_empty() => {
                return Err(loaded.into_error(spec, e))
            }
            Some(_) => true,
            None => false,
        };
        let mut rows = loaded.rows;

        // Strictly increasing in the order read (decreasing key order for a backward page),
        // starting after the boundary.
        let want = if backward {
            Ordering::Greater
        } else {
            Ordering::Less
        };
        let mut previous = boundary.clone();
        for (done, row) in rows.iter().enumerate() {
            let next = key_of(row);
            if let Some(p) = &previous {
                if key.compare(p, &next) != Some(want) {
                    return Err(Error::KeyOrder {
                        key: key.names(),
                        previous: format!("{p:?}"),
                        next: format!("{next:?}"),
                        rows_done: done as u64,
                    });
                }
            }
            previous = Some(next);
        }
        if backward {
            rows.reverse();
        }

        let sign = |backward: bool, values: V| {
            token::encode(
                &pager.keys,
                &fingerprint,
                &Body {
                    backward,
                    size,
                    values,
                },
            )
        };
        let first = rows.first().map(&key_of).or_else(|| boundary.clone());
        let last = rows.last().map(&key_of).or_else(|| boundary.clone());
        let (next, prev) = if backward {
            (
                match (&boundary, last) {
                    (Some(_), Some(v)) => Some(sign(false, v)?),
                    _ => None,
                },
                match (has_more, first) {
                    (true, Some(v)) => Some(sign(true, v)?),
                    _ => None,
                },
            )
        } else {
            (
                match (has_more, last) {
                    (true, Some(v)) => Some(sign(false, v)?),
                    _ => None,
                },
                match (&boundary, first) {
                    (Some(_), Some(v)) => Some(sign(true, v)?),
                    _ => None,
                },
            )
        };
        Ok(Page {
            items: rows,
            next,
            prev,
            has_more,
            total: None,
        })
    }
}
