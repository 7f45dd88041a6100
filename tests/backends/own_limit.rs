// The user's own LIMIT and OFFSET under a budget (all backends).

// ---------------------------------------------------------------------------------------------
// 2. The user's own LIMIT and OFFSET.

/// The same checks on a plain and on a boxed query: `$q` is the ordered query over the test's
/// 20 rows from `$base`, without a limit. `$sent` is the last value bound for `.limit(2)` under
/// budget 3: the smaller limit itself (on SQLite, whose binds cannot be read, the query's own
/// `LIMIT ?`, sent as it is while the executor stops stepping at the cap).
macro_rules! user_limit_cases {
    ($conn:expr, $base:expr, $sent:expr, $q:expr) => {{
        let base: i32 = $base;
        let conn = $conn;
        // A smaller LIMIT is kept.
        let (rows, ledger) = testing::record(conn, |conn| {
            $q.limit(2).budget(Budget::rows(3)).load::<Item>(conn)
        });
        assert_eq!(ids(&rows.expect("limit 2, budget 3")), span(base, base + 2));
        one_budgeted(&ledger, $sent, 2);
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
        2,
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
        2,
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
    // statement keeps its shape (no derived table), so MySQL accepts the duplicate names too.
    let dup = items::table
        .inner_join(next.on(next.field(items::id).eq(items::id + 1)))
        .filter(in_range(base, 100))
        .select((items::id, next.field(items::id)))
        .order(items::id)
        .limit(2)
        .budget(Budget::rows(50))
        .load::<(i32, i32)>(&mut *ctx.conn);
    assert_eq!(
        dup.expect("duplicate column names with an own LIMIT"),
        vec![(base, base + 1), (base + 1, base + 2)]
    );
}
