// The one seeding path (`demo::insert_generated`) that `demo::seed`, these tests, the doctests
// and the benchmark share: chunked by statement and by transaction, exactly the generated rows.

/// 25 rows, 7 a statement, 10 a transaction: progress after each statement (7, 10, 17, 20, 25),
/// three savepoints (SAVEPOINT + RELEASE each, inside the test transaction), and the rows are
/// exactly `Item::generate`'s. A zero chunk size is refused before anything is written.
#[test]
fn insert_generated_chunks_by_statement_and_transaction() {
    // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("insert generated chunks by statement and transaction");
    let mut ctx = C::ctx(90);
    let base = ctx.base;

    let refused = diesel_budget::demo::insert_generated(
        ctx.conn.unbudgeted(),
        base..base + 25,
        0,
        10,
        |_| {},
    );
    assert!(
        matches!(refused, Err(Error::InvalidArgument { .. })),
        "{refused:?}"
    );

    let mut progress = Vec::new();
    let (written, ledger) = testing::record(&mut *ctx.conn, |conn| {
        diesel_budget::demo::insert_generated(conn.unbudgeted(), base..base + 25, 7, 10, |n| {
            progress.push(n)
        })
    });
    assert_eq!(written.expect("insert_generated"), 25);
    assert_eq!(progress, [7, 10, 17, 20, 25]);
    let transaction = ledger
        .statements()
        .iter()
        .filter(|s| s.kind == StatementKind::Transaction)
        .count();
    assert_eq!(transaction, 6, "three savepoints: {ledger}");

    let rows = items::table
        .filter(in_range(base, 30))
        .order(items::id)
        .budget(Budget::rows(30))
        .load::<Item>(&mut *ctx.conn)
        .expect("load");
    assert_eq!(rows, crate::common::expected(base, base + 25));
}
