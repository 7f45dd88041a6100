// Time budgets (issue 9, item 3): the server cancels a statement past its budget's time limit;
// a typed error, a usable connection, nothing left running; a pool default is a session setting.
// Test numbers 13..=19, 68, 69.

use std::time::{Duration, Instant};

use crate::common::slow::Slow;


/// A `BudgetExceeded` on time, or panics with what came instead.
#[track_caller]
fn assert_timed_out(err: &Error) {
    assert!(
        matches!(
            err,
            Error::BudgetExceeded {
                exceeded: Exceeded::Time,
                ..
            }
        ),
        "expected a time budget exceeded, got {err:?}"
    );
}

/// Waits up to 2 s for the server to show no statement with marker `ms` running.
fn assert_nothing_running(conn: &mut diesel_budget::Conn<C>, ms: u32) {
    let start = Instant::now();
    loop {
        let n = <C as Slow>::running(conn, ms);
        if n == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{n} statements still running on the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_time_budget_cancels_a_slow_query_and_the_connection_stays_usable() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let mut ctx = C::seeded(13, 40);
    let base = ctx.base;
    <C as Slow>::prepare(&mut ctx.conn);
    let before = <C as Slow>::session_limit(&mut ctx.conn);
    // 40 rows at 50 ms each: 2 s unbounded.
    let start = Instant::now();
    let err = items::table
        .filter(in_range(base, 40))
        .filter(<C as Slow>::sleepy(50))
        .order(items::id)
        .budget(Budget::rows(100).time(Duration::from_millis(200)))
        .load::<Item>(&mut *ctx.conn)
        .unwrap_err();
    let took = start.elapsed();
    assert_timed_out(&err);
    assert!(err.is_budget_exceeded());
    assert!(!err.to_string().contains(&base.to_string()), "{err}");
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    // Nothing of it runs on, seen from another session.
    let mut other = ctx.tdb.conn();
    assert_nothing_running(&mut other, 50);
    // The same connection (still in its test transaction) works, without the limit.
    let n = items::table
        .filter(in_range(base, 40))
        .budget(Budget::rows(100))
        .load::<Item>(&mut *ctx.conn)
        .expect("the connection is usable after the time-out")
        .len();
    assert_eq!(n, 40);
    assert_eq!(<C as Slow>::session_limit(&mut ctx.conn), before);
}

#[test]
fn a_time_budget_that_is_not_reached_changes_nothing() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let mut ctx = C::seeded(14, 30);
    let base = ctx.base;
    let before = <C as Slow>::session_limit(&mut ctx.conn);
    let budget = Budget::rows(100).time(Duration::from_secs(20));
    let rows: Vec<Item> = items::table
        .filter(in_range(base, 30))
        .order(items::id)
        .budget(budget)
        .load(&mut *ctx.conn)
        .expect("fits in time");
    assert_eq!(ids(&rows), span(base, base + 30));
    let first: Item = items::table
        .filter(in_range(base, 30))
        .order(items::id)
        .budget(budget)
        .first(&mut *ctx.conn)
        .expect("first in time");
    assert_eq!(first.id, base);
    // Truncation still truncates under a time limit.
    let cut = items::table
        .filter(in_range(base, 30))
        .order(items::id)
        .budget(Budget::rows(10).truncate().time(Duration::from_secs(20)))
        .load::<Item>(&mut *ctx.conn)
        .expect("truncated");
    assert!(cut.is_truncated());
    assert_eq!(cut.len(), 10);
    for mode in [BatchMode::Keyset, BatchMode::Stream] {
        let mut seen = Vec::new();
        for batch in items::table
            .filter(in_range(base, 30))
            .budget(Budget::rows(7).time(Duration::from_secs(20)))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode)
        {
            seen.extend(ids(&batch.expect("batch in time")));
        }
        assert_eq!(seen, span(base, base + 30), "{mode:?}");
    }
    assert_eq!(<C as Slow>::session_limit(&mut ctx.conn), before);
}

#[test]
fn the_pool_time_limit_applies_and_a_budget_of_its_own_overrides_it() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let tdb = <C as Slow>::timed_db(2, Duration::from_millis(150));
    let base = crate::common::id_base(15);
    // Fixtures through a pool without a default: on the servers the timed pool's default is a
    // session setting, under which its unbudgeted statements run too.
    // (SQLite: the timed pool's own file, where the limit is per statement.)
    let untimed = C::test_db();
    let fixtures = if C::KIND == BackendKind::Sqlite { &tdb } else { &untimed };
    let _rows = crate::common::CommittedRows::insert(&fixtures.db, base, base + 8);
    let mut conn = tdb.conn();
    <C as Slow>::prepare(&mut conn);
    let before = <C as Slow>::session_limit(&mut conn);
    // 8 rows at 60 ms: 480 ms, over the pool's 150 ms.
    let err = items::table
        .filter(in_range(base, 8))
        .filter(<C as Slow>::sleepy(60))
        .budget(Budget::rows(10))
        .load::<Item>(&mut *conn)
        .unwrap_err();
    assert_timed_out(&err);
    let rows = items::table
        .filter(in_range(base, 8))
        .filter(<C as Slow>::sleepy(60))
        .budget(Budget::rows(10).time(Duration::from_secs(20)))
        .load::<Item>(&mut *conn)
        .expect("the budget's own limit wins");
    assert_eq!(rows.len(), 8);
    // The pool's default is the session's setting (on the servers), and stays so.
    assert_eq!(before, <C as Slow>::session_limit_of(Some(150)));
    assert_eq!(<C as Slow>::session_limit(&mut conn), before);
    drop(conn);
    // Every connection of the pool carries the default; a plain pool's carry none.
    let mut a = tdb.conn();
    let mut b = tdb.conn();
    assert_eq!(<C as Slow>::session_limit(&mut a), before);
    assert_eq!(<C as Slow>::session_limit(&mut b), before);
    let shared = C::test_db();
    let mut plain = shared.conn();
    assert_eq!(
        <C as Slow>::session_limit(&mut plain),
        <C as Slow>::session_limit_of(None)
    );
}

#[test]
fn zero_and_huge_time_limits_are_refused() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let mut ctx = C::ctx(16);
    for limit in [Duration::ZERO, diesel_budget::MAX_TIME + Duration::from_millis(1)] {
        let err = items::table
            .budget(Budget::rows(1).time(limit))
            .load::<Item>(&mut *ctx.conn)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidBudget { .. }), "{err:?}");
    }
    let err = <C as Slow>::timed_db_builder_error(Duration::ZERO);
    assert!(
        matches!(err, Error::InvalidArgument { name: "time_limit", .. }),
        "{err:?}"
    );
}

#[test]
fn a_walk_past_its_time_limit_is_interrupted_with_the_resume_key() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let mut ctx = C::seeded(17, 30);
    let base = ctx.base;
    <C as Slow>::prepare(&mut ctx.conn);
    // The first 10 rows are fast, the rest sleep 100 ms each: the third batch of 5 times out.
    let mut seen = Vec::new();
    let mut batches = items::table
        .filter(in_range(base, 30))
        // CASE: the sleep is evaluated only for the later rows, whatever the plan.
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "CASE WHEN items.id < {} THEN 1 = 1 ELSE {} END",
            base + 10,
            <C as Slow>::sleepy_sql(100)
        )))
        .budget(Budget::rows(5).time(Duration::from_millis(250)))
        .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn);
    let err = loop {
        match batches.next() {
            Some(Ok(rows)) => seen.extend(ids(&rows)),
            Some(Err(e)) => break e,
            None => panic!("the walk ended in time"),
        }
    };
    assert_eq!(seen, span(base, base + 10));
    assert_eq!(batches.resume_key(), Some(&(base + 9)));
    match &err {
        Error::Interrupted {
            rows_done: 10,
            source,
            ..
        } => assert_timed_out(source),
        other => panic!("expected Interrupted, got {other:?}"),
    }
}

/// One statement whose single step runs long: an aggregate over a 10^9-row cross join of a
/// generated series, returning one row (no row arrives before the work is done, so a clock
/// read between rows cannot stop it). MariaDB caps recursion at 1,000 iterations by default,
/// hence the cross join.
fn one_long_step() -> diesel::dsl::select<diesel::expression::SqlLiteral<diesel::sql_types::BigInt>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) \
         SELECT count(*) FROM c a, c b, c d)",
    ))
}

#[test]
fn a_time_budget_interrupts_a_statement_inside_one_long_step() {
    let mut ctx = C::ctx(18);
    let start = Instant::now();
    let err = one_long_step()
        .budget(Budget::rows(1).time(Duration::from_millis(200)))
        .get_result::<i64>(&mut *ctx.conn)
        .unwrap_err();
    let took = start.elapsed();
    assert_timed_out(&err);
    // Unbounded it runs for tens of seconds; interrupted, 200 ms and the time to notice.
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
    // The connection serves the next query at once (no limit), and a timed one.
    let one: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("count(*)"))
        .budget(Budget::rows(1))
        .get_result(&mut *ctx.conn)
        .expect("the connection is usable after the interrupt");
    assert_eq!(one, 1);
    let two: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("count(*) + 1"))
        .budget(Budget::rows(1).time(Duration::from_secs(20)))
        .get_result(&mut *ctx.conn)
        .expect("a timed query after the interrupt");
    assert_eq!(two, 2);
}

#[test]
fn an_interrupted_step_keeps_the_callers_transaction_and_its_writes() {
    // The pool's default limit interrupts the statement inside the caller's transaction: the
    // transaction and the rows it wrote are still there afterwards, and it commits.
    let tdb = <C as Slow>::timed_db(1, Duration::from_millis(200));
    let base = crate::common::id_base(19);
    let mut conn = tdb.conn();
    let result: Result<usize, Error> = conn.transaction(|conn| {
        diesel_budget::testing::allow_unbudgeted("fixture: rows of the transaction", || {
            diesel_budget::demo::seed(conn, base, base + 5, |_| {})
        })?;
        let start = Instant::now();
        let err = one_long_step()
            .budget(Budget::rows(1))
            .get_result::<i64>(conn)
            .unwrap_err();
        assert_timed_out(&err);
        assert!(start.elapsed() < Duration::from_millis(1_500), "took {:?}", start.elapsed());
        Ok(items::table
            .filter(in_range(base, 5))
            .budget(Budget::rows(10))
            .load::<Item>(conn)?
            .len())
    });
    assert_eq!(result.expect("the transaction commits"), 5);
    let committed = items::table
        .filter(in_range(base, 5))
        .budget(Budget::rows(10))
        .load::<Item>(&mut *conn)
        .expect("read back")
        .len();
    // Cleanup through a pool without a default (see above).
    drop(conn);
    let untimed = C::test_db();
    let fixtures = if C::KIND == BackendKind::Sqlite { &tdb } else { &untimed };
    let deleted = C::delete_range(&mut fixtures.conn(), base, base + 5);
    assert_eq!((committed, deleted), (5, 5));
}

/// The statements `f` sends on `conn`: every kind (transaction control included), and those
/// that are not transaction control.
fn statements_of<T>(
    conn: &mut diesel_budget::Conn<C>,
    f: impl FnOnce(&mut diesel_budget::Conn<C>) -> T,
) -> (T, (usize, usize)) {
    let (out, ledger) = testing::record(conn, f);
    for st in ledger.statements() {
        // Nothing for the limit inside the statement either (MariaDB's `SET STATEMENT`).
        assert!(!st.sql.contains("SET STATEMENT"), "{}", st.sql);
    }
    (out, (ledger.statements().len(), ledger.round_trips()))
}

#[test]
fn the_pool_default_is_a_session_setting_and_overrides_leave_it_as_it_was() {
    // Session reads and slow-query fixtures run unbudgeted on purpose.
    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("time budget fixtures");
    let tdb = <C as Slow>::timed_db(2, Duration::from_millis(300));
    let base = crate::common::id_base(68);
    // Fixtures through a pool without a default: on the servers the timed pool's default is a
    // session setting, under which its unbudgeted statements run too.
    // (SQLite: the timed pool's own file, where the limit is per statement.)
    let untimed = C::test_db();
    let fixtures = if C::KIND == BackendKind::Sqlite { &tdb } else { &untimed };
    let _rows = crate::common::CommittedRows::insert(&fixtures.db, base, base + 8);
    let mut conn = tdb.conn();
    <C as Slow>::prepare(&mut conn);
    let default = <C as Slow>::session_limit_of(Some(300));
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);
    let slow = |n: i32, ms: u32| {
        items::table
            .filter(in_range(base, n))
            .filter(<C as Slow>::sleepy(ms))
            .order(items::id)
    };

    // At the default: exactly one statement, nothing sent for the limit.
    let (rows, sent) = statements_of(&mut conn, |conn| {
        slow(2, 10).budget(Budget::rows(10)).load::<Item>(conn)
    });
    assert_eq!(rows.expect("fits the default").len(), 2);
    assert_eq!(sent, (1, 1), "a query at the pool default sends one statement");
    // The same limit given explicitly is the default too.
    let (rows, sent) = statements_of(&mut conn, |conn| {
        slow(2, 10)
            .budget(Budget::rows(10).time(Duration::from_millis(300)))
            .load::<Item>(conn)
    });
    assert_eq!(rows.expect("fits the default").len(), 2);
    assert_eq!(sent, (1, 1));

    // Enforced: 8 rows at 70 ms (560 ms) fail at 300 ms, and nothing runs on.
    let start = Instant::now();
    let err = slow(8, 70)
        .budget(Budget::rows(10))
        .load::<Item>(&mut *conn)
        .unwrap_err();
    assert_timed_out(&err);
    assert!(start.elapsed() < Duration::from_millis(1_500), "{:?}", start.elapsed());
    let mut other = tdb.conn();
    assert_nothing_running(&mut other, 70);
    drop(other);
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);

    // An override above the default: runs past it.
    let rows = slow(8, 71)
        .budget(Budget::rows(10).time(Duration::from_secs(20)))
        .load::<Item>(&mut *conn)
        .expect("the budget's own, longer limit");
    assert_eq!(rows.len(), 8);
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);
    // An override below: 4 rows at 40 ms (160 ms) fit the default but not 60 ms.
    let rows = slow(4, 40)
        .budget(Budget::rows(10))
        .load::<Item>(&mut *conn)
        .expect("160 ms fit the default");
    assert_eq!(rows.len(), 4);
    let err = slow(4, 41)
        .budget(Budget::rows(10).time(Duration::from_millis(60)))
        .load::<Item>(&mut *conn)
        .unwrap_err();
    assert_timed_out(&err);
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);

    // No limit at all: runs past the default, a load and a streamed walk alike.
    let start = Instant::now();
    let rows = slow(8, 72)
        .budget(Budget::rows(10).no_time_limit())
        .load::<Item>(&mut *conn)
        .expect("no limit");
    assert_eq!(rows.len(), 8);
    assert!(start.elapsed() >= Duration::from_millis(500), "{:?}", start.elapsed());
    let mut walked = Vec::new();
    for batch in items::table
        .filter(in_range(base, 8))
        .filter(<C as Slow>::sleepy(73))
        .budget(Budget::rows(100).no_time_limit())
        .batches_by(items::id, |i: &Item| i.id, &mut *conn)
        .mode(BatchMode::Stream)
    {
        walked.extend(ids(&batch.expect("a walk without a limit")));
    }
    assert_eq!(walked, span(base, base + 8));
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);

    // Inside a transaction that rolls back: overrides, no limit, and the default; after it the
    // session carries the default still.
    let result: Result<(), Error> = conn.transaction(|conn| {
        let (rows, sent) = statements_of(conn, |conn| {
            slow(2, 11).budget(Budget::rows(10)).load::<Item>(conn)
        });
        assert_eq!(rows?.len(), 2);
        // PostgreSQL wraps it in a savepoint (a cancelled statement would abort the
        // transaction), and sends nothing for the limit either.
        let savepoint = if C::KIND == BackendKind::Postgres { 2 } else { 0 };
        assert_eq!(sent, (1 + savepoint, 1), "at the default inside a transaction");
        let rows = slow(8, 74)
            .budget(Budget::rows(10).no_time_limit())
            .load::<Item>(conn)?;
        assert_eq!(rows.len(), 8);
        assert_eq!(<C as Slow>::session_limit(conn), default);
        let err = slow(4, 42)
            .budget(Budget::rows(10).time(Duration::from_millis(60)))
            .load::<Item>(conn)
            .unwrap_err();
        assert_timed_out(&err);
        Err(err)
    });
    assert!(result.is_err());
    assert_eq!(<C as Slow>::session_limit(&mut conn), default);
    let err = slow(8, 75)
        .budget(Budget::rows(10))
        .load::<Item>(&mut *conn)
        .unwrap_err();
    assert_timed_out(&err);
}

#[test]
fn an_own_limit_sent_unread_never_steps_the_row_past_the_cap() {
    // The 7th row (budget 5, cap 6) makes `abs` overflow (i64::MIN): stepping it would fail
    // the query. The query's own LIMIT 1000 is far above the budget.
    let mut ctx = C::seeded(69, 20);
    let base = ctx.base;
    let trap = diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "abs(CASE WHEN items.id = {} THEN (-9223372036854775807 - 1) ELSE items.id END)",
        base + 6
    ));
    let cut = items::table
        .filter(in_range(base, 20))
        .order(items::id)
        .select(trap.clone())
        .limit(1000)
        .budget(Budget::rows(5).truncate())
        .load::<i64>(&mut *ctx.conn)
        .expect("truncated before the trap");
    assert!(cut.is_truncated());
    assert_eq!(
        cut.iter().copied().collect::<Vec<_>>(),
        (0..5).map(|i| i64::from(base + i)).collect::<Vec<_>>()
    );
    let err = items::table
        .filter(in_range(base, 20))
        .order(items::id)
        .select(trap)
        .limit(1000)
        .budget(Budget::rows(5))
        .load::<i64>(&mut *ctx.conn)
        .unwrap_err();
    assert!(
        matches!(err, Error::BudgetExceeded { exceeded: Exceeded::Rows, seen_rows: 6, .. }),
        "{err:?}"
    );
}
