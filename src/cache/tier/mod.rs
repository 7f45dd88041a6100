//! Where cached results live. [`memory`]: this process, an LRU bounded in bytes and entries.
//! Shared tiers (Redis, Memcached) are not written yet (issue 11).

pub(crate) mod memory;
