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
use diesel_budget::demo::{items, Item, MIGRATIONS};
use diesel_budget::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

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
    /// Plain Diesel: hand-written `WHERE id > last ORDER BY id LIMIT batch` loop.
    DieselKeyset,
    /// Ours: `batches_by(items::id, ..)` in `BatchMode::Keyset`, through `Db`.
    BudgetBatches,
    /// Ours: `batches_by(items::id, ..)` in `BatchMode::Stream`, through `Db`.
    BudgetStream,
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
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Which database.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Rows in the table (ids 1..=rows).
    #[arg(long)]
    rows: u64,
    /// Rows per batch for the keyset and budget scenarios.
    #[arg(long, default_value_t = 10_000)]
    batch: u32,
    /// Database URL (a file path for SQLite). Default: target/bench/bench-<rows>.db for SQLite,
    /// else PG_DATABASE_URL / MYSQL_DATABASE_URL, else a local `diesel_budget_bench` database.
    #[arg(long)]
    url: Option<String>,
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
    /// Which connection ran it.
    conn: &'static str,
    /// Rows per batch, where the scenario has batches.
    batch: Option<u32>,
    /// Batches (or round trips) the scan took, where it has them.
    batches: Option<u64>,
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

fn main() -> BoxResult<()> {
    let args = Args::parse();
    let url = database_url(&args)?;
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.scenario == Scenario::Seed {
        return seed(&args, &url);
    }
    let (hwm_before, _) = rss()?;
    let outcome = match args.backend {
        Backend::Sqlite => sqlite::run(args.scenario, &url, args.batch)?,
        Backend::Postgres => postgres::run(args.scenario, &url, args.batch)?,
        Backend::Mysql => mysql::run(args.scenario, &url, args.batch)?,
    };
    let (peak, rss_end) = rss()?;
    outcome.tally.verify(args.rows)?;
    let wall_s = outcome.wall.as_secs_f64();
    let line = json!({
        "scenario": args.scenario.name(),
        "backend": args.backend.name(),
        "rows": args.rows,
        "wall_s": wall_s,
        "rows_per_s": outcome.tally.rows as f64 / wall_s,
        "peak_rss_bytes": peak,
        "peak_rss_mib": peak as f64 / f64::from(1 << 20),
        "rss_before_scan_bytes": hwm_before,
        "rss_end_bytes": rss_end,
        "rows_seen": outcome.tally.rows,
        "checksum": outcome.tally.checksum,
        "batch": outcome.batch,
        "batches": outcome.batches,
        "conn": outcome.conn,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    println!("{line}");
    Ok(())
}

fn database_url(args: &Args) -> BoxResult<String> {
    if let Some(url) = &args.url {
        return Ok(url.clone());
    }
    let from_env = |var: &str, default: &str| -> String {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let url = match args.backend {
        Backend::Sqlite => {
            let dir = target_dir().join("bench");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("bench-{}.db", args.rows));
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
    let (_, db) = split_database(&url)?;
    if db == "test" {
        return Err(format!(
            "{url}: the tests use the `test` database and `seed` truncates `items`; \
             point {} at a bench database (default: diesel_budget_bench)",
            if args.backend == Backend::Postgres {
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

/// Splits `scheme://auth@host:port/db?params` into (`scheme://auth@host:port`, `db`).
fn split_database(url: &str) -> BoxResult<(&str, &str)> {
    let scheme_end = url.find("://").ok_or("database URL without scheme")? + 3;
    let path = url[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .ok_or_else(|| format!("{url}: no database name in the URL"))?;
    let db = &url[path + 1..];
    let db = db.split('?').next().unwrap_or(db);
    if db.is_empty() {
        return Err(format!("{url}: no database name in the URL").into());
    }
    Ok((&url[..path], db))
}

/// How the table stands: (count, min id, max id).
type TableState = (i64, Option<i64>, Option<i64>);

fn seeded(state: TableState, rows: u64, spot: &[Option<Item>]) -> bool {
    let n = i64::try_from(rows).unwrap_or(i64::MAX);
    let ids_match = state == (n, Some(1), Some(n)) || (rows == 0 && state.0 == 0);
    ids_match
        && spot
            .iter()
            .flatten()
            .all(|item| *item == Item::generate(item.id))
        && spot.iter().all(Option::is_some)
}

/// Ids to spot-check for the current row format.
fn spot_ids(rows: u64) -> Vec<i64> {
    let n = i64::try_from(rows).unwrap_or(i64::MAX);
    if n == 0 {
        Vec::new()
    } else {
        vec![1, (n + 1) / 2, n]
    }
}

/// Creates, checks and (re)fills the table; prints one JSON line.
fn seed(args: &Args, url: &str) -> BoxResult<()> {
    let started = Instant::now();
    let rows = args.rows;
    let outcome = match args.backend {
        Backend::Sqlite => sqlite::seed(url, rows)?,
        Backend::Postgres => postgres::seed(url, rows)?,
        Backend::Mysql => mysql::seed(url, rows)?,
    };
    let wall_s = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "scenario": "seed",
            "backend": args.backend.name(),
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

/// Generates rows `from..to` into `chunk` (reused).
fn generate(chunk: &mut Vec<Item>, from: i64, to: i64) {
    chunk.clear();
    chunk.extend((from..to).map(Item::generate));
}

/// Scenarios and seeding for one backend: the same code for each connection type.
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
                        let start = Instant::now();
                        let rows = items::table.load::<Item>(&mut conn)?;
                        let mut tally = Tally::default();
                        rows.iter().for_each(|i| tally.add(i));
                        let wall = start.elapsed();
                        drop(rows);
                        Ok(Outcome { tally, wall, conn: PLAIN, batch: None, batches: None })
                    }
                    Scenario::DieselLoadIter => {
                        let mut conn = RawConn::establish(url)?;
                        let start = Instant::now();
                        let mut tally = Tally::default();
                        for row in items::table.load_iter::<Item, DefaultLoadingMode>(&mut conn)? {
                            tally.add(&row?);
                        }
                        let wall = start.elapsed();
                        Ok(Outcome { tally, wall, conn: PLAIN, batch: None, batches: None })
                    }
                    Scenario::DieselKeyset => {
                        let mut conn = RawConn::establish(url)?;
                        let start = Instant::now();
                        let mut tally = Tally::default();
                        let mut last = i64::MIN;
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
                        let wall = start.elapsed();
                        Ok(Outcome {
                            tally,
                            wall,
                            conn: PLAIN,
                            batch: Some(batch),
                            batches: Some(batches),
                        })
                    }
                    Scenario::BudgetBatches | Scenario::BudgetStream => {
                        let mode = if scenario == Scenario::BudgetStream {
                            BatchMode::Stream
                        } else {
                            BatchMode::Keyset
                        };
                        let db = Db::<RawConn>::builder(url).max_size(1).build()?;
                        let mut conn = db.get()?;
                        let start = Instant::now();
                        let mut tally = Tally::default();
                        let mut batches = 0;
                        for rows in items::table
                            .budget(Budget::rows(u64::from(batch)))
                            .batches_by(items::id, |i: &Item| i.id, &mut conn)
                            .mode(mode)
                        {
                            batches += 1;
                            rows?.iter().for_each(|i| tally.add(i));
                        }
                        let wall = start.elapsed();
                        Ok(Outcome {
                            tally,
                            wall,
                            conn: POOLED,
                            batch: Some(batch),
                            batches: Some(batches),
                        })
                    }
                    Scenario::DieselLoadIterRbr => extra(scenario, url),
                    Scenario::Seed => Err("seed is not a scan".into()),
                }
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
                prepare_database(url)?;
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
                fill(conn, i64::try_from(rows)?, &bar)?;
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
        const INSERT_ROWS: i64 = 6_000;
        /// Rows per transaction, so the WAL stays small.
        const TX_ROWS: i64 = 600_000;

        pub(super) fn extra(scenario: Scenario, _url: &str) -> BoxResult<Outcome> {
            Err(format!("{}: PostgreSQL only", scenario.name()).into())
        }

        pub(super) fn prepare_database(_url: &str) -> BoxResult<()> {
            Ok(())
        }

        pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
            diesel::delete(items::table).execute(conn)?;
            Ok(())
        }

        pub(super) fn fill(conn: &mut RawConn, rows: i64, bar: &ProgressBar) -> BoxResult<()> {
            conn.batch_execute("PRAGMA synchronous = OFF")?;
            let mut chunk = Vec::with_capacity(INSERT_ROWS as usize);
            let mut from = 1;
            while from <= rows {
                let tx_end = (rows + 1).min(from + TX_ROWS);
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    while from < tx_end {
                        let to = tx_end.min(from + INSERT_ROWS);
                        generate(&mut chunk, from, to);
                        diesel::insert_into(items::table)
                            .values(&chunk)
                            .execute(conn)?;
                        bar.inc((to - from) as u64);
                        from = to;
                    }
                    Ok(())
                })?;
            }
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
        const COPY_ROWS: i64 = 50_000;

        pub(super) fn extra(scenario: Scenario, url: &str) -> BoxResult<Outcome> {
            let mut conn = RawConn::establish(url)?;
            let start = Instant::now();
            let mut tally = Tally::default();
            for row in items::table.load_iter::<Item, PgRowByRowLoadingMode>(&mut conn)? {
                tally.add(&row?);
            }
            let wall = start.elapsed();
            debug_assert_eq!(scenario, Scenario::DieselLoadIterRbr);
            Ok(Outcome {
                tally,
                wall,
                conn: "plain diesel::pg::PgConnection",
                batch: None,
                batches: None,
            })
        }

        /// Creates the database when it does not exist (trust auth: connect to `postgres`).
        pub(super) fn prepare_database(url: &str) -> BoxResult<()> {
            if RawConn::establish(url).is_ok() {
                return Ok(());
            }
            let (server, db) = split_database(url)?;
            let mut admin = RawConn::establish(&format!("{server}/postgres"))?;
            if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("refusing to create database {db:?}: not a plain name").into());
            }
            admin.batch_execute(&format!("CREATE DATABASE {db}"))?;
            Ok(())
        }

        pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
            conn.batch_execute("TRUNCATE items")?;
            Ok(())
        }

        pub(super) fn fill(conn: &mut RawConn, rows: i64, bar: &ProgressBar) -> BoxResult<()> {
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
    const INSERT_ROWS: i64 = 10_000;
    /// Rows per transaction.
    const TX_ROWS: i64 = 200_000;

    pub(super) fn extra(scenario: Scenario, _url: &str) -> BoxResult<Outcome> {
        Err(format!("{}: PostgreSQL only", scenario.name()).into())
    }

    /// Creates the database when it does not exist (root, empty password).
    pub(super) fn prepare_database(url: &str) -> BoxResult<()> {
        if RawConn::establish(url).is_ok() {
            return Ok(());
        }
        let (server, db) = split_database(url)?;
        let mut admin = RawConn::establish(server)?;
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("refusing to create database {db:?}: not a plain name").into());
        }
        admin.batch_execute(&format!("CREATE DATABASE IF NOT EXISTS {db}"))?;
        Ok(())
    }

    pub(super) fn clear(conn: &mut RawConn) -> BoxResult<()> {
        conn.batch_execute("TRUNCATE TABLE items")?;
        Ok(())
    }

    pub(super) fn fill(conn: &mut RawConn, rows: i64, bar: &ProgressBar) -> BoxResult<()> {
        let mut chunk = Vec::with_capacity(INSERT_ROWS as usize);
        let mut from = 1;
        while from <= rows {
            let tx_end = (rows + 1).min(from + TX_ROWS);
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                while from < tx_end {
                    let to = tx_end.min(from + INSERT_ROWS);
                    generate(&mut chunk, from, to);
                    diesel::insert_into(items::table)
                        .values(&chunk)
                        .execute(conn)?;
                    bar.inc((to - from) as u64);
                    from = to;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    pub(super) fn after_fill(conn: &mut RawConn) -> BoxResult<()> {
        conn.batch_execute("ANALYZE TABLE items")?;
        Ok(())
    }
});
