//! `ilj-page`: keyset pages through i-love-jesus 0.3 (the keyset crate behind Lemmy; PostgreSQL
//! only), measured in the same shuffled rounds as ours (`keyset_page`, tokens verified) and the
//! hand-written Diesel keyset queries, in one process; one JSON line of the shape of
//! `examples/bench.rs`'s page scenarios (the shared code is `examples/bench/page_core.rs`).
//!
//! A crate of its own (not a dev-dependency of diesel-budget): i-love-jesus turns on Diesel's
//! PostgreSQL backend, which would change what the main crate's compile-fail tests see.
//!
//! ```text
//! cargo run --release --manifest-path benches/ilj/Cargo.toml -- --rows 1000000 \
//!     --depth 1 --depth 2 --depth 1000 --depth 9000 --page-key created-id
//! ```
//!
//! How it uses i-love-jesus, as Lemmy does: a boxed query (`into_boxed`, its own `LIMIT`),
//! `PaginatedQueryBuilder::new(query, direction)`, `.after(cursor)` with the boundary row's key
//! values in a cursor struct whose `CursorKeysModule` derive names the key columns, then
//! `.then_order_by(key)` per column. The cursor is built in the client from the boundary's key
//! values (Lemmy reads that row back by id from its cursor string: one more query, not counted
//! here). Sync Diesel has no `RunQueryDsl` for i-love-jesus's query, so [`Run`] wraps it.

use clap::Parser;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel_budget::demo::{items, Item};
use i_love_jesus::{CursorKeysModule, PaginatedQueryBuilder, SortDirection};

#[path = "../../../examples/bench/page_core.rs"]
mod page_core;

use page_core::{boundary, keyset_runner, PageArgs, PageKeyArg};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The key values i-love-jesus compares with: one `CursorKey` per field (`item_keys::id`,
/// `item_keys::created_at`), read from the `items` columns of the same names.
#[derive(Debug, Clone, CursorKeysModule)]
#[diesel(table_name = items)]
#[cursor_keys_module(name = item_keys)]
struct ItemCursor {
    id: i32,
    created_at: i64,
}

/// Sync Diesel's way to run a query type it does not know: a transparent wrapper.
struct Run<Q>(Q);

impl<Q: Query> Query for Run<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Run<Q> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }
}

impl<Q> QueryId for Run<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> RunQueryDsl<PgConnection> for Run<Q> {}

keyset_runner!(postgres_keyset, PgConnection, row_values: true);

/// One keyset page of i-love-jesus: its rows.
fn ilj_page(conn: &mut PgConnection, args: &PageArgs<'_>, depth: u64) -> BoxResult<Vec<Item>> {
    use diesel::query_builder::AsQuery as _;
    let cursor = boundary(args, depth)?.map(|(created_at, id)| ItemCursor { id, created_at });
    let limit = i64::try_from(args.size + 1)?;
    let query = items::table.limit(limit).into_boxed();
    let rows: Vec<Item> = match args.key {
        PageKeyArg::Id => {
            let page = PaginatedQueryBuilder::new(query, SortDirection::Asc)
                .after(cursor)
                .then_order_by(item_keys::id);
            Run(page.as_query()).load(conn)?
        }
        PageKeyArg::CreatedId => {
            let page = PaginatedQueryBuilder::new(query, SortDirection::Desc)
                .after(cursor)
                .then_order_by(item_keys::created_at)
                .then_order_by(item_keys::id);
            Run(page.as_query()).load(conn)?
        }
    };
    Ok(rows)
}

/// Page `depth` has the rows it should (the ids of the demo table, in key order; one row more
/// than the page, the look-ahead).
fn check_page(rows: &[Item], args: &PageArgs<'_>, depth: u64) -> BoxResult<()> {
    let ids: Vec<u64> = rows
        .iter()
        .map(|i| u64::try_from(i.id))
        .collect::<Result<_, _>>()?;
    let first = (depth - 1) * args.size;
    let want: Vec<u64> = match args.key {
        PageKeyArg::Id => (first + 1..=first + args.size + 1).collect(),
        PageKeyArg::CreatedId => (0..=args.size).map(|i| args.rows - first - i).collect(),
    };
    if ids != want {
        return Err(format!("ilj page {depth}: ids {ids:?}, expected {want:?}").into());
    }
    Ok(())
}

/// `ilj-page` (PostgreSQL): i-love-jesus, ours and the hand-written keyset queries at each
/// depth, in the same shuffled rounds.
#[derive(Debug, Parser)]
struct Args {
    /// Rows in the table (seeded by `bench seed --backend postgres --rows N`).
    #[arg(long)]
    rows: u64,
    /// Database URL. Default: PG_DATABASE_URL, else the local `diesel_budget_bench`.
    #[arg(long)]
    url: Option<String>,
    /// The page numbers to measure (repeat the flag).
    #[arg(long, required = true)]
    depth: Vec<u64>,
    /// Rows per page.
    #[arg(long, default_value_t = 100)]
    page_size: u64,
    /// Measured rounds (each fetches every cell once, shuffled).
    #[arg(long, default_value_t = 200)]
    reps: usize,
    /// Unmeasured rounds first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The key the pages are ordered by.
    #[arg(long, value_enum, default_value_t = PageKeyArg::Id)]
    page_key: PageKeyArg,
    /// Measure only this implementation (`ilj`, `ours`, `diesel`, `diesel-row`), for
    /// `perf stat` or callgrind of one of them.
    #[arg(long)]
    only: Option<String>,
}

fn main() -> BoxResult<()> {
    let a = Args::parse();
    let url = a
        .url
        .or_else(|| {
            std::env::var("PG_DATABASE_URL")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/diesel_budget_bench".to_owned());
    let args = PageArgs {
        depths: &a.depth,
        size: a.page_size,
        reps: a.reps,
        warmup: a.warmup,
        key: a.page_key,
        rows: a.rows,
        only: a.only.as_deref(),
    };
    let mut ilj = PgConnection::establish(&url)?;
    for &d in args.depths {
        check_page(&ilj_page(&mut ilj, &args, d)?, &args, d)?;
    }
    let mut fetch = |d: u64| Ok(ilj_page(&mut ilj, &args, d)?.len().min(args.size as usize));
    let results = postgres_keyset(&url, &args, &mut [("ilj", &mut fetch)])?;
    println!(
        "{}",
        page_core::line("ilj-page", "postgres", &args, results)?
    );
    Ok(())
}
