//! A tour of diesel-budget: `cargo run --release --example tour`.
//!
//! With no arguments it needs nothing installed: an SQLite file in a temporary directory is
//! migrated, filled with a million rows by `bulk::insert_into` (a progress bar fed by its
//! progress callback), and then shows budgets being enforced, the whole table
//! streamed in batches with peak memory measured against loading it all at once, and what the
//! instrumentation saw.
//!
//! The same tour on a server (its `items` table is emptied first; the database must exist):
//!
//! ```text
//! cargo run --release --features postgres --example tour -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/diesel_budget_tour
//! cargo run --release --features mysql --example tour -- \
//!     --database-url mysql://root@127.0.0.1:3306/diesel_budget_tour
//! ```

use std::error::Error as StdError;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use diesel::prelude::*;
use diesel::query_dsl::methods::ExecuteDsl;
use diesel::query_dsl::LoadQuery;
use diesel_budget::batch::{BatchMode, Batches};
use diesel_budget::budget::Rows;
use diesel_budget::demo::{self, items, Item};
use diesel_budget::prelude::*;
use diesel_budget::query::BudgetQuery;
use diesel_budget::{bulk, testing, BudgetConnection, Error};
use indicatif::{ProgressBar, ProgressStyle};

type BoxError = Box<dyn StdError>;

/// A tour of diesel-budget: budgets enforced, a table streamed in bounded memory, every
/// statement seen.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run on a server instead of a temporary SQLite file: postgres://user@host/db (needs
    /// `--features postgres`) or mysql://user@host/db (needs `--features mysql`). The database
    /// must exist; its `items` table is created if missing and emptied first.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,

    /// Rows to load into `items`.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10_000..=100_000_000))]
    rows: u64,

    /// Rows per batch when streaming the table.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tour failed: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), BoxError> {
    match args.database_url.as_deref() {
        None => sqlite(args),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            postgres(url, args)
        }
        Some(url) if url.starts_with("mysql://") => mysql(url, args),
        Some(url) => Err(format!(
            "unsupported --database-url `{}`: use postgres://... or mysql://..., or leave it out \
             for a temporary SQLite database",
            redact(url)
        )
        .into()),
    }
}

#[cfg(feature = "sqlite")]
fn sqlite(args: &Args) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("diesel-budget-tour")
        .tempdir()?;
    let path = dir.path().join("tour.db");
    let url = path
        .to_str()
        .ok_or("the temporary directory's path is not UTF-8")?;
    tour::<diesel::SqliteConnection>(url, &format!("temporary file {url}"), false, args)
}

#[cfg(not(feature = "sqlite"))]
fn sqlite(_: &Args) -> Result<(), BoxError> {
    Err(missing_feature("sqlite", "SQLite"))
}

#[cfg(feature = "postgres")]
fn postgres(url: &str, args: &Args) -> Result<(), BoxError> {
    tour::<diesel::PgConnection>(url, &redact(url), true, args)
}

#[cfg(not(feature = "postgres"))]
fn postgres(_: &str, _: &Args) -> Result<(), BoxError> {
    Err(missing_feature("postgres", "PostgreSQL"))
}

#[cfg(feature = "mysql")]
fn mysql(url: &str, args: &Args) -> Result<(), BoxError> {
    tour::<diesel::MysqlConnection>(url, &redact(url), true, args)
}

#[cfg(not(feature = "mysql"))]
fn mysql(_: &str, _: &Args) -> Result<(), BoxError> {
    Err(missing_feature("mysql", "MySQL/MariaDB"))
}

#[allow(dead_code)] // unused when every backend is compiled in
fn missing_feature(feature: &str, name: &str) -> BoxError {
    format!(
        "this build of the tour has no {name} support; add `--features {feature}`: \
         cargo run --release --features {feature} --example tour -- --database-url <url>"
    )
    .into()
}

/// `SELECT * FROM items WHERE id <= ?`: the query that fits its budget.
type FirstIds = diesel::dsl::Filter<items::table, diesel::dsl::LtEq<items::id, i32>>;
/// `SELECT COUNT(*) FROM items`.
type CountAll = diesel::dsl::Count<items::table>;
/// Reads the key a keyset walk resumes from.
type KeyOf = fn(&Item) -> i32;
/// The batches of a walk over `items` by `id`.
type ItemBatches<'c, C> = Batches<'c, C, items::table, items::id, i32, Item, KeyOf, Rows>;

/// The bulk load of section 1, for each connection type (where the rows' value type is
/// inferred).
trait BulkSeed: BudgetConnection {
    /// Writes the demo rows `1..=last` with `bulk::insert_into`, moving `bar` after each chunk.
    fn bulk_seed(
        conn: &mut Conn<Self>,
        last: i32,
        bar: &ProgressBar,
    ) -> Result<bulk::Report, Error>;
}

macro_rules! bulk_seed {
    ($feature:literal, $conn:ty) => {
        #[cfg(feature = $feature)]
        impl BulkSeed for $conn {
            fn bulk_seed(
                conn: &mut Conn<Self>,
                last: i32,
                bar: &ProgressBar,
            ) -> Result<bulk::Report, Error> {
                bulk::insert_into(items::table, (1..=last).map(Item::generate))
                    .on_progress(|p: bulk::Progress| bar.set_position(p.rows_done))
                    .execute(conn)
            }
        }
    };
}

bulk_seed!("sqlite", diesel::SqliteConnection);
bulk_seed!("postgres", diesel::PgConnection);
bulk_seed!("mysql", diesel::MysqlConnection);

/// The whole tour, once for every backend. The bounds name each query the tour runs; for
/// `SqliteConnection`, `PgConnection` and `MysqlConnection` they all hold.
fn tour<C>(url: &str, place: &str, server: bool, args: &Args) -> Result<(), BoxError>
where
    C: BudgetConnection,
    diesel::query_builder::SqlQuery: ExecuteDsl<C>,
    items::table: BudgetQuery<'static, C, Item> + LoadQuery<'static, C, Item>,
    FirstIds: BudgetQuery<'static, C, Item> + diesel::query_builder::QueryFragment<C::Backend>,
    C::Backend: Default,
    <C::Backend as diesel::backend::Backend>::QueryBuilder: Default,
    diesel_budget::Budgeted<FirstIds>:
        diesel_budget::LoadBudgeted<'static, C, Item, Output = Vec<Item>>,
    CountAll: BudgetQuery<'static, C, i64> + LoadQuery<'static, C, i64>,
    for<'c> ItemBatches<'c, C>: Iterator<Item = diesel_budget::Result<Vec<Item>>>,
    C: BulkSeed,
{
    let started = Instant::now();
    let rows = args.rows;
    println!(
        "diesel-budget tour: {} rows on {} ({place})",
        thousands(rows),
        C::KIND
    );

    section("1. Migrate and load");
    let t = Instant::now();
    let db = Db::<C>::builder(url)
        .migrations(demo::MIGRATIONS)
        .max_size(2)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| {
            // Each layer's message once, then its cause's (errors print one layer each).
            let mut text = e.to_string();
            let mut cause = StdError::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            if server {
                text.push_str("\n  (the database must exist: createdb / CREATE DATABASE; the tour creates the table)");
            }
            text
        })?;
    let mut conn = db.get()?;
    println!(
        "  Db built (r2d2 pool, instrumentation, embedded migrations run) in {}",
        secs(t.elapsed())
    );
    if server {
        // TRUNCATE rather than DELETE: no dead rows left for the server to skip or vacuum.
        let t = Instant::now();
        let held = items::table
            .count()
            .budget(Budget::rows(1))
            .first::<i64>(&mut conn)?;
        diesel::sql_query("TRUNCATE TABLE items").execute(conn.unbudgeted())?;
        println!(
            "  emptied `items` first ({} rows there): TRUNCATE through conn.unbudgeted(), {}",
            thousands(u64::try_from(held)?),
            secs(t.elapsed())
        );
    }
    // The load: `bulk::insert_into` over a lazy iterator (never collected), chunked by the bind
    // limit (COPY on PostgreSQL), its progress callback driving the bar.
    let bar = ProgressBar::new(rows);
    bar.set_style(ProgressStyle::with_template(
        "  bulk load {bar:40} {human_pos}/{human_len} rows, {per_sec}, eta {eta}",
    )?);
    let t = Instant::now();
    let before = db.stats().unbudgeted;
    let last = i32::try_from(rows)?;
    let report = C::bulk_seed(&mut conn, last, &bar)?;
    bar.finish_and_clear();
    println!(
        "  bulk::insert_into: {} rows from an iterator in {} ({}), one transaction, {} chunks \
         ({} by COPY), {} statements, {} unbudgeted",
        thousands(report.rows),
        secs(t.elapsed()),
        rate(report.rows, t.elapsed()),
        thousands(report.chunks),
        thousands(report.copy_chunks),
        thousands(report.statements),
        thousands(db.stats().unbudgeted - before)
    );

    section("2. Budgets enforced");
    let fits: Vec<Item> = items::table
        .filter(items::id.le(500_i32))
        .budget(Budget::rows(1_000))
        .load(&mut conn)?;
    println!(
        "  fits:     items WHERE id <= 500, Budget::rows(1_000) -> Ok, {} rows",
        fits.len()
    );
    drop(fits);

    let err = expect_exceeded(
        items::table
            .budget(Budget::rows(1_000))
            .load::<Item>(&mut conn),
    )?;
    println!("  too many: all of items, Budget::rows(1_000) -> Err:");
    println!("    {}", fields(&err));
    println!("    {err}");

    let some = items::table
        .budget(Budget::rows(1_000).truncate())
        .load::<Item>(&mut conn)?;
    println!(
        "  truncate: same query, Budget::rows(1_000).truncate() -> Ok, {} rows, is_truncated() = {}",
        some.len(),
        some.is_truncated()
    );
    drop(some);

    let err = expect_exceeded(
        items::table
            .budget(Budget::rows(100_000).bytes(256 << 10))
            .load::<Item>(&mut conn),
    )?;
    println!("  bytes:    Budget::rows(100_000).bytes(256 KiB) (sizes from GetSize) -> Err:");
    println!("    {}", fields(&err));
    println!("    {err}");

    section(&format!(
        "3. Stream all {} rows, Budget::rows({}) per batch",
        thousands(rows),
        thousands(args.batch)
    ));
    let resettable = reset_peak();
    println!(
        "  resident before: {}; peak RSS = VmHWM{}",
        mib(rss("VmRSS:")),
        if resettable {
            ", reset before each walk (/proc/self/clear_refs)"
        } else {
            " (cannot be reset here: each figure includes the phases before it)"
        }
    );
    let key_of: KeyOf = |item| item.id;
    let mut walk_peak = None;
    for mode in [BatchMode::Keyset, BatchMode::Stream] {
        reset_peak();
        let t = Instant::now();
        let mut batches: ItemBatches<'_, C> = items::table
            .budget(Budget::rows(args.batch))
            .batches_by(items::id, key_of, &mut conn)
            .mode(mode);
        let (mut count, mut largest, mut payload) = (0u64, 0usize, 0usize);
        for batch in &mut batches {
            let batch = batch?;
            count += 1;
            largest = largest.max(batch.len());
            payload += batch.iter().map(|i| i.payload.len()).sum::<usize>();
        }
        let done = batches.rows_done();
        drop(batches);
        let elapsed = t.elapsed();
        let peak = rss("VmHWM:");
        walk_peak = walk_peak.max(peak);
        if done != rows {
            return Err(format!("{mode:?} walk delivered {done} rows, expected {rows}").into());
        }
        println!(
            "  {:<7} {} rows ({} of payload) in {} batches of <= {} in {} ({}), peak RSS {}",
            format!("{mode:?}:"),
            thousands(done),
            mib(Some(payload as u64)),
            thousands(count),
            thousands(largest as u64),
            secs(elapsed),
            rate(done, elapsed),
            mib(peak)
        );
    }
    println!(
        "  {}",
        match C::KIND {
            diesel_budget::BackendKind::Postgres =>
                "Keyset: one query per batch, WHERE id > last ORDER BY id LIMIT n; Stream: one query in libpq row-by-row mode",
            _ if C::STREAMS =>
                "Keyset: one query per batch, WHERE id > last ORDER BY id LIMIT n; Stream: one query, rows stepped from the cursor",
            _ => "Keyset: one query per batch; Stream runs keyset batches too, as MySQL's client buffers whole results",
        }
    );

    section("4. The same table loaded at once, without a budget (the escape hatch)");
    reset_peak();
    let t = Instant::now();
    let all: Vec<Item> = items::table.load::<Item>(conn.unbudgeted())?;
    let elapsed = t.elapsed();
    let peak = rss("VmHWM:");
    let loaded = all.len() as u64;
    drop(all);
    let ratio = match (peak, walk_peak) {
        (Some(all), Some(walk)) if walk > 0 => {
            format!(", {:.0}x the batched walk", all as f64 / walk as f64)
        }
        _ => String::new(),
    };
    println!(
        "  items::table.load(conn.unbudgeted()): {} rows in {}, peak RSS {}{ratio}",
        thousands(loaded),
        secs(elapsed),
        mib(peak)
    );
    println!(
        "  (VmHWM is a high-water mark that only rises{}: the full load runs last, or its peak would hide the walks')",
        if resettable { " unless reset" } else { "" }
    );

    section("5. What the instrumentation saw");
    let (result, ledger) = testing::record(&mut conn, |conn| -> diesel_budget::Result<i64> {
        let counted = items::table
            .count()
            .budget(Budget::rows(1))
            .first::<i64>(conn)?;
        items::table
            .filter(items::id.le(500_i32))
            .budget(Budget::rows(1_000))
            .load::<Item>(conn)?;
        let raw = items::table.count().get_result::<i64>(conn.unbudgeted())?;
        Ok(counted.min(raw))
    });
    result?;
    println!(
        "  testing::record(&mut conn, ..) -> Ledger ({} unbudgeted: ledger.assert().no_unbudgeted_queries() would fail):",
        ledger.unbudgeted().count()
    );
    for line in ledger.to_string().lines() {
        println!("    {line}");
    }
    let s = db.stats();
    println!(
        "  db.stats(): {} statements = {} budgeted + {} unbudgeted (seed INSERTs,{} full load, raw count) \
         + {} transaction + {} internal; {} failed",
        thousands(s.statements),
        thousands(s.budgeted),
        thousands(s.unbudgeted),
        if server { " TRUNCATE," } else { "" },
        thousands(s.transaction),
        thousands(s.internal),
        s.failed
    );
    println!(
        "              {} rows received under budgets, {} delivered, {} in statements",
        thousands(s.rows),
        thousands(s.rows_delivered),
        secs(s.time)
    );

    section("6. A cache in front of the hot reads");
    let cache = Cache::builder().max_bytes(1 << 20).build()?;
    cache.attach(&db);
    let hot = || {
        items::table
            .filter(items::id.le(50_i32))
            .budget(Budget::rows(100))
    };
    let read = Instant::now();
    let first = cache.load::<_, _, _, Item>(hot(), &mut conn)?;
    let miss = read.elapsed();
    let read = Instant::now();
    for _ in 0..1_000 {
        cache.load::<_, _, _, Item>(hot(), &mut conn)?;
    }
    let hit = read.elapsed() / 1_000;
    diesel::sql_query("UPDATE items SET name = 'renamed' WHERE id = 1")
        .execute(conn.unbudgeted())?;
    let after = cache.load::<_, _, _, Item>(hot(), &mut conn)?;
    let c = cache.stats();
    println!(
        "  {} rows: a miss took {}, a hit {:.1} µs ({}x); after a raw UPDATE through unbudgeted(): {:?} (was {:?})",
        first.len(),
        secs(miss),
        hit.as_secs_f64() * 1e6,
        miss.as_nanos() / hit.as_nanos().max(1),
        after[0].name,
        first[0].name
    );
    println!(
        "  cache.stats(): {} hits, {} misses, {} fills, {} evictions, {} invalidations, {} bytes held in {} entries",
        c.hits, c.misses, c.fills, c.evictions, c.invalidations, c.bytes, c.entries
    );

    println!("\ntour done in {}", secs(started.elapsed()));
    Ok(())
}

/// The error a query over its budget must give; anything else ends the tour.
fn expect_exceeded<T>(result: diesel_budget::Result<T>) -> Result<Error, BoxError> {
    match result {
        Err(e @ Error::BudgetExceeded { .. }) => Ok(e),
        Err(e) => Err(e.into()),
        Ok(_) => Err("expected Error::BudgetExceeded, but the query fit its budget".into()),
    }
}

/// The structured fields of a budget error.
fn fields(err: &Error) -> String {
    match err {
        Error::BudgetExceeded {
            budget,
            exceeded,
            seen_rows,
            seen_bytes,
            ..
        } => format!(
            "Error::BudgetExceeded {{ exceeded: {exceeded}, budget: {budget}, seen_rows: {seen_rows}, seen_bytes: {seen_bytes}, sql, .. }}"
        ),
        other => format!("{other:?}"),
    }
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

/// A line of /proc/self/status in bytes (`VmHWM:`, `VmRSS:`); `None` where there is no procfs.
fn rss(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resets VmHWM to the current RSS (Linux 4.0+); false where that is not possible.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".to_owned(),
    }
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn rate(rows: u64, d: Duration) -> String {
    let per_s = rows as f64 / d.as_secs_f64().max(1e-9);
    if per_s >= 1e6 {
        format!("{:.2}M rows/s", per_s / 1e6)
    } else {
        format!("{:.0}k rows/s", per_s / 1e3)
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
