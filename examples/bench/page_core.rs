//! The keyset-page measurement shared by `examples/bench.rs` (`keyset-page`, every backend) and
//! the i-love-jesus bench crate `benches/ilj` (`ilj-page`, PostgreSQL), which includes this file
//! with `#[path]`: the same cells, shuffle, medians and JSON line in both, so `ilj-page` measures
//! ours, the hand-written query and i-love-jesus in the same shuffled rounds of one process.
//!
//! Needs from the including crate root: `BoxResult<T>`.

use std::collections::HashMap;
use std::time::Instant;

use clap::ValueEnum;
use diesel_budget::demo::{items, Item};
use diesel_budget::page::{Page, PageKeys, Pager};
use serde_json::{json, Value};

use super::BoxResult;

/// Which key orders the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PageKeyArg {
    /// `ORDER BY id`.
    Id,
    /// `ORDER BY created_at DESC, id DESC` (the index on `(created_at, id)` read backward).
    CreatedId,
}

/// The settings of a page run.
pub(crate) struct PageArgs<'a> {
    pub(crate) depths: &'a [u64],
    pub(crate) size: u64,
    pub(crate) reps: usize,
    pub(crate) warmup: usize,
    pub(crate) key: PageKeyArg,
    pub(crate) rows: u64,
    /// Measure only this implementation's cells (for `perf stat` / callgrind of one of them).
    pub(crate) only: Option<&'a str>,
}

/// The pager of every page scenario: one key, pages up to `size`, no depth cap.
pub(crate) fn pager(size: u64) -> BoxResult<Pager> {
    Ok(
        Pager::new(PageKeys::new(1, b"bench secret, 32 bytes or more..")?)
            .max_page_size(size)
            .max_depth(u64::MAX),
    )
}

/// The boundary a hand-written keyset query starts after for page `depth` (from 1), computed
/// from the demo rows rather than read from a token: `None` on the first page; else the key
/// values `(created_at, id)` of the last row of page `depth - 1` (for the `id` key, only `id`
/// matters).
pub(crate) fn boundary(args: &PageArgs<'_>, depth: u64) -> BoxResult<Option<(i64, i32)>> {
    if depth <= 1 {
        return Ok(None);
    }
    let id = match args.key {
        PageKeyArg::Id => i32::try_from((depth - 1) * args.size)?,
        PageKeyArg::CreatedId => i32::try_from(args.rows - (depth - 1) * args.size + 1)?,
    };
    Ok(Some((Item::generate(id).created_at, id)))
}

/// The `next` tokens of pages `1..max(depths) - 1`, walked through `page(token)`: the token that
/// fetches each depth (`None` for depth 1).
pub(crate) fn collect_tokens(
    depths: &[u64],
    mut page: impl FnMut(Option<&str>) -> BoxResult<Page<Item>>,
) -> BoxResult<HashMap<u64, Option<String>>> {
    let max_depth = depths.iter().copied().max().unwrap_or(1);
    let mut tokens = HashMap::new();
    let mut token: Option<String> = None;
    for depth in 1..=max_depth {
        if depths.contains(&depth) {
            tokens.insert(depth, token.clone());
        }
        token = page(token.as_deref())?.next;
    }
    Ok(tokens)
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

/// Every depth for each implementation in `impls` (only `args.only`'s when given).
pub(crate) fn cells(impls: &[&'static str], args: &PageArgs<'_>) -> Vec<(&'static str, u64)> {
    args.depths
        .iter()
        .flat_map(|d| impls.iter().map(move |i| (*i, *d)))
        .filter(|(i, _)| args.only.is_none_or(|only| only == *i))
        .collect()
}

/// Runs `fetch(implementation, depth)` for every cell over shuffled rounds (`warmup` rounds not
/// counted); returns per-cell timings in ms as JSON (`impl`, `depth`, `page_ms` median, `p90_ms`,
/// `reps`). Every fetch must return a full page.
pub(crate) fn measure(
    cells: &[(&'static str, u64)],
    args: &PageArgs<'_>,
    mut fetch: impl FnMut(&str, u64) -> BoxResult<usize>,
) -> BoxResult<Vec<Value>> {
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

/// The process's peak RSS (`VmHWM`), in bytes.
pub(crate) fn peak_rss() -> BoxResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("VmHWM missing from /proc/self/status")?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The JSON line of a page scenario.
pub(crate) fn line(
    scenario: &str,
    backend: &str,
    args: &PageArgs<'_>,
    results: Vec<Value>,
) -> BoxResult<Value> {
    let peak = peak_rss()?;
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    Ok(json!({
        "scenario": scenario,
        "backend": backend,
        "rows": args.rows,
        "page_size": args.size,
        "page_key": format!("{:?}", args.key),
        "depths": results,
        "peak_rss_bytes": peak,
        "peak_rss_mib": peak as f64 / f64::from(1 << 20),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "loadavg_1m_after": std::fs::read_to_string("/proc/loadavg").ok()
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok()),
        "run": env("BENCH_RUN"),
        "commit": env("BENCH_COMMIT"),
    }))
}

/// `keyset_runner!(name, Connection, row_values: bool)` defines `fn name(url, args, extra) -> BoxResult<Vec<Value>>`:
/// keyset pages through `Db` (pool of one) with tokens (`impl: "ours"`), the hand-written
/// plain-Diesel keyset query on a plain connection (`impl: "diesel"`: `id > $1`, or
/// `created_at <= $1 AND (created_at < $1 OR id < $2)`, typed DSL, so statically cached), and
/// each `(name, fetch)` of `extra`, all in the same shuffled rounds. With `row_values` (backends
/// that plan a row value as an index range: PostgreSQL, SQLite), the two-column key also
/// measures [`RowBefore`] (`impl: "diesel-row"`), the best hand-written predicate there.
macro_rules! keyset_runner {
    ($name:ident, $conn:ty, row_values: $row_values:expr) => {
        pub(crate) fn $name(
            url: &str,
            args: &$crate::page_core::PageArgs<'_>,
            extra: &mut [(
                &'static str,
                &mut dyn FnMut(u64) -> $crate::BoxResult<usize>,
            )],
        ) -> $crate::BoxResult<Vec<serde_json::Value>> {
            use diesel::prelude::*;
            use diesel_budget::demo::{items, Item};
            use diesel_budget::page::{asc, desc, PageRequest};
            use diesel_budget::prelude::*;
            use $crate::page_core::{boundary, cells, collect_tokens, measure, pager, PageKeyArg};

            let db = Db::<$conn>::builder(url).max_size(1).build()?;
            let mut conn = db.get()?;
            let pager = pager(args.size)?;
            let size = args.size;
            let limit = i64::try_from(size + 1)?;
            let mut raw = <$conn>::establish(url)?;
            let extra_names: Vec<&'static str> = extra.iter().map(|(name, _)| *name).collect();
            let mut other = |which: &str, d: u64| -> $crate::BoxResult<usize> {
                match extra.iter_mut().find(|(name, _)| *name == which) {
                    Some((_, fetch)) => fetch(d),
                    None => Err(format!("no implementation {which}").into()),
                }
            };
            match args.key {
                PageKeyArg::Id => {
                    let key = asc(items::id);
                    let key_of = |i: &Item| i.id;
                    let cells = cells(&[&["ours", "diesel"][..], &extra_names].concat(), args);
                    let tokens = collect_tokens(args.depths, |t| {
                        Ok(items::table
                            .budget(Budget::rows(size))
                            .keyset_page(&pager, key, key_of, t, &mut conn)?)
                    })?;
                    measure(&cells, args, |which, d| match which {
                        "ours" => {
                            let t = tokens.get(&d).and_then(|t| t.as_deref());
                            let p = items::table.budget(Budget::rows(size)).keyset_page(
                                &pager,
                                key,
                                key_of,
                                t.map_or(PageRequest::First, PageRequest::Token),
                                &mut conn,
                            )?;
                            Ok(p.items.len())
                        }
                        "diesel" => {
                            let q = items::table.order(items::id).limit(limit);
                            let rows: Vec<Item> = match boundary(args, d)? {
                                None => q.load(&mut raw)?,
                                Some((_, after)) => q.filter(items::id.gt(after)).load(&mut raw)?,
                            };
                            Ok(rows.len().min(size as usize))
                        }
                        other_impl => other(other_impl, d),
                    })
                }
                PageKeyArg::CreatedId => {
                    let key = (desc(items::created_at), desc(items::id));
                    let key_of = |i: &Item| (i.created_at, i.id);
                    let ours: &[&'static str] = if $row_values {
                        &["ours", "diesel", "diesel-row"]
                    } else {
                        &["ours", "diesel"]
                    };
                    let impls = [ours, &extra_names].concat();
                    let cells = cells(&impls, args);
                    let tokens = collect_tokens(args.depths, |t| {
                        Ok(items::table
                            .budget(Budget::rows(size))
                            .keyset_page(&pager, key, key_of, t, &mut conn)?)
                    })?;
                    measure(&cells, args, |which, d| match which {
                        "ours" => {
                            let t = tokens.get(&d).and_then(|t| t.as_deref());
                            let p = items::table.budget(Budget::rows(size)).keyset_page(
                                &pager,
                                key,
                                key_of,
                                t.map_or(PageRequest::First, PageRequest::Token),
                                &mut conn,
                            )?;
                            Ok(p.items.len())
                        }
                        "diesel" => {
                            let q = items::table
                                .order((items::created_at.desc(), items::id.desc()))
                                .limit(limit);
                            let rows: Vec<Item> = match boundary(args, d)? {
                                None => q.load(&mut raw)?,
                                Some((ca, b)) => q
                                    .filter(
                                        items::created_at
                                            .le(ca)
                                            .and(items::created_at.lt(ca).or(items::id.lt(b))),
                                    )
                                    .load(&mut raw)?,
                            };
                            Ok(rows.len().min(size as usize))
                        }
                        "diesel-row" => {
                            let q = items::table
                                .order((items::created_at.desc(), items::id.desc()))
                                .limit(limit);
                            let rows: Vec<Item> = match boundary(args, d)? {
                                None => q.load(&mut raw)?,
                                Some((created_at, id)) => q
                                    .filter($crate::page_core::RowBefore { created_at, id })
                                    .load(&mut raw)?,
                            };
                            Ok(rows.len().min(size as usize))
                        }
                        other_impl => other(other_impl, d),
                    })
                }
            }
        }
    };
}
pub(crate) use keyset_runner;

/// The best hand-written keyset predicate on backends that plan row values as an index range:
/// `("items"."created_at", "items"."id") < ($1, $2)`, a small expression of our own with a
/// static query id, so Diesel caches its statement without rendering it (`diesel-row`).
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub(crate) struct RowBefore {
    pub(crate) created_at: i64,
    pub(crate) id: i32,
}

impl diesel::Expression for RowBefore {
    type SqlType = diesel::sql_types::Bool;
}

impl diesel::AppearsOnTable<items::table> for RowBefore {}
impl diesel::SelectableExpression<items::table> for RowBefore {}
impl diesel::expression::ValidGrouping<()> for RowBefore {
    type IsAggregate = diesel::expression::is_aggregate::No;
}

impl<DB> diesel::query_builder::QueryFragment<DB> for RowBefore
where
    DB: diesel::backend::Backend,
    i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
    i32: diesel::serialize::ToSql<diesel::sql_types::Integer, DB>,
    DB: diesel::sql_types::HasSqlType<diesel::sql_types::BigInt>
        + diesel::sql_types::HasSqlType<diesel::sql_types::Integer>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("(");
        out.push_identifier("items")?;
        out.push_sql(".");
        out.push_identifier("created_at")?;
        out.push_sql(", ");
        out.push_identifier("items")?;
        out.push_sql(".");
        out.push_identifier("id")?;
        out.push_sql(") < (");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<diesel::sql_types::Integer, _>(&self.id)?;
        out.push_sql(")");
        Ok(())
    }
}
