// Budgets in CI (issue 7): ledger checks with call sites, N+1 by scaling, budget lockfiles, plan
// checks, strict mode. Included once per backend (`C` is the backend's connection type). Test
// numbers 32..=39.

mod ci {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    #[cfg(feature = "ci")]
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::testing;
    #[cfg(feature = "ci")]
    use diesel_budget::testing::{Lockfile, Verdict};
    #[cfg(feature = "ci")]
    use diesel_budget::BudgetConnection;
    use diesel_budget::Conn;

    use super::C;
    use crate::common::{in_range, Backend};

    /// A value that must never appear in a message.
    const SECRET: &str = "secret-name-7";

    /// The message of a caught panic.
    fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    fn here(line: u32) -> String {
        format!("{}:{line}:", file!())
    }

    // -----------------------------------------------------------------------------------------
    // 1. Ledger checks: Result and panic, same message: shape, call site, observed vs allowed.

    #[test]
    fn ledger_checks_name_the_shape_and_call_site() {
        let mut ctx = C::seeded(32, 20);
        let base = ctx.base;
        let point_line = line!() + 8;
        let walk_line = line!() + 13;
        let ((), ledger) = testing::record(&mut *ctx.conn, |conn| {
            for id in base..base + 3 {
                items::table
                    .find(id)
                    .filter(items::name.ne(SECRET))
                    .budget(Budget::rows(1))
                    .first::<Item>(conn)
                    .expect("point read");
            }
            for batch in items::table
                .filter(in_range(base, 20))
                .budget(Budget::rows(10))
                .batches_by(items::id, |i: &Item| i.id, conn)
            {
                assert!(batch.expect("batch").len() <= 10);
            }
        });
        // 3 point reads + 2 full batches (the second finds no row after it: the walk ends).
        let trips = ledger.round_trips();
        assert!(trips >= 5, "{ledger}");
        assert!(ledger.check().round_trips_at_most(trips).is_ok());
        let err = ledger
            .check()
            .round_trips_at_most(3)
            .expect_err("more than 3 round trips");
        assert_eq!((err.observed, err.allowed), (trips as u64, 3));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{trips} round trips, at most 3 allowed")),
            "{msg}"
        );
        // The point read: its shape, 3 times, at the line of its `first`.
        let point = err
            .shapes
            .iter()
            .find(|s| s.count == 3)
            .unwrap_or_else(|| panic!("a shape run 3 times: {msg}"));
        assert!(point.fingerprint.contains("LIMIT ?"), "{msg}");
        assert!(point.call_site().starts_with(&here(point_line)), "{msg}");
        assert!(
            msg.contains(&format!("3x {} at {}", point.fingerprint, point.call_site())),
            "{msg}"
        );
        // The walk's statements carry the `batches_by` call site.
        let walk = ledger
            .statements()
            .iter()
            .filter(|s| s.sql.contains("ORDER BY"))
            .collect::<Vec<_>>();
        assert!(walk.len() >= 2, "{ledger}");
        for s in walk {
            let at = s.location.map(|l| l.to_string()).unwrap_or_default();
            assert!(at.starts_with(&here(walk_line)), "{at} in {ledger}");
        }
        // Never a bound value in the message.
        assert!(!msg.contains(SECRET), "{msg}");
        // The panicking form says the same.
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            ledger.assert().round_trips_at_most(3);
        }))
        .expect_err("assert panics");
        assert_eq!(panic_message(panicked), msg);

        // Rows: 3 + 20 received (+ probe rows); at most 5 fails, naming the walk first.
        let rows = ledger.rows();
        assert!(ledger.check().rows_at_most(rows).is_ok());
        let err = ledger.check().rows_at_most(5).expect_err("too many rows");
        assert!(
            err.to_string()
                .contains(&format!("{rows} rows, at most 5 allowed")),
            "{err}"
        );
        assert!(err.shapes[0].call_site().starts_with(&here(walk_line)), "{err}");
        // Repeats: the point read ran 3 times from one place.
        assert!(ledger.check().each_shape_at_most(3).is_ok());
        let err = ledger.check().each_shape_at_most(2).expect_err("3 repeats");
        assert!(err.to_string().contains("3 runs of one query shape"), "{err}");

        // Unbudgeted statements are named too.
        let (_, ledger) = testing::record(&mut *ctx.conn, |conn| {
            testing::allow_unbudgeted("the unbudgeted statement under test", || {
                items::table
                    .filter(items::name.ne(SECRET))
                    .count()
                    .get_result::<i64>(conn.unbudgeted())
                    .expect("count")
            })
        });
        let err = ledger
            .check()
            .no_unbudgeted_queries()
            .expect_err("one unbudgeted");
        let msg = err.to_string();
        assert!(msg.contains("1 statements ran without a budget"), "{msg}");
        assert!(msg.contains("1x SELECT COUNT(*)"), "{msg}");
        assert!(msg.contains("unknown call site"), "{msg}");
        assert!(!msg.contains(SECRET), "{msg}");
    }

    // -----------------------------------------------------------------------------------------
    // 2. N+1 by scaling.

    /// Leaves exactly `n` rows in the test's range (a fixture: unbudgeted, not recorded).
    fn rows_at_scale(conn: &mut Conn<C>, base: i32, n: u64) {
        C::delete_range(conn, base, base + 100);
        C::seed(conn, base, base + n as i32);
    }

    /// The parents: every row of the range.
    fn parents(conn: &mut Conn<C>, base: i32) -> Vec<Item> {
        items::table
            .filter(in_range(base, 100))
            .order(items::id)
            .budget(Budget::rows(100))
            .load::<Item>(conn)
            .expect("parents")
    }

    #[test]
    fn scaling_catches_n_plus_one_and_passes_batched_and_constant_paths() {
        let mut ctx = C::ctx(33);
        let base = ctx.base;
        let scales = [1, 10, 30];

        // One query per parent.
        let child_line = line!() + 10;
        let n_plus_one = testing::scaling(
            &mut *ctx.conn,
            &scales,
            |conn, n| rows_at_scale(conn, base, n),
            |conn, _| {
                for p in parents(conn, base) {
                    items::table
                        .filter(items::id.eq(p.id))
                        .budget(Budget::rows(1))
                        .get_result::<Item>(conn)
                        .expect("child");
                }
            },
        );
        let err = n_plus_one.check_constant().expect_err("an N+1");
        assert_eq!(
            (err.from_scale, err.to_scale, err.from_round_trips),
            (1, 10, 2)
        );
        assert_eq!(err.to_round_trips, 11);
        assert_eq!(err.grown.len(), 1, "{err}");
        let grown = &err.grown[0];
        assert_eq!((grown.from, grown.to), (1, 10));
        let site = grown.location.map(|l| l.to_string()).unwrap_or_default();
        assert!(site.starts_with(&here(child_line)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("N+1: round trips grew from 2 at scale 1 to 11 at scale 10"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("grew: {} at {site}: 1 at scale 1, 10 at scale 10", grown.fingerprint)),
            "{msg}"
        );
        // Its stated slope (one query per parent) holds; a smaller one does not.
        assert!(n_plus_one.check_slope(1.0).is_ok());
        assert!(n_plus_one.check_slope(0.5).is_err());
        let panicked = catch_unwind(AssertUnwindSafe(|| n_plus_one.assert_constant()))
            .expect_err("assert_constant panics");
        assert_eq!(panic_message(panicked), msg);

        // The batched rewrite: two queries at every scale.
        let batched = testing::scaling(
            &mut *ctx.conn,
            &scales,
            |conn, n| rows_at_scale(conn, base, n),
            |conn, n| {
                let ids: Vec<i32> = parents(conn, base).iter().map(|p| p.id).collect();
                let children = items::table
                    .filter(items::id.eq_any(ids))
                    .budget(Budget::rows(100))
                    .load::<Item>(conn)
                    .expect("children");
                assert_eq!(children.len() as u64, n);
            },
        );
        batched.check_constant().expect("batched is constant");
        for (_, ledger) in batched.runs() {
            assert_eq!(ledger.round_trips(), 2, "{ledger}");
        }

        // Constant but high: 12 queries at every scale, not an N+1 (a threshold detector would
        // flag the repeats: the secondary signal does).
        let high = testing::scaling(
            &mut *ctx.conn,
            &scales,
            |conn, n| rows_at_scale(conn, base, n),
            |conn, _| {
                for _ in 0..12 {
                    parents(conn, base);
                }
            },
        );
        high.assert_constant();
        let (_, last) = &high.runs()[2];
        assert_eq!(last.round_trips(), 12);
        assert_eq!(last.repeated_shapes(5).len(), 1);
    }

    // -----------------------------------------------------------------------------------------
    // 3. Budget lockfiles (feature `ci`).

    #[cfg(feature = "ci")]
    fn load_range(conn: &mut Conn<C>, from: i32, n: i32) -> usize {
        items::table
            .filter(in_range(from, n))
            .budget(Budget::rows(50))
            .load::<Item>(conn)
            .expect("range")
            .len()
    }

    #[cfg(feature = "ci")]
    #[test]
    fn lockfiles_pass_as_committed_fail_on_more_and_note_less() {
        let mut ctx = C::seeded(34, 20);
        let base = ctx.base;
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = dir.path();
        let name = format!("ci_lock_{}", C::KIND);
        let lock = |conn: &mut Conn<C>, loads: usize, n: i32| {
            let ((), ledger) = testing::record(conn, |conn| {
                for _ in 0..loads {
                    load_range(conn, base, n);
                }
            });
            Lockfile::from_ledger(&name, &ledger)
        };

        // Missing under CI: a failure, nothing written.
        let first = lock(&mut ctx.conn, 1, 10);
        let err = testing::check_lockfile_in(dir, &first, false, true).expect_err("missing");
        assert!(err.to_string().contains("is missing and CI=true"), "{err}");
        assert!(!dir.join(format!("{name}.json")).exists());
        // Missing outside CI: written.
        testing::check_lockfile_in(dir, &first, false, false).expect("written");
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("file");
        let back: Lockfile = serde_json::from_str(&text).expect("json");
        assert_eq!(back, first);
        assert_eq!(back.queries.len(), 1);
        let e = &back.queries[0];
        assert_eq!((e.round_trips, e.max_rows, e.budget_rows), (1, 10, Some(50)));
        assert!(e.call_site.starts_with(file!()), "{text}");
        // The same again: as committed.
        let report = testing::check_lockfile_in(dir, &lock(&mut ctx.conn, 1, 10), false, true)
            .expect("same");
        assert!(!report.regressed() && !report.could_tighten(), "{report}");

        // More round trips and rows: a regression, in the table.
        let err = testing::check_lockfile_in(dir, &lock(&mut ctx.conn, 2, 15), false, true)
            .expect_err("regressed");
        let msg = err.to_string();
        assert!(msg.contains("regressed"), "{msg}");
        assert!(msg.contains("round trips 1 -> 2"), "{msg}");
        assert!(msg.contains("max rows 10 -> 15"), "{msg}");
        assert!(msg.contains(&e.call_site), "{msg}");
        assert!(msg.contains("DIESEL_BUDGET_UPDATE=1"), "{msg}");

        // Fewer rows: passes, says the file could be tightened.
        let report = testing::check_lockfile_in(dir, &lock(&mut ctx.conn, 1, 4), false, true)
            .expect("fewer rows pass");
        assert!(report.could_tighten() && !report.regressed(), "{report}");
        assert_eq!(report.changes[0].verdict, Verdict::Tighter);
        assert!(report.to_string().contains("could be tightened"), "{report}");

        // A new query shape is a regression.
        let ((), ledger) = testing::record(&mut *ctx.conn, |conn| {
            load_range(conn, base, 10);
            items::table
                .find(base)
                .budget(Budget::rows(1))
                .first::<Item>(conn)
                .expect("point");
        });
        let err = testing::check_lockfile_in(dir, &Lockfile::from_ledger(&name, &ledger), false, true)
            .expect_err("new query");
        assert!(err.to_string().contains("new query"), "{err}");

        // DIESEL_BUDGET_UPDATE=1 rewrites.
        let more = lock(&mut ctx.conn, 2, 15);
        testing::check_lockfile_in(dir, &more, true, true).expect("updated");
        testing::check_lockfile_in(dir, &more, false, true).expect("as updated");
    }

    #[cfg(feature = "ci")]
    /// This crate's own committed lockfile (tests/budgets/suite_<backend>.json), checked by CI:
    /// a point read, a budgeted list and a walk, with the point read's plan.
    #[test]
    fn suite_lockfile_is_as_committed() {
        let mut ctx = C::seeded(35, 30);
        let base = ctx.base;
        let point = items::table.find(base + 1);
        let ((), ledger) = testing::record(&mut *ctx.conn, |conn| {
            point
                .budget(Budget::rows(1))
                .first::<Item>(conn)
                .expect("point");
            load_range(conn, base, 10);
            let mut n = 0;
            for batch in items::table
                .filter(in_range(base, 30))
                .budget(Budget::rows(10))
                .batches_by(items::id, |i: &Item| i.id, conn)
            {
                n += batch.expect("batch").len();
            }
            assert_eq!(n, 30);
        });
        let plan = testing::assert_no_full_scan(&point, &mut *ctx.conn);
        let sql = ledger.statements()[0].fingerprint();
        let lock = Lockfile::from_ledger(&format!("suite_{}", C::KIND), &ledger).with_plan(&sql, &plan);
        assert!(lock.queries.iter().any(|q| q.plan.is_some()), "{lock:?}");
        testing::check_lockfile(&lock).unwrap_or_else(|e| panic!("{e}"));
    }

    // -----------------------------------------------------------------------------------------
    // 4. Plan checks (feature `ci`).

    #[cfg(feature = "ci")]
    diesel::table! {
        diesel_budget_ci_plan (id) {
            id -> Integer,
            tag -> Integer,
            note -> Text,
        }
    }

    #[cfg(feature = "ci")]
    /// Drops the table when the test ends, also when it panics.
    struct DropTable<'a>(&'a mut C);
    #[cfg(feature = "ci")]
    impl Drop for DropTable<'_> {
        fn drop(&mut self) {
            let _ = self.0.batch_execute("DROP TABLE IF EXISTS diesel_budget_ci_plan");
        }
    }

    #[cfg(feature = "ci")]
    #[test]
    fn plan_checks_flag_an_unindexed_column_until_it_is_indexed() {
        // A plain connection and a table of its own (MySQL commits DDL at once).
        let mut plain = C::plain();
        let conn = DropTable(&mut plain);
        conn.0
            .batch_execute(
                "DROP TABLE IF EXISTS diesel_budget_ci_plan; \
                 CREATE TABLE diesel_budget_ci_plan \
                 (id INTEGER PRIMARY KEY, tag INTEGER NOT NULL, note VARCHAR(40) NOT NULL); \
                 INSERT INTO diesel_budget_ci_plan (id, tag, note) \
                 VALUES (1, 2, 'a'), (2, 2, 'b'), (3, 2, 'c'), (4, 1, 'd')",
            )
            .expect("table");
        let by_tag = diesel_budget_ci_plan::table.filter(diesel_budget_ci_plan::tag.ge(2));
        let by_id = diesel_budget_ci_plan::table.filter(diesel_budget_ci_plan::id.eq(2));

        let plan = testing::explain(&by_tag, &mut *conn.0).expect("explain");
        assert_eq!(plan.full_scans(), ["diesel_budget_ci_plan"], "{plan:?}");
        let err = testing::check_no_full_scan(&by_tag, &mut *conn.0)
            .expect("explain")
            .expect_err("full scan");
        let msg = err.to_string();
        assert!(msg.contains("full scan of diesel_budget_ci_plan"), "{msg}");
        assert!(msg.contains(&format!("plan check failed on {}", C::KIND)), "{msg}");
        let err = testing::check_index_usable(&by_tag, &mut *conn.0)
            .expect("explain")
            .expect_err("no index");
        assert!(err.to_string().contains("no usable index"), "{err}");
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            testing::assert_index_usable(&by_tag, &mut *conn.0);
        }))
        .expect_err("assert panics");
        assert_eq!(panic_message(panicked), err.to_string());
        // The primary key serves a point read, on 4 rows too.
        testing::assert_index_usable(&by_id, &mut *conn.0);

        conn.0
            .batch_execute("CREATE INDEX diesel_budget_ci_plan_tag ON diesel_budget_ci_plan (tag)")
            .expect("index");
        // Statistics say the table is tiny and the filter matches most rows: PostgreSQL's planner
        // chooses to read it all, though the index would serve (SQLite plans without statistics).
        // (MariaDB 10.11 takes the index here all the same; the MySQL rule, a full scan with
        // `possible_keys` is served, is unit-tested in src/backend/mysql/explain.rs.)
        if C::KIND != diesel_budget::BackendKind::Sqlite {
            let analyze = match C::KIND {
                diesel_budget::BackendKind::Mysql => "ANALYZE TABLE diesel_budget_ci_plan",
                _ => "ANALYZE diesel_budget_ci_plan",
            };
            conn.0.batch_execute(analyze).expect("analyze");
            if C::KIND == diesel_budget::BackendKind::Postgres {
                let chosen = testing::explain(&by_tag, &mut *conn.0).expect("explain");
                assert_eq!(chosen.full_scans(), ["diesel_budget_ci_plan"], "{chosen:?}");
            }
        }
        // Pre-flight: the planner's estimate of the whole table (4 rows, analysed) against the
        // budget. SQLite gives no estimate, so it never refuses there.
        let all = diesel_budget_ci_plan::table;
        let fits = testing::preflight(&all.budget(Budget::rows(10)), &mut *conn.0).expect("explain");
        assert!(fits.is_ok(), "{fits:?}");
        let refused = testing::preflight(&all.budget(Budget::rows(2)), &mut *conn.0).expect("explain");
        if C::KIND == diesel_budget::BackendKind::Sqlite {
            assert_eq!(refused.expect("no estimate").estimated_rows, None);
        } else {
            let err = refused.expect_err("4 rows expected, 2 allowed");
            assert_eq!((err.estimated_rows, err.budget_rows), (4, 2), "{err}");
            assert!(
                err.to_string().contains("the planner expects 4 rows, the budget allows 2"),
                "{err}"
            );
        }
        let plan = testing::assert_index_usable(&by_tag, &mut *conn.0);
        assert!(plan.indexes().contains(&"diesel_budget_ci_plan_tag"), "{plan:?}");
        assert!(plan.full_scans().is_empty(), "{plan:?}");
        assert!(
            plan.shape().contains("index diesel_budget_ci_plan_tag on diesel_budget_ci_plan"),
            "{}",
            plan.shape()
        );
    }

    // -----------------------------------------------------------------------------------------
    // 5. Strict mode.

    #[test]
    fn strict_mode_fails_unbudgeted_statements_unless_allowed_by_name() {
        let tdb = C::private_db(2);
        let base = crate::common::id_base(37);
        let mut conn = tdb.conn();
        conn.begin_test_transaction();
        // Strict already: the suite's pools are built strict (tests/common/mod.rs).
        // A fixture, allowed by name.
        testing::allow_unbudgeted("seed rows", || C::seed(&mut conn, base, base + 5));
        // Budgeted: runs.
        let rows = items::table
            .filter(in_range(base, 5))
            .budget(Budget::rows(10))
            .load::<Item>(&mut *conn)
            .expect("budgeted");
        assert_eq!(rows.len(), 5);
        // Unbudgeted: fails the test that runs it, before it reaches the server.
        let before = tdb.db.stats();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            items::table
                .filter(items::name.eq(SECRET))
                .count()
                .get_result::<i64>(conn.unbudgeted())
        }))
        .expect_err("strict mode panics");
        let msg = panic_message(panicked);
        assert!(msg.contains("strict mode: a statement ran without a budget"), "{msg}");
        assert!(msg.contains("SELECT COUNT(*)"), "{msg}");
        assert!(msg.contains("allow_unbudgeted"), "{msg}");
        assert!(!msg.contains(SECRET), "{msg}");
        assert_eq!(tdb.db.stats().since(&before).failed, 0);
        // The connection still works, budgeted.
        let n = items::table
            .filter(in_range(base, 5))
            .budget(Budget::rows(10))
            .load::<Item>(&mut *conn)
            .expect("after the panic")
            .len();
        assert_eq!(n, 5);
        // Off for this pool: unbudgeted runs here, and still fails on another (strict) pool.
        tdb.db.set_strict(false);
        let count = items::table
            .filter(in_range(base, 5))
            .count()
            .get_result::<i64>(conn.unbudgeted())
            .expect("not strict");
        assert_eq!(count, 5);
        let other = C::private_db(1);
        other.db.set_strict(true);
        let mut c2 = other.conn();
        let one = || diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"));
        let strict_elsewhere =
            catch_unwind(AssertUnwindSafe(|| one().get_result::<i32>(c2.unbudgeted())));
        assert!(strict_elsewhere.is_err(), "the other pool is strict");
        other.db.set_strict(false);
        assert_eq!(one().get_result::<i32>(c2.unbudgeted()).expect("lax"), 1);
    }
}
