// The test bodies, included once per backend by `tests/backends.rs` into a module where `C` is
// the backend's Diesel connection type. Every test has its own number, which gives it its own id
// range (`common::id_base`), and filters every query to that range.

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

/// Statements a keyset walk of `n` rows in batches of `b` sends: one per batch, plus, when the
/// last batch was full, one that finds nothing and the end check (`LIMIT 1`, see
/// `diesel_budget::batch`).
fn keyset_round_trips(n: usize, b: usize) -> usize {
    n.div_ceil(b) + 2 * usize::from(n % b == 0)
}

/// Rows a walk in `mode` receives: its `n` rows, plus the end check's one row after a full last
/// keyset batch.
fn walk_rows(mode: BatchMode, n: usize, b: usize) -> u64 {
    let keyset = mode == BatchMode::Keyset || !<C as BudgetConnection>::STREAMS;
    (n + usize::from(keyset && n % b == 0)) as u64
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

// ---------------------------------------------------------------------------------------------
// 1. Row budgets through every load path.

/// Result sizes around a budget of 10: budget-1, budget, budget+1, 10x budget.
const BUDGET: u64 = 10;
const SIZES: [i32; 4] = [9, 10, 11, 100];

#[test]
fn load_and_get_results_return_rows_that_fit_and_fail_past_the_budget() {
    let mut ctx = C::seeded(1, 100);
    let base = ctx.base;
    for n in SIZES {
        for path in ["load", "get_results"] {
            let q = items::table
                .filter(in_range(base, n))
                .order(items::id)
                .budget(Budget::rows(BUDGET));
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                if path == "load" {
                    q.load::<Item>(conn)
                } else {
                    q.get_results::<Item>(conn)
                }
            });
            // The server is asked for budget + 1 rows, whatever the result size.
            let fits = n as u64 <= BUDGET;
            one_budgeted(&ledger, BUDGET as i64 + 1, (n as u64).min(BUDGET + 1));
            if fits {
                let rows = res.unwrap_or_else(|e| panic!("{path} of {n} rows: {e}"));
                assert_eq!(ids(&rows), span(base, base + n), "{path} of {n}");
                assert_eq!(rows[0], Item::generate(base), "decoded row");
            } else {
                let err = res.expect_err("more rows than the budget");
                assert!(err.is_budget_exceeded());
                let sql = assert_rows_exceeded(err, BUDGET);
                assert!(
                    !sql.contains("binds"),
                    "the error's SQL has no bound values: {sql}"
                );
            }
        }
    }
}

#[test]
fn truncate_returns_the_first_rows_in_order_and_flags_only_real_overflow() {
    let mut ctx = C::seeded(2, 100);
    let base = ctx.base;
    for n in SIZES {
        // Ascending: the first `min(n, 10)` ids.
        let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
            items::table
                .filter(in_range(base, n))
                .order(items::id)
                .budget(Budget::rows(BUDGET).truncate())
                .load::<Item>(conn)
        });
        let rows = res.expect("truncating load");
        let kept = n.min(BUDGET as i32);
        assert_eq!(ids(&rows), span(base, base + kept), "asc, {n} rows");
        assert_eq!(rows.is_truncated(), n as u64 > BUDGET, "flag for {n} rows");
        one_budgeted(&ledger, BUDGET as i64 + 1, (n as u64).min(BUDGET + 1));

        // Descending: the ORDER BY decides which rows are kept.
        let rows = items::table
            .filter(in_range(base, n))
            .order(items::id.desc())
            .budget(Budget::rows(BUDGET).truncate())
            .get_results::<Item>(&mut *ctx.conn)
            .expect("truncating get_results");
        let want: Vec<i32> = (base + n - kept..base + n).rev().collect();
        assert_eq!(ids(&rows), want, "desc, {n} rows");
        assert_eq!(rows.is_truncated(), n as u64 > BUDGET);
        assert_eq!(rows.into_vec().len() as i32, kept);
    }
}

#[test]
fn get_result_fits_or_fails_like_load() {
    let mut ctx = C::seeded(3, 100);
    let base = ctx.base;
    for n in SIZES {
        let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
            items::table
                .filter(in_range(base, n))
                .order(items::id.desc())
                .budget(Budget::rows(BUDGET))
                .get_result::<Item>(conn)
        });
        one_budgeted(&ledger, BUDGET as i64 + 1, (n as u64).min(BUDGET + 1));
        if n as u64 <= BUDGET {
            assert_eq!(res.expect("fits").id, base + n - 1, "first in ORDER BY");
        } else {
            assert_rows_exceeded(res.expect_err("too many"), BUDGET);
        }
        // Truncating: the first row of what fits.
        let row = items::table
            .filter(in_range(base, n))
            .order(items::id.desc())
            .budget(Budget::rows(BUDGET).truncate())
            .get_result::<Item>(&mut *ctx.conn)
            .expect("truncating get_result");
        assert_eq!(row.id, base + n - 1);
    }
    // One row under a budget of one; two rows are too many.
    let one = items::table
        .filter(items::id.eq(base + 5))
        .budget(Budget::rows(1))
        .get_result::<Item>(&mut *ctx.conn)
        .expect("single row");
    assert_eq!(one, Item::generate(base + 5));
    let err = items::table
        .filter(in_range(base, 2))
        .budget(Budget::rows(1))
        .get_result::<Item>(&mut *ctx.conn)
        .expect_err("two rows, budget one");
    assert_rows_exceeded(err, 1);
}

#[test]
fn first_fetches_one_row_whatever_the_result_size() {
    let mut ctx = C::seeded(4, 100);
    let base = ctx.base;
    for n in SIZES {
        for budget in [1, BUDGET] {
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                items::table
                    .filter(in_range(base, n))
                    .order(items::id.desc())
                    .budget(Budget::rows(budget))
                    .first::<Item>(conn)
            });
            assert_eq!(res.expect("first").id, base + n - 1, "first of {n} desc");
            one_budgeted(&ledger, 1, 1);
        }
    }
}

#[test]
fn optional_turns_no_row_into_none_and_keeps_other_errors() {
    let mut ctx = C::seeded(5, 20);
    let base = ctx.base;
    let empty = || items::table.filter(items::id.eq(base - 1)).order(items::id);
    let none = empty()
        .budget(Budget::rows(1))
        .first::<Item>(&mut *ctx.conn);
    assert!(none.as_ref().is_err_and(Error::is_not_found), "{none:?}");
    assert_eq!(none.optional().expect("optional first"), None);
    let none = empty()
        .budget(Budget::rows(5))
        .get_result::<Item>(&mut *ctx.conn)
        .optional()
        .expect("optional get_result");
    assert_eq!(none, None);
    let empty_load = empty()
        .budget(Budget::rows(5))
        .load::<Item>(&mut *ctx.conn)
        .expect("empty load");
    assert!(empty_load.is_empty());

    let some = items::table
        .filter(in_range(base, 20))
        .order(items::id)
        .budget(Budget::rows(1))
        .first::<Item>(&mut *ctx.conn)
        .optional()
        .expect("optional with a row");
    assert_eq!(some.map(|i| i.id), Some(base));
    let some = items::table
        .filter(items::id.eq(base + 3))
        .budget(Budget::rows(1))
        .get_result::<Item>(&mut *ctx.conn)
        .optional()
        .expect("optional get_result with a row");
    assert_eq!(some.map(|i| i.id), Some(base + 3));
    // An overflow is not "no row".
    let err = items::table
        .filter(in_range(base, 20))
        .budget(Budget::rows(3))
        .get_result::<Item>(&mut *ctx.conn)
        .optional()
        .expect_err("overflow stays an error");
    assert_rows_exceeded(err, 3);
}

// ---------------------------------------------------------------------------------------------
// 2. The user's own LIMIT and OFFSET.

/// The same checks on a plain and on a boxed query: `$q` is the ordered query over the test's
/// 20 rows from `$base`, without a limit.
macro_rules! user_limit_cases {
    ($conn:expr, $base:expr, $q:expr) => {{
        let base: i32 = $base;
        let conn = $conn;
        // A smaller LIMIT is kept.
        let (rows, ledger) = testing::record(conn, |conn| {
            $q.limit(2).budget(Budget::rows(3)).load::<Item>(conn)
        });
        assert_eq!(ids(&rows.expect("limit 2, budget 3")), span(base, base + 2));
        one_budgeted(&ledger, 4, 2);
        // Equal: fits, not truncated.
        let rows = $q
            .limit(3)
            .budget(Budget::rows(3).truncate())
            .load::<Item>(conn)
            .expect("limit 3, budget 3");
        assert_eq!(ids(&rows), span(base, base + 3));
        assert!(!rows.is_truncated(), "the query has exactly 3 rows");
        // A larger LIMIT is capped by the budget.
        let err = $q
            .limit(5)
            .budget(Budget::rows(3))
            .load::<Item>(conn)
            .expect_err("limit 5, budget 3");
        assert_rows_exceeded(err, 3);
        let rows = $q
            .limit(5)
            .budget(Budget::rows(3).truncate())
            .load::<Item>(conn)
            .expect("limit 5, budget 3, truncating");
        assert_eq!(ids(&rows), span(base, base + 3));
        assert!(rows.is_truncated());
        // OFFSET with LIMIT.
        let rows = $q
            .offset(2)
            .limit(3)
            .budget(Budget::rows(5))
            .load::<Item>(conn)
            .expect("offset 2 limit 3, budget 5");
        assert_eq!(ids(&rows), span(base + 2, base + 5));
        let rows = $q
            .limit(10)
            .offset(2)
            .budget(Budget::rows(3).truncate())
            .load::<Item>(conn)
            .expect("offset 2 limit 10, budget 3, truncating");
        assert_eq!(ids(&rows), span(base + 2, base + 5));
        assert!(rows.is_truncated());
        let err = $q
            .offset(2)
            .limit(10)
            .budget(Budget::rows(3))
            .load::<Item>(conn)
            .expect_err("offset 2 limit 10, budget 3");
        assert_rows_exceeded(err, 3);
        // first/get_result keep the user's OFFSET.
        let first = $q
            .offset(4)
            .limit(10)
            .budget(Budget::rows(10))
            .first::<Item>(conn)
            .expect("first with offset");
        assert_eq!(first.id, base + 4);
        let one = $q
            .offset(7)
            .limit(1)
            .budget(Budget::rows(1))
            .get_result::<Item>(conn)
            .expect("get_result with offset and limit 1");
        assert_eq!(one.id, base + 7);
    }};
}

#[test]
fn a_smaller_user_limit_is_kept_and_a_larger_one_capped() {
    let mut ctx = C::seeded(6, 20);
    let base = ctx.base;
    user_limit_cases!(
        &mut *ctx.conn,
        base,
        items::table.filter(in_range(base, 20)).order(items::id)
    );
}

#[test]
fn user_limits_on_boxed_queries() {
    let mut ctx = C::seeded(7, 20);
    let base = ctx.base;
    user_limit_cases!(
        &mut *ctx.conn,
        base,
        items::table
            .filter(in_range(base, 20))
            .order(items::id)
            .into_boxed()
    );
    // OFFSET alone (boxed: Diesel accepts a plain query with OFFSET and no LIMIT on SQLite and
    // PostgreSQL only, where `offset.rs` tests it).
    let conn = &mut *ctx.conn;
    let q = || {
        items::table
            .filter(in_range(base, 20))
            .order(items::id)
            .into_boxed()
    };
    // OFFSET alone: the budget is the only limit.
    let rows = q()
        .offset(15)
        .budget(Budget::rows(10))
        .load::<Item>(conn)
        .expect("offset 15, budget 10");
    assert_eq!(ids(&rows), span(base + 15, base + 20));
    let rows = q()
        .offset(15)
        .budget(Budget::rows(3).truncate())
        .load::<Item>(conn)
        .expect("offset 15, budget 3, truncating");
    assert_eq!(ids(&rows), span(base + 15, base + 18));
    assert!(rows.is_truncated());
    let err = q()
        .offset(15)
        .budget(Budget::rows(3))
        .load::<Item>(conn)
        .expect_err("offset 15, budget 3");
    assert_rows_exceeded(err, 3);
    // Boxed, built up conditionally as applications do.
    let mut q = items::table.into_boxed();
    q = q.filter(in_range(base, 20));
    q = q.order(items::id.desc());
    let rows = q
        .budget(Budget::rows(4).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("boxed, truncating");
    assert_eq!(ids(&rows), vec![base + 19, base + 18, base + 17, base + 16]);
    assert!(rows.is_truncated());
}

#[test]
fn a_limit_inside_a_subquery_is_not_taken_for_the_query_s_own() {
    let mut ctx = C::seeded(8, 20);
    let base = ctx.base;
    // `EXISTS (SELECT .. LIMIT 1)`: MariaDB refuses LIMIT in `IN (..)` subqueries.
    let inner = diesel::alias!(items as inner_items);
    let q = || {
        items::table
            .filter(in_range(base, 20))
            .filter(diesel::dsl::exists(
                inner
                    .filter(inner.field(items::id).eq(base))
                    .select(inner.field(items::id))
                    .limit(1),
            ))
            .order(items::id)
    };
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        q().budget(Budget::rows(3)).load::<Item>(conn)
    });
    let sql = assert_rows_exceeded(res.expect_err("20 rows, budget 3"), 3);
    assert!(
        !sql.contains("diesel_budget_capped"),
        "a subquery's LIMIT made the query look limited: {sql}"
    );
    one_budgeted(&ledger, 4, 4);
    let rows = q()
        .budget(Budget::rows(3).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("truncating");
    assert_eq!(ids(&rows), span(base, base + 3));
    let rows = q()
        .budget(Budget::rows(20))
        .load::<Item>(&mut *ctx.conn)
        .expect("all 20 fit");
    assert_eq!(ids(&rows), span(base, base + 20));
    // The same subquery in a boxed query, and with a top-level LIMIT of its own as well.
    let rows = q()
        .limit(2)
        .into_boxed()
        .budget(Budget::rows(3))
        .load::<Item>(&mut *ctx.conn)
        .expect("own limit 2 beside the subquery's");
    assert_eq!(ids(&rows), span(base, base + 2));
}

#[test]
fn budgets_on_selections_aggregates_and_joins() {
    let mut ctx = C::seeded(9, 100);
    let base = ctx.base;
    // A tuple of some columns.
    let pairs = items::table
        .filter(in_range(base, 100))
        .select((items::id, items::category))
        .order(items::id)
        .budget(Budget::rows(5).truncate())
        .load::<(i32, i32)>(&mut *ctx.conn)
        .expect("tuples");
    assert_eq!(pairs.len(), 5);
    assert_eq!(pairs[1], (base + 1, Item::generate(base + 1).category));
    // DISTINCT: the budget counts result rows (10 categories), not table rows.
    let cats = items::table
        .filter(in_range(base, 100))
        .select(items::category)
        .distinct()
        .order(items::category)
        .budget(Budget::rows(10))
        .load::<i32>(&mut *ctx.conn)
        .expect("10 distinct categories fit 10");
    assert_eq!(cats, (0..10).collect::<Vec<i32>>());
    // GROUP BY with an aggregate, with and without a LIMIT of its own.
    let grouped = || {
        items::table
            .filter(in_range(base, 100))
            .group_by(items::category)
            .select((items::category, diesel::dsl::count_star()))
            .order(items::category)
    };
    let err = grouped()
        .budget(Budget::rows(9))
        .load::<(i32, i64)>(&mut *ctx.conn)
        .expect_err("10 groups, budget 9");
    assert_rows_exceeded(err, 9);
    let groups = grouped()
        .limit(3)
        .budget(Budget::rows(9))
        .load::<(i32, i64)>(&mut *ctx.conn)
        .expect("own limit 3");
    assert_eq!(groups, vec![(0, 10), (1, 10), (2, 10)]);
    // A count is one row.
    let n = items::table
        .filter(in_range(base, 100))
        .count()
        .budget(Budget::rows(1))
        .get_result::<i64>(&mut *ctx.conn)
        .expect("count");
    assert_eq!(n, 100);
    // A self-join through an alias: each id with its successor (99 pairs).
    let next = diesel::alias!(items as next_items);
    let joined = || {
        items::table
            .inner_join(next.on(next.field(items::id).eq(items::id + 1)))
            .filter(in_range(base, 100))
            .select((items::id, next.field(items::name)))
            .order(items::id)
    };
    let err = joined()
        .budget(Budget::rows(50))
        .load::<(i32, String)>(&mut *ctx.conn)
        .expect_err("99 pairs, budget 50");
    assert_rows_exceeded(err, 50);
    let rows = joined()
        .limit(2)
        .budget(Budget::rows(50))
        .load::<(i32, String)>(&mut *ctx.conn)
        .expect("joined, own limit 2");
    assert_eq!(
        rows,
        vec![
            (base, format!("item-{}", base + 1)),
            (base + 1, format!("item-{}", base + 2))
        ]
    );
    // The same join selecting two columns of the same name, with a LIMIT of its own: the
    // budget wraps it as `SELECT * FROM (..) AS diesel_budget_capped`, which MySQL refuses
    // for duplicate column names (documented in `diesel_budget::query`).
    let dup = items::table
        .inner_join(next.on(next.field(items::id).eq(items::id + 1)))
        .filter(in_range(base, 100))
        .select((items::id, next.field(items::id)))
        .order(items::id)
        .limit(2)
        .budget(Budget::rows(50))
        .load::<(i32, i32)>(&mut *ctx.conn);
    match <C as BudgetConnection>::KIND {
        BackendKind::Mysql => {
            let err = dup.expect_err("MySQL: duplicate column names in a derived table");
            assert!(matches!(err, Error::Query { .. }), "{err:?}");
            let cause = std::error::Error::source(&err).map(ToString::to_string);
            assert!(
                cause.is_some_and(|c| c.contains("Duplicate column")),
                "{err:?}"
            );
        }
        _ => assert_eq!(
            dup.expect("duplicate names are fine here"),
            vec![(base, base + 1), (base + 1, base + 2)]
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Byte budgets.

#[test]
fn byte_budgets_stop_at_the_first_row_past_the_bytes() {
    let mut ctx = C::seeded(10, 20);
    let base = ctx.base;
    let sizes = sizes(&mut ctx, 20);
    let total: u64 = sizes.iter().sum();
    let first = |k: usize| sizes[..k].iter().sum::<u64>();
    let q = || items::table.filter(in_range(base, 20)).order(items::id);

    // 5 rows fit exactly; the 6th passes the budget and loading stops there.
    let b = first(5);
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        q().budget(Budget::rows(100).bytes(b)).load::<Item>(conn)
    });
    match res {
        Err(Error::BudgetExceeded {
            exceeded,
            seen_rows,
            seen_bytes,
            budget,
            ..
        }) => {
            assert_eq!(exceeded, Exceeded::Bytes);
            assert_eq!(seen_rows, 6);
            assert_eq!(seen_bytes, first(6));
            assert_eq!(budget.bytes, Some(b));
        }
        other => panic!("expected a byte overflow, got {other:?}"),
    }
    let st = &ledger.statements()[0];
    // Decoded before stopping: 6; MySQL's client had buffered the whole result (all 20).
    let received = if <C as BudgetConnection>::KIND == BackendKind::Mysql {
        20
    } else {
        6
    };
    assert_eq!(st.rows, Some(received), "rows received: {ledger}");
    assert_eq!(st.rows_delivered, Some(0), "a strict overflow delivers nothing");
    assert_eq!(ledger.bytes(), first(6));

    let rows = q()
        .budget(Budget::rows(100).bytes(b).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("truncating bytes");
    assert_eq!(ids(&rows), span(base, base + 5));
    assert!(rows.is_truncated());
    assert!(rows.iter().map(|r| r.get_size() as u64).sum::<u64>() <= b);

    // Exactly the total fits; one byte less does not.
    let rows = q()
        .budget(Budget::rows(100).bytes(total))
        .load::<Item>(&mut *ctx.conn)
        .expect("exactly the total");
    assert_eq!(rows.len(), 20);
    let err = q()
        .budget(Budget::rows(100).bytes(total - 1))
        .load::<Item>(&mut *ctx.conn)
        .expect_err("one byte short");
    assert!(matches!(
        err,
        Error::BudgetExceeded {
            exceeded: Exceeded::Bytes,
            seen_rows: 20,
            ..
        }
    ));

    // The row limit still applies with bytes to spare.
    let err = q()
        .budget(Budget::rows(3).bytes(total))
        .load::<Item>(&mut *ctx.conn)
        .expect_err("rows first");
    assert_rows_exceeded(err, 3);

    // A budget smaller than one row: nothing fits.
    let err = q()
        .budget(Budget::rows(100).bytes(1))
        .load::<Item>(&mut *ctx.conn)
        .expect_err("one byte");
    assert!(matches!(
        err,
        Error::BudgetExceeded {
            exceeded: Exceeded::Bytes,
            seen_rows: 1,
            ..
        }
    ));
    let rows = q()
        .budget(Budget::rows(100).bytes(1).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("one byte, truncating");
    assert!(rows.is_empty());
    assert!(rows.is_truncated());
    let err = q()
        .budget(Budget::rows(100).bytes(1).truncate())
        .first::<Item>(&mut *ctx.conn)
        .expect_err("first row over the byte budget");
    assert!(matches!(
        err,
        Error::BudgetExceeded {
            exceeded: Exceeded::Bytes,
            ..
        }
    ));
    let row = q()
        .budget(Budget::rows(1).bytes(sizes[0]))
        .first::<Item>(&mut *ctx.conn)
        .expect("first row fits exactly");
    assert_eq!(row.id, base);
}

/// `get_result` under a truncating byte budget when not even the first row fits: the row
/// exists, so this must not look like "no row" (`NotFound`, which `.optional()` turns into
/// `Ok(None)`). `first` reports `BudgetExceeded` here whatever the policy; so must `get_result`.
#[test]
fn get_result_does_not_report_a_row_too_large_for_the_bytes_as_missing() {
    let mut ctx = C::seeded(12, 3);
    let base = ctx.base;
    let res = items::table
        .filter(in_range(base, 3))
        .order(items::id)
        .budget(Budget::rows(5).bytes(1).truncate())
        .get_result::<Item>(&mut *ctx.conn);
    let res = res.optional();
    assert!(
        matches!(
            res,
            Err(Error::BudgetExceeded {
                exceeded: Exceeded::Bytes,
                ..
            })
        ),
        "a row over the byte budget came back as {res:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Invalid budgets: nothing is sent.

#[test]
fn invalid_budgets_are_rejected_before_anything_is_sent() {
    let mut ctx = C::seeded(11, 5);
    let base = ctx.base;
    let q = || items::table.filter(in_range(base, 5)).order(items::id);
    let (results, ledger) = testing::record(&mut *ctx.conn, |conn| {
        vec![
            (
                "rows(0)",
                q().budget(Budget::rows(0))
                    .load::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "rows(0).truncate()",
                q().budget(Budget::rows(0).truncate())
                    .load::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "rows(5).bytes(0)",
                q().budget(Budget::rows(5).bytes(0))
                    .load::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "rows(MAX_ROWS + 1)",
                q().budget(Budget::rows(MAX_ROWS + 1))
                    .load::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "first rows(0)",
                q().budget(Budget::rows(0))
                    .first::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "get_result bytes(0)",
                q().budget(Budget::rows(1).bytes(0))
                    .get_result::<Item>(conn)
                    .map(|_| ()),
            ),
            (
                "get_results rows(0)",
                q().budget(Budget::rows(0))
                    .get_results::<Item>(conn)
                    .map(|_| ()),
            ),
        ]
    });
    for (what, res) in results {
        assert!(
            matches!(res, Err(Error::InvalidBudget { .. })),
            "{what}: expected InvalidBudget, got {res:?}"
        );
    }
    for mode in MODES {
        let (first, ledger2) = testing::record(&mut *ctx.conn, |conn| {
            let mut batches = q()
                .budget(Budget::rows(0))
                .batches_by(items::id, |i: &Item| i.id, conn)
                .mode(mode);
            let first = batches.next();
            assert!(batches.next().is_none(), "batches end after the error");
            first
        });
        assert!(
            matches!(first, Some(Err(Error::InvalidBudget { .. }))),
            "{mode:?}: {first:?}"
        );
        assert!(ledger2.statements().is_empty(), "{ledger2}");
    }
    assert!(
        ledger.statements().is_empty(),
        "sent despite invalid budgets:\n{ledger}"
    );
    assert!(Budget::try_rows(0).is_err());
    assert!(Budget::try_rows(MAX_ROWS).is_ok());
    // A largest valid budget runs.
    let rows = q()
        .budget(Budget::rows(MAX_ROWS))
        .load::<Item>(&mut *ctx.conn)
        .expect("MAX_ROWS");
    assert_eq!(rows.len(), 5);
}

// ---------------------------------------------------------------------------------------------
// 5. Batches.

#[test]
fn batches_deliver_every_row_once_in_key_order() {
    let mut ctx = C::seeded(20, 100);
    let base = ctx.base;
    for mode in MODES {
        for (n, b) in [
            (100, 7),
            (70, 7),
            (100, 10),
            (100, 100),
            (100, 1000),
            (1, 1),
        ] {
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                // Any ORDER BY of the query is replaced by the key.
                let mut batches = items::table
                    .filter(in_range(base, n))
                    .order(items::name.desc())
                    .budget(Budget::rows(b as u64))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode);
                let walked = walk(&mut batches, b);
                (walked, batches.rows_done(), batches.resume_key().copied())
            });
            let (walked, rows_done, resume) = res;
            let all: Vec<i32> = walked.iter().flat_map(|b| ids(b)).collect();
            assert_eq!(all, span(base, base + n), "{mode:?}, {n} rows by {b}");
            assert_eq!(walked.len(), (n as usize).div_ceil(b), "{mode:?} batches");
            assert_eq!(rows_done, n as u64);
            assert_eq!(resume, Some(base + n - 1));
            assert_eq!(
                ledger.round_trips(),
                round_trips(mode, n as usize, b),
                "{mode:?}, {n} rows by {b}:\n{ledger}"
            );
            assert_eq!(ledger.rows(), walk_rows(mode, n as usize, b), "{ledger}");
            ledger.assert().no_unbudgeted_queries();
        }
    }
}

#[test]
fn batches_by_a_composite_key() {
    let mut ctx = C::seeded(21, 100);
    let base = ctx.base;
    let mut want: Vec<(i32, i32)> = (base..base + 100)
        .map(|id| (Item::generate(id).category, id))
        .collect();
    want.sort();
    for mode in MODES {
        let walked = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(7))
                .batches_by(
                    Composite(items::category, items::id),
                    |i: &Item| (i.category, i.id),
                    &mut *ctx.conn,
                )
                .mode(mode),
            7,
        );
        let got: Vec<(i32, i32)> = walked
            .iter()
            .flatten()
            .map(|i| (i.category, i.id))
            .collect();
        assert_eq!(got, want, "{mode:?}");
        // Resuming after a composite key.
        let at = want[41];
        let rest: Vec<(i32, i32)> = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(9))
                .batches_by(
                    Composite(items::category, items::id),
                    |i: &Item| (i.category, i.id),
                    &mut *ctx.conn,
                )
                .mode(mode)
                .after(at),
            9,
        )
        .iter()
        .flatten()
        .map(|i| (i.category, i.id))
        .collect();
        assert_eq!(rest, want[42..], "{mode:?} after {at:?}");
    }
}

#[test]
fn byte_budgets_split_batches_without_losing_or_repeating_rows() {
    let mut ctx = C::seeded(22, 50);
    let base = ctx.base;
    let sizes = sizes(&mut ctx, 50);
    let max = *sizes.iter().max().expect("rows");
    // Room for three and a half of the largest rows: batches of 3, whatever the row count.
    let b = max * 7 / 2;
    for mode in MODES {
        let (walked, ledger) = testing::record(&mut *ctx.conn, |conn| {
            walk(
                items::table
                    .filter(in_range(base, 50))
                    .budget(Budget::rows(20).bytes(b))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode),
                20,
            )
        });
        let all: Vec<i32> = walked.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(all, span(base, base + 50), "{mode:?}");
        for (i, batch) in walked.iter().enumerate() {
            let bytes: u64 = batch.iter().map(|i| i.get_size() as u64).sum();
            assert!(bytes <= b, "{mode:?}: batch of {bytes} bytes > {b}");
            // Three rows always fit, so only the last batch may be smaller.
            if i + 1 < walked.len() {
                assert!(
                    batch.len() >= 3,
                    "{mode:?}: batch {i} of {} rows",
                    batch.len()
                );
            }
        }
        assert!(walked.len() >= 50 / 4, "{mode:?}: {} batches", walked.len());
        ledger.assert().no_unbudgeted_queries();

        // A single row larger than the byte budget cannot be delivered.
        let mut batches = items::table
            .filter(in_range(base, 50))
            .budget(Budget::rows(20).bytes(max / 2))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode);
        match batches.next() {
            Some(Err(Error::Interrupted {
                rows_done: 0,
                resume_after: None,
                source,
            })) => assert!(
                matches!(
                    *source,
                    Error::BudgetExceeded {
                        exceeded: Exceeded::Bytes,
                        ..
                    }
                ),
                "{source:?}"
            ),
            other => panic!("{mode:?}: expected Interrupted(BudgetExceeded), got {other:?}"),
        }
        assert!(batches.next().is_none(), "batches end after an error");
    }
}

#[test]
fn after_resumes_right_after_the_key() {
    let mut ctx = C::seeded(23, 100);
    let base = ctx.base;
    for mode in MODES {
        let rest = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(base + 49),
            8,
        );
        let all: Vec<i32> = rest.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(all, span(base + 50, base + 100), "{mode:?}");
        // A walk stopped part-way resumes from its resume key.
        let mut first = items::table
            .filter(in_range(base, 100))
            .budget(Budget::rows(8))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode);
        let mut seen: Vec<i32> = Vec::new();
        for _ in 0..3 {
            seen.extend(ids(&first.next().expect("a batch").expect("ok")));
        }
        let key = *first.resume_key().expect("a key after 3 batches");
        assert_eq!(first.rows_done(), 24);
        drop(first);
        assert_eq!(key, base + 23);
        let rest = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(key),
            8,
        );
        seen.extend(rest.iter().flat_map(|b| ids(b)));
        assert_eq!(seen, span(base, base + 100), "{mode:?}");
        // After the last key: nothing.
        let none = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(base + 99),
            8,
        );
        assert!(none.is_empty(), "{mode:?}");
    }
}

#[test]
fn batches_reject_a_query_with_its_own_limit() {
    let mut ctx = C::seeded(24, 30);
    let base = ctx.base;
    for mode in MODES {
        let (first, ledger) = testing::record(&mut *ctx.conn, |conn| {
            let mut batches = items::table
                .filter(in_range(base, 30))
                .order(items::id)
                .limit(5)
                .budget(Budget::rows(10))
                .batches_by(items::id, |i: &Item| i.id, conn)
                .mode(mode);
            let first = batches.next();
            assert!(batches.next().is_none(), "batches end after the error");
            first
        });
        assert!(
            matches!(first, Some(Err(Error::InvalidArgument { .. }))),
            "{mode:?}: {first:?}"
        );
        assert!(ledger.statements().is_empty(), "{ledger}");
    }
}

#[test]
fn a_large_table_is_walked_one_batch_at_a_time() {
    const N: i32 = 200_000;
    const B: usize = 10_000;
    let mut ctx = C::seeded(30, N);
    let base = ctx.base;
    // What one batch and the whole table hold in memory, measured as the executor does.
    let batch_bytes: u64 = sizes(&mut ctx, B as i32).iter().sum();
    let table_bytes = batch_bytes * (N as u64 / B as u64);
    for mode in MODES {
        let ((count, batches, next_id), peak) = crate::alloc::peak_during(|| {
            let (mut count, mut batches, mut next_id) = (0u64, 0usize, base);
            for batch in items::table
                .filter(in_range(base, N))
                .budget(Budget::rows(B as u64))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
            {
                let batch = batch.expect("batch");
                assert!(batch.len() <= B);
                for item in &batch {
                    assert_eq!(item.id, next_id, "{mode:?}: order");
                    next_id += 1;
                }
                count += batch.len() as u64;
                batches += 1;
            }
            (count, batches, next_id)
        });
        assert_eq!(count, N as u64, "{mode:?}");
        assert_eq!(next_id, base + N);
        assert_eq!(batches, N as usize / B);
        // One batch at a time, with its Vec's spare capacity (a growing Vec briefly holds its
        // old and new buffers: measured 1.44 batches at most), never two batches (2.0) and
        // nothing like the table (20).
        assert!(
            peak < batch_bytes * 7 / 4 && peak < table_bytes / 10,
            "{mode:?}: peak {peak} bytes held; one batch is {batch_bytes}, the table {table_bytes}"
        );
    }
}

/// `stream_by` / `Batches::rows`: every row once, in key order, one statement where the backend
/// streams; a row over the byte budget is an error; a walk resumes after the last row delivered.
#[test]
fn rows_come_one_at_a_time_in_key_order() {
    const N: i32 = 1_000;
    let mut ctx = C::seeded(31, N);
    let base = ctx.base;
    for b in [1u64, 7, 1_000, 5_000] {
        let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
            let mut rows = items::table
                .filter(in_range(base, N))
                .budget(Budget::rows(b))
                .stream_by(items::id, |i: &Item| i.id, conn);
            let got: Vec<i32> = (&mut rows).map(|r| r.expect("row").id).collect();
            (got, rows.rows_done(), rows.resume_key().copied())
        });
        let (got, rows_done, resume) = res;
        assert_eq!(got, span(base, base + N), "budget {b}");
        assert_eq!(rows_done, N as u64);
        assert_eq!(resume, Some(base + N - 1));
        assert_eq!(
            ledger.round_trips(),
            round_trips(BatchMode::Stream, N as usize, b as usize),
            "budget {b}:\n{ledger}"
        );
        assert_eq!(
            ledger.rows(),
            walk_rows(BatchMode::Stream, N as usize, b as usize),
            "{ledger}"
        );
        ledger.assert().no_unbudgeted_queries();
    }

    // Keyset batches read one row at a time: same rows, one statement per batch (+1).
    let got: Vec<i32> = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(300))
        .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .rows()
        .map(|r| r.expect("row").id)
        .collect();
    assert_eq!(got, span(base, base + N));

    // Stopping part-way and resuming: `resume_key_is_the_last_row_handed_out` (walks.rs).

    // A byte budget bounds each streamed row (each batch where the backend cannot stream).
    let one_row = sizes(&mut ctx, 1)[0];
    let err = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(10).bytes(one_row - 1))
        .stream_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .find_map(|r| r.err())
        .expect("a row over the byte budget is an error");
    match err {
        Error::Interrupted { source, rows_done: 0, resume_after: None } => assert!(
            matches!(*source, Error::BudgetExceeded { exceeded: Exceeded::Bytes, .. }),
            "{source:?}"
        ),
        other => panic!("expected Interrupted(BudgetExceeded), got {other:?}"),
    }
    let all: Vec<i32> = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(10).bytes(one_row * 3))
        .stream_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .map(|r| r.expect("row").id)
        .collect();
    assert_eq!(all, span(base, base + N));
}

// ---------------------------------------------------------------------------------------------
// 7. Instrumentation and ledgers.

#[test]
fn stats_count_budgeted_unbudgeted_and_transaction_statements() {
    // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("stats count budgeted unbudgeted and transaction statements");
    // A pool of its own: the shared pool's counters move with every other test.
    let tdb = C::private_db(1);
    let mut conn = tdb.conn();
    let base = crate::common::id_base(50);
    let s0 = tdb.db.stats();
    assert_eq!(conn.stats(), s0, "Conn::stats is the pool's");

    conn.begin_test_transaction(); // BEGIN
                                   // SAVEPOINT, INSERT(s), RELEASE: Diesel's SQLite backend inserts `Item`s one statement
                                   // per row (its derive wraps every value as "defaultable"), the servers in one statement.
    let ((), seeding) = testing::record(&mut *conn, |conn| C::seed(conn, base, base + 30));
    let inserts = seeding.unbudgeted().count() as u64;
    assert!(
        seeding.unbudgeted().all(|s| s.sql.starts_with("INSERT")),
        "{seeding}"
    );
    let seed_tx = seeding
        .statements()
        .iter()
        .filter(|s| s.kind == StatementKind::Transaction)
        .count() as u64;
    assert!(seed_tx >= 2, "a savepoint around the seeding: {seeding}");
    let rows = items::table
        .filter(in_range(base, 30))
        .budget(Budget::rows(50))
        .load::<Item>(&mut *conn)
        .expect("load");
    assert_eq!(rows.len(), 30);
    let walked = walk(
        items::table
            .filter(in_range(base, 30))
            .budget(Budget::rows(10).bytes(1 << 20))
            .batches_by(items::id, |i: &Item| i.id, &mut *conn),
        10,
    );
    let bytes: u64 = walked.iter().flatten().map(|i| i.get_size() as u64).sum();
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .get_result::<i32>(conn.unbudgeted())
        .expect("SELECT 1");

    let d = conn.stats().since(&s0);
    assert_eq!(conn.stats(), tdb.db.stats());
    // load: 1; batches of 10 over 30 rows: 3 full + 1 empty + the end check.
    assert_eq!(d.budgeted, 1 + 5, "{d:?}");
    assert_eq!(d.unbudgeted, inserts + 1, "INSERT(s) and SELECT 1: {d:?}");
    assert_eq!(d.transaction, 1 + seed_tx, "BEGIN and the seeding's: {d:?}");
    assert_eq!(d.internal, 0, "{d:?}");
    assert_eq!(d.failed, 0, "{d:?}");
    assert_eq!(d.statements, 6 + inserts + 1 + 1 + seed_tx, "{d:?}");
    assert_eq!(d.rows, 30 + 30 + 1, "the end check receives one row: {d:?}");
    assert_eq!(d.bytes, bytes, "only byte-metered rows count bytes: {d:?}");

    // A streamed walk is one budgeted statement (keyset batches on MySQL); its rows are counted
    // when the stream ends.
    let before = conn.stats();
    let walked = walk(
        items::table
            .filter(in_range(base, 30))
            .budget(Budget::rows(7))
            .batches_by(items::id, |i: &Item| i.id, &mut *conn)
            .mode(BatchMode::Stream),
        7,
    );
    assert_eq!(walked.iter().map(Vec::len).sum::<usize>(), 30);
    let d4 = conn.stats().since(&before);
    assert_eq!(
        d4.budgeted as usize,
        round_trips(BatchMode::Stream, 30, 7),
        "{d4:?}"
    );
    assert_eq!((d4.rows, d4.unbudgeted), (30, 0), "{d4:?}");

    // A statement the database rejects is counted as failed (last: on PostgreSQL it aborts
    // the transaction).
    let bad =
        diesel::sql_query("SELECT * FROM diesel_budget_no_such_table").execute(conn.unbudgeted());
    assert!(bad.is_err());
    let d2 = conn.stats().since(&s0);
    assert_eq!(d2.failed, 1, "{d2:?}");
    assert_eq!(d2.unbudgeted, inserts + 2, "{d2:?}");
    // Checkouts are internal (r2d2's liveness check), never unbudgeted.
    drop(conn);
    let before = tdb.db.stats();
    drop(tdb.conn());
    let d3 = tdb.db.stats().since(&before);
    assert_eq!((d3.unbudgeted, d3.budgeted), (0, 0), "{d3:?}");
}

#[test]
fn the_ledger_sees_round_trips_rows_and_bytes() {
    let mut ctx = C::seeded(51, 40);
    let base = ctx.base;
    let sizes = sizes(&mut ctx, 40);
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        let a = items::table
            .filter(in_range(base, 40))
            .budget(Budget::rows(40).bytes(1 << 20))
            .load::<Item>(conn)?;
        let b = items::table
            .filter(in_range(base, 15))
            .budget(Budget::rows(20))
            .load::<Item>(conn)?;
        let batches: Vec<_> = items::table
            .filter(in_range(base, 40))
            .budget(Budget::rows(16))
            .batches_by(items::id, |i: &Item| i.id, conn)
            .collect::<Result<_, _>>()?;
        Ok::<_, Error>((a.len(), b.len(), batches.len()))
    });
    assert_eq!(res.expect("loads"), (40, 15, 3));
    // 1 + 1 + 3 batches (16, 16, 8: the short one ends the walk).
    assert_eq!(ledger.round_trips(), 5, "{ledger}");
    assert_eq!(ledger.rows(), 40 + 15 + 40, "{ledger}");
    assert_eq!(ledger.bytes(), sizes.iter().sum::<u64>(), "{ledger}");
    assert!(ledger
        .statements()
        .iter()
        .all(|s| s.kind == StatementKind::Budgeted));
    assert!(ledger.statements().iter().all(|s| !s.failed));
    assert_eq!(
        ledger.statements()[0].budget.map(|b| (b.rows, b.bytes)),
        Some((40, Some(1 << 20)))
    );
    ledger
        .assert()
        .round_trips_at_most(5)
        .rows_at_most(95)
        .bytes_at_most(sizes.iter().sum())
        .no_unbudgeted_queries();
    // Each check fails when the ledger is over.
    type Check = fn(&Ledger);
    let over: [(&str, Check); 3] = [
        ("round trips", |l| {
            let _ = l.assert().round_trips_at_most(4);
        }),
        ("rows", |l| {
            let _ = l.assert().rows_at_most(94);
        }),
        ("bytes", |l| {
            let _ = l.assert().bytes_at_most(1);
        }),
    ];
    for (what, check) in over {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&ledger)));
        assert!(r.is_err(), "{what}: an over-budget ledger passed");
    }
    // Recordings nest: the outer one sees the inner one's statements too.
    let ((inner_rows, inner), outer) = testing::record(&mut *ctx.conn, |conn| {
        testing::record(conn, |conn| {
            items::table
                .filter(in_range(base, 3))
                .budget(Budget::rows(3))
                .load::<Item>(conn)
                .map(|r| r.len())
        })
    });
    assert_eq!(inner_rows.expect("inner load"), 3);
    for ledger in [&inner, &outer] {
        assert_eq!(ledger.round_trips(), 1, "{ledger}");
        assert_eq!(ledger.rows(), 3, "{ledger}");
    }
}

#[test]
fn no_unbudgeted_queries_fails_when_the_escape_hatch_was_used() {
    // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("no unbudgeted queries fails when the escape hatch was used");
    let mut ctx = C::seeded(52, 5);
    let base = ctx.base;
    let (n, ledger) = testing::record(&mut *ctx.conn, |conn| {
        let budgeted = items::table
            .filter(in_range(base, 5))
            .budget(Budget::rows(5))
            .load::<Item>(conn)
            .expect("budgeted")
            .len();
        let raw: Vec<Item> = items::table
            .filter(in_range(base, 5))
            .load(conn.unbudgeted())
            .expect("unbudgeted");
        budgeted + raw.len()
    });
    assert_eq!(n, 10);
    let unbudgeted: Vec<_> = ledger.unbudgeted().collect();
    assert_eq!(unbudgeted.len(), 1, "{ledger}");
    assert!(
        !unbudgeted[0].sql.contains(" LIMIT "),
        "{}",
        unbudgeted[0].sql
    );
    assert_eq!(unbudgeted[0].rows, None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ledger.assert().no_unbudgeted_queries();
    }));
    let msg = r.expect_err("no_unbudgeted_queries passed with an unbudgeted statement");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("without a budget"), "{msg}");
    assert!(msg.contains("items"), "the panic shows the ledger: {msg}");
}

#[test]
fn transaction_control_is_not_unbudgeted() {
    let mut ctx = C::seeded(53, 5);
    let base = ctx.base;
    // Inside the test transaction: savepoints.
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        conn.transaction(|conn| {
            items::table
                .filter(in_range(base, 5))
                .budget(Budget::rows(5))
                .load::<Item>(conn)
        })
    });
    assert_eq!(res.expect("in a savepoint").len(), 5);
    let kinds: Vec<_> = ledger.statements().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            StatementKind::Transaction,
            StatementKind::Budgeted,
            StatementKind::Transaction
        ],
        "{ledger}"
    );
    assert_eq!(ledger.round_trips(), 1);
    ledger.assert().no_unbudgeted_queries();

    // Top-level BEGIN/COMMIT and ROLLBACK on a connection without a test transaction.
    let tdb = C::private_db(1);
    let mut conn = tdb.conn();
    let (res, ledger) = testing::record(&mut *conn, |conn| {
        let committed = conn.transaction(|conn| {
            items::table
                .filter(in_range(base, 5))
                .budget(Budget::rows(5))
                .load::<Item>(conn)
        });
        let rolled_back: Result<(), Error> = conn.transaction(|conn| {
            items::table
                .filter(in_range(base, 5))
                .budget(Budget::rows(5))
                .load::<Item>(conn)?;
            Err(Error::InvalidArgument {
                name: "test",
                reason: "roll back".into(),
            })
        });
        (committed, rolled_back)
    });
    // Other tests' uncommitted rows are invisible here.
    assert!(res.0.expect("committed").is_empty());
    assert!(matches!(res.1, Err(Error::InvalidArgument { .. })));
    let kinds: Vec<_> = ledger.statements().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            StatementKind::Transaction,
            StatementKind::Budgeted,
            StatementKind::Transaction,
            StatementKind::Transaction,
            StatementKind::Budgeted,
            StatementKind::Transaction,
        ],
        "{ledger}"
    );
    let sql: Vec<String> = ledger
        .statements()
        .iter()
        .filter(|s| s.kind == StatementKind::Transaction)
        .map(|s| s.sql.to_uppercase())
        .collect();
    assert!(
        sql[0].starts_with("BEGIN") || sql[0].starts_with("START"),
        "{sql:?}"
    );
    assert!(sql[1].starts_with("COMMIT"), "{sql:?}");
    assert!(sql[3].starts_with("ROLLBACK"), "{sql:?}");
    ledger.assert().no_unbudgeted_queries();
}

// ---------------------------------------------------------------------------------------------
// 8. Migrations.

#[test]
fn migrations_ran_once() {
    // Nothing left to run. (Before this test's own write transaction: on SQLite that would
    // make the migration connection wait for the write lock.)
    let tdb = C::test_db();
    assert_eq!(
        tdb.db
            .run_migrations(diesel_budget::demo::MIGRATIONS)
            .expect("migrations"),
        0
    );
    let mut ctx = C::seeded(60, 3);
    let base = ctx.base;
    // The table exists (the shared pool ran the migrations when it was built).
    let n = items::table
        .filter(in_range(base, 3))
        .count()
        .budget(Budget::rows(1))
        .get_result::<i64>(&mut *ctx.conn)
        .expect("count over items");
    assert_eq!(n, 3);
    assert_eq!(ctx.db().backend(), <C as BudgetConnection>::KIND);
    assert_eq!(ctx.conn.backend(), <C as BudgetConnection>::KIND);
    let name = <C as BudgetConnection>::KIND.name();
    assert!(["sqlite", "postgres", "mysql"].contains(&name));
    assert_eq!(BackendKind::Sqlite.name(), "sqlite");
}

// ---------------------------------------------------------------------------------------------
// Pool hygiene.

#[test]
fn an_exhausted_pool_is_a_typed_error_after_the_timeout() {
    let timeout = std::time::Duration::from_millis(800);
    let tdb = C::private_db_with(1, timeout);
    let held = tdb.conn();
    let started = std::time::Instant::now();
    let err = tdb
        .db
        .get()
        .expect_err("the only connection is checked out");
    assert!(matches!(err, Error::Pool(_)), "{err:?}");
    assert!(
        started.elapsed() >= timeout / 2,
        "gave up after {:?}",
        started.elapsed()
    );
    drop(held);
    let mut conn = tdb.conn();
    let none = items::table
        .filter(items::id.eq(-1))
        .budget(Budget::rows(1))
        .first::<Item>(&mut *conn)
        .optional()
        .expect("usable again");
    assert_eq!(none, None);
    // A pool of no connections is refused before anything connects.
    let err = Db::<C>::builder("unused://")
        .max_size(0)
        .build()
        .expect_err("max_size 0");
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "max_size",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A `Conn` dropped inside `begin_test_transaction` must not go back to the pool with that
/// transaction open: the next checkout would see the previous test's rows, and its own
/// `begin_test_transaction` would panic inside Diesel (`assert_eq!(None, depth)`). Diesel's
/// r2d2 manager deliberately treats test transactions as healthy, so `Conn` has to roll back.
#[test]
fn dropped_test_transaction_is_not_handed_out_again() {
    let tdb = C::private_db(1);
    let base = crate::common::id_base(70);
    {
        // Deliberately the bare `Conn`, not the tests' rolling-back guard.
        let mut conn = tdb.db.get().expect("checkout");
        conn.begin_test_transaction().expect("begin");
        C::seed(&mut conn, base, base + 5);
    }
    let mut conn = tdb.db.get().expect("second checkout");
    let leaked = items::table
        .filter(in_range(base, 5))
        .budget(Budget::rows(10))
        .load::<Item>(&mut conn)
        .expect("load");
    assert!(
        leaked.is_empty(),
        "the next checkout still sees {} rows of the dropped test transaction",
        leaked.len()
    );
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.begin_test_transaction()
    }));
    assert!(
        matches!(again, Ok(Ok(()))),
        "begin_test_transaction on the next checkout failed or panicked"
    );
}
