// Row budgets through every load path, byte budgets, invalid budgets (all backends).

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
