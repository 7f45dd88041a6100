// Instrumentation, statistics and ledgers (all backends).

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
    // load: 1; batches of 10 over 30 rows: 3 (each reads the row after it, `LIMIT 11`: the
    // third finds none and ends the walk).
    assert_eq!(d.budgeted, 1 + 3, "{d:?}");
    assert_eq!(d.unbudgeted, inserts + 1, "INSERT(s) and SELECT 1: {d:?}");
    assert_eq!(d.transaction, 1 + seed_tx, "BEGIN and the seeding's: {d:?}");
    assert_eq!(d.internal, 0, "{d:?}");
    assert_eq!(d.failed, 0, "{d:?}");
    assert_eq!(d.statements, 4 + inserts + 1 + 1 + seed_tx, "{d:?}");
    assert_eq!(
        d.rows,
        30 + 30 + 2,
        "the first two batches receive the row after them: {d:?}"
    );
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
    assert_eq!(
        (d4.rows, d4.unbudgeted),
        (walk_rows(BatchMode::Stream, 30, 7), 0),
        "{d4:?}"
    );

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
    // 1 + 1 + 3 batches (16, 16, 8: the short one ends the walk; the full ones receive the row
    // after them).
    assert_eq!(ledger.round_trips(), 5, "{ledger}");
    assert_eq!(ledger.rows(), 40 + 15 + 40 + 2, "{ledger}");
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
        .rows_at_most(97)
        .bytes_at_most(sizes.iter().sum())
        .no_unbudgeted_queries();
    // Each check fails when the ledger is over.
    type Check = fn(&Ledger);
    let over: [(&str, Check); 3] = [
        ("round trips", |l| {
            let _ = l.assert().round_trips_at_most(4);
        }),
        ("rows", |l| {
            let _ = l.assert().rows_at_most(96);
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
