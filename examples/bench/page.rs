//! Pagination scenarios (issue 10): `offset-page` and `keyset-page` (and, in the separate crate
//! `benches/ilj`, `ilj-page`: the same cells plus i-love-jesus, PostgreSQL only).
//!
//! ```text
//! cargo run --release --all-features --example bench -- keyset-page --backend postgres \
//!     --rows 1000000 --depth 1 --depth 2 --depth 1000 --depth 9000 --page-key created-id
//! scripts/bench-pages.sh        # the whole table: every backend, both keys, ilj on PostgreSQL
//! ```
//!
//! One process measures one scenario at every `--depth` given (page numbers, from 1), pages of
//! `--page-size` rows (default 100), keyed by `id` or `(created_at DESC, id DESC)`
//! (`--page-key created-id`), through `Db` (pool of one) as users run it. Keyset tokens for
//! each depth are collected first by walking the pages; then `--warmup` rounds, then `--reps`
//! rounds, each fetching every cell (implementation x depth) once in a freshly shuffled order
//! (a light query right after a heavy one pays more). Each fetch of ours includes the token's
//! verification. `keyset-page` measures, in the same shuffled rounds, the baselines (see
//! `page_core.rs`): `impl: "diesel"`, the hand-written plain-Diesel keyset query on a plain
//! connection, its boundary computed rather than carried in a token, and on PostgreSQL and
//! SQLite for the two-column key `impl: "diesel-row"`, the same with a row-value predicate.
//! Prints one JSON line: per implementation and depth, `page_ms` (median) and `p90_ms`, and the
//! process's peak RSS (`VmHWM`).

use super::page_core::{cells, keyset_runner, measure, pager, PageArgs, PageKeyArg};
use super::*;
use diesel_budget::page::Page;

macro_rules! page_runner {
    ($name:ident, $keyset:ident, $conn:ty, row_values: $row_values:expr) => {
        keyset_runner!($keyset, $conn, row_values: $row_values);

        pub(super) fn $name(
            scenario: Scenario,
            url: &str,
            args: &PageArgs<'_>,
        ) -> BoxResult<Vec<serde_json::Value>> {
            if scenario == Scenario::KeysetPage {
                return $keyset(url, args, &mut []);
            }
            let db = Db::<$conn>::builder(url).max_size(1).build()?;
            let mut conn = db.get()?;
            let pager = pager(args.size)?;
            let size = args.size;
            match args.key {
                PageKeyArg::Id => measure(&cells(&["ours"], args), args, |_, d| {
                    let p: Page<Item> = items::table
                        .order(items::id)
                        .budget(Budget::rows(size))
                        .offset_page(&pager, d, &mut conn)?;
                    Ok(p.items.len())
                }),
                PageKeyArg::CreatedId => measure(&cells(&["ours"], args), args, |_, d| {
                    let p: Page<Item> = items::table
                        .order((items::created_at.desc(), items::id.desc()))
                        .budget(Budget::rows(size))
                        .offset_page(&pager, d, &mut conn)?;
                    Ok(p.items.len())
                }),
            }
        }
    };
}

#[cfg(feature = "sqlite")]
page_runner!(sqlite, sqlite_keyset, super::sqlite::RawConn, row_values: true);
#[cfg(feature = "postgres")]
page_runner!(postgres, postgres_keyset, super::postgres::RawConn, row_values: true);
#[cfg(feature = "mysql")]
page_runner!(mysql, mysql_keyset, super::mysql::RawConn, row_values: false);

/// Runs a page scenario and prints its JSON line.
pub(super) fn run(
    scenario: Scenario,
    backend: Backend,
    url: &str,
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
    let line = super::page_core::line(&scenario.name(), backend.name(), args, results)?;
    println!("{line}");
    Ok(())
}
