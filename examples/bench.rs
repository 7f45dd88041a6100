//! Whole-process benchmark: one scenario per process, one JSON line on stdout.
//!
//! ```text
//! cargo run --release --all-features --example bench -- seed --backend postgres --rows 1000000
//! cargo run --release --all-features --example bench -- budget-stream --backend postgres --rows 1000000
//! ```
//!
//! `seed` creates the `items` table (the crate's migrations, through `Db`) and fills it with ids
//! `1..=rows` from `Item::generate`; it does nothing when the table already holds exactly those
//! rows. Every other scenario reads the whole table once, touches every row (a checksum over ids
//! and string lengths, printed), checks that it saw exactly `rows` rows with the expected ids, and
//! prints wall time, rows/s and the process's peak RSS (`VmHWM` from `/proc/self/status`).
//!
//! Baselines are plain Diesel on a plain connection (`PgConnection::establish` etc.): the best a
//! careful user gets without this crate. Ours run through `Db` (an r2d2 pool, `max_size(1)`),
//! as users run them.
//!
//! Databases: SQLite uses `target/bench/bench-<rows>.db`; PostgreSQL and MySQL/MariaDB use
//! `PG_DATABASE_URL` / `MYSQL_DATABASE_URL` (or `--url`), defaulting to a database named
//! `diesel_budget_bench` on the local server, which is created when missing.
//! `scripts/bench.sh` runs the whole matrix and prints a table of medians.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use diesel::connection::{DefaultLoadingMode, SimpleConnection};
use diesel::dsl::{count_star, max, min};
use diesel::prelude::*;
use diesel_budget::batch::BatchMode;
use diesel_budget::demo::{self, items, Item, MIGRATIONS};
use diesel_budget::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[path = "bench/cache.rs"]
mod cache;
#[path = "bench/page.rs"]
mod page;
#[path = "bench/page_core.rs"]
mod page_core;

#[path = "bench/bulk.rs"]
mod bulk;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Create and fill the table (idempotent). Not a measurement.
    Seed,
    /// Plain Diesel: `items::table.load::<Item>()` of the whole table.
    DieselLoad,
    /// Plain Diesel: `load_iter::<Item, DefaultLoadingMode>`.
    DieselLoadIter,
    /// Plain Diesel, PostgreSQL only: `load_iter::<Item, PgRowByRowLoadingMode>`.
    DieselLoadIterRbr,
    /// Diagnostic, plain Diesel: the streaming path of `budget-stream` with its `ORDER BY id`
    /// (PostgreSQL row-by-row, SQLite `load_iter`), to tell the cost of key order from the
    /// library's own.
    DieselStreamOrdered,
    /// Plain Diesel: hand-written `WHERE id > last ORDER BY id LIMIT batch` loop.
    DieselKeyset,
    /// Ours: `batches_by(items::id, ..)` in `BatchMode::Keyset`, through `Db`.
    BudgetBatches,
    /// Ours: `stream_by(items::id, ..)`, rows one at a time (PostgreSQL row-by-row, SQLite's
    /// cursor, keyset batches on MySQL), through `Db`.
    BudgetStream,
    /// Ours: `batches_by(items::id, ..)` (keyset) under `Budget::rows(100_000).bytes(1 << 20)`:
    /// what a byte-budgeted walk moves over the wire (`wire_*` fields; `--batch` is ignored).
    /// Compare `budget-batches --batch 8000` (about the rows 1 MiB holds) in the same run.
    BudgetBytesWalk,
    /// Per-query overhead, point reads: plain Diesel `items::table.find(id).first` (reported),
    /// in interleaved, shuffled rounds with the three cells of `budget-point`. Every cell runs
    /// the same ids, spread over the table.
    DieselPoint,
    /// Per-query overhead, point reads: `.find(id).budget(Budget::rows(1)).first` on a plain
    /// connection (reported), interleaved with plain Diesel and with both through `Db`.
    BudgetPoint,
    /// Per-query overhead, a 20-row page: plain Diesel
    /// `filter(category = c).filter(id > after).order(id).limit(20)`, interleaved as above.
    DieselPage,
    /// Per-query overhead, the same page with `.budget(Budget::rows(20))` (the same SQL: the
    /// page's own limit is the budget).
    BudgetPage,
    /// The cost of a time limit, point reads: `budget-point`'s budgeted read without a time
    /// limit (cells 0 and 2, plain connection and `Db`) against the same budget with
    /// `.time(5 s)` (cells 1 and 3, reported), interleaved as above.
    TimedPoint,
    /// The cost of a time limit, 20-row pages: `budget-page` without and with `.time(5 s)`.
    TimedPage,
    /// Budgets in CI: instrumentation and recording overhead on point reads and a batched scan,
    /// against a plain connection, in one process (examples/bench/ci.rs).
    CiOverhead,
    /// Ours: `offset_page` at each `--depth` (bench/page.rs).
    OffsetPage,
    /// Ours: `keyset_page` at each `--depth`, token verification included (bench/page.rs).
    KeysetPage,
    /// Cache (examples/bench/cache.rs): a primary-key read through the executor.
    DbPointRead,
    /// Cache: the same read through `Cache::load`, every read a hit.
    CacheHit,
    /// Cache: an aggregate over 10^5 rows through the executor.
    DbHeavyRead,
    /// Cache: the same aggregate through `Cache::load`, every read a hit.
    CacheHeavyHit,
    /// Cache: Zipf-distributed point reads through a 1 MiB cache (hit ratio, bytes held).
    CacheZipf,
    /// Cache: the point read through a `SharedCache` on Redis (`REDIS_URL`, default the local
    /// server), every read a hit served by the server.
    RedisHit,
    /// Cache: the same on Memcached (`MEMCACHED_ADDR`, default 127.0.0.1:11211).
    MemcachedHit,
    /// Cache: the aggregate through a `SharedCache` on Redis, every read a hit.
    RedisHeavyHit,
    /// Cache: the aggregate through a `SharedCache` on Memcached, every read a hit.
    MemcachedHeavyHit,
    /// Not a scenario: reads JSON lines (`--input`) and prints a markdown table of medians.
    Report,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

/// One benchmark scenario against one backend; prints one JSON line.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// What to run (`report` reads the JSON lines of a run and prints a markdown table).
    #[arg(value_enum)]
    scenario: Scenario,
    /// Which database (required for every scenario but `report`).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Rows in the table, ids 1..=rows (required for every scenario but `report`).
    #[arg(long)]
    rows: Option<u64>,
    /// Rows per batch for the keyset and budget scenarios.
    #[arg(long, default_value_t = 10_000)]
    batch: u32,
    /// Database URL (a file path for SQLite). Default: target/bench/bench-<rows>.db for SQLite,
    /// else PG_DATABASE_URL / MYSQL_DATABASE_URL, else a local `diesel_budget_bench` database.
    #[arg(long)]
    url: Option<String>,
    /// Point/page scenarios: measured rounds (each cell once per round, in shuffled order).
    #[arg(long, default_value_t = 60)]
    rounds: u32,
    /// Point/page scenarios: queries per cell and round.
    #[arg(long, default_value_t = 300)]
    per_round: u32,
    /// Point/page scenarios: run only this cell (0 diesel_plain, 1 budget_plain, 2 diesel_db,
    /// 3 budget_db); ci-overhead: 0-5 (point plain, instrumented, recording, scan plain,
    /// instrumented, recording). For counting instructions under `valgrind --tool=callgrind`,
    /// which the machine's noise does not disturb.
    #[arg(long)]
    cell: Option<usize>,
    /// Point/page scenarios: give the `Db` of the pooled cells this default time limit
    /// (`DbBuilder::time_limit`, milliseconds): `timed-point --pool-time-limit-ms 5000` runs
    /// its timed cells at the pool's default, its untimed ones too.
    #[arg(long)]
    pool_time_limit_ms: Option<u64>,
    /// Page scenarios: the page numbers to measure (repeat the flag).
    #[arg(long)]
    depth: Vec<u64>,
    /// Page scenarios: rows per page.
    #[arg(long, default_value_t = 100)]
    page_size: u64,
    /// Page scenarios: measured rounds (each fetches every depth once, shuffled).
    #[arg(long, default_value_t = 200)]
    reps: usize,
    /// Page scenarios: unmeasured rounds first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Page scenarios: the key the pages are ordered by.
    #[arg(long, value_enum, default_value_t = page_core::PageKeyArg::Id)]
    page_key: page_core::PageKeyArg,
    /// Page scenarios: measure only this implementation (`ours`, `diesel`, `diesel-row`), for
    /// `perf stat` or callgrind of one of them.
    #[arg(long)]
    only: Option<String>,
    /// Threads of the cache scenarios.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `report`: the JSON-lines file to read.
    #[arg(long)]
    input: Option<PathBuf>,
    /// `report`: which run of the file (the `run` field; default: the last one in the file).
    #[arg(long)]
    run: Option<String>,
}

/// What a scan saw: every row touched, so the work cannot be skipped.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    rows: u64,
    id_sum: u64,
    payload_bytes: u64,
    checksum: u64,
}

impl Tally {
    #[inline]
    fn add(&mut self, item: &Item) {
        self.rows += 1;
        self.id_sum = self.id_sum.wrapping_add(item.id as u64);
        self.payload_bytes += item.payload.len() as u64;
        self.checksum = self
            .checksum
            .wrapping_add(item.id as u64)
            .wrapping_add(item.category as u64)
            .wrapping_add(item.name.len() as u64)
            .wrapping_add(item.payload.len() as u64)
            .wrapping_add(item.created_at as u64);
    }

    /// Exactly ids 1..=rows, each with its 100-byte payload.
    fn verify(&self, rows: u64) -> BoxResult<()> {
        let expected_ids = (u128::from(rows) * (u128::from(rows) + 1) / 2) as u64;
        if self.rows != rows || self.id_sum != expected_ids || self.payload_bytes != 100 * rows {
            return Err(format!(
                "scan saw {} rows (id sum {}, payload bytes {}), expected {rows} rows (id sum \
                 {expected_ids}, payload bytes {}): seed first",
                self.rows,
                self.id_sum,
                self.payload_bytes,
                100 * rows
            )
            .into());
        }
        Ok(())
    }
}

/// Result of one measured scan.
struct Outcome {
    tally: Tally,
    wall: Duration,
    /// CPU time of this process (all threads, user + system) during the scan, when known.
    cpu: Option<Duration>,
    /// Which connection ran it.
    conn: &'static str,
    /// Rows per batch, where the scenario has batches.
    batch: Option<u32>,
    /// Batches (or round trips) the scan took, where it has them.
    batches: Option<u64>,
    /// Rows the executor received (the pool's `Stats::rows`), for our scenarios.
    rows_received: Option<u64>,
    /// What the OS counted during the scan, for our scenarios.
    wire: Option<Wire>,
}

/// Bytes this process read, as the OS counts them: `rchar` (read-type syscalls on files and
/// pipes: SQLite's file reads; libpq and the MariaDB client read sockets with `recv`, which
/// `rchar` does not count) and the bytes received on its open TCP sockets (`TCP_INFO`).
#[derive(Debug, Clone, Copy, Default)]
struct Wire {
    rchar: u64,
    tcp_received: u64,
}

impl Wire {
    fn now() -> Wire {
        let rchar = std::fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("rchar:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        Wire {
            rchar,
            tcp_received: tcp_bytes_received(),
        }
    }

    fn since(self, before: Wire) -> Wire {
        Wire {
            rchar: self.rchar.saturating_sub(before.rchar),
            tcp_received: self.tcp_received.saturating_sub(before.tcp_received),
        }
    }
}

/// Bytes received so far on every TCP socket this process holds open (`tcpi_bytes_received`).
fn tcp_bytes_received() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut total = 0;
    for entry in fds.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: `info` is a plain C struct of integers, zero is a valid value, and `len` tells
        // the kernel its size; a socket that is not TCP fails the call and is skipped.
        #[allow(unsafe_code)]
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            if rc == 0 {
                total += info.tcpi_bytes_received;
            }
        }
    }
    total
}

/// CPU time of this process so far (user + system, all threads), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Wall and CPU time of a scan.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> (Duration, Option<Duration>) {
        let wall = self.wall.elapsed();
        let cpu = cpu_time()
            .zip(self.cpu)
            .map(|(end, start)| end.saturating_sub(start));
        (wall, cpu)
    }
}

/// Peak and current resident set size of this process, from `/proc/self/status`.
fn rss() -> BoxResult<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> BoxResult<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("{name} missing from /proc/self/status"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// The 1-minute load average, from `/proc/loadavg`.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> BoxResult<()> {
    if bulk::is_bulk(std::env::args().nth(1).as_deref()) {
        return bulk::main();
    }
    let args = Args::parse();
    if args.scenario == Scenario::Report {
        let input = args.input.as_deref().ok_or("report needs --input FILE")?;
        return report::print(input, args.run.as_deref());
    }
    let (Some(backend), Some(rows)) = (args.backend, args.rows) else {
        return Err(format!("{} needs --backend and --rows", args.scenario.name()).into());
    };
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let url = database_url(backend, rows, args.url.as_deref())?;
    if args.scenario == Scenario::Seed {
        return seed(backend, rows, &url);
    }
    if let Some(done) = cache::run(args.scenario, backend, &url, rows, args.threads) {
        return done;
    }
    if args.scenario == Scenario::CiOverhead {
        return ci::run(
            backend,
            rows,
            &url,
            args.batch,
            args.rounds,
            args.per_round,
            args.cell,
        );
    }
    if let Some(kind) = latency::Kind::of(args.scenario) {
        if let Some(ms) = args.pool_time_limit_ms {
            let _ = POOL_TIME_LIMIT.set(Duration::from_millis(ms));
        }
        let cells = match args.cell {
            Some(c) if c < 4 => vec![c],
            Some(c) => return Err(format!("--cell {c}: cells are 0..=3").into()),
            None => vec![0, 1, 2, 3],
        };
        return latency::main(
            args.scenario,
            kind,
            backend,
            rows,
            &url,
            (args.rounds, args.per_round),
            &cells,
        );
    }
    if matches!(args.scenario, Scenario::OffsetPage | Scenario::KeysetPage) {
        let page_args = page_core::PageArgs {
            depths: &args.depth,
            size: args.page_size,
            reps: args.reps,
            warmup: args.warmup,
            key: args.page_key,
            rows,
            only: args.only.as_deref(),
        };
        return page::run(args.scenario, backend, &url, &page_args);
    }
    let load_before = loadavg();
    let (hwm_before, _) = rss()?;
    let outcome = match backend {
        Backend::Sqlite => sqlite::run(args.scenario, &url, args.batch)?,
        Backend::Postgres => postgres::run(args.scenario, &url, args.batch)?,
        Backend::Mysql => mysql::run(args.scenario, &url, args.batch)?,
    };
    let (peak, rss_end) = rss()?;
    outcome.tally.verify(rows)?;
    let wall_s = outcome.wall.as_secs_f64();
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let line = json!({
        "scenario": args.scenario.name(),
        "backend": backend.name(),
        "rows": rows,
        "wall_s": wall_s,
        "rows_per_s": outcome.tally.rows as f64 / wall_s,
        "cpu_s": outcome.cpu.map(|c| c.as_secs_f64()),
        "peak_rss_bytes": peak,
        "peak_rss_mib": peak as f64 / f64::from(1 << 20),
        "rss_before_scan_bytes": hwm_before,
        "rss_end_bytes": rss_end,
        "rows_seen": outcome.tally.rows,
        "checksum": outcome.tally.checksum,
        "batch": outcome.batch,
        "batches": outcome.batches,
        "rows_delivered": outcome.tally.rows,
        "rows_received": outcome.rows_received,
        "wire_rchar_bytes": outcome.wire.map(|w| w.rchar),
        "wire_tcp_bytes": outcome.wire.map(|w| w.tcp_received),
        "wire_bytes_per_row": outcome.wire.map(|w| {
            // The OS's count of what came in: TCP for the servers, file reads for SQLite.
            let bytes = if backend == Backend::Sqlite { w.rchar } else { w.tcp_received };
            bytes as f64 / outcome.tally.rows.max(1) as f64
        }),
        "conn": outcome.conn,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": loadavg(),
        "run": env("BENCH_RUN"),
        "commit": env("BENCH_COMMIT"),
    });
    println!("{line}");
    Ok(())
}

fn database_url(backend: Backend, rows: u64, url: Option<&str>) -> BoxResult<String> {
    if let Some(url) = url {
        return Ok(url.to_owned());
    }
    let from_env = |var: &str, default: &str| -> String {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let url = match backend {
        Backend::Sqlite => {
            let dir = target_dir().join("bench");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("bench-{rows}.db"));
            return path
                .to_str()
                .map(str::to_owned)
                .ok_or_else(|| "target dir is not valid UTF-8".into());
        }
        Backend::Postgres => from_env(
            "PG_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/diesel_budget_bench",
        ),
        Backend::Mysql => from_env(
            "MYSQL_DATABASE_URL",
            "mysql://root@127.0.0.1:3306/diesel_budget_bench",
        ),
    };
    let (_, db, _) = demo::split_url(&url)?;
    if db == "test" {
        return Err(format!(
            "{url}: the tests use the `test` database and `seed` truncates `items`; \
             point {} at a bench database (default: diesel_budget_bench)",
            if backend == Backend::Postgres {
                "PG_DATABASE_URL"
            } else {
                "MYSQL_DATABASE_URL"
            }
        )
        .into());
    }
    Ok(url)
}

/// `CARGO_TARGET_DIR`, or `target/` of this crate.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// How the table stands: (count, min id, max id).
type TableState = (i64, Option<i32>, Option<i32>);

fn seeded(state: TableState, rows: u64, spot: &[Option<Item>]) -> bool {
    let n = i32::try_from(rows).unwrap_or(i32::MAX);
    let ids_match = state == (i64::from(n), Some(1), Some(n)) || (rows == 0 && state.0 == 0);
    ids_match
        && spot
            .iter()
            .flatten()
            .all(|item| *item == Item::generate(item.id))
        && spot.iter().all(Option::is_some)
}

/// Ids to spot-check for the current row format.
fn spot_ids(rows: u64) -> Vec<i32> {
    let n = i32::try_from(rows).unwrap_or(i32::MAX);
    if n == 0 {
        Vec::new()
    } else {
        vec![1, (n + 1) / 2, n]
    }
}

/// Creates, checks and (re)fills the table; prints one JSON line.
fn seed(backend: Backend, rows: u64, url: &str) -> BoxResult<()> {
    let started = Instant::now();
    let outcome = match backend {
        Backend::Sqlite => sqlite::seed(url, rows)?,
        Backend::Postgres => postgres::seed(url, rows)?,
        Backend::Mysql => mysql::seed(url, rows)?,
    };
    let wall_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "scenario": "seed",
            "backend": backend.name(),
            "rows": rows,
            "wall_s": wall_s,
            "seeded": outcome.is_some(),
            "insert_rows_per_s": outcome.map(|d| rows as f64 / d.as_secs_f64()),
        })
    );
    Ok(())
}

fn progress(rows: u64) -> ProgressBar {
    let bar = ProgressBar::new(rows);
    if let Ok(style) =
        ProgressStyle::with_template("seeding {pos}/{len} rows [{wide_bar}] {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Scenarios and seeding for one backend: the same code for each connection type (concrete in
/// its module).
macro_rules! backend {
    ($feature:literal, $module:ident, $conn:ty, $kind:literal, { $($extra:item)* }) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            $($extra)*

            pub(super) type RawConn = $conn;
            const PLAIN: &str = concat!("plain ", stringify!($conn));
            const POOLED: &str = concat!("diesel_budget::Db<", stringify!($conn), "> max_size(1)");

            pub(super) fn run(scenario: Scenario, url: &str, batch: u32) -> BoxResult<Outcome> {
                match scenario {
                    Scenario::DieselLoad => {
                        let mut conn = RawConn::establish(url)?;
                        let clock = Clock::start();
                        let rows = items::table.load::<Item>(&mut conn)?;
                        let mut tally = Tally::default();
                        rows.iter().for_each(|i| tally.add(i));
                        let (wall, cpu) = clock.stop();
                        drop(rows);
                        Ok(Outcome { tally, wall, cpu, conn: PLAIN, batch: None, batches: None, rows_received: None, wire: None })
                    }
                    Scenario::DieselLoadIter => {
                        let mut conn = RawConn::establish(url)?;
                        let clock = Clock::start();
                        let mut tally = Tally::default();
                        for row in items::table.load_iter::<Item, DefaultLoadingMode>(&mut conn)? {
                            tally.add(&row?);
                        }
                        let (wall, cpu) = clock.stop();
                        Ok(Outcome { tally, wall, cpu, conn: PLAIN, batch: None, batches: None, rows_received: None, wire: None })
                    }
                    Scenario::DieselKeyset => {
                        let mut conn = RawConn::establish(url)?;
                        let clock = Clock::start();
                        let mut tally = Tally::default();
                        let mut last = i32::MIN;
                        let mut batches = 0;
                        loop {
                            let rows = items::table
                                .filter(items::id.gt(last))
                                .order(items::id)
                                .limit(i64::from(batch))
                                .load::<Item>(&mut conn)?;
                            batches += u64::from(!rows.is_empty());
                            rows.iter().for_each(|i| tally.add(i));
                            match rows.last() {
                                Some(row) => last = row.id,
                                None => break,
                            }
                            if rows.len() < batch as usize {
                                break;
                            }
                        }
                        let (wall, cpu) = clock.stop();
                        Ok(Outcome {
                            tally,
                            wall,
                            cpu,
                            conn: PLAIN,
                            batch: Some(batch),
                            batches: Some(batches),
                            rows_received: None,
                            wire: None,
                        })
                    }
                    Scenario::BudgetBatches => {
                        let db = Db::<RawConn>::builder(url).max_size(1).build()?;
                        let mut conn = db.get()?;
                        let (stats, wire) = (conn.stats(), Wire::now());
                        let clock = Clock::start();
                        let mut tally = Tally::default();
                        let mut batches = 0;
                        for rows in items::table
                            .budget(Budget::rows(u64::from(batch)))
                            .batches_by(items::id, |i: &Item| i.id, &mut conn)
                            .mode(BatchMode::Keyset)
                        {
                            batches += 1;
                            rows?.iter().for_each(|i| tally.add(i));
                        }
                        let (wall, cpu) = clock.stop();
                        Ok(Outcome {
                            tally,
                            wall,
                            cpu,
                            conn: POOLED,
                            batch: Some(batch),
                            batches: Some(batches),
                            rows_received: Some(conn.stats().rows - stats.rows),
                            wire: Some(Wire::now().since(wire)),
                        })
                    }
                    Scenario::BudgetBytesWalk => {
                        let db = Db::<RawConn>::builder(url).max_size(1).build()?;
                        let mut conn = db.get()?;
                        let (stats, wire) = (conn.stats(), Wire::now());
                        let clock = Clock::start();
                        let mut tally = Tally::default();
                        let mut batches = 0;
                        for rows in items::table
                            .budget(Budget::rows(100_000).bytes(1 << 20))
                            .batches_by(items::id, |i: &Item| i.id, &mut conn)
                            .mode(BatchMode::Keyset)
                        {
                            batches += 1;
                            rows?.iter().for_each(|i| tally.add(i));
                        }
                        let (wall, cpu) = clock.stop();
                        Ok(Outcome {
                            tally,
                            wall,
                            cpu,
                            conn: POOLED,
                            batch: None,
                            batches: Some(batches),
                            rows_received: Some(conn.stats().rows - stats.rows),
                            wire: Some(Wire::now().since(wire)),
                        })
                    }
                    Scenario::BudgetStream => {
                        // Rows one at a time: one row-by-row query on PostgreSQL, SQLite's
                        // cursor; keyset batches of `batch` rows on MySQL.
                        let db = Db::<RawConn>::builder(url).max_size(1).build()?;
                        let mut conn = db.get()?;
                        let (stats, wire) = (conn.stats(), Wire::now());
                        let clock = Clock::start();
                        let mut tally = Tally::default();
                        for row in items::table
                            .budget(Budget::rows(u64::from(batch)))
                            .stream_by(items::id, |i: &Item| i.id, &mut conn)
                        {
                            tally.add(&row?);
                        }
                        let (wall, cpu) = clock.stop();
                        Ok(Outcome {
                            tally,
                            wall,
                            cpu,
                            conn: POOLED,
                            batch: Some(batch),
                            batches: None,
                            rows_received: Some(conn.stats().rows - stats.rows),
                            wire: Some(Wire::now().since(wire)),
                        })
                    }
                    Scenario::DieselLoadIterRbr | Scenario::DieselStreamOrdered => {
                        extra(scenario, url)
                    }
                    Scenario::Seed
                    | Scenario::Report
                    | Scenario::CiOverhead
                    | Scenario::DieselPoint
                    | Scenario::BudgetPoint
                    | Scenario::DieselPage
                    | Scenario::BudgetPage
                    | Scenario::TimedPoint
                    | Scenario::TimedPage
                    | Scenario::OffsetPage
                    | Scenario::KeysetPage
                    | Scenario::DbPointRead
                    | Scenario::CacheHit
                    | Scenario::DbHeavyRead
                    | Scenario::CacheHeavyHit
                    | Scenario::CacheZipf
                    | Scenario::RedisHit
                    | Scenario::MemcachedHit
                    | Scenario::RedisHeavyHit
                    | Scenario::MemcachedHeavyHit => {
                        Err(format!("{} is not a scan", scenario.name()).into())
                    }
                }
            }

            /// One query of `cell` (see [`latency::CELLS`]); returns the ids it read, summed.
            fn one_query(
                kind: latency::Kind,
                cell: usize,
                id: i32,
                plain: &mut RawConn,
                pooled: &mut Conn<RawConn>,
            ) -> BoxResult<u64> {
                use latency::Kind::{Page, Point, TimedPage, TimedPoint};
                let timed = Budget::rows(1).time(Duration::from_secs(5));
                let timed_page = Budget::rows(20).time(Duration::from_secs(5));
                let page = || {
                    items::table
                        .filter(items::category.eq(id % 10))
                        .filter(items::id.gt(id))
                        .order(items::id)
                        .limit(20)
                };
                let sum = |rows: &[Item]| rows.iter().map(|i| i.id as u64).sum::<u64>();
                Ok(match (kind, cell) {
                    (Point, 0) => items::table.find(id).first::<Item>(plain)?.id as u64,
                    (Point, 1) => {
                        items::table.find(id).budget(Budget::rows(1)).first::<Item>(plain)?.id
                            as u64
                    }
                    (Point, 2) => {
                        items::table.find(id).first::<Item>(pooled.unbudgeted())?.id as u64
                    }
                    (Point, _) => {
                        items::table.find(id).budget(Budget::rows(1)).first::<Item>(pooled)?.id
                            as u64
                    }
                    (Page, 0) => sum(&page().load::<Item>(plain)?),
                    (Page, 1) => sum(&page().budget(Budget::rows(20)).load::<Item>(plain)?),
                    (Page, 2) => sum(&page().load::<Item>(pooled.unbudgeted())?),
                    (Page, _) => sum(&page().budget(Budget::rows(20)).load::<Item>(pooled)?),
                    (TimedPoint, 0) => {
                        items::table.find(id).budget(Budget::rows(1)).first::<Item>(plain)?.id
                            as u64
                    }
                    (TimedPoint, 1) => {
                        items::table.find(id).budget(timed).first::<Item>(plain)?.id as u64
                    }
                    (TimedPoint, 2) => {
                        items::table.find(id).budget(Budget::rows(1)).first::<Item>(pooled)?.id
                            as u64
                    }
                    (TimedPoint, _) => {
                        items::table.find(id).budget(timed).first::<Item>(pooled)?.id as u64
                    }
                    (TimedPage, 0) => sum(&page().budget(Budget::rows(20)).load::<Item>(plain)?),
                    (TimedPage, 1) => sum(&page().budget(timed_page).load::<Item>(plain)?),
                    (TimedPage, 2) => {
                        sum(&page().budget(Budget::rows(20)).load::<Item>(pooled)?)
                    }
                    (TimedPage, _) => sum(&page().budget(timed_page).load::<Item>(pooled)?),
                })
            }

            /// Interleaved, shuffled rounds of the four cells; ns per query of each round.
            pub(super) fn latency(
                kind: latency::Kind,
                url: &str,
                rows: u64,
                (rounds, per_round): (u32, u32),
                which: &[usize],
            ) -> BoxResult<latency::Cells> {
                let mut plain = RawConn::establish(url)?;
                let mut builder = Db::<RawConn>::builder(url).max_size(1);
                if let Some(limit) = POOL_TIME_LIMIT.get() {
                    builder = builder.time_limit(*limit);
                }
                let db = builder.build()?;
                let mut pooled = db.get()?;
                let mut rng = latency::Rng::new(0x5EED_0F_B0D6E7);
                let mut cells = latency::Cells::default();
                // Pages need 20 rows of their category after `id`.
                let span = match kind {
                    latency::Kind::Point | latency::Kind::TimedPoint => rows,
                    latency::Kind::Page | latency::Kind::TimedPage => {
                        rows.saturating_sub(250).max(1)
                    }
                };
                // Round 0 warms the statement caches and is not kept.
                for round in 0..=rounds {
                    let ids: Vec<i32> = (0..per_round)
                        .map(|_| 1 + (rng.next() % span) as i32)
                        .collect();
                    let mut order = which.to_vec();
                    rng.shuffle(&mut order);
                    let mut sums = [0u64; 4];
                    for &cell in &order {
                        let start = Instant::now();
                        for &id in &ids {
                            sums[cell] = sums[cell]
                                .wrapping_add(one_query(kind, cell, id, &mut plain, &mut pooled)?);
                        }
                        let ns = start.elapsed().as_nanos() as f64 / f64::from(per_round);
                        if round > 0 {
                            cells.ns[cell].push(ns);
                        }
                    }
                    if order.iter().any(|&c| sums[c] != sums[order[0]]) {
                        return Err(format!("cells read different rows: {sums:?}").into());
                    }
                }
                Ok(cells)
            }

            /// Whether the table holds exactly ids 1..=rows in the current row format.
            pub(super) fn is_seeded(conn: &mut RawConn, rows: u64) -> BoxResult<bool> {
                let state: TableState = items::table
                    .select((count_star(), min(items::id), max(items::id)))
                    .get_result(conn)?;
                let spot = spot_ids(rows)
                    .into_iter()
                    .map(|id| items::table.find(id).first::<Item>(conn).optional())
                    .collect::<QueryResult<Vec<_>>>()?;
                Ok(seeded(state, rows, &spot))
            }

            /// Migrates and checks the table; refills it unless it is already right.
            /// Returns how long the fill took, or `None` when nothing was done.
            pub(super) fn seed(url: &str, rows: u64) -> BoxResult<Option<Duration>> {
                demo::create_database::<RawConn>(url)?;
                let db = Db::<RawConn>::builder(url)
                    .migrations(MIGRATIONS)
                    .max_size(1)
                    .build()?;
                let mut pooled = db.get()?;
                let conn = pooled.unbudgeted();
                if is_seeded(conn, rows)? {
                    return Ok(None);
                }
                let start = Instant::now();
                clear(conn)?;
                let bar = progress(rows);
                fill(conn, i32::try_from(rows)?, &bar)?;
                bar.finish_and_clear();
                after_fill(conn)?;
                if !is_seeded(conn, rows)? {
                    return Err(format!(concat!($kind, ": table is not right after seeding {} rows"), rows).into());
                }
                Ok(Some(start.elapsed()))
            }
        }
    };
}

/// Backends compiled out: say which feature is missing.
macro_rules! missing_backend {
    ($feature:literal, $module:ident) => {
        #[cfg(not(feature = $feature))]
        mod $module {
            use super::*;

            fn missing() -> Box<dyn Error + Send + Sync> {
                concat!(
                    "built without the `",
                    $feature,
                    "` feature: run with --all-features"
                )
                .into()
            }

            pub(super) fn run(_: Scenario, _: &str, _: u32) -> BoxResult<Outcome> {
                Err(missing())
            }

            pub(super) fn seed(_: &str, _: u64) -> BoxResult<Option<Duration>> {
                Err(missing())
            }

            pub(super) fn latency(
                _: latency::Kind,
                _: &str,
                _: u64,
                _: (u32, u32),
                _: &[usize],
            ) -> BoxResult<latency::Cells> {
                Err(missing())
            }
        }
    };
}

missing_backend!("sqlite", sqlite);
missing_backend!("postgres", postgres);
missing_backend!("mysql", mysql);

backend!(
    "sqlite",
    sqlite,
    diesel::sqlite::SqliteConnection,
    "sqlite",
    {
        /// Rows per INSERT: 6,000 x 5 binds = 30,000, under the bundled SQLite's 32,766.
        const INSERT_ROWS: i32 = 6_000;
        /// Rows per transaction, so the WAL stays small.
        const TX_ROWS: i32 = 600_000;

        pub(super) fn extra(scenario: Scenario, url: &str) -> BoxResult<Outcome> {
            if scenario != Scenario::DieselStreamOrdered {
                return Err(format!("{}: PostgreSQL only", scenario.name()).into());
            }
            let mut conn = RawConn::establish(url)?;
            let clock = Clock::start();
            let mut tally = Tally::default();
            for row in items::table
                .order(items::id)
                .load_iter::<Item, DefaultLoadingMode>(&mut conn)?
            {
                tally.add(&row?);
            }
            let (wall, cpu) = clock.stop();
            Ok(Outcome {
                tally,
                wall,
                cpu,
                conn: PLAIN,
                batch: None,
                batches: None,
                rows_received: None,
                wire: None,
            })
        }

        pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
            diesel::delete(items::table).execute(conn)?;
            Ok(())
        }

        pub(super) fn fill(conn: &mut RawConn, rows: i32, bar: &ProgressBar) -> BoxResult<()> {
            conn.batch_execute("PRAGMA synchronous = OFF")?;
            demo::insert_generated(conn, 1..rows + 1, INSERT_ROWS, TX_ROWS, |n| {
                bar.set_position(n)
            })?;
            conn.batch_execute("PRAGMA synchronous = NORMAL")?;
            Ok(())
        }

        pub(super) fn after_fill(conn: &mut RawConn) -> BoxResult<()> {
            // Readers should find the rows in the main file, not in the write-ahead log.
            conn.batch_execute("ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        }
    }
);

backend!(
    "postgres",
    postgres,
    diesel::pg::PgConnection,
    "postgres",
    {
        use diesel::pg::PgRowByRowLoadingMode;

        /// Rows per COPY statement.
        const COPY_ROWS: i32 = 50_000;

        pub(super) fn extra(scenario: Scenario, url: &str) -> BoxResult<Outcome> {
            let mut conn = RawConn::establish(url)?;
            let clock = Clock::start();
            let mut tally = Tally::default();
            if scenario == Scenario::DieselStreamOrdered {
                for row in items::table
                    .order(items::id)
                    .load_iter::<Item, PgRowByRowLoadingMode>(&mut conn)?
                {
                    tally.add(&row?);
                }
            } else {
                for row in items::table.load_iter::<Item, PgRowByRowLoadingMode>(&mut conn)? {
                    tally.add(&row?);
                }
            }
            let (wall, cpu) = clock.stop();
            Ok(Outcome {
                tally,
                wall,
                cpu,
                conn: PLAIN,
                batch: None,
                batches: None,
                rows_received: None,
                wire: None,
            })
        }

        pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
            conn.batch_execute("TRUNCATE items")?;
            Ok(())
        }

        pub(super) fn fill(conn: &mut RawConn, rows: i32, bar: &ProgressBar) -> BoxResult<()> {
            use std::fmt::Write as _;
            // CSV through COPY: the generated rows hold no commas, quotes or newlines.
            let mut csv = String::with_capacity(COPY_ROWS as usize * 160);
            let mut from = 1;
            while from <= rows {
                let to = (rows + 1).min(from + COPY_ROWS);
                csv.clear();
                for id in from..to {
                    let i = Item::generate(id);
                    writeln!(
                        csv,
                        "{},{},{},{},{}",
                        i.id, i.category, i.name, i.payload, i.created_at
                    )?;
                }
                diesel::copy_from(items::table)
                    .from_raw_data(
                        (
                            items::id,
                            items::category,
                            items::name,
                            items::payload,
                            items::created_at,
                        ),
                        |w: &mut dyn std::io::Write| {
                            w.write_all(csv.as_bytes())
                                .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
                        },
                    )
                    .with_format(diesel::pg::CopyFormat::Csv)
                    .execute(conn)?;
                bar.inc((to - from) as u64);
                from = to;
            }
            Ok(())
        }

        pub(super) fn after_fill(conn: &mut RawConn) -> BoxResult<()> {
            // Set hint bits and the visibility map now, so the first measured scan does not.
            conn.batch_execute("VACUUM (FREEZE, ANALYZE) items")?;
            Ok(())
        }
    }
);

backend!("mysql", mysql, diesel::mysql::MysqlConnection, "mysql", {
    /// Rows per INSERT: 10,000 x 5 binds = 50,000 (limit 65,535), ~1.5 MB a statement.
    const INSERT_ROWS: i32 = 10_000;
    /// Rows per transaction.
    const TX_ROWS: i32 = 200_000;

    pub(super) fn extra(scenario: Scenario, _url: &str) -> BoxResult<Outcome> {
        Err(format!("{}: not on MySQL", scenario.name()).into())
    }

    pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
        conn.batch_execute("TRUNCATE TABLE items")?;
        Ok(())
    }

    pub(super) fn fill(conn: &mut RawConn, rows: i32, bar: &ProgressBar) -> BoxResult<()> {
        demo::insert_generated(conn, 1..rows + 1, INSERT_ROWS, TX_ROWS, |n| {
            bar.set_position(n)
        })?;
        Ok(())
    }

    pub(super) fn after_fill(conn: &mut RawConn) -> BoxResult<()> {
        conn.batch_execute("ANALYZE TABLE items")?;
        Ok(())
    }
});

/// `--pool-time-limit-ms`: the default time limit of the latency scenarios' `Db`.
static POOL_TIME_LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Per-query overhead: plain Diesel against the executor, point reads and 20-row pages.
mod latency {
    use super::*;

    /// The four cells of every round: plain Diesel and budgeted, on a plain connection and
    /// through `Db` (plain Diesel there through `Conn::unbudgeted`, so both pay the pool's
    /// instrumentation).
    pub(super) const CELLS: [&str; 4] = ["diesel_plain", "budget_plain", "diesel_db", "budget_db"];

    /// The cells of `timed-point` / `timed-page`: a budget without and with a time limit.
    pub(super) const TIMED_CELLS: [&str; 4] =
        ["untimed_plain", "timed_plain", "untimed_db", "timed_db"];

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kind {
        Point,
        Page,
        TimedPoint,
        TimedPage,
    }

    impl Kind {
        pub(super) fn of(scenario: Scenario) -> Option<Kind> {
            match scenario {
                Scenario::DieselPoint | Scenario::BudgetPoint => Some(Kind::Point),
                Scenario::DieselPage | Scenario::BudgetPage => Some(Kind::Page),
                Scenario::TimedPoint => Some(Kind::TimedPoint),
                Scenario::TimedPage => Some(Kind::TimedPage),
                _ => None,
            }
        }

        fn cells(self) -> [&'static str; 4] {
            match self {
                Kind::Point | Kind::Page => CELLS,
                Kind::TimedPoint | Kind::TimedPage => TIMED_CELLS,
            }
        }
    }

    /// Nanoseconds per query of each round, per cell.
    #[derive(Debug, Default)]
    pub(super) struct Cells {
        pub(super) ns: [Vec<f64>; 4],
    }

    /// xorshift64*: ids and shuffles, reproducible from the seed.
    pub(super) struct Rng(u64);

    impl Rng {
        pub(super) fn new(seed: u64) -> Rng {
            Rng(seed.max(1))
        }

        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(super) fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub(super) fn main(
        scenario: Scenario,
        kind: Kind,
        backend: Backend,
        rows: u64,
        url: &str,
        (rounds, per_round): (u32, u32),
        which: &[usize],
    ) -> BoxResult<()> {
        if rounds == 0 || per_round == 0 {
            return Err("--rounds and --per-round must be at least 1".into());
        }
        let load_before = loadavg();
        let shape = (rounds, per_round);
        let cells = match backend {
            Backend::Sqlite => sqlite::latency(kind, url, rows, shape, which)?,
            Backend::Postgres => postgres::latency(kind, url, rows, shape, which)?,
            Backend::Mysql => mysql::latency(kind, url, rows, shape, which)?,
        };
        let med: Vec<f64> = cells.ns.iter().map(|v| median(v)).collect();
        let own = match scenario {
            Scenario::DieselPoint | Scenario::DieselPage => med[0],
            _ => med[1],
        };
        let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        let line = json!({
            "scenario": scenario.name(),
            "backend": backend.name(),
            "rows": rows,
            "ns_per_query": own,
            "rounds": rounds,
            "per_round": per_round,
            "cells_ns_per_query": kind.cells().iter().zip(&med).map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "ratio_plain": med[1] / med[0],
            "ratio_db": med[3] / med[2],
            "cells_run": which,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "loadavg_1m_before": load_before,
            "loadavg_1m_after": loadavg(),
            "run": env("BENCH_RUN"),
            "commit": env("BENCH_COMMIT"),
        });
        println!("{line}");
        Ok(())
    }
}

/// `bench report`: medians of a run's JSON lines as markdown tables.
#[path = "bench/ci.rs"]
mod ci;

mod report {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    const MIB: f64 = (1 << 20) as f64;
    /// Peak RSS allowed to `budget-stream` at 10^6 rows.
    const STREAM_PEAK_MIB: f64 = 32.0;
    /// Spread of `budget-stream` peaks from 10^5 rows up that still counts as flat.
    const FLAT_MIB: f64 = 4.0;
    /// Least rows/s of ours against its baseline.
    const MIN_RATIO: f64 = 0.9;

    #[derive(Debug, Default)]
    struct Samples {
        rows_per_s: Vec<f64>,
        peak_mib: Vec<f64>,
        cpu_us_per_row: Vec<f64>,
        load: Vec<f64>,
    }

    fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn backend_of(name: &str) -> Option<Backend> {
        Backend::from_str(name, true).ok()
    }

    /// The plain-Diesel path each of ours is measured against.
    fn baseline(scenario: Scenario, backend: Backend) -> Option<Scenario> {
        match (scenario, backend) {
            (Scenario::BudgetBatches, _) => Some(Scenario::DieselKeyset),
            (Scenario::BudgetStream, Backend::Postgres) => Some(Scenario::DieselLoadIterRbr),
            (Scenario::BudgetStream, Backend::Sqlite) => Some(Scenario::DieselLoadIter),
            (Scenario::BudgetStream, Backend::Mysql) => Some(Scenario::DieselKeyset),
            _ => None,
        }
    }

    /// Plain-Diesel figures at 10^6 rows measured earlier (shared/FACTS.md): MiB, rows/s.
    fn reference(scenario: Scenario, backend: Backend) -> Option<(f64, Option<f64>)> {
        use Backend::*;
        use Scenario::*;
        Some(match (scenario, backend) {
            (DieselLoad, Postgres) => (458.0, None),
            (DieselLoad, Sqlite) => (217.0, None),
            (DieselLoad, Mysql) => (370.0, None),
            (DieselLoadIter, Postgres) => (252.0, None),
            (DieselLoadIter, Sqlite) => (11.6, None),
            (DieselLoadIter, Mysql) => (164.0, None),
            (DieselLoadIterRbr, Postgres) => (13.2, Some(2.10e6)),
            (DieselKeyset, Postgres) => (17.6, Some(0.96e6)),
            (DieselKeyset, Sqlite) => (13.9, Some(2.42e6)),
            (DieselKeyset, Mysql) => (14.8, Some(0.83e6)),
            _ => return None,
        })
    }

    fn rate(r: f64) -> String {
        if r >= 1e6 {
            format!("{:.2}M", r / 1e6)
        } else {
            format!("{:.0}k", r / 1e3)
        }
    }

    fn verdict(ok: bool) -> &'static str {
        if ok {
            "met"
        } else {
            "**missed**"
        }
    }

    type Key = (usize, u64, usize);

    pub(super) fn print(input: &Path, run: Option<&str>) -> BoxResult<()> {
        let text =
            std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
        let lines = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()?;
        let run = run.map(str::to_owned).or_else(|| {
            lines
                .iter()
                .rev()
                .find_map(|v| v["run"].as_str().map(str::to_owned))
        });
        let backends = Backend::value_variants();
        let scenarios = Scenario::value_variants();
        let mut groups: BTreeMap<Key, Samples> = BTreeMap::new();
        for v in &lines {
            if v["run"].as_str() != run.as_deref() {
                continue;
            }
            let (Some(backend), Some(scenario), Some(rows), Some(rps), Some(peak)) = (
                v["backend"].as_str().and_then(backend_of),
                v["scenario"]
                    .as_str()
                    .and_then(|s| Scenario::from_str(s, true).ok()),
                v["rows"].as_u64(),
                v["rows_per_s"].as_f64(),
                v["peak_rss_bytes"].as_f64(),
            ) else {
                continue;
            };
            let b = backends.iter().position(|x| *x == backend).unwrap_or(0);
            let s = scenarios.iter().position(|x| *x == scenario).unwrap_or(0);
            let g = groups.entry((b, rows, s)).or_default();
            g.rows_per_s.push(rps);
            g.peak_mib.push(peak / MIB);
            if let Some(cpu) = v["cpu_s"].as_f64() {
                g.cpu_us_per_row.push(cpu * 1e6 / rows.max(1) as f64);
            }
            if let Some(load) = v["loadavg_1m_before"].as_f64() {
                g.load.push(load);
            }
        }
        if groups.is_empty() {
            return Err(format!(
                "{}: no measurements for run {}",
                input.display(),
                run.as_deref().unwrap_or("(none)")
            )
            .into());
        }
        let med = |b: usize, rows: u64, s: Scenario| -> Option<(f64, f64)> {
            let s = scenarios.iter().position(|x| *x == s)?;
            let g = groups.get(&(b, rows, s))?;
            Some((median(&g.rows_per_s), median(&g.peak_mib)))
        };
        let loads: Vec<f64> = groups
            .values()
            .flat_map(|g| g.load.iter().copied())
            .collect();
        println!(
            "Run `{}` ({}): medians of {} runs per cell; 1-minute load average {:.2}–{:.2} \
             (median {:.2}) when scenarios started.\n",
            run.as_deref().unwrap_or("-"),
            input.display(),
            groups
                .values()
                .map(|g| g.rows_per_s.len())
                .max()
                .unwrap_or(0),
            loads.iter().copied().fold(f64::INFINITY, f64::min),
            loads.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            median(&loads),
        );

        println!(
            "| backend | rows | scenario | n | rows/s | peak RSS MiB | client CPU µs/row | vs | rows/s ratio | ratio vs diesel-stream-ordered |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|---|---:|---:|");
        for (&(b, rows, s), g) in &groups {
            let backend = backends[b];
            let scenario = scenarios[s];
            let (vs, ratio) = match baseline(scenario, backend)
                .and_then(|base| Some((base, med(b, rows, base)?)))
            {
                Some((base, (base_rps, _))) => (
                    base.name(),
                    format!("{:.2}", median(&g.rows_per_s) / base_rps),
                ),
                None => (String::new(), String::new()),
            };
            // CPU time has a 10 ms resolution: meaningless for short scans.
            let cpu = if g.cpu_us_per_row.is_empty() || rows < 100_000 {
                String::new()
            } else {
                format!("{:.2}", median(&g.cpu_us_per_row))
            };
            let ordered = match (scenario, med(b, rows, Scenario::DieselStreamOrdered)) {
                (Scenario::BudgetStream, Some((o, _))) => {
                    format!("{:.2}", median(&g.rows_per_s) / o)
                }
                _ => String::new(),
            };
            println!(
                "| {} | {rows} | {} | {} | {} | {:.1} | {cpu} | {vs} | {ratio} | {ordered} |",
                backend.name(),
                scenario.name(),
                g.rows_per_s.len(),
                rate(median(&g.rows_per_s)),
                median(&g.peak_mib),
            );
        }

        println!("\nTargets:\n");
        println!("| backend | target | measured | |");
        println!("|---|---|---|---|");
        for (b, backend) in backends.iter().enumerate() {
            let sizes: Vec<u64> = {
                let mut v: Vec<u64> = groups.keys().filter(|k| k.0 == b).map(|k| k.1).collect();
                v.dedup();
                v
            };
            if sizes.is_empty() {
                continue;
            }
            if let Some((_, peak)) = med(b, 1_000_000, Scenario::BudgetStream) {
                println!(
                    "| {} | budget-stream peak RSS at 10^6 ≤ {STREAM_PEAK_MIB} MiB | {peak:.1} MiB | {} |",
                    backend.name(),
                    verdict(peak <= STREAM_PEAK_MIB)
                );
            }
            let peaks: Vec<(u64, f64)> = sizes
                .iter()
                .filter(|&&rows| rows >= 100_000)
                .filter_map(|&rows| Some((rows, med(b, rows, Scenario::BudgetStream)?.1)))
                .collect();
            if peaks.len() > 1 {
                let lo = peaks.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                let hi = peaks.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
                let list: Vec<String> = peaks.iter().map(|(r, p)| format!("{r}: {p:.1}")).collect();
                println!(
                    "| {} | budget-stream peak flat from 10^5 up (spread ≤ {FLAT_MIB} MiB) | {} (spread {:.1} MiB) | {} |",
                    backend.name(),
                    list.join(", "),
                    hi - lo,
                    verdict(hi - lo <= FLAT_MIB)
                );
            }
            for ours in [Scenario::BudgetStream, Scenario::BudgetBatches] {
                let Some(base) = baseline(ours, *backend) else {
                    continue;
                };
                for &rows in sizes.iter().filter(|&&r| r >= 100_000) {
                    let (Some((o, _)), Some((p, _))) = (med(b, rows, ours), med(b, rows, base))
                    else {
                        continue;
                    };
                    println!(
                        "| {} | {} rows/s ≥ {MIN_RATIO} × {} at {rows} | {} / {} = {:.2} | {} |",
                        backend.name(),
                        ours.name(),
                        base.name(),
                        rate(o),
                        rate(p),
                        o / p,
                        verdict(o / p >= MIN_RATIO)
                    );
                }
            }
        }

        let mut header = false;
        for (b, backend) in backends.iter().enumerate() {
            for s in scenarios {
                let (Some((ref_mib, ref_rps)), Some((rps, peak))) =
                    (reference(*s, *backend), med(b, 1_000_000, *s))
                else {
                    continue;
                };
                if !header {
                    println!("\nPlain Diesel at 10^6 rows against the reference figures (shared/FACTS.md):\n");
                    println!("| backend | scenario | peak RSS MiB (ref) | rows/s (ref) |");
                    println!("|---|---|---:|---:|");
                    header = true;
                }
                println!(
                    "| {} | {} | {peak:.1} ({ref_mib}) | {} ({}) |",
                    backend.name(),
                    s.name(),
                    rate(rps),
                    ref_rps.map(rate).unwrap_or_else(|| "-".into()),
                );
            }
        }
        Ok(())
    }
}
