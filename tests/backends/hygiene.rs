// Migrations and pool hygiene (all backends).

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
