//! `ci-overhead`: what the instrumentation and an open recording cost (issue 7), on a point read
//! and on a batched scan of the whole table, against the same work on a plain connection with
//! no instrumentation, measured in the same process, rounds interleaved (median of 5).
//!
//! ```text
//! cargo run --release --all-features --example bench -- ci-overhead --backend sqlite --rows 100000
//! ```
//!
//! Configurations: `plain` (a plain Diesel connection, budgeted queries, no instrumentation),
//! `instrumented` (the same connection with diesel-budget's instrumentation, as a pooled `Conn`
//! has it, no recording open), `recording` (instrumented, inside `testing::record`). One JSON
//! line: per configuration and workload the median time, and the ratios to `plain`.

use super::*;
use diesel_budget::testing;

/// Point reads per round.
const POINT_READS: i32 = 2_000;
/// Rounds of each configuration.
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

macro_rules! overhead {
    ($conn:ty, $seed:path, $url:expr, $rows:expr, $batch:expr) => {{
        $seed($url, $rows)?;
        let rows_i32 = i32::try_from($rows)?;
        let mut plain = <$conn>::establish($url)?;
        let mut inst = <$conn>::establish($url)?;
        diesel_budget::instrument(&mut inst);
        let point = |conn: &mut $conn| -> BoxResult<f64> {
            let start = Instant::now();
            for i in 0..POINT_READS {
                let id = 1 + (i * 7_919) % rows_i32;
                let item: Item = items::table.find(id).budget(Budget::rows(1)).first(conn)?;
                assert_eq!(item.id, id);
            }
            Ok(start.elapsed().as_secs_f64() / f64::from(POINT_READS))
        };
        let scan = |conn: &mut $conn| -> BoxResult<f64> {
            let start = Instant::now();
            let mut tally = Tally::default();
            for rows in items::table
                .budget(Budget::rows(u64::from($batch)))
                .batches_by(items::id, |i: &Item| i.id, conn)
            {
                rows?.iter().for_each(|i| tally.add(i));
            }
            tally.verify($rows)?;
            Ok(start.elapsed().as_secs_f64())
        };
        // [point plain, point instrumented, point recording, scan plain, ...]
        let mut t: [Vec<f64>; 6] = Default::default();
        for _ in 0..ROUNDS {
            t[0].push(point(&mut plain)?);
            t[1].push(point(&mut inst)?);
            let (r, ledger) = testing::record(&mut inst, |c| point(c));
            t[2].push(r?);
            assert_eq!(ledger.round_trips(), POINT_READS as usize);
            t[3].push(scan(&mut plain)?);
            t[4].push(scan(&mut inst)?);
            let (r, _) = testing::record(&mut inst, |c| scan(c));
            t[5].push(r?);
        }
        Ok(t.map(median))
    }};
}

/// Runs the comparison and prints its JSON line.
pub(super) fn run(backend: Backend, rows: u64, url: &str, batch: u32) -> BoxResult<()> {
    let m: BoxResult<[f64; 6]> = match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => overhead!(
            diesel::sqlite::SqliteConnection,
            super::sqlite::seed,
            url,
            rows,
            batch
        ),
        #[cfg(feature = "postgres")]
        Backend::Postgres => overhead!(
            diesel::pg::PgConnection,
            super::postgres::seed,
            url,
            rows,
            batch
        ),
        #[cfg(feature = "mysql")]
        Backend::Mysql => overhead!(
            diesel::mysql::MysqlConnection,
            super::mysql::seed,
            url,
            rows,
            batch
        ),
        #[allow(unreachable_patterns)]
        _ => Err("built without this backend's feature: run with --all-features".into()),
    };
    let m = m?;
    let (hwm, _) = rss()?;
    println!(
        "{}",
        json!({
            "scenario": "ci-overhead",
            "backend": backend.name(),
            "rows": rows,
            "batch": batch,
            "rounds": ROUNDS,
            "point_reads_per_round": POINT_READS,
            "point_us": {"plain": m[0] * 1e6, "instrumented": m[1] * 1e6, "recording": m[2] * 1e6},
            "scan_s": {"plain": m[3], "instrumented": m[4], "recording": m[5]},
            "point_ratio": {"instrumented": m[1] / m[0], "recording": m[2] / m[0]},
            "scan_ratio": {"instrumented": m[4] / m[3], "recording": m[5] / m[3]},
            "peak_rss_mib": hwm as f64 / f64::from(1 << 20),
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "loadavg_1m": loadavg(),
        })
    );
    Ok(())
}
