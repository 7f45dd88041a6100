// The budgeted query's SQL shape: the caller's own LIMIT, ORDER BY and OFFSET survive (no
// derived table), duplicate column names work everywhere, `debug_sql` shows what runs, and
// locking reads lock exactly the rows they return.
//
// Included after `helpers.rs` into each backend module (its helpers and imports are in scope).
// The row-lock tests at the end are a macro that the PostgreSQL and MySQL modules invoke:
// SQLite has no row locks (Diesel offers no `FOR UPDATE` there; a writer locks the whole
// database), so there is nothing to test on it.

/// The SQL of a recorded statement without its binds.
fn placeholders(sql: &str) -> &str {
    sql.split(" -- binds").next().unwrap_or(sql)
}

/// The one budgeted statement of `ledger`, which must not be wrapped in a derived table.
#[track_caller]
fn sent(ledger: &Ledger) -> &diesel_budget::testing::Statement {
    let budgeted: Vec<_> = ledger
        .statements()
        .iter()
        .filter(|s| s.kind == StatementKind::Budgeted)
        .collect();
    assert_eq!(budgeted.len(), 1, "one budgeted statement:\n{ledger}");
    budgeted[0]
}

#[test]
fn the_caller_s_order_limit_and_offset_survive() {
    let mut ctx = C::seeded(47, 30);
    let base = ctx.base;
    let top = base + 29;
    let q = || items::table.filter(in_range(base, 30)).order(items::id.desc());
    let desc = |from: i32, n: i32| (0..n).map(|k| from - k).collect::<Vec<i32>>();

    // Limit below the budget: those rows, in the caller's order, after the offset.
    let (rows, ledger) = testing::record(&mut *ctx.conn, |conn| {
        q().limit(4)
            .offset(3)
            .budget(Budget::rows(10))
            .load::<Item>(conn)
    });
    assert_eq!(ids(&rows.expect("limit 4 offset 3")), desc(top - 3, 4));
    let st = sent(&ledger);
    assert!(!st.sql.contains("diesel_budget_capped"), "{}", st.sql);
    assert!(st.sql.contains(" DESC LIMIT "), "order kept: {}", st.sql);
    assert!(st.sql.contains(" OFFSET "), "offset kept: {}", st.sql);
    assert_eq!(st.rows, Some(4));

    // Limit equal to the budget: fits, not truncated (no probe needed).
    let rows = q()
        .limit(5)
        .offset(10)
        .budget(Budget::rows(5).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("limit 5 = budget 5");
    assert_eq!(ids(&rows), desc(top - 10, 5));
    assert!(!rows.is_truncated());

    // Limit above the budget: capped at budget + 1, same order and offset.
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        q().limit(20)
            .offset(2)
            .budget(Budget::rows(6))
            .load::<Item>(conn)
    });
    assert_rows_exceeded(res.expect_err("limit 20, budget 6"), 6);
    assert_eq!(sent(&ledger).rows, Some(7));
    let rows = q()
        .limit(20)
        .offset(2)
        .budget(Budget::rows(6).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("limit 20, budget 6, truncating");
    assert_eq!(ids(&rows), desc(top - 2, 6));
    assert!(rows.is_truncated());

    // The offset runs past the end: the limit is what is left.
    let rows = q()
        .limit(20)
        .offset(25)
        .budget(Budget::rows(6))
        .load::<Item>(&mut *ctx.conn)
        .expect("5 rows left after offset 25");
    assert_eq!(ids(&rows), desc(top - 25, 5));

    // first and get_result keep order and offset.
    let first = q()
        .limit(20)
        .offset(7)
        .budget(Budget::rows(3))
        .first::<Item>(&mut *ctx.conn)
        .expect("first");
    assert_eq!(first.id, top - 7);
    let one = q()
        .limit(1)
        .offset(9)
        .budget(Budget::rows(1))
        .get_result::<Item>(&mut *ctx.conn)
        .expect("get_result, limit 1 = budget 1");
    assert_eq!(one.id, top - 9);
}

#[test]
fn boxed_queries_keep_their_limit_order_and_offset() {
    let mut ctx = C::seeded(48, 30);
    let base = ctx.base;
    let top = base + 29;
    let q = || {
        let mut q = items::table.into_boxed();
        q = q.filter(in_range(base, 30));
        q.order(items::id.desc())
    };
    let desc = |from: i32, n: i32| (0..n).map(|k| from - k).collect::<Vec<i32>>();

    let rows = q()
        .limit(4)
        .offset(3)
        .budget(Budget::rows(10))
        .load::<Item>(&mut *ctx.conn)
        .expect("boxed, limit 4 offset 3");
    assert_eq!(ids(&rows), desc(top - 3, 4));

    let rows = q()
        .limit(5)
        .offset(1)
        .budget(Budget::rows(5).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("boxed, limit 5 = budget 5");
    assert_eq!(ids(&rows), desc(top - 1, 5));
    assert!(!rows.is_truncated());

    let err = q()
        .limit(20)
        .offset(2)
        .budget(Budget::rows(6))
        .load::<Item>(&mut *ctx.conn)
        .expect_err("boxed, limit 20, budget 6");
    assert_rows_exceeded(err, 6);
    let rows = q()
        .limit(20)
        .offset(2)
        .budget(Budget::rows(6).truncate())
        .load::<Item>(&mut *ctx.conn)
        .expect("boxed, limit 20, budget 6, truncating");
    assert_eq!(ids(&rows), desc(top - 2, 6));
    assert!(rows.is_truncated());

    // Where the boxed limit's value can be read (PostgreSQL, MySQL) it is replaced in place;
    // SQLite keeps its binds private: the query goes as it is, capped by the executor (see
    // `diesel_budget::query`). Never a derived table.
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        q().limit(4).budget(Budget::rows(10)).load::<Item>(conn)
    });
    assert_eq!(ids(&res.expect("boxed, limit 4")), desc(top, 4));
    let wrapped = sent(&ledger).sql.contains("diesel_budget_capped");
    assert!(!wrapped, "{}", sent(&ledger).sql);
}

#[test]
fn duplicate_column_names_with_a_limit() {
    let mut ctx = C::seeded(42, 40);
    let base = ctx.base;
    // Two columns named `count(*)`: a derived table is refused by MySQL ("Duplicate column").
    let pair = items::table
        .filter(in_range(base, 40))
        .select((diesel::dsl::count_star(), diesel::dsl::count_star()))
        .limit(1)
        .budget(Budget::rows(1))
        .get_result::<(i64, i64)>(&mut *ctx.conn)
        .expect("two count(*) columns with a LIMIT");
    assert_eq!(pair, (40, 40));

    // A self-join selecting both `id` columns, newest first, with its own LIMIT and OFFSET.
    let next = diesel::alias!(items as next_items);
    let joined = || {
        items::table
            .inner_join(next.on(next.field(items::id).eq(items::id + 1)))
            .filter(in_range(base, 40))
            .select((items::id, next.field(items::id)))
            .order(items::id.desc())
    };
    let rows = joined()
        .limit(3)
        .offset(1)
        .budget(Budget::rows(10))
        .load::<(i32, i32)>(&mut *ctx.conn)
        .expect("join, duplicate names, limit 3 offset 1");
    // 39 pairs (base..base+38, each with its successor); the newest is base + 38.
    assert_eq!(
        rows,
        vec![
            (base + 37, base + 38),
            (base + 36, base + 37),
            (base + 35, base + 36)
        ]
    );
    let rows = joined()
        .limit(30)
        .budget(Budget::rows(4).truncate())
        .load::<(i32, i32)>(&mut *ctx.conn)
        .expect("join, duplicate names, limit 30, budget 4");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0], (base + 38, base + 39));
    assert!(rows.is_truncated());
    let err = joined()
        .limit(30)
        .budget(Budget::rows(4))
        .load::<(i32, i32)>(&mut *ctx.conn)
        .expect_err("join, limit 30, budget 4");
    assert_rows_exceeded(err, 4);
}

#[test]
fn debug_sql_is_what_load_sends() {
    type DB = <C as diesel::Connection>::Backend;
    let mut ctx = C::seeded(43, 10);
    let base = ctx.base;
    let plain = items::table
        .filter(in_range(base, 10))
        .order(items::id)
        .budget(Budget::rows(3).truncate());
    let limited = items::table
        .filter(in_range(base, 10))
        .order(items::id.desc())
        .limit(5)
        .offset(2)
        .budget(Budget::rows(3));
    let shown_plain = plain.debug_sql::<DB>().expect("debug_sql, no limit");
    let shown_limited = limited.debug_sql::<DB>().expect("debug_sql, own limit");
    assert!(shown_plain.ends_with(" LIMIT ?") || shown_plain.ends_with(" LIMIT $3"));
    assert!(!shown_plain.contains("binds"), "placeholders only: {shown_plain}");

    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| plain.load::<Item>(conn));
    assert_eq!(res.expect("plain").len(), 3);
    assert_eq!(placeholders(&sent(&ledger).sql), shown_plain);
    let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
        limited.load::<Item>(conn)
    });
    assert_rows_exceeded(res.expect_err("5 rows, budget 3"), 3);
    assert_eq!(placeholders(&sent(&ledger).sql), shown_limited);
}

/// Row locks, PostgreSQL and MySQL/MariaDB: two real transactions on two pooled connections
/// over committed rows in the test's own id range.
#[allow(unused_macros)] // not invoked in the SQLite module
macro_rules! row_lock_tests {
    () => {
        /// Two workers each claim a truncating budget of 5 of the same 10 queued rows with
        /// `FOR UPDATE SKIP LOCKED`, both transactions open at once; `$q` is the claim query.
        fn job_queue<Q>(test_no: i32, q: impl Fn(i32) -> Q)
        where
            Q: diesel::query_dsl::methods::LimitDsl,
            diesel_budget::Budgeted<Q, diesel_budget::budget::Rows, diesel_budget::budget::Truncate>:
                diesel_budget::LoadBudgeted<
                    'static,
                    C,
                    Item,
                    Output = diesel_budget::Truncated<Item>,
                >,
        {
            let tdb = C::test_db();
            let base = crate::common::id_base(test_no);
            // Ten queued rows and a sentinel after them that no claim matches. On InnoDB
            // (REPEATABLE READ) a `SKIP LOCKED` range scan whose rows are all locked runs on
            // past its range, skipping locked rows, and keeps a lock on the first free row it
            // reads there until its transaction ends: without the sentinel, a concurrent test's
            // third worker could hold one of the next test's rows (seen 1 run in 25).
            let _rows = crate::common::CommittedRows::insert(&tdb.db, base, base + 11);
            let mut a = tdb.conn();
            let mut b = tdb.conn();
            a.begin_test_transaction();
            b.begin_test_transaction();
            let first = q(base)
                .budget(Budget::rows(5).truncate())
                .load::<Item>(&mut *a)
                .expect("worker A claims");
            assert_eq!(ids(&first), span(base, base + 5), "worker A");
            // Under a lock "more existed" cannot be known: a full claim says "maybe".
            assert!(first.is_truncated(), "a full claim may have more");
            let second = q(base)
                .budget(Budget::rows(5).truncate())
                .load::<Item>(&mut *b)
                .expect("worker B claims");
            assert_eq!(
                ids(&second),
                span(base + 5, base + 10),
                "worker B gets the rows A did not lock"
            );
            // A third claim while both hold theirs finds nothing left.
            let mut c = tdb.conn();
            c.begin_test_transaction();
            let third = q(base)
                .budget(Budget::rows(5).truncate())
                .load::<Item>(&mut *c)
                .expect("worker C claims");
            assert!(third.is_empty(), "all 10 claimed: {:?}", ids(&third));
            assert!(!third.is_truncated());
        }

        #[test]
        fn locking_reads_lock_only_the_rows_they_return() {
            job_queue(44, |base| {
                items::table
                    .filter(in_range(base, 10))
                    .order(items::id)
                    .for_update()
                    .skip_locked()
            });
        }

        #[test]
        fn locking_reads_with_their_own_larger_limit_lock_only_the_budget() {
            job_queue(45, |base| {
                items::table
                    .filter(in_range(base, 10))
                    .order(items::id)
                    .limit(10)
                    .for_update()
                    .skip_locked()
            });
        }

        #[test]
        fn a_strict_locking_read_is_refused_unless_bounded() {
            let mut ctx = C::seeded(46, 10);
            let base = ctx.base;
            let q = || items::table.filter(in_range(base, 10)).order(items::id);
            // Strict, no limit of its own: refused before anything runs.
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                q().for_update().budget(Budget::rows(5)).load::<Item>(conn)
            });
            match res {
                Err(Error::InvalidArgument { name: "budget", reason }) => {
                    assert!(reason.contains("truncate"), "{reason}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
            assert_eq!(ledger.round_trips(), 0, "nothing ran:\n{ledger}");
            let err = q()
                .for_share()
                .budget(Budget::rows(5))
                .get_result::<Item>(&mut *ctx.conn)
                .expect_err("get_result probes too");
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
            // Its own limit no larger than the budget bounds it: runs, fits, LIMIT 4 sent.
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                q().limit(4)
                    .for_update()
                    .budget(Budget::rows(5))
                    .load::<Item>(conn)
            });
            assert_eq!(ids(&res.expect("own limit 4, budget 5")), span(base, base + 4));
            one_budgeted(&ledger, 4, 4);
            // A larger own limit would need the probe: refused.
            let err = q()
                .limit(6)
                .for_update()
                .budget(Budget::rows(5))
                .load::<Item>(&mut *ctx.conn)
                .expect_err("own limit 6, budget 5");
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
            // first fetches one row: no probe.
            let (first, ledger) = testing::record(&mut *ctx.conn, |conn| {
                q().for_update().budget(Budget::rows(5)).first::<Item>(conn)
            });
            assert_eq!(first.expect("first, locking").id, base);
            one_budgeted(&ledger, 1, 1);
        }
    };
}
