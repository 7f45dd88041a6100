// Shared imports and helpers of the integration tests, included first into each backend module
// by `tests/backends.rs` (`C` is the backend's Diesel connection type). Every test has its own
// number, which gives it its own id range (`common::id_base`), and filters every query to that
// range; the numbers in use are listed in `tests/backends.rs`.

use diesel::prelude::*;
use diesel_budget::batch::BatchMode;
use diesel_budget::budget::MAX_ROWS;
use diesel_budget::demo::{items, Item};
use diesel_budget::prelude::*;
use diesel_budget::testing::{self, Ledger, StatementKind};
use diesel_budget::{BackendKind, BudgetConnection, Error, Exceeded, GetSize};

use crate::common::{in_range, Backend, Ctx};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The ids of `rows`, for comparisons that print well.
fn ids(rows: &[Item]) -> Vec<i32> {
    rows.iter().map(|i| i.id).collect()
}

/// `from..to` as a Vec, the ids a query should return.
fn span(from: i32, to: i32) -> Vec<i32> {
    (from..to).collect()
}

/// The last bound value of a recorded statement, which for every budgeted query is its `LIMIT`.
fn last_bind(st: &testing::Statement) -> i64 {
    let last = st
        .binds
        .last()
        .unwrap_or_else(|| panic!("no binds recorded for: {}", st.sql));
    last.parse()
        .unwrap_or_else(|_| panic!("last bind {last:?} is not an integer: {st:?}"))
}

/// The one budgeted statement of `ledger`, checked to carry `LIMIT limit` and to have received
/// `rows` rows.
#[track_caller]
fn one_budgeted(ledger: &Ledger, limit: i64, rows: u64) {
    let budgeted: Vec<_> = ledger
        .statements()
        .iter()
        .filter(|s| s.kind == StatementKind::Budgeted)
        .collect();
    assert_eq!(
        budgeted.len(),
        1,
        "one budgeted statement expected:\n{ledger}"
    );
    assert_eq!(ledger.round_trips(), 1, "{ledger}");
    let st = budgeted[0];
    assert!(st.sql.contains("LIMIT"), "no LIMIT in {}", st.sql);
    assert_eq!(
        last_bind(st),
        limit,
        "LIMIT sent to the server: {}",
        st.sql
    );
    assert_eq!(st.rows, Some(rows), "rows received: {ledger}");
    ledger.assert().no_unbudgeted_queries();
}

/// Checks `err` is a row-budget overflow of `budget` that saw `budget + 1` rows; returns its SQL.
#[track_caller]
fn assert_rows_exceeded(err: Error, budget: u64) -> String {
    match err {
        Error::BudgetExceeded {
            sql,
            budget: spec,
            exceeded,
            seen_rows,
            ..
        } => {
            assert_eq!(exceeded, Exceeded::Rows);
            assert_eq!(spec.rows, budget);
            assert_eq!(seen_rows, budget + 1, "seen rows");
            assert!(sql.contains("LIMIT"), "SQL in the error: {sql}");
            sql
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
}

/// Loads the test's `n` rows from `base` in id order with a budget large enough for them all,
/// through the byte-metered path, and returns each row's size as the executor measures it.
fn sizes(ctx: &mut Ctx<C>, n: i32) -> Vec<u64> {
    let rows: Vec<Item> = items::table
        .filter(in_range(ctx.base, n))
        .order(items::id)
        .budget(Budget::rows(10_000).bytes(u64::MAX / 2))
        .load(&mut *ctx.conn)
        .expect("load for sizes");
    assert_eq!(rows.len() as i32, n);
    rows.iter().map(|r| r.get_size() as u64).collect()
}

/// Walks every batch, checking none is larger than `max_rows`; returns the batches.
fn walk(
    batches: impl Iterator<Item = diesel_budget::Result<Vec<Item>>>,
    max_rows: usize,
) -> Vec<Vec<Item>> {
    let mut out = Vec::new();
    for batch in batches {
        let batch = batch.unwrap_or_else(|e| panic!("batch {}: {e}", out.len()));
        assert!(!batch.is_empty(), "empty batch {}", out.len());
        assert!(
            batch.len() <= max_rows,
            "batch of {} > {max_rows}",
            batch.len()
        );
        out.push(batch);
    }
    out
}

const MODES: [BatchMode; 2] = [BatchMode::Keyset, BatchMode::Stream];

/// Statements a keyset walk of `n` rows in batches of `b` sends: one per batch (each reads the
/// row after it, `LIMIT b + 1`, so a full last batch with nothing after it is the last
/// statement; see `diesel_budget::batch`), and one for an empty walk.
fn keyset_round_trips(n: usize, b: usize) -> usize {
    n.div_ceil(b).max(1)
}

/// Rows a walk in `mode` receives: its `n` rows, plus, in keyset batches, the row after each
/// batch but the last.
fn walk_rows(mode: BatchMode, n: usize, b: usize) -> u64 {
    let keyset = mode == BatchMode::Keyset || !<C as BudgetConnection>::STREAMS;
    let lookaheads = if keyset { n.div_ceil(b).saturating_sub(1) } else { 0 };
    (n + lookaheads) as u64
}

/// Statements a walk in `mode` sends (MySQL's client buffers whole results, so its `Stream`
/// runs keyset batches).
fn round_trips(mode: BatchMode, n: usize, b: usize) -> usize {
    if mode == BatchMode::Stream && <C as BudgetConnection>::STREAMS {
        1
    } else {
        keyset_round_trips(n, b)
    }
}
