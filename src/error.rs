//! The one error type of the crate.

use crate::budget::{BudgetSpec, Exceeded};

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong running a budgeted query.
///
/// Each variant carries what a person debugging it needs: the SQL (with placeholders), the
/// budget, and what was seen, as typed fields.
///
/// # Safe to log
/// The `Display` of every variant says what went wrong at *this* layer and never contains a bound
/// value or a key: keys and values stay in typed fields ([`Error::Interrupted::resume_after`]).
/// The cause is [`std::error::Error::source`], printed once per layer by an error reporter
/// (`anyhow`'s `{:#}`, or walking `source()`). A cause that comes from the database server (a
/// Diesel error) carries the server's own message, which may quote data (PostgreSQL's
/// `Key (email)=(alice@example.com) already exists`): log the source chain only where data may go.
///
/// # Example
/// ```
/// use diesel_budget::Error;
///
/// let err = Error::from(diesel::result::Error::NotFound);
/// assert_eq!(err.to_string(), "database error");
/// assert_eq!(err.sql(), None);
/// let cause = std::error::Error::source(&err).expect("the Diesel error");
/// assert_eq!(cause.to_string(), "Record not found");
/// ```
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

    /// A [`per_chunk`](crate::bulk::BulkInsert::per_chunk) bulk write stopped part-way. Every
    /// chunk before [`checkpoint`](crate::bulk::Checkpoint) was committed and nothing after it;
    /// pass the same input to [`resume`](crate::bulk::BulkInsert::resume) with this checkpoint
    /// to continue without losing or repeating a row.
    #[error("bulk write interrupted after {} committed rows", checkpoint.rows_done)]
    BulkInterrupted {
        /// What was committed: resume from here.
        checkpoint: crate::bulk::Checkpoint,
        /// What failed.
        #[source]
        source: Box<Error>,
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

    /// The database reported an error (including `NotFound` from `first`). Displayed as
    /// `query failed: <sql>`, or `database error` when no statement is known; Diesel's error is
    /// the source.
    #[error("{}", query_message(sql.as_deref()))]
    Query {
        /// The statement that failed, with placeholders: the SQL, or for transaction control
        /// `BEGIN`, `COMMIT` or `ROLLBACK`. `None` when the error came from outside any one
        /// statement (a Diesel error converted with `?`) or the statement could not be rendered.
        sql: Option<String>,
        /// Diesel's error.
        #[source]
        source: diesel::result::Error,
    },

    /// Batched loading stopped part-way. Rows up to and including `resume_after` were delivered;
    /// start again after that key to continue without losing or repeating a row. The key is in
    /// the field, not in the message (it is data).
    #[error("batched load interrupted after {rows_done} rows")]
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

    /// A page token was refused before any SQL ran: it was not issued by this query (another
    /// query, other filter values, another key type), is signed by a key the ring does not
    /// hold, was modified, truncated or is over the size cap, has an unknown format version,
    /// or asks for another page size. The token itself is never in the message.
    #[error("invalid page token: {reason}")]
    InvalidPageToken {
        /// Why it was refused (constant text).
        reason: &'static str,
    },

    /// A page size (the row budget of a page) over the pager's configured maximum.
    #[error("page size {size} is over the maximum of {max}")]
    PageSizeTooLarge {
        /// The page size asked for.
        size: u64,
        /// The configured maximum ([`crate::page::Pager::max_page_size`]).
        max: u64,
    },

    /// An offset page past the configured maximum depth: OFFSET reads and discards every row
    /// it skips, so deep pages get slower with depth. Use keyset pages
    /// ([`Budgeted::keyset_page`](crate::Budgeted::keyset_page)) to go deeper.
    #[error(
        "offset page starting at row {offset} is past the maximum depth of {max_depth} rows; \
         use keyset pages (keyset_page) to go deeper"
    )]
    PageTooDeep {
        /// Rows the page would skip.
        offset: u64,
        /// The configured maximum ([`crate::page::Pager::max_depth`]).
        max_depth: u64,
    },

    /// No connection could be checked out of the pool (or the pool could not be built).
    #[error("no connection from the pool")]
    Pool(#[from] diesel::r2d2::PoolError),

    /// A connection could not be established.
    #[error("could not connect to the database")]
    Connection(#[from] diesel::ConnectionError),

    /// The set-up of a new pooled connection failed: the pool's session settings (SQLite
    /// pragmas) or the [`on_connect`](crate::DbBuilder::on_connect) hook. The server's own
    /// message (which may contain data) is in `source`.
    #[error("session set-up of a new connection failed")]
    SessionSetup {
        /// What the set-up statement or the hook returned.
        #[source]
        source: diesel::result::Error,
    },

    /// Running the embedded migrations failed.
    #[error("running the migrations failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn query_message(sql: Option<&str>) -> String {
    match sql {
        Some(sql) => format!("query failed: {sql}"),
        None => "database error".to_owned(),
    }
}

/// Server and client messages that mean the session is gone (Diesel reports MySQL/MariaDB's
/// client errors 2006 and 2013, and MariaDB's 1927, as `DatabaseErrorKind::Unknown` with the
/// message only; libpq's as `ClosedConnection` or with these texts).
const CONNECTION_LOST: [&str; 6] = [
    "server has gone away",                      // MySQL/MariaDB 2006
    "lost connection to",                        // MySQL/MariaDB 2013, 2055
    "connection was killed",                     // MariaDB 1927 (KILL CONNECTION)
    "server closed the connection unexpectedly", // libpq
    "no connection to the server",               // libpq, after the above
    "terminating connection",                    // PostgreSQL 57P01 (pg_terminate_backend)
];

fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    match e {
        D::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        // libpq's "no connection to the server" comes as `UnableToSendCommand` when the
        // session died before the statement could be sent (a COMMIT after a kill).
        D::DatabaseError(
            DatabaseErrorKind::Unknown | DatabaseErrorKind::UnableToSendCommand,
            info,
        ) => {
            let message = info.message().to_ascii_lowercase();
            CONNECTION_LOST.iter().any(|m| message.contains(m))
        }
        // A failed COMMIT followed by a failed ROLLBACK (MySQL on a dead session).
        D::RollbackErrorOnCommit {
            commit_error,
            rollback_error,
        } => connection_lost(commit_error) || connection_lost(rollback_error),
        _ => false,
    }
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

    /// True when the error means the connection to the server is gone (killed, server restarted,
    /// network lost), so the work can be retried on another connection: PostgreSQL's
    /// `ClosedConnection`, MySQL/MariaDB's "server has gone away" (2006), "Lost connection to
    /// server during query" (2013) and "Connection was killed" (1927); also inside
    /// [`Error::Interrupted`], whose `resume_after` says where to pick the walk up, and inside
    /// [`Error::BulkInterrupted`], whose checkpoint says where to resume the write. A pooled
    /// connection that died is replaced at the next [`crate::Db::get`]. Whether the statement
    /// took effect before the connection died is unknown: retry writes only when they are
    /// idempotent or ran in a transaction (which then rolled back).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Error::Query { source, .. } => connection_lost(source),
            Error::Interrupted { source, .. } | Error::BulkInterrupted { source, .. } => {
                source.is_connection_lost()
            }
            _ => false,
        }
    }

    /// The SQL involved, if any (with placeholders).
    pub fn sql(&self) -> Option<&str> {
        match self {
            Error::BudgetExceeded { sql, .. } => Some(sql),
            Error::Query { sql, .. } => sql.as_deref(),
            Error::Interrupted { source, .. } => source.sql(),
            _ => None,
        }
    }

    pub(crate) fn query(sql: impl Into<String>, source: diesel::result::Error) -> Self {
        Error::Query {
            sql: Some(sql.into()),
            source,
        }
    }
}

/// A Diesel error outside any one statement, so that [`crate::Conn::transaction`] closures can
/// use `?` on both kinds. Its [`Error::sql`] is `None`.
impl From<diesel::result::Error> for Error {
    fn from(source: diesel::result::Error) -> Self {
        Error::Query { sql: None, source }
    }
}

/// `.optional()` for results of this crate, like Diesel's `OptionalExtension`:
/// a missing row becomes `Ok(None)`.
///
/// # Example
/// ```
/// use diesel_budget::{Error, OptionalExtension};
///
/// let missing: Result<i32, Error> = Err(diesel::result::Error::NotFound.into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as D};

    fn db(kind: DatabaseErrorKind, message: &str) -> D {
        D::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn connection_loss_is_recognised_in_every_form_diesel_gives() {
        let lost = [
            db(DatabaseErrorKind::ClosedConnection, "anything"),
            db(DatabaseErrorKind::Unknown, "Server has gone away"),
            db(DatabaseErrorKind::Unknown, "MySQL server has gone away"),
            db(
                DatabaseErrorKind::Unknown,
                "Lost connection to server during query",
            ),
            db(DatabaseErrorKind::Unknown, "Connection was killed"),
            db(
                DatabaseErrorKind::UnableToSendCommand,
                "no connection to the server\n",
            ),
            D::RollbackErrorOnCommit {
                rollback_error: Box::new(db(DatabaseErrorKind::Unknown, "Server has gone away")),
                commit_error: Box::new(D::NotFound),
            },
        ];
        for e in lost {
            let shown = format!("{e:?}");
            let err = Error::query("SELECT 1", e);
            assert!(err.is_connection_lost(), "{shown}");
            let walk = Error::Interrupted {
                rows_done: 3,
                resume_after: Some("7".into()),
                source: Box::new(err),
            };
            assert!(walk.is_connection_lost(), "{shown}");
            let bulk = Error::BulkInterrupted {
                checkpoint: crate::bulk::Checkpoint::default(),
                source: walk.into(),
            };
            assert!(bulk.is_connection_lost(), "{shown}");
        }
        for e in [
            D::NotFound,
            db(DatabaseErrorKind::UniqueViolation, "lost connection to"),
            db(DatabaseErrorKind::Unknown, "syntax error"),
            db(
                DatabaseErrorKind::UnableToSendCommand,
                "number of parameters must be between 0 and 65535",
            ),
        ] {
            let shown = format!("{e:?}");
            assert!(!Error::query("SELECT 1", e).is_connection_lost(), "{shown}");
        }
    }

    #[test]
    fn messages_are_one_layer_without_keys() {
        let walk = Error::Interrupted {
            rows_done: 3,
            resume_after: Some("\"alice@example.com\"".into()),
            source: Box::new(Error::query("COMMIT", D::NotFound)),
        };
        assert_eq!(walk.to_string(), "batched load interrupted after 3 rows");
        assert_eq!(
            std::error::Error::source(&walk).map(ToString::to_string),
            Some("query failed: COMMIT".into())
        );
        assert_eq!(walk.sql(), Some("COMMIT"));
        let plain = Error::from(D::NotFound);
        assert_eq!(
            (plain.to_string().as_str(), plain.sql()),
            ("database error", None)
        );
        assert!(plain.is_not_found());
    }
}
