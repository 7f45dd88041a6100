// The pool and its connections: transactions that never lie after a panic, settings that never
// panic, a build that fails fast, and the per-connection set-up hook. Included once per backend
// by `tests/backends.rs` (`C` is the backend's connection type); test numbers 85..=89.

mod pool {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::{BackendKind, BudgetConnection, Error};

    use super::C;
    use crate::common::{id_base, in_range, Backend};

    /// A URL of this backend's test database (SQLite: a new file in a temp dir, kept alive by
    /// the returned guard). The server databases are created and migrated first.
    fn url() -> (String, Option<tempfile::TempDir>) {
        match <C as BudgetConnection>::KIND {
            BackendKind::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("diesel-budget-pool")
                    .tempdir()
                    .expect("temp dir");
                let path = dir.path().join("pool.db");
                (path.to_str().expect("utf-8 temp path").to_owned(), Some(dir))
            }
            #[cfg(feature = "postgres")]
            BackendKind::Postgres => {
                let _shared = C::test_db();
                (crate::common::pg_url(), None)
            }
            #[cfg(feature = "mysql")]
            BackendKind::Mysql => {
                let _shared = C::test_db();
                (crate::common::mysql_url(), None)
            }
            #[allow(unreachable_patterns)]
            other => panic!("no test URL for {other}"),
        }
    }

    /// Whether the server has a transaction open on `conn`'s session (PostgreSQL: asked from
    /// another session of `db`; the others on that session).
    fn server_in_transaction(db: &Db<C>, conn: &mut Conn<C>) -> bool {
        let flag = |conn: &mut Conn<C>, expr: &str| {
            diesel::select(diesel::dsl::sql::<BigInt>(expr))
                .get_result::<i64>(conn.unbudgeted())
                .unwrap_or_else(|e| panic!("asking {expr}: {e}"))
                == 1
        };
        match <C as BudgetConnection>::KIND {
            // SQLite refuses a BEGIN inside a transaction; outside one, undo it at once.
            BackendKind::Sqlite => match conn.unbudgeted().batch_execute("BEGIN") {
                Ok(()) => {
                    conn.unbudgeted().batch_execute("ROLLBACK").expect("ROLLBACK");
                    false
                }
                Err(e) => {
                    assert!(e.to_string().contains("within a transaction"), "BEGIN: {e}");
                    true
                }
            },
            BackendKind::Postgres => {
                let pid = diesel::select(diesel::dsl::sql::<BigInt>("CAST(pg_backend_pid() AS BIGINT)"))
                    .get_result::<i64>(conn.unbudgeted())
                    .expect("pg_backend_pid()");
                let mut other = db.get().expect("a second checkout");
                flag(
                    &mut other,
                    &format!(
                        "(SELECT count(*) FROM pg_stat_activity \
                          WHERE pid = {pid} AND state LIKE 'idle in transaction%')"
                    ),
                )
            }
            BackendKind::Mysql => flag(conn, "CAST(@@in_transaction AS SIGNED)"),
            other => panic!("unknown backend {other}"),
        }
    }

    /// Deletes the committed rows `from..to` now and again when dropped (also on a failure).
    struct Cleanup<'a> {
        db: &'a Db<C>,
        from: i32,
        to: i32,
    }

    impl<'a> Cleanup<'a> {
        fn new(db: &'a Db<C>, from: i32, to: i32) -> Self {
            let mut conn = db.get().expect("checkout for clean-up");
            C::delete_range(&mut conn, from, to);
            Cleanup { db, from, to }
        }
    }

    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Ok(mut conn) = self.db.get() {
                C::delete_range(&mut conn, self.from, self.to);
            }
        }
    }

    fn committed_ids(db: &Db<C>, from: i32, n: i32) -> Vec<i32> {
        let mut conn = db.get().expect("checkout to read back");
        items::table
            .filter(in_range(from, n))
            .order(items::id)
            .budget(Budget::rows(10))
            .load::<Item>(&mut conn)
            .expect("read back")
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    /// Issue 9, item 1: a panic caught while the `Conn` is still held must not leave the
    /// transaction open, or the next `transaction` becomes a savepoint inside it and its
    /// "committed" write is rolled back with it when the connection goes back to the pool.
    #[test]
    fn a_panic_in_a_transaction_rolls_it_back_so_the_next_one_commits() {
        // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("a panic in a transaction rolls it back so the next one commits");
        let tdb = C::test_db();
        let base = id_base(85);
        let _cleanup = Cleanup::new(&tdb.db, base, base + 4);
        let mut conn = tdb.db.get().expect("checkout");

        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), Error> = conn.transaction(|conn| {
                C::seed(conn, base, base + 1);
                // A nested transaction that panics unwinds through both.
                conn.transaction(|conn| -> Result<(), Error> {
                    C::seed(conn, base + 1, base + 2);
                    panic!("a bug inside a transaction (expected by this test)");
                })
            });
        }));
        assert!(caught.is_err(), "the panic reached the caller");
        assert!(
            !server_in_transaction(&tdb.db, &mut conn),
            "{}: the server still has the panicked transaction open",
            <C as BudgetConnection>::KIND
        );

        let committed: Result<(), Error> = conn.transaction(|conn| {
            C::seed(conn, base + 2, base + 3);
            Ok(())
        });
        committed.expect("the next transaction");
        // The panicking closure's rows were rolled back, the next transaction's committed.
        let seen = crate::common::expected(base + 2, base + 3);
        assert_eq!(
            items::table
                .filter(in_range(base, 4))
                .order(items::id)
                .budget(Budget::rows(10))
                .load::<Item>(&mut conn)
                .expect("read on the same connection"),
            seen
        );
        drop(conn);
        assert_eq!(
            committed_ids(&tdb.db, base, 4),
            vec![base + 2],
            "{}: the write of a transaction that returned Ok is lost",
            <C as BudgetConnection>::KIND
        );
    }

    /// A panic caught *inside* an outer transaction rolls back only the inner savepoint: the
    /// outer transaction goes on and commits what it wrote before and after.
    #[test]
    fn a_panic_caught_inside_a_transaction_rolls_back_only_the_savepoint() {
        // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("a panic caught inside a transaction rolls back only the savepoint");
        let tdb = C::test_db();
        let base = id_base(86);
        let _cleanup = Cleanup::new(&tdb.db, base, base + 4);
        let mut conn = tdb.db.get().expect("checkout");
        conn.transaction(|conn| -> Result<(), Error> {
            C::seed(conn, base, base + 1);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _: Result<(), Error> = conn.transaction(|conn| {
                    C::seed(conn, base + 1, base + 2);
                    panic!("a bug inside a savepoint (expected by this test)");
                });
            }));
            assert!(caught.is_err());
            C::seed(conn, base + 2, base + 3);
            Ok(())
        })
        .expect("the outer transaction");
        assert!(!server_in_transaction(&tdb.db, &mut conn));
        drop(conn);
        assert_eq!(committed_ids(&tdb.db, base, 4), vec![base, base + 2]);
    }

    /// Issue 11: `build` on a server that cannot be reached reports the connection error at
    /// once, not after `connection_timeout` (30 s) of r2d2 retries.
    #[test]
    fn build_fails_fast_with_a_typed_error_when_the_database_is_unreachable() {
        let url = match <C as BudgetConnection>::KIND {
            BackendKind::Sqlite => "/nonexistent-diesel-budget-dir/sub/pool.db",
            BackendKind::Postgres => "postgres://postgres@127.0.0.1:1/diesel_budget_pool",
            BackendKind::Mysql => "mysql://root@127.0.0.1:1/diesel_budget_pool",
            other => panic!("unknown backend {other}"),
        };
        let started = Instant::now();
        let err = Db::<C>::builder(url)
            .connection_timeout(Duration::from_secs(30))
            .build()
            .expect_err("nothing listens there");
        let took = started.elapsed();
        assert!(matches!(err, Error::Connection(_)), "{err:?}");
        assert!(took < Duration::from_secs(10), "build gave up after {took:?}");
    }

    /// Issue 9 item 2, issue 8: settings r2d2 panics on are typed errors, before anything
    /// connects (the URL is not even valid).
    #[test]
    fn pool_settings_r2d2_would_panic_on_are_invalid_arguments() {
        let cases: [(&str, diesel_budget::DbBuilder<C>); 4] = [
            ("max_size", Db::<C>::builder("unused://").max_size(0)),
            (
                "min_idle",
                Db::<C>::builder("unused://").max_size(2).min_idle(3),
            ),
            ("min_idle", Db::<C>::builder("unused://").min_idle(11)),
            (
                "connection_timeout",
                Db::<C>::builder("unused://").connection_timeout(Duration::ZERO),
            ),
        ];
        let mut wrong = Vec::new();
        for (expected, builder) in cases {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build()));
            match built {
                Ok(Err(Error::InvalidArgument { name, reason }))
                    if name == expected && !reason.is_empty() => {}
                Ok(Err(other)) => wrong.push(format!("{expected}: {other:?}")),
                Ok(Ok(_)) => wrong.push(format!("{expected}: a pool was built")),
                Err(_) => wrong.push(format!("{expected}: build panicked")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // The edges are fine: min_idle equal to max_size, and 0.
        let (url, _dir) = url();
        for min_idle in [0, 2] {
            let db = Db::<C>::builder(url.clone())
                .max_size(2)
                .min_idle(min_idle)
                .connection_timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_else(|e| panic!("min_idle {min_idle}: {e:?}"));
            drop(db);
        }
    }

    /// Issue 9, item 4: the `on_connect` hook runs once on every new physical connection, after
    /// our set-up, and what it sets is there on each checkout; its statements are internal.
    #[test]
    fn on_connect_runs_on_every_new_connection() {
        let (url, _dir) = url();
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let db = Db::<C>::builder(url.clone())
            .max_size(3)
            .min_idle(3)
            .on_connect(move |conn: &mut C| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                conn.batch_execute(&session_value_sql(1000 + n).0)
            })
            .build()
            .expect("build");
        let read = session_value_sql(0).1;
        // All three connections at once: three physical connections, each set up.
        let mut held: Vec<Conn<C>> = (0..3).map(|_| db.get().expect("checkout")).collect();
        let mut seen: Vec<i64> = held
            .iter_mut()
            .map(|conn| {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Nullable<BigInt>>(read))
                    .get_result::<Option<i64>>(conn.unbudgeted())
                    .expect("read the session setting")
                    .unwrap_or_else(|| panic!("a connection the hook did not set up"))
            })
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3, "three sessions, each set by its own hook call: {seen:?}");
        let total = i64::from(calls.load(Ordering::SeqCst));
        assert!(
            seen.iter().all(|&v| v > 1000 && v <= 1000 + total),
            "{seen:?} after {total} hook calls"
        );
        drop(held);
        assert_eq!(db.stats().unbudgeted, 3, "only the 3 reads: {:?}", db.stats());
    }

    /// The SQL that sets this test's session value to `n` on each backend, and the expression
    /// that reads it back (NULL when unset).
    fn session_value_sql(n: u32) -> (String, &'static str) {
        match <C as BudgetConnection>::KIND {
            BackendKind::Sqlite => (
                format!("PRAGMA cache_size = -{n}"),
                "(SELECT -cache_size FROM pragma_cache_size())",
            ),
            BackendKind::Postgres => (
                format!("SET diesel_budget.hook = '{n}'"),
                "CAST(current_setting('diesel_budget.hook', true) AS BIGINT)",
            ),
            _ => (
                format!("SET @diesel_budget_hook = {n}"),
                "CAST(@diesel_budget_hook AS SIGNED)",
            ),
        }
    }

    /// What the docs say plainly: the pool does not reset sessions, so state set through
    /// `unbudgeted()` is there for the next checkout of the same physical connection (and the
    /// hook does not run again: it runs per physical connection, not per checkout).
    #[test]
    fn session_state_set_through_unbudgeted_survives_a_checkout() {
        let (url, _dir) = url();
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let db = Db::<C>::builder(url)
            .max_size(1)
            .on_connect(move |conn: &mut C| {
                counter.fetch_add(1, Ordering::SeqCst);
                conn.batch_execute(&session_value_sql(1001).0)
            })
            .build()
            .expect("build");
        let read = |conn: &mut Conn<C>| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Nullable<BigInt>>(
                session_value_sql(0).1,
            ))
            .get_result::<Option<i64>>(conn.unbudgeted())
            .expect("read the session value")
        };
        let mut conn = db.get().expect("checkout");
        assert_eq!(read(&mut conn), Some(1001));
        conn.unbudgeted()
            .batch_execute(&session_value_sql(7).0)
            .expect("set through the escape hatch");
        drop(conn);
        let hooks = calls.load(Ordering::SeqCst);
        let mut conn = db.get().expect("the same connection again");
        assert_eq!(read(&mut conn), Some(7), "the pool reset the session");
        assert_eq!(calls.load(Ordering::SeqCst), hooks, "the hook ran on a checkout");
    }

    /// A hook that fails on the first connection fails `build`, at once and with a typed error
    /// whose message holds no server text.
    #[test]
    fn a_failing_on_connect_hook_fails_build_at_once() {
        let (url, _dir) = url();
        let started = Instant::now();
        let err = Db::<C>::builder(url)
            .on_connect(|conn: &mut C| conn.batch_execute("SELECT * FROM diesel_budget_no_such_table"))
            .build()
            .expect_err("the hook fails");
        assert!(matches!(err, Error::SessionSetup { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!err.to_string().contains("no_such_table"), "{err}");
    }
}
