// Connection loss, recognised: `Error::is_connection_lost` on sessions killed mid-query, inside a
// transaction and mid-walk. Included for PostgreSQL and MySQL/MariaDB only (next to `ledger.rs`):
// SQLite is embedded, there is no server session to kill.

mod ledger_killed {
    use std::error::Error as StdError;
    use std::time::Duration;

    use diesel::prelude::*;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::{BackendKind, BudgetConnection, Error};

    use super::C;
    use crate::common::{id_base, in_range, Backend, CommittedRows, Killable};

    /// A server expression that sleeps 10 s and yields an integer.
    fn sleep_10s() -> &'static str {
        match <C as BudgetConnection>::KIND {
            BackendKind::Postgres => "(SELECT 1 FROM pg_sleep(10))",
            BackendKind::Mysql => "CAST(SLEEP(10) AS SIGNED)",
            other => panic!("no server session to kill on {other}"),
        }
    }

    /// No message in `err`'s chain contains the next one's.
    #[track_caller]
    fn each_layer_once(err: &(dyn StdError + 'static)) {
        let mut layers = vec![err.to_string()];
        let mut cause = err.source();
        while let Some(c) = cause {
            layers.push(c.to_string());
            cause = c.source();
        }
        for pair in layers.windows(2) {
            assert!(!pair[0].contains(pair[1].as_str()), "{layers:?}");
            assert!(!pair[0].ends_with(": "), "{layers:?}");
        }
    }

    #[test]
    fn a_session_killed_mid_query_is_connection_lost() {
        let tdb = C::test_db();
        let mut victim = tdb.conn();
        let pid = <C as Killable>::session_id(&mut victim);
        let mut killer = tdb.conn();
        let started = std::time::Instant::now();
        let res = std::thread::scope(|s| {
            let running = s.spawn(|| {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(sleep_10s()))
                    .budget(Budget::rows(1))
                    .first::<i32>(&mut *victim)
            });
            std::thread::sleep(Duration::from_millis(1_500));
            <C as Killable>::kill(&mut killer, pid);
            running.join().expect("the query thread panicked")
        });
        let err = res.expect_err("the session was killed mid-query");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the query ran to its end"
        );
        assert!(err.is_connection_lost(), "not recognised: {err:?}");
        assert!(err.sql().is_some_and(|s| s.starts_with("SELECT")), "{err:?}");
        each_layer_once(&err);
        // A database error that is not a lost connection is not taken for one.
        let mut conn = tdb.conn();
        let other = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "diesel_budget_no_such_function()",
        ))
        .budget(Budget::rows(1))
        .first::<i32>(&mut *conn)
        .expect_err("no such function");
        assert!(!other.is_connection_lost(), "{other:?}");
    }

    #[test]
    fn a_commit_on_a_killed_session_says_commit_and_is_connection_lost() {
        let tdb = C::test_db();
        let mut victim = tdb.conn();
        let pid = <C as Killable>::session_id(&mut victim);
        let mut killer = tdb.conn();
        let res: Result<(), Error> = victim.transaction(|_| {
            <C as Killable>::kill(&mut killer, pid);
            Ok(())
        });
        let err = res.expect_err("COMMIT on a killed session");
        assert_eq!(err.sql(), Some("COMMIT"), "{err:?}");
        assert_eq!(err.to_string(), "query failed: COMMIT");
        assert!(err.is_connection_lost(), "not recognised: {err:?}");
        each_layer_once(&err);
    }

    #[test]
    fn a_walk_interrupted_by_a_lost_connection_says_so() {
        let tdb = C::test_db();
        let base = id_base(84);
        let _rows = CommittedRows::insert(&tdb.db, base, base + 300);
        let mut victim = tdb.conn();
        let pid = <C as Killable>::session_id(&mut victim);
        let mut killer = tdb.conn();
        let mut batches = items::table
            .filter(in_range(base, 300))
            .budget(Budget::rows(100))
            .batches_by(items::id, |i: &Item| i.id, &mut *victim);
        assert_eq!(batches.next().expect("a batch").expect("first batch").len(), 100);
        <C as Killable>::kill(&mut killer, pid);
        let err = batches
            .next()
            .expect("an error")
            .expect_err("next batch on a killed session");
        assert!(matches!(err, Error::Interrupted { .. }), "{err:?}");
        assert!(err.is_connection_lost(), "not recognised: {err:?}");
        each_layer_once(&err);
    }
}
