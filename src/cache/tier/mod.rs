//! Where cached results live. `memory` (crate-private): this process, an LRU bounded in bytes
//! and entries. Shared tiers, behind the one small trait [`SharedTier`]: Redis (feature `redis`)
//! and Memcached (feature `memcached`), used by `SharedCache` (feature `shared-cache`, which
//! both turn on).

#[cfg(feature = "memcached")]
pub mod memcached;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
#[cfg(any(feature = "redis", feature = "memcached"))]
use std::sync::Mutex;
use std::time::Duration;

/// What a shared tier could not do: the server is unreachable, too slow (past the tier's
/// timeout), or answered something unexpected. A `SharedCache`
/// never hands this to its callers: it reads from the database instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierError {
    /// What failed, without keys or values.
    pub reason: String,
}

impl TierError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        TierError {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared cache tier: {}", self.reason)
    }
}

impl std::error::Error for TierError {}

/// A key-value server shared by several processes: the one trait a
/// `SharedCache` needs. Values are opaque bytes; counters are
/// decimal text (what Redis `INCR` and Memcached `incr` keep). Every key written has an expiry.
///
/// Implementations bound every call by a timeout and return [`TierError`] rather than wait
/// longer; they never panic on what the server sends.
pub trait SharedTier: Send + Sync + fmt::Debug {
    /// The values of `keys` (`None` for a missing key), in one round trip where the server
    /// allows it.
    ///
    /// # Errors
    /// [`TierError`] when the server cannot be reached or answers out of protocol.
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, TierError>;

    /// Stores `value` under `key`, expiring after `ttl`. `Ok(false)` when the server refused
    /// the value (too large): not an error.
    ///
    /// # Errors
    /// [`TierError`] when the server cannot be reached or answers out of protocol.
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, TierError>;

    /// Creates each counter in `keys` that does not exist, at `initial`, expiring after `ttl`;
    /// existing counters are left as they are.
    ///
    /// # Errors
    /// As [`get_many`](Self::get_many).
    fn init_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError>;

    /// Adds one to each counter in `keys` (creating a missing one at `initial + 1`) and sets
    /// its expiry to `ttl` from now.
    ///
    /// # Errors
    /// As [`get_many`](Self::get_many).
    fn bump_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError>;

    /// The largest value the server stores (Memcached: its item size limit, 1 MiB by
    /// default). Larger entries are not sent.
    fn max_value_bytes(&self) -> usize;
}

#[cfg(any(feature = "redis", feature = "memcached"))]
/// Idle connections to a tier's server, reused by the next call. A connection that failed is
/// dropped, never put back, so a restarted server is reached through fresh connections.
pub(crate) struct Idle<T> {
    idle: Mutex<Vec<T>>,
    max_idle: usize,
}

#[cfg(any(feature = "redis", feature = "memcached"))]
impl<T> Idle<T> {
    pub(crate) fn new(max_idle: usize) -> Self {
        Idle {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Runs `f` on an idle connection, or on a new one from `connect`; keeps the connection
    /// for the next call only when `f` succeeded.
    pub(crate) fn with<R>(
        &self,
        connect: impl FnOnce() -> Result<T, TierError>,
        f: impl FnOnce(&mut T) -> Result<R, TierError>,
    ) -> Result<R, TierError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match reused {
            Some(c) => c,
            None => connect()?,
        };
        let out = f(&mut conn)?;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
        Ok(out)
    }
}

#[cfg(any(feature = "redis", feature = "memcached"))]
impl<T> fmt::Debug for Idle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idle")
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}
