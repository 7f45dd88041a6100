//! Cache scenarios (issue 11): reads per second through the executor and through the cache.
//!
//! ```text
//! cargo run --release --all-features --example bench -- seed --backend postgres --rows 100000
//! cargo run --release --all-features --example bench -- cache-hit --backend postgres --rows 100000 --threads 8
//! ```
//!
//! - `db-point-read`: `items::table.find(id).budget(Budget::rows(1)).load(..)`, ids spread over
//!   the table, every read to the database.
//! - `cache-hit`: the same reads through `Cache::load`, over 100 ids loaded once first: every
//!   read a hit.
//! - `db-heavy-read` / `cache-heavy-hit`: `count(*)` and `max(created_at)` over the first 10^5
//!   ids (the whole table when smaller), from the database / from the cache.
//! - `cache-zipf`: point reads of ids drawn from a Zipf distribution (s = 1) over the whole
//!   table, through a cache of 1 MiB: hit ratio and bytes held.
//! - `redis-hit` / `memcached-hit` and `redis-heavy-hit` / `memcached-heavy-hit`: the point
//!   reads and the aggregate through a `SharedCache` on the local Redis (`REDIS_URL`) or
//!   Memcached (`MEMCACHED_ADDR`), every read a hit served by the server (one round trip, a MAC
//!   check and deserialising the rows).
//!
//! One JSON line: `ns_per_read` is wall time over reads (all threads), so lower is better and
//! 8 threads must not be slower than 1 when reads scale.

use std::sync::Arc;
use std::time::Instant;

use diesel::dsl::{count_star, max};
use diesel::prelude::*;
use diesel_budget::cache::tier::memcached::MemcachedTier;
use diesel_budget::cache::tier::redis::RedisTier;
use diesel_budget::cache::SharedCache;
use diesel_budget::demo::{items, Item};
use diesel_budget::prelude::*;
use diesel_budget::BudgetConnection;
use serde_json::json;

use super::{rss, BoxResult, Scenario};

/// Reads per thread.
const READS: u64 = 20_000;
/// Reads per thread of the heavy scenarios from the database.
const HEAVY_DB_READS: u64 = 20;
/// Reads per thread of the in-process hit scenarios.
const HIT_READS: u64 = 500_000;

/// Runs a cache scenario; `None` when `scenario` is not one.
pub(super) fn run(
    scenario: Scenario,
    backend: super::Backend,
    url: &str,
    rows: u64,
    threads: usize,
) -> Option<BoxResult<()>> {
    if !matches!(
        scenario,
        Scenario::DbPointRead
            | Scenario::CacheHit
            | Scenario::DbHeavyRead
            | Scenario::CacheHeavyHit
            | Scenario::CacheZipf
            | Scenario::RedisHit
            | Scenario::MemcachedHit
            | Scenario::RedisHeavyHit
            | Scenario::MemcachedHeavyHit
    ) {
        return None;
    }
    Some(match backend {
        #[cfg(feature = "sqlite")]
        super::Backend::Sqlite => sqlite::go(scenario, url, rows, threads),
        #[cfg(feature = "postgres")]
        super::Backend::Postgres => postgres::go(scenario, url, rows, threads),
        #[cfg(feature = "mysql")]
        super::Backend::Mysql => mysql::go(scenario, url, rows, threads),
        #[allow(unreachable_patterns)]
        _ => Err("backend not compiled in: run with --all-features".into()),
    })
}

/// The shared cache of a `redis-*` / `memcached-*` scenario (a namespace of its own).
fn shared(scenario: Scenario) -> BoxResult<Option<SharedCache>> {
    let key = [0x5a; 32];
    let ns = format!("bench-{}", std::process::id());
    let cache = match scenario {
        Scenario::RedisHit | Scenario::RedisHeavyHit => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
            SharedCache::builder(RedisTier::new(&url)?, &key)
        }
        Scenario::MemcachedHit | Scenario::MemcachedHeavyHit => {
            let addr = std::env::var("MEMCACHED_ADDR").unwrap_or_else(|_| "127.0.0.1:11211".into());
            SharedCache::builder(MemcachedTier::new(&addr)?, &key)
        }
        _ => return Ok(None),
    };
    Ok(Some(
        cache
            .namespace(&ns)
            .ttl(std::time::Duration::from_secs(300))
            .build()?,
    ))
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The scenarios for one connection type (concrete in its module, as Diesel's bounds want).
macro_rules! cache_backend {
    ($feature:literal, $module:ident, $conn:ty) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            type C = $conn;

        pub(super) fn go(
            scenario: Scenario,
            url: &str,
            rows: u64,
            threads: usize,
        ) -> BoxResult<()> {
            let threads = threads.max(1);
            let n = i32::try_from(rows)?.max(1);
            let db = Db::<C>::builder(url)
                .max_size(u32::try_from(threads)?)
                .build()?;
            let cache = Cache::builder()
                .max_bytes(if scenario == Scenario::CacheZipf {
                    1 << 20
                } else {
                    64 << 20
                })
                .build()?;
            cache.attach(&db);
            let shared = shared(scenario)?;
            if let Some(shared) = &shared {
                shared.attach(&db);
            }
            let heavy_to = n.min(100_000);
            let heavy = move || {
                items::table
                    .filter(items::id.le(heavy_to))
                    .select((count_star(), max(items::created_at)))
                    .budget(Budget::rows(1))
            };
            // Zipf CDF over the ids (s = 1).
            let cdf: Arc<Vec<f64>> = Arc::new(if scenario == Scenario::CacheZipf {
                let mut acc = 0.0;
                let mut v: Vec<f64> = (1..=n)
                    .map(|k| {
                        acc += 1.0 / f64::from(k);
                        acc
                    })
                    .collect();
                let total = acc;
                v.iter_mut().for_each(|x| *x /= total);
                v
            } else {
                Vec::new()
            });
            // Warm-up: the hit scenarios load their keys once.
            {
                let mut conn = db.get()?;
                match scenario {
                    Scenario::CacheHit => {
                        for id in 1..=n.min(100) {
                            cache.load::<_, _, _, Item>(
                                items::table.find(id).budget(Budget::rows(1)),
                                &mut conn,
                            )?;
                        }
                    }
                    Scenario::CacheHeavyHit => {
                        cache.load::<_, _, _, (i64, Option<i64>)>(heavy(), &mut conn)?;
                    }
                    Scenario::RedisHit | Scenario::MemcachedHit => {
                        let shared = shared.as_ref().ok_or("no shared cache")?;
                        for id in 1..=n.min(100) {
                            shared.load::<_, _, _, Item>(
                                items::table.find(id).budget(Budget::rows(1)),
                                &mut conn,
                            )?;
                        }
                    }
                    Scenario::RedisHeavyHit | Scenario::MemcachedHeavyHit => {
                        let shared = shared.as_ref().ok_or("no shared cache")?;
                        shared.load::<_, _, _, (i64, Option<i64>)>(heavy(), &mut conn)?;
                    }
                    _ => {}
                }
            }
            let reads = match scenario {
                Scenario::DbHeavyRead => HEAVY_DB_READS,
                // In-process hits take ~1 µs: enough of them that a run lasts about a second.
                Scenario::CacheHit | Scenario::CacheHeavyHit => HIT_READS,
                _ => READS,
            };
            let started = Instant::now();
            let checksum: i64 = std::thread::scope(|s| -> BoxResult<i64> {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (db, cache, cdf) = (&db, &cache, Arc::clone(&cdf));
                        let shared = shared.as_ref();
                        s.spawn(move || -> BoxResult<i64> {
                            let mut conn = db.get()?;
                            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                            let mut sum = 0i64;
                            for _ in 0..reads {
                                match scenario {
                                    Scenario::DbPointRead => {
                                        let id = (rng.next() % n as u64) as i32 + 1;
                                        let r: Vec<Item> = items::table
                                            .find(id)
                                            .budget(Budget::rows(1))
                                            .load(&mut conn)?;
                                        sum += i64::from(r[0].id);
                                    }
                                    Scenario::CacheHit => {
                                        let id = (rng.next() % n.min(100) as u64) as i32 + 1;
                                        let r: Arc<[Item]> = cache.load(
                                            items::table.find(id).budget(Budget::rows(1)),
                                            &mut conn,
                                        )?;
                                        sum += i64::from(r[0].id);
                                    }
                                    Scenario::CacheZipf => {
                                        let u = rng.unit();
                                        let id = cdf.partition_point(|&c| c < u) as i32 + 1;
                                        let id = id.min(n);
                                        let r: Arc<[Item]> = cache.load(
                                            items::table.find(id).budget(Budget::rows(1)),
                                            &mut conn,
                                        )?;
                                        sum += i64::from(r[0].id);
                                    }
                                    Scenario::DbHeavyRead => {
                                        let r: Vec<(i64, Option<i64>)> = heavy().load(&mut conn)?;
                                        sum += r[0].0;
                                    }
                                    Scenario::CacheHeavyHit => {
                                        let r: Arc<[(i64, Option<i64>)]> =
                                            cache.load(heavy(), &mut conn)?;
                                        sum += r[0].0;
                                    }
                                    Scenario::RedisHit | Scenario::MemcachedHit => {
                                        let id = (rng.next() % n.min(100) as u64) as i32 + 1;
                                        let r: Vec<Item> = shared.ok_or("no shared cache")?.load(
                                            items::table.find(id).budget(Budget::rows(1)),
                                            &mut conn,
                                        )?;
                                        sum += i64::from(r[0].id);
                                    }
                                    Scenario::RedisHeavyHit | Scenario::MemcachedHeavyHit => {
                                        let r: Vec<(i64, Option<i64>)> = shared
                                            .ok_or("no shared cache")?
                                            .load(heavy(), &mut conn)?;
                                        sum += r[0].0;
                                    }
                                    _ => return Err("not a cache scenario".into()),
                                }
                            }
                            Ok(sum)
                        })
                    })
                    .collect();
                let mut total = 0;
                for h in handles {
                    total += h.join().map_err(|_| "a bench thread panicked")??;
                }
                Ok(total)
            })?;
            let wall = started.elapsed();
            let total_reads = reads * threads as u64;
            let (peak, _) = rss()?;
            let stats = match &shared {
                Some(shared) => shared.stats(),
                None => cache.stats(),
            };
            let line = json!({
                "scenario": scenario.name(),
                "backend": C::KIND.name(),
                "rows": rows,
                "threads": threads,
                "reads": total_reads,
                "wall_s": wall.as_secs_f64(),
                "ns_per_read": wall.as_nanos() as f64 / total_reads as f64,
                "reads_per_s": total_reads as f64 / wall.as_secs_f64(),
                "hit_ratio": stats.hit_ratio(),
                "cache_hits": stats.hits,
                "cache_misses": stats.misses,
                "cache_bytes": stats.bytes,
                "cache_entries": stats.entries,
                "cache_evictions": stats.evictions,
                "tier_errors": stats.tier_errors,
                "checksum": checksum,
                "peak_rss_bytes": peak,
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            });
            println!("{line}");
            Ok(())
        }
        }
    };
}

cache_backend!("sqlite", sqlite, diesel::sqlite::SqliteConnection);
cache_backend!("postgres", postgres, diesel::pg::PgConnection);
cache_backend!("mysql", mysql, diesel::mysql::MysqlConnection);
