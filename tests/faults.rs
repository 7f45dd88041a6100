//! The fault suite (issue 9): faults injected against real databases, with bounded counts and
//! times, one table row per fault and backend:
//!
//! ```text
//! cargo test --all-features --test faults
//! ```
//!
//! (`harness = false`, `test = false` in Cargo.toml: a plain `cargo test` does not run it;
//! scripts/test.sh runs it as a step of its own.) Environment: `PG_DATABASE_URL`,
//! `MYSQL_DATABASE_URL` as for the integration tests; `FAULT_SEED` (a number) replays a run;
//! `FAULT_RUNS` (default 100) kills per walk kind, `FAULT_BULK_RUNS` (default 30) kills per bulk
//! mode, `FAULT_SOAK_SECS` (default 8) the soak, `FAULT_TIER_SECS` (default 4) each shared
//! cache tier case; `FAULT_ONLY` runs only the cases whose "<key> <backend>" contains it (keys:
//! panic, exhaustion, time, hostile, bulk, tokens, soak, tier-redis, tier-memcached, killed,
//! restart; each case draws from its own generator, so `FAULT_SEED` with `FAULT_ONLY` replays
//! that case of a whole run).
//!
//! The server restart cases start servers of their own (tests/faults/server.rs: initdb +
//! pg_ctl, mariadb-install-db + mariadbd, in a temporary directory on a free port), restart
//! those, and stop them at the end; the servers of `PG_DATABASE_URL` / `MYSQL_DATABASE_URL` are
//! never restarted. The shared cache tier cases (tests/faults/tier.rs, with the features `redis`
//! and `memcached`) likewise start `redis-server` / `memcached` of their own on a free port
//! (tests/faults/tier_server.rs) and freeze, kill and restart those; the servers on 6379 and
//! 11211 are never touched.
//!
//! It fails on any panic, row lost or duplicated, stale read, or error that is not the typed
//! error the fault calls for ("other errors").
//!
//! # Adding a fault (extension point)
//! Write a `fn my_fault(env: &Env<C>, rng: &mut Rng) -> Row` in tests/faults/ (the same body
//! runs on every backend, `C` being its connection type; count runs, typed and other errors,
//! lost and duplicated rows in the `Row`; `Row::run` counts a panic) and add it with a key to
//! `cases()` in tests/faults/cases.rs, or to `server_cases()` in tests/faults/killed.rs when it
//! needs a server session to kill. Take test numbers (`id_base`) of your own. Bulk writes
//! (bulk.rs, bulk_killed.rs), page tokens (tokens.rs), the in-process cache (cached reads in
//! the soak), the cache's shared tiers (tier.rs) and the server restart (restart.rs) have
//! theirs.

#[path = "common/mod.rs"]
mod common;
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[path = "faults/server.rs"]
mod server;
#[cfg(all(feature = "redis", feature = "memcached"))]
#[path = "faults/tier_server.rs"]
mod tier_server;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_budget::batch::BatchMode;
use diesel_budget::budget::MAX_ROWS;
use diesel_budget::demo::{items, Item};
use diesel_budget::prelude::*;
use diesel_budget::{bulk, BudgetConnection, Error, Exceeded};

use common::slow::Slow;
use common::{id_base, in_range, Backend, CommittedRows, Killable, TestDb};

/// The payload of the suite's own panics, kept out of the output.
const INTENTIONAL: &str = "fault suite: intentional panic";

// ---------------------------------------------------------------------------------------------
// The table.

/// One row of the report.
#[derive(Debug, Clone, Default)]
struct Row {
    fault: &'static str,
    backend: &'static str,
    /// The case's key for `FAULT_ONLY`.
    key: &'static str,
    runs: u64,
    typed: u64,
    other: u64,
    panics: u64,
    lost: u64,
    duplicated: u64,
    /// Reads that returned something older than what was committed before they began.
    stale: u64,
    /// The first few other errors, for the log.
    notes: Vec<String>,
}

impl Row {
    fn new<C: BudgetConnection>(fault: &'static str) -> Row {
        Row {
            fault,
            backend: C::KIND.name(),
            ..Row::default()
        }
    }

    /// Runs one trial; a panic escaping it is counted.
    fn run(&mut self, trial: impl FnOnce(&mut Row)) {
        self.runs += 1;
        if catch_unwind(AssertUnwindSafe(|| trial(self))).is_err() {
            self.panics += 1;
        }
    }

    fn other(&mut self, what: impl std::fmt::Display) {
        self.other += 1;
        self.note(what);
    }

    /// Keeps `what` for the log (the first few).
    fn note(&mut self, what: impl std::fmt::Display) {
        if self.notes.len() < 3 {
            self.notes.push(what.to_string());
        }
    }

    /// Compares the ids a reader got with those it must get.
    fn compare(&mut self, seen: &[i32], expected: &BTreeSet<i32>) {
        let unique: BTreeSet<i32> = seen.iter().copied().collect();
        self.duplicated += (seen.len() - unique.len()) as u64;
        self.lost += expected.difference(&unique).count() as u64;
    }

    fn failed(&self) -> bool {
        self.other + self.panics + self.lost + self.duplicated + self.stale > 0
    }
}

/// The table, with the command that reproduces each row of this run.
fn print_table(rows: &[Row], seed: u64) {
    println!(
        "| fault | backend | runs | typed errors | other errors | panics | rows lost | rows duplicated | stale reads | reproduce |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | `FAULT_SEED={seed} FAULT_ONLY=\"{} {}\"` |",
            r.fault,
            r.backend,
            r.runs,
            r.typed,
            r.other,
            r.panics,
            r.lost,
            r.duplicated,
            r.stale,
            r.key,
            r.backend
        );
    }
    for r in rows.iter().filter(|r| !r.notes.is_empty()) {
        for n in &r.notes {
            eprintln!("{} / {}: {n}", r.fault, r.backend);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness without a dependency: xorshift64*, seeded from FAULT_SEED or the clock.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Per-backend environment.

/// A backend's pool for the suite (4 connections), and its walk table.
struct Env<C: Backend> {
    tdb: TestDb<C>,
    /// Committed ids `walk_from..walk_from + WALK_ROWS` for keyset walks.
    walk_from: i32,
    /// Committed ids `stream_from..stream_from + stream_rows::<C>()` for streamed walks: more rows
    /// than the socket buffers hold, so that a kill can land before the server sent them all.
    stream_from: i32,
}

impl<C: Backend> Env<C> {
    /// The first id and the number of rows a walk in `mode` reads.
    fn table(&self, mode: diesel_budget::BatchMode) -> (i32, i32) {
        match mode {
            diesel_budget::BatchMode::Stream => (self.stream_from, stream_rows::<C>()),
            _ => (self.walk_from, WALK_ROWS),
        }
    }
}

/// Rows of the keyset walk table, and the walks' batch size.
const WALK_ROWS: i32 = 400;
const WALK_BATCH: u64 = 20;

/// Rows of the stream table: 50,000 where walks really stream (PostgreSQL's row-by-row mode
/// pushes a few MiB into the socket buffers before the client reads them), else as many as
/// the keyset table (MariaDB streams in keyset batches).
fn stream_rows<C: Backend>() -> i32 {
    if C::STREAMS {
        50_000
    } else {
        WALK_ROWS
    }
}

/// Whether the case with key `key` runs on backend `C`: every case, unless `FAULT_ONLY` is set,
/// then those whose "<key> <backend>" contains it (`FAULT_ONLY=bulk`, `FAULT_ONLY="restart
/// postgres"`). Keys: panic, exhaustion, time, hostile, bulk, tokens, soak, tier-redis,
/// tier-memcached, killed, restart.
fn selected<C: BudgetConnection>(key: &str) -> bool {
    std::env::var("FAULT_ONLY").map_or(true, |only| {
        format!("{key} {}", C::KIND.name()).contains(&only)
    })
}

fn all_ids(from: i32, to: i32) -> BTreeSet<i32> {
    (from..to).collect()
}

// ---------------------------------------------------------------------------------------------
// One module per backend, with the same cases (tests/faults/cases.rs) and, on servers, the
// session kills (tests/faults/killed.rs).

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    type C = diesel::sqlite::SqliteConnection;
    include!("faults/cases.rs");
    include!("faults/bulk.rs");
    include!("faults/tokens.rs");
    #[cfg(all(feature = "redis", feature = "memcached"))]
    include!("faults/tier.rs");
    pub fn suite(seed: u64) -> Vec<Row> {
        run_backend(Vec::new(), seed)
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    type C = diesel::pg::PgConnection;
    include!("faults/cases.rs");
    include!("faults/bulk.rs");
    include!("faults/tokens.rs");
    #[cfg(all(feature = "redis", feature = "memcached"))]
    include!("faults/tier.rs");
    include!("faults/killed.rs");
    include!("faults/bulk_killed.rs");
    include!("faults/restart.rs");
    pub fn suite(seed: u64) -> Vec<Row> {
        let mut rows = run_backend(server_cases(), seed);
        if selected::<C>("restart") {
            rows.extend(server_restart(&mut Rng::new(seed ^ 0x5e5e)));
        }
        rows
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    type C = diesel::mysql::MysqlConnection;
    include!("faults/cases.rs");
    include!("faults/bulk.rs");
    include!("faults/tokens.rs");
    #[cfg(all(feature = "redis", feature = "memcached"))]
    include!("faults/tier.rs");
    include!("faults/killed.rs");
    include!("faults/bulk_killed.rs");
    include!("faults/restart.rs");
    pub fn suite(seed: u64) -> Vec<Row> {
        let mut rows = run_backend(server_cases(), seed);
        if selected::<C>("restart") {
            rows.extend(server_restart(&mut Rng::new(seed ^ 0x5e5e)));
        }
        rows
    }
}

#[allow(clippy::vec_init_then_push)] // one push per backend feature
fn main() {
    // Not strict: the faults' own writes go through the escape hatch (see `common::STRICT`).
    common::STRICT.store(false, std::sync::atomic::Ordering::Relaxed);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let intentional = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|s| s == INTENTIONAL);
        if !intentional {
            default_hook(info);
        }
    }));
    let seed = env_u64(
        "FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    println!("fault suite, FAULT_SEED={seed}");
    let start = Instant::now();
    let mut handles: Vec<std::thread::JoinHandle<Vec<Row>>> = Vec::new();
    #[cfg(feature = "sqlite")]
    handles.push(std::thread::spawn(move || sqlite::suite(seed)));
    #[cfg(feature = "postgres")]
    handles.push(std::thread::spawn(move || postgres::suite(seed)));
    #[cfg(feature = "mysql")]
    handles.push(std::thread::spawn(move || mysql::suite(seed)));
    let mut rows = Vec::new();
    let mut crashed = 0;
    for h in handles {
        match h.join() {
            Ok(r) => rows.extend(r),
            Err(_) => crashed += 1,
        }
    }
    print_table(&rows, seed);
    println!(
        "{} faults in {:.0} s",
        rows.iter().map(|r| r.runs).sum::<u64>(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(crashed, 0, "a backend's suite panicked outside any trial");
    let failed: Vec<_> = rows.iter().filter(|r| r.failed()).collect();
    assert!(failed.is_empty(), "faults not handled: {failed:#?}");
}
