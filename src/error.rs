//! The one error type of the crate.

use crate::budget::{BudgetSpec, Exceeded};

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running a budgeted query.
///
/// Each variant carries what a person debugging it needs: the SQL (with placeholders, never the
/// bound values, so errors can be logged without leaking data), the budget, and what was seen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The result passed its budget. Under a strict budget nothing is returned; the server sent
    /// at most `budget.rows + 1` rows (the LIMIT is in the SQL).
    #[error(
        "query exceeded its budget ({budget}): stopped at {seen_rows} rows / {seen_bytes} bytes, \
         over the {exceeded} limit; narrow the query, raise the budget, or use batches: {sql}"
    )]
    BudgetExceeded {
        /// The SQL that ran, with placeholders.
        sql: String,
        /// The budget it ran under.
        budget: BudgetSpec,
        /// Which limit was passed.
        exceeded: Exceeded,
        /// Rows received when loading stopped (at most `budget.rows + 1`).
        seen_rows: u64,
        /// Bytes those rows held, when bytes are metered (else 0).
        seen_bytes: u64,
    },

    /// The budget itself cannot be honoured (zero rows, zero bytes, too large).
    #[error("invalid budget ({budget}): {reason}")]
    InvalidBudget {
        /// The budget as given.
        budget: BudgetSpec,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// An argument other than the budget is out of range (a batch size, a key, a setting).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Which argument.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },

    /// The database reported an error (including `NotFound` from `first`).
    #[error("query failed: {source}: {sql}")]
    Query {
        /// The SQL that failed, with placeholders (empty when the statement could not be rendered).
        sql: String,
        /// Diesel's error.
        #[source]
        source: diesel::result::Error,
    },

    /// Batched loading stopped part-way. Rows up to and including `resume_after` were delivered;
    /// start again after that key to continue without losing or repeating a row.
    #[error(
        "batched load interrupted after {rows_done} rows (resume after key {}): {source}",
        resume_after.as_deref().unwrap_or("<start>")
    )]
    Interrupted {
        /// Rows delivered before the failure.
        rows_done: u64,
        /// Debug form of the last key delivered; `None` if nothing was delivered. The typed key
        /// is on the iterator: [`crate::batch::Batches::resume_key`].
        resume_after: Option<String>,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// A keyset walk met a row whose key is not strictly after the previous row's, within a
    /// batch or across batches (or, at the end of a walk, a row the database orders before the
    /// last key that `key_of` reads as after it). The key is not unique, a join repeats rows,
    /// `key_of` does not read exactly the key, or the database orders the key column(s) other
    /// than Rust orders the key type (a case-insensitive collation, say). Nothing from that row
    /// on was delivered; resuming would meet it again. The keys are in fields, never in the
    /// message.
    #[error(
        "keyset walk by ({}) out of order after {rows_done} rows: a row's key is not strictly \
         after the previous row's; the key must be unique and not null, `key_of` must read \
         exactly that key, and the database must order it as Rust does",
        key.join(", ")
    )]
    KeyOrder {
        /// The key's column names (Diesel's `Column::NAME`).
        key: Vec<&'static str>,
        /// Debug form of the previous key (the last one delivered).
        previous: String,
        /// Debug form of the key that is not strictly after it.
        next: String,
        /// Rows delivered before the error (whole batches, for batches: the batch holding the
        /// row out of order is not delivered).
        rows_done: u64,
    },

    /// No connection could be checked out of the pool (or the pool could not be built).
    #[error("connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),

    /// A connection could not be established.
    #[error("connection: {0}")]
    Connection(#[from] diesel::ConnectionError),

    /// Running the embedded migrations failed.
    #[error("migrations: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// True when a `first`/`get_result` found no row ([`diesel::result::Error::NotFound`]).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Query {
                source: diesel::result::Error::NotFound,
                ..
            }
        )
    }

    /// True for [`Error::BudgetExceeded`].
    pub fn is_budget_exceeded(&self) -> bool {
        matches!(self, Error::BudgetExceeded { .. })
    }

    /// The SQL involved, if any.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Error::BudgetExceeded { sql, .. } | Error::Query { sql, .. } => Some(sql),
            Error::Interrupted { source, .. } => source.sql(),
            _ => None,
        }
    }

    pub(crate) fn query(sql: impl Into<String>, source: diesel::result::Error) -> Self {
        Error::Query {
            sql: sql.into(),
            source,
        }
    }
}

/// A Diesel error outside any one statement (a transaction's `BEGIN`/`COMMIT`, say), so that
/// [`crate::Conn::transaction`] closures can use `?` on both kinds.
impl From<diesel::result::Error> for Error {
    fn from(source: diesel::result::Error) -> Self {
        Error::Query {
            sql: String::new(),
            source,
        }
    }
}

/// `.optional()` for results of this crate, like Diesel's `OptionalExtension`:
/// a missing row becomes `Ok(None)`.
///
/// # Example
/// ```
/// use diesel_budget::{Error, OptionalExtension};
///
/// let missing: Result<i32, Error> = Err(Error::Query {
///     sql: String::new(),
///     source: diesel::result::Error::NotFound,
/// });
/// assert_eq!(missing.optional().unwrap(), None);
/// ```
pub trait OptionalExtension<T> {
    /// `Ok(Some(v))` for a row, `Ok(None)` for `NotFound`, other errors unchanged.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
