//! Pagination scenarios (issue 10): `offset-page` and `keyset-page`.
//!
//! ```text
//! cargo run --release --all-features --example bench -- keyset-page --backend postgres \
//!     --rows 1000000 --depth 1 --depth 2 --depth 1000 --depth 9000 --page-key created-id
//! ```
//!
//! One process measures one scenario at every `--depth` given (page numbers, from 1), pages of
//! `--page-size` rows (default 100), keyed by `id` or `(created_at DESC, id DESC)`
//! (`--page-key created-id`), through `Db` (pool of one) as users run it. Keyset tokens for
//! each depth are collected first by walking the pages; then `--warmup` rounds, then `--reps`
//! rounds, each fetching every depth once in a freshly shuffled order (a light query right
//! after a heavy one pays more). Each fetch includes the token's verification. `keyset-page`
//! measures, in the same shuffled rounds, the baseline `impl: "diesel"`: the hand-written
//! plain-Diesel keyset query on a plain connection (`id > $1`, or
//! `created_at <= $1 AND (created_at < $1 OR id < $2)`, typed DSL, so statically cached), its
//! boundary computed rather than carried in a token. Prints one JSON line: per implementation
//! and depth, `page_ms` (median) and `p90_ms`, and the process's peak RSS (`VmHWM`).

use super::*;
use diesel_budget::page::{asc, desc, Page, PageKeys, PageRequest, Pager};

/// Which key orders the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum PageKeyArg {
    /// `ORDER BY id`.
    Id,
    /// `ORDER BY created_at DESC, id DESC` (the index on `(created_at, id)` read backward).
    CreatedId,
}

/// The settings of a page run.
pub(super) struct PageArgs<'a> {
    pub(super) depths: &'a [u64],
    pub(super) size: u64,
    pub(super) reps: usize,
    pub(super) warmup: usize,
    pub(super) key: PageKeyArg,
    pub(super) rows: u64,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Runs `fetch(implementation, depth)` for every cell over shuffled rounds; returns per-cell
/// timings in ms.
fn measure(
    cells: &[(&'static str, u64)],
    args: &PageArgs<'_>,
    mut fetch: impl FnMut(&str, u64) -> BoxResult<usize>,
) -> BoxResult<Vec<serde_json::Value>> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
    let mut order: Vec<usize> = (0..cells.len()).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..args.warmup + args.reps {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let (which, depth) = cells[i];
            let started = Instant::now();
            let n = fetch(which, depth)?;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if n as u64 != args.size {
                return Err(format!("{which} page {depth} had {n} rows, not {}", args.size).into());
            }
            if round >= args.warmup {
                times[i].push(ms);
            }
        }
    }
    Ok(cells
        .iter()
        .zip(times.iter_mut())
        .map(|((which, d), t)| {
            t.sort_by(f64::total_cmp);
            json!({"impl": which, "depth": d, "page_ms": percentile(t, 0.5), "p90_ms": percentile(t, 0.9), "reps": t.len()})
        })
        .collect())
}

/// Every depth for ours only.
fn ours(depths: &[u64]) -> Vec<(&'static str, u64)> {
    depths.iter().map(|d| ("ours", *d)).collect()
}

/// Every depth for ours and for the hand-written plain-Diesel keyset query.
fn with_baseline(depths: &[u64]) -> Vec<(&'static str, u64)> {
    depths
        .iter()
        .flat_map(|d| [("ours", *d), ("diesel", *d)])
        .collect()
}

macro_rules! page_runner {
    ($name:ident, $conn:ty) => {
        pub(super) fn $name(
            scenario: Scenario,
            url: &str,
            args: &PageArgs<'_>,
        ) -> BoxResult<Vec<serde_json::Value>> {
            let db = Db::<$conn>::builder(url).max_size(1).build()?;
            let mut conn = db.get()?;
            let pager = Pager::new(PageKeys::new(1, b"bench secret, 32 bytes or more..")?)
                .max_page_size(args.size)
                .max_depth(u64::MAX);
            let size = args.size;
            let limit = i64::try_from(size + 1)?;
            let max_depth = args.depths.iter().copied().max().unwrap_or(1);
            match (scenario, args.key) {
                (Scenario::OffsetPage, PageKeyArg::Id) => {
                    measure(&ours(args.depths), args, |_, d| {
                        let p: Page<Item> = items::table
                            .order(items::id)
                            .budget(Budget::rows(size))
                            .offset_page(&pager, d, &mut conn)?;
                        Ok(p.items.len())
                    })
                }
                (Scenario::OffsetPage, PageKeyArg::CreatedId) => {
                    measure(&ours(args.depths), args, |_, d| {
                        let p: Page<Item> = items::table
                            .order((items::created_at.desc(), items::id.desc()))
                            .budget(Budget::rows(size))
                            .offset_page(&pager, d, &mut conn)?;
                        Ok(p.items.len())
                    })
                }
                (_, PageKeyArg::Id) => {
                    let key = asc(items::id);
                    let key_of = |i: &Item| i.id;
                    let mut tokens = std::collections::HashMap::new();
                    let mut token: Option<String> = None;
                    for depth in 1..=max_depth {
                        if args.depths.contains(&depth) {
                            tokens.insert(depth, token.clone());
                        }
                        let p = items::table.budget(Budget::rows(size)).keyset_page(
                            &pager,
                            key,
                            key_of,
                            token.as_deref(),
                            &mut conn,
                        )?;
                        token = p.next;
                    }
                    let mut raw = <$conn>::establish(url)?;
                    measure(&with_baseline(args.depths), args, |which, d| {
                        if which == "diesel" {
                            let q = items::table.order(items::id).limit(limit);
                            let rows: Vec<Item> = if d == 1 {
                                q.load(&mut raw)?
                            } else {
                                let after = i32::try_from((d - 1) * size)?;
                                q.filter(items::id.gt(after)).load(&mut raw)?
                            };
                            return Ok(rows.len().min(size as usize));
                        }
                        let t = tokens.get(&d).cloned().flatten();
                        let p = items::table.budget(Budget::rows(size)).keyset_page(
                            &pager,
                            key,
                            key_of,
                            t.as_deref().map_or(PageRequest::First, PageRequest::Token),
                            &mut conn,
                        )?;
                        Ok(p.items.len())
                    })
                }
                (_, PageKeyArg::CreatedId) => {
                    let key = (desc(items::created_at), desc(items::id));
                    let key_of = |i: &Item| (i.created_at, i.id);
                    let mut tokens = std::collections::HashMap::new();
                    let mut token: Option<String> = None;
                    for depth in 1..=max_depth {
                        if args.depths.contains(&depth) {
                            tokens.insert(depth, token.clone());
                        }
                        let p = items::table.budget(Budget::rows(size)).keyset_page(
                            &pager,
                            key,
                            key_of,
                            token.as_deref(),
                            &mut conn,
                        )?;
                        token = p.next;
                    }
                    let mut raw = <$conn>::establish(url)?;
                    measure(&with_baseline(args.depths), args, |which, d| {
                        if which == "diesel" {
                            let q = items::table
                                .order((items::created_at.desc(), items::id.desc()))
                                .limit(limit);
                            let rows: Vec<Item> = if d == 1 {
                                q.load(&mut raw)?
                            } else {
                                let b = i32::try_from(args.rows - (d - 1) * size + 1)?;
                                let ca = Item::generate(b).created_at;
                                q.filter(
                                    items::created_at
                                        .le(ca)
                                        .and(items::created_at.lt(ca).or(items::id.lt(b))),
                                )
                                .load(&mut raw)?
                            };
                            return Ok(rows.len().min(size as usize));
                        }
                        let t = tokens.get(&d).cloned().flatten();
                        let p = items::table.budget(Budget::rows(size)).keyset_page(
                            &pager,
                            key,
                            key_of,
                            t.as_deref().map_or(PageRequest::First, PageRequest::Token),
                            &mut conn,
                        )?;
                        Ok(p.items.len())
                    })
                }
            }
        }
    };
}

#[cfg(feature = "sqlite")]
page_runner!(sqlite, super::sqlite::RawConn);
#[cfg(feature = "postgres")]
page_runner!(postgres, super::postgres::RawConn);
#[cfg(feature = "mysql")]
page_runner!(mysql, super::mysql::RawConn);

/// Runs a page scenario and prints its JSON line.
pub(super) fn run(
    scenario: Scenario,
    backend: Backend,
    url: &str,
    rows: u64,
    args: &PageArgs<'_>,
) -> BoxResult<()> {
    if args.depths.is_empty() {
        return Err("give at least one --depth".into());
    }
    let results = match backend {
        Backend::Sqlite => sqlite(scenario, url, args)?,
        Backend::Postgres => postgres(scenario, url, args)?,
        Backend::Mysql => mysql(scenario, url, args)?,
    };
    let (peak, _) = rss()?;
    println!(
        "{}",
        json!({
            "scenario": scenario.name(),
            "backend": backend.name(),
            "rows": rows,
            "page_size": args.size,
            "page_key": format!("{:?}", args.key),
            "depths": results,
            "peak_rss_bytes": peak,
            "peak_rss_mib": peak as f64 / f64::from(1 << 20),
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "loadavg_1m_after": loadavg(),
        })
    );
    Ok(())
}
