//! `ci-overhead`: what the instrumentation and an open recording cost (issue 7), on a point read
//! and on a batched scan of the whole table, against the same work on a plain connection with
//! no instrumentation, measured in the same process.
//!
//! ```text
//! cargo run --release --all-features --example bench -- ci-overhead --backend sqlite \
//!     --rows 100000 --rounds 30 --batch 1000
//! ```
//!
//! Configurations: `plain` (a plain Diesel connection, budgeted queries, no instrumentation),
//! `instrumented` (the same kind of connection with diesel-budget's instrumentation, as a pooled
//! `Conn` has it, no recording open), `recording` (instrumented, inside `testing::record`, which
//! keeps every statement's SQL and binds). Workloads: `--per-round` point reads (default 300;
//! `find(id).budget(Budget::rows(1)).first`, ids spread over the table) and one batched scan of
//! the whole table (`batches_by(items::id, ..)`, `--batch` rows a batch). Each of `--rounds`
//! rounds runs the six cells once, in a freshly shuffled order. One JSON line: per cell the
//! median `ns_per_query` (point) or `ns_per_row` (scan), and the ratios to `plain` as the
//! median of the per-round ratios (each round's pair measured close together, so drift of a
//! loaded machine cancels) beside the ratio of the medians. `--cell N` (0-5, in the order of
//! [`CELLS`]) runs one cell alone, for counting its instructions under
//! `valgrind --tool=callgrind`, which a loaded machine does not disturb.

use super::*;
use diesel_budget::testing;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// A small deterministic shuffle (xorshift), so runs are comparable.
fn shuffle<T>(v: &mut [T], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

/// Cells: 0-2 point reads (plain, instrumented, recording), 3-5 the scan.
const CELLS: [&str; 6] = [
    "point plain",
    "point instrumented",
    "point recording",
    "scan plain",
    "scan instrumented",
    "scan recording",
];

macro_rules! overhead {
    ($conn:ty, $seed:path, $url:expr, $rows:expr, $batch:expr, $rounds:expr, $per_round:expr, $only:expr) => {{
        $seed($url, $rows)?;
        let rows_i32 = i32::try_from($rows)?;
        let per_round = i32::try_from($per_round)?;
        let mut plain = <$conn>::establish($url)?;
        let mut inst = <$conn>::establish($url)?;
        diesel_budget::instrument(&mut inst);
        // Seconds per point read.
        let point = |conn: &mut $conn| -> BoxResult<f64> {
            let start = Instant::now();
            for i in 0..per_round {
                let id = 1 + (i * 7_919) % rows_i32;
                let item: Item = items::table.find(id).budget(Budget::rows(1)).first(conn)?;
                assert_eq!(item.id, id);
            }
            Ok(start.elapsed().as_secs_f64() / f64::from(per_round))
        };
        // Seconds per row of the scan.
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
            Ok(start.elapsed().as_secs_f64() / $rows as f64)
        };
        // One warm-up round, then the measured ones.
        let mut t: [Vec<f64>; 6] = Default::default();
        let mut order: Vec<usize> = (0..6).filter(|c| $only.is_none_or(|o| o == *c)).collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for round in 0..=$rounds {
            shuffle(&mut order, &mut seed);
            for &cell in &order {
                let s = match cell {
                    0 => point(&mut plain)?,
                    1 => point(&mut inst)?,
                    2 => {
                        let (r, ledger) = testing::record(&mut inst, |c| point(c));
                        assert_eq!(ledger.round_trips(), $per_round as usize);
                        r?
                    }
                    3 => scan(&mut plain)?,
                    4 => scan(&mut inst)?,
                    _ => {
                        let (r, ledger) = testing::record(&mut inst, |c| scan(c));
                        assert!(ledger.round_trips() > 0);
                        r?
                    }
                };
                if round > 0 {
                    t[cell].push(s);
                }
            }
        }
        Ok(t)
    }};
}

/// Runs the comparison and prints its JSON line.
pub(super) fn run(
    backend: Backend,
    rows: u64,
    url: &str,
    batch: u32,
    rounds: u32,
    per_round: u32,
    only: Option<usize>,
) -> BoxResult<()> {
    let t: BoxResult<[Vec<f64>; 6]> = match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => overhead!(
            diesel::sqlite::SqliteConnection,
            super::sqlite::seed,
            url,
            rows,
            batch,
            rounds,
            per_round,
            only
        ),
        #[cfg(feature = "postgres")]
        Backend::Postgres => overhead!(
            diesel::pg::PgConnection,
            super::postgres::seed,
            url,
            rows,
            batch,
            rounds,
            per_round,
            only
        ),
        #[cfg(feature = "mysql")]
        Backend::Mysql => overhead!(
            diesel::mysql::MysqlConnection,
            super::mysql::seed,
            url,
            rows,
            batch,
            rounds,
            per_round,
            only
        ),
        #[allow(unreachable_patterns)]
        _ => Err("built without this backend's feature: run with --all-features".into()),
    };
    let t = t?;
    let ns = |cell: usize| median(t[cell].clone()) * 1e9;
    // Median of the per-round ratios of `cell` to `base`.
    let paired = |cell: usize, base: usize| {
        median(t[cell].iter().zip(&t[base]).map(|(c, b)| c / b).collect())
    };
    let (hwm, _) = rss()?;
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    println!(
        "{}",
        json!({
            "scenario": "ci-overhead",
            "backend": backend.name(),
            "rows": rows,
            "batch": batch,
            "rounds": rounds,
            "point_reads_per_round": per_round,
            "cells": CELLS,
            "point_ns_per_query": {"plain": ns(0), "instrumented": ns(1), "recording": ns(2)},
            "scan_ns_per_row": {"plain": ns(3), "instrumented": ns(4), "recording": ns(5)},
            "point_ratio": {"instrumented": paired(1, 0), "recording": paired(2, 0)},
            "scan_ratio": {"instrumented": paired(4, 3), "recording": paired(5, 3)},
            "point_ratio_of_medians": {"instrumented": ns(1) / ns(0), "recording": ns(2) / ns(0)},
            "scan_ratio_of_medians": {"instrumented": ns(4) / ns(3), "recording": ns(5) / ns(3)},
            "peak_rss_mib": hwm as f64 / f64::from(1 << 20),
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "loadavg_1m": loadavg(),
            "run": env("BENCH_RUN"),
            "commit": env("BENCH_COMMIT"),
        })
    );
    Ok(())
}
