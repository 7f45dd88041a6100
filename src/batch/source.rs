//! A walk's statements on a database: the [`Source`] the walk state machine runs on outside its
//! unit tests. Each statement goes through the executor's cursor ([`crate::exec`]).

use super::machine::{Batch, Source};
use super::walk::Walk;
use crate::backend::BudgetConnection;
use crate::budget::{BudgetSpec, Meter, Rows};
use crate::error::{Error, Result};
use crate::exec::{load_batch, load_metered, Stream};
use crate::sql::inspect::{has_top_level_limit, has_top_level_offset};
use crate::sql::keyset::Keyset;

/// The connection, the query as given and the key of a walk.
pub(crate) struct Database<'c, C, Q, K> {
    /// Taken by the stream of a streamed walk.
    pub(super) conn: Option<&'c mut C>,
    pub(super) query: Q,
    pub(super) key: K,
    /// Whether this connection can stream the walk as one statement: the backend streams and
    /// its session carries no time limit of the pool's (a streamed statement would run under
    /// it, and a time limit is per statement: batches instead).
    pub(super) streams: bool,
}

impl<'c, C, Q, K, V, U, M> Source<U, V, M> for Database<'c, C, Q, K>
where
    C: BudgetConnection,
    Q: Walk<'c, C, K, V, U>,
    K: Keyset,
    M: Meter<U>,
    U: 'static,
{
    type Stream = Stream<'c, U, M>;

    fn can_stream(&self) -> bool {
        self.streams
    }

    fn key_columns(&self) -> Vec<&'static str> {
        self.key.columns()
    }

    fn check(&mut self) -> Result<()> {
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

    fn batch(&mut self, after: Option<V>, spec: BudgetSpec, limit: u64) -> Result<Batch<U>> {
        let query = self.query.batch(self.key, after);
        let conn = self.conn.as_deref_mut().ok_or_else(given_away)?;
        load_batch::<C, U, _, M>(query, spec, limit, conn)
    }

    fn probe(&mut self, at: V, spec: BudgetSpec) -> Result<Option<U>> {
        let query = self.query.probe(self.key, at);
        let conn = self.conn.as_deref_mut().ok_or_else(given_away)?;
        let loaded = load_metered::<C, U, _, Rows>(query, spec, 1, conn)?;
        Ok(loaded.rows.into_iter().next())
    }

    fn stream(&mut self, after: Option<V>, spec: BudgetSpec) -> Result<Stream<'c, U, M>> {
        let query = self.query.batch(self.key, after);
        let conn = self.conn.take().ok_or_else(given_away)?;
        Stream::open(query, spec, conn)
    }
}

/// The connection went to the walk's stream, which holds it to the end of the walk: the state
/// machine never asks for another statement then.
fn given_away() -> Error {
    Error::InvalidArgument {
        name: "walk",
        reason: "the walk's connection is held by its stream".into(),
    }
}
