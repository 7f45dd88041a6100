//! The Memcached tier: Memcached's meta text protocol (`mg`, `ms`, `ma`; memcached 1.6+) over
//! std's `TcpStream`, with a connect timeout and read/write timeouts on every socket. Reads of
//! several keys go in one write and come back in one round trip. Every key it writes has an
//! expiry. Keys are checked (1..=250 bytes, no spaces or control characters) before they are
//! sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{Idle, SharedTier, TierError};

/// Memcached's default item size limit (`-I 1m`): 1 MiB for key, value and item header.
pub const DEFAULT_ITEM_LIMIT: usize = 1 << 20;

/// Bytes of an item the server spends besides the value (header and key): what
/// [`MemcachedTier::item_limit`] keeps free.
const ITEM_OVERHEAD: usize = 512;

/// A Memcached server as a [`SharedTier`].
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use diesel_budget::cache::tier::memcached::MemcachedTier;
///
/// let tier = MemcachedTier::new("127.0.0.1:11211")?
///     .timeout(Duration::from_millis(50))
///     .item_limit(1 << 20); // the server's -I
/// # Ok::<(), diesel_budget::Error>(())
/// ```
#[derive(Debug)]
pub struct MemcachedTier {
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    item_limit: usize,
    idle: Idle<BufReader<TcpStream>>,
}

fn io(e: std::io::Error) -> TierError {
    TierError::new(format!("memcached: {}", e.kind()))
}

fn protocol(what: &str) -> TierError {
    TierError::new(format!("memcached: unexpected reply ({what})"))
}

impl MemcachedTier {
    /// A tier on the server at `addr` (`host:port`). Nothing is connected yet.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when `addr` does not resolve.
    pub fn new(addr: &str) -> crate::Result<Self> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|_| crate::Error::InvalidArgument {
                name: "addr",
                reason: "not a host:port that resolves".into(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(crate::Error::InvalidArgument {
                name: "addr",
                reason: "resolves to no address".into(),
            });
        }
        Ok(MemcachedTier {
            addrs,
            timeout: Duration::from_millis(100),
            item_limit: DEFAULT_ITEM_LIMIT,
            idle: Idle::new(64),
        })
    }

    /// Longest wait to connect, and for each reply. Default: 100 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The server's item size limit (its `-I` setting). Values larger than this less 512 bytes
    /// (key and item header) are not sent. Default: [`DEFAULT_ITEM_LIMIT`], Memcached's own
    /// default.
    pub fn item_limit(mut self, bytes: usize) -> Self {
        self.item_limit = bytes;
        self
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, TierError> {
        let mut last = None;
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, self.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout)).map_err(io)?;
                    s.set_write_timeout(Some(self.timeout)).map_err(io)?;
                    s.set_nodelay(true).map_err(io)?;
                    return Ok(BufReader::new(s));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| TierError::new("memcached: no address"), io))
    }

    /// Sends `request` and reads the replies with `read`, on a pooled connection.
    fn call<R>(
        &self,
        request: &[u8],
        read: impl FnOnce(&mut BufReader<TcpStream>) -> Result<R, TierError>,
    ) -> Result<R, TierError> {
        self.idle.with(
            || self.connect(),
            |conn| {
                conn.get_mut().write_all(request).map_err(io)?;
                read(conn)
            },
        )
    }
}

/// Checks a key against Memcached's rules.
fn key_ok(key: &str) -> Result<(), TierError> {
    if key.is_empty() || key.len() > 250 || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        Err(TierError::new(
            "memcached: key not allowed (1..=250 bytes, no spaces or controls)",
        ))
    } else {
        Ok(())
    }
}

/// One reply line, without its `\r\n`.
fn line(conn: &mut BufReader<TcpStream>) -> Result<String, TierError> {
    let mut buf = Vec::with_capacity(32);
    let n = conn.read_until(b'\n', &mut buf).map_err(io)?;
    if n == 0 || !buf.ends_with(b"\r\n") {
        return Err(protocol("connection closed"));
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| protocol("not text"))
}

/// Reads a `mg .. v` reply: `VA <size> ..` and the value, or `EN`.
fn value(conn: &mut BufReader<TcpStream>) -> Result<Option<Vec<u8>>, TierError> {
    let head = line(conn)?;
    if head == "EN" {
        return Ok(None);
    }
    let size: usize = head
        .strip_prefix("VA ")
        .and_then(|r| r.split(' ').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("mg"))?;
    let mut data = vec![0u8; size + 2];
    conn.read_exact(&mut data).map_err(io)?;
    if !data.ends_with(b"\r\n") {
        return Err(protocol("value framing"));
    }
    data.truncate(size);
    Ok(Some(data))
}

fn secs(ttl: Duration) -> u64 {
    // Memcached reads more than 30 days as a Unix time: stay below.
    ttl.as_secs().clamp(1, 30 * 24 * 3600)
}

impl SharedTier for MemcachedTier {
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, TierError> {
        let mut req = Vec::with_capacity(keys.len() * 48);
        for k in keys {
            key_ok(k)?;
            req.extend_from_slice(b"mg ");
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b" v\r\n");
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.call(&req, |conn| keys.iter().map(|_| value(conn)).collect())
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, TierError> {
        key_ok(key)?;
        if value.len() > self.max_value_bytes() {
            return Ok(false);
        }
        let mut req = format!("ms {key} {} T{}\r\n", value.len(), secs(ttl)).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.call(&req, |conn| {
            let reply = line(conn)?;
            match reply.as_str() {
                "HD" => Ok(true),
                "NS" => Ok(false),
                // "object too large for cache", "out of memory storing object": not stored;
                // the server has read (swallowed) the value, the connection is in step.
                r if r.starts_with("SERVER_ERROR") => Ok(false),
                _ => Err(protocol("ms")),
            }
        })
    }

    fn init_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError> {
        let value = initial.to_string();
        let mut req = Vec::new();
        for k in keys {
            key_ok(k)?;
            // ME: add (store only when missing).
            req.extend_from_slice(
                format!("ms {k} {} T{} ME\r\n{value}\r\n", value.len(), secs(ttl)).as_bytes(),
            );
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.call(&req, |conn| {
            for _ in keys {
                match line(conn)?.as_str() {
                    "HD" | "NS" => {}
                    _ => return Err(protocol("ms ME")),
                }
            }
            Ok(())
        })
    }

    fn bump_counters(&self, keys: &[&str], initial: u64, ttl: Duration) -> Result<(), TierError> {
        let t = secs(ttl);
        let start = initial.saturating_add(1);
        let mut req = Vec::new();
        for k in keys {
            key_ok(k)?;
            // N: create a missing counter (at J) with that TTL; D1: +1. `ma` keeps an existing
            // counter's TTL (memcached 1.6.18): `mg .. T` refreshes it.
            req.extend_from_slice(format!("ma {k} N{t} J{start} D1\r\nmg {k} T{t}\r\n").as_bytes());
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.call(&req, |conn| {
            for _ in keys {
                match (line(conn)?.as_str(), line(conn)?.as_str()) {
                    ("HD", "HD" | "EN") => {}
                    _ => return Err(protocol("ma")),
                }
            }
            Ok(())
        })
    }

    fn max_value_bytes(&self) -> usize {
        self.item_limit.saturating_sub(ITEM_OVERHEAD)
    }
}
