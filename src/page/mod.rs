//! Pagination: keyset pages with signed page tokens, and offset pages with a capped count.
//!
//! # Keyset pages
//! [`Budgeted::keyset_page`](crate::Budgeted::keyset_page) serves one page of a query ordered by a
//! key of one to four columns, each [`asc`] or [`desc`]; nullable columns need a rule
//! ([`Sorted::nulls_first`] / [`Sorted::nulls_last`]) or the key does not compile. The row budget
//! is the page size. A page's rows are read with `WHERE <after the boundary> ORDER BY <key> LIMIT
//! size + 1`, so a page deep in the table costs what the first one does, and rows inserted or
//! deleted between requests never make a walk skip or repeat a row that was there all along.
//!
//! The last column (or the key as a whole) must be unique: the rows of every page are checked
//! to come in strictly increasing key order, as in [`crate::batch`]; a tie is
//! [`Error::KeyOrder`](crate::Error::KeyOrder), never a silently skipped row.
//!
//! [`Page::next`] and [`Page::prev`] are opaque tokens holding the boundary row's key values
//! (not its id: a sort value changed since cannot send a client to the wrong place), the
//! direction and the page size, signed with HMAC-SHA256 under the [`PageKeys`] and bound to a
//! fingerprint of the query: its SQL, its bound filter values, the key and the key's Rust types.
//! A token from another query or filter, another key, altered, truncated, over the size cap, of
//! an unknown version or issued for another page size is
//! [`Error::InvalidPageToken`](crate::Error::InvalidPageToken) before any SQL runs.
//!
//! ```
//! # include!("../../tests/doc_setup.rs");
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (db, mut conn) = demo_db(100)?;
//! use diesel::prelude::*;
//! use diesel_budget::prelude::*;
//! use diesel_budget::page::{desc, PageKeys, PageRequest, Pager};
//! use diesel_budget::demo::{items, Item};
//!
//! let pager = Pager::new(PageKeys::new(1, b"a secret of 32 bytes or more....")?);
//! let key = (desc(items::created_at), desc(items::id));
//! let key_of = |i: &Item| (i.created_at, i.id);
//!
//! let first = items::table
//!     .filter(items::category.eq(3))
//!     .budget(Budget::rows(4))
//!     .keyset_page(&pager, key, key_of, PageRequest::First, &mut conn)?;
//! assert_eq!(first.items.iter().map(|i| i.id).collect::<Vec<_>>(), [93, 83, 73, 63]);
//! assert!(first.has_more && first.prev.is_none());
//!
//! // The client sends `next` back; the same query (same filter values) serves the next page.
//! let token = first.next.as_deref().ok_or("no next page")?;
//! let second = items::table
//!     .filter(items::category.eq(3))
//!     .budget(Budget::rows(4))
//!     .keyset_page(&pager, key, key_of, PageRequest::Token(token), &mut conn)?;
//! assert_eq!(second.items.iter().map(|i| i.id).collect::<Vec<_>>(), [53, 43, 33, 23]);
//!
//! // On another filter the token is refused, before any SQL runs.
//! let err = items::table
//!     .filter(items::category.eq(4))
//!     .budget(Budget::rows(4))
//!     .keyset_page(&pager, key, key_of, PageRequest::Token(token), &mut conn)
//!     .unwrap_err();
//! assert!(matches!(err, diesel_budget::Error::InvalidPageToken { .. }));
//! # Ok(()) }
//! ```
//!
//! # Offset pages
//! [`Budgeted::offset_page`](crate::Budgeted::offset_page) serves page `number` (from 1) with
//! `LIMIT size + 1 OFFSET (number - 1) * size`, refusing pages deeper than
//! [`Pager::max_depth`] (OFFSET reads every row it skips); with a total count capped at a
//! number of rows of your choice. Rows inserted or deleted between requests shift offset pages
//! (a row skipped or shown twice): prefer keyset pages where that matters.

mod key;
mod keyset;
mod offset;
mod token;

pub use key::{
    asc, desc, KeyColumns, KeyPart, NotNullable, Nulls, PageBackend, PageKey, PageKeySql,
    PageValue, Seek, SeekOrder, Sorted,
};
pub use keyset::KeysetPageQuery;
pub use offset::{CountQuery, OffsetPageQuery};
pub use token::{PageKeys, MIN_SECRET_LEN};

use serde::Serialize;

/// For the `cargo fuzz` target in `fuzz/` (not an API): decodes `token` as a token of a fixed
/// query under a fixed key, for values `(i64, Option<String>)`. Returns whether it was accepted,
/// which no input not signed with that key can be.
#[doc(hidden)]
pub fn __fuzz_decode(token: &str) -> bool {
    let Ok(keys) = PageKeys::new(1, &[0x5a; 32]) else {
        return false;
    };
    let fingerprint = token::fingerprint([b"fuzz".as_slice()]);
    token::decode::<(i64, Option<String>)>(&keys, &fingerprint, token, 1_024).is_ok()
}

pub(crate) mod sealed {
    /// Seals [`super::PageBackend`].
    pub trait Sealed {}
}

/// Which page of a keyset listing to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRequest<'a> {
    /// The first page, in the key's order.
    First,
    /// The last page (its rows in the key's order, like every page).
    Last,
    /// The page a token from [`Page::next`] or [`Page::prev`] points to.
    Token(&'a str),
}

impl<'a> From<Option<&'a str>> for PageRequest<'a> {
    /// A token when there is one, else the first page (a request's optional `after`).
    fn from(token: Option<&'a str>) -> Self {
        match token {
            Some(t) => PageRequest::Token(t),
            None => PageRequest::First,
        }
    }
}

/// One page of rows, ready to serialise into a response.
///
/// `next` and `prev` are page tokens (keyset pages) or page numbers as text (offset pages);
/// `None` where there is no such page. `has_more` says whether rows exist past this page in the
/// direction it was read (forward for the first page and for `next` tokens, backward for the
/// last page and `prev` tokens). `total` is there when it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The rows, in the key's order.
    pub items: Vec<T>,
    /// Token (or number) of the following page.
    pub next: Option<String>,
    /// Token (or number) of the preceding page.
    pub prev: Option<String>,
    /// Whether more rows lie beyond this page in the direction it was read.
    pub has_more: bool,
    /// The number of rows of the whole query, when asked for.
    pub total: Option<Total>,
}

/// A row count, capped: `capped` means "more than `rows`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Total {
    /// The rows counted (at most the cap).
    pub rows: u64,
    /// `true` when the query has more rows than the cap (then `rows` is the cap).
    pub capped: bool,
}

/// The settings of a listing: the keys that sign page tokens and the limits it enforces.
/// Built once (say at start-up) and shared by reference.
#[derive(Debug, Clone)]
pub struct Pager {
    pub(crate) keys: PageKeys,
    pub(crate) max_page_size: u64,
    pub(crate) max_depth: u64,
    pub(crate) max_token_len: usize,
}

impl Pager {
    /// A pager signing with `keys`, with the default limits.
    pub fn new(keys: PageKeys) -> Self {
        Pager {
            keys,
            max_page_size: 1_000,
            max_depth: 10_000,
            max_token_len: 1_024,
        }
    }

    /// The largest page size (row budget) a page may have; larger is
    /// [`Error::PageSizeTooLarge`](crate::Error::PageSizeTooLarge). Default: 1,000.
    pub fn max_page_size(mut self, rows: u64) -> Self {
        self.max_page_size = rows;
        self
    }

    /// The most rows an offset page may skip; deeper is
    /// [`Error::PageTooDeep`](crate::Error::PageTooDeep). Default: 10,000.
    pub fn max_depth(mut self, rows: u64) -> Self {
        self.max_depth = rows;
        self
    }

    /// The longest page token accepted, in characters; longer ones are refused unread.
    /// Default: 1,024.
    pub fn max_token_len(mut self, chars: usize) -> Self {
        self.max_token_len = chars;
        self
    }

    /// Checks a page size against [`Pager::max_page_size`].
    pub(crate) fn check_size(&self, size: u64) -> crate::Result<()> {
        if size > self.max_page_size {
            return Err(crate::Error::PageSizeTooLarge {
                size,
                max: self.max_page_size,
            });
        }
        Ok(())
    }
}
