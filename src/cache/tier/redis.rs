//! The Redis tier: `MGET` for reads, `SET .. PX` for entries, `SET NX` + `INCR` + `PEXPIRE`
//! in one `MULTI` for counters. Every key it writes has an expiry.

use std::time::Duration;

use super::{Idle, SharedTier, TierError};

/// A Redis server as a [`SharedTier`], over the `redis` crate's synchronous connections.
/// Connections are opened on demand (bounded by the timeout) and kept for reuse; one that
/// failed is dropped.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use diesel_budget::cache::tier::redis::RedisTier;
///
/// let tier = RedisTier::new("redis://127.0.0.1:6379/")?
///     .timeout(Duration::from_millis(50))
///     .max_value_bytes(1 << 20);
/// # Ok::<(), diesel_budget::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisTier {
    client: redis::Client,
    timeout: Duration,
    max_value_bytes: usize,
    idle: Idle<redis::Connection>,
}

fn err(e: redis::RedisError) -> TierError {
    TierError::new(format!("redis: {}", e.category()))
}

impl RedisTier {
    /// A tier on the server at `url` (`redis://host:port/db`). Nothing is connected yet.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a URL the `redis` crate
    /// cannot read.
    pub fn new(url: &str) -> crate::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| crate::Error::InvalidArgument {
            name: "url",
            reason: format!("not a Redis URL: {}", e.category()),
        })?;
        Ok(RedisTier {
            client,
            timeout: Duration::from_millis(100),
            max_value_bytes: 1 << 20,
            idle: Idle::new(64),
        })
    }

    /// Longest wait to connect, and for each reply. Default: 100 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Largest entry stored (Redis itself takes up to 512 MB). Default: 1 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    fn run<R>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<R>,
    ) -> Result<R, TierError> {
        self.idle.with(
            || {
                let conn = self
                    .client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(err)?;
                conn.set_read_timeout(Some(self.timeout)).map_err(err)?;
                conn.set_write_timeout(Some(self.timeout)).map_err(err)?;
                Ok(conn)
            },
            |conn| f(conn).map_err(err),
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl SharedTier for RedisTier {
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, TierError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.run(|c| redis::cmd("MGET").arg(keys).query(c))?;
        if values.len() == keys.len() {
            Ok(values)
        } else {
            Err(TierError::new(
                "redis: MGET answered a different number of values",
            ))
        }
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, TierError> {
        if value.len() > self.max_value_bytes {
            return Ok(false);
        }
        self.run(|c| {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis(ttl))
                .query::<()>(c)
        })?;
        Ok(true)
    }

    fn init_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("SET")
                .arg(*k)
                .arg(initial)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .ignore();
        }
        self.run(|c| pipe.query::<()>(c))
    }

    fn bump_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in keys {
            pipe.cmd("SET")
                .arg(*k)
                .arg(initial)
                .arg("NX")
                .ignore()
                .cmd("INCR")
                .arg(*k)
                .ignore()
                .cmd("PEXPIRE")
                .arg(*k)
                .arg(millis(ttl))
                .ignore();
        }
        self.run(|c| pipe.query::<()>(c))
    }

    fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}
