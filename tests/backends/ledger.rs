// Exact ledgers, instrumentation that never goes blind, errors safe to log. Included once per
// backend (`C` is the backend's connection type); the tests live in a module of their own so their
// imports and helpers stay apart from the other included files.

mod ledger {
    use std::error::Error as StdError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use diesel::connection::{Connection, InstrumentationEvent};
    use diesel::prelude::*;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::instrument::BudgetInstrumentation;
    use diesel_budget::prelude::*;
    use diesel_budget::testing::{self, StatementKind};
    use diesel_budget::{BudgetConnection, Error, GetSize};

    use super::C;
    use crate::common::{id_base, in_range, Backend, CommittedRows};

    /// A bound value that must never appear in a message, only in typed fields.
    const SECRET: &str = "alice@example.com";

    diesel::table! {
        /// A table that does not exist: every query on it fails in the database.
        diesel_budget_no_such_table (id) {
            id -> Integer,
            email -> Text,
        }
    }

    /// Every error in `err`'s chain, outermost first.
    fn chain(err: &(dyn StdError + 'static)) -> Vec<String> {
        let mut out = vec![err.to_string()];
        let mut cause = err.source();
        while let Some(c) = cause {
            out.push(c.to_string());
            cause = c.source();
        }
        out
    }

    /// Each layer of `err` prints itself once: no message contains its cause's message.
    #[track_caller]
    fn each_layer_once(err: &(dyn StdError + 'static)) {
        let layers = chain(err);
        for pair in layers.windows(2) {
            assert!(
                !pair[0].contains(pair[1].as_str()),
                "a layer repeats its cause: {layers:?}"
            );
        }
    }

    /// An instrumentation of the user's own: counts the statements it is told about.
    fn counting(counter: &Arc<AtomicUsize>) -> impl FnMut(InstrumentationEvent<'_>) + Send {
        let counter = Arc::clone(counter);
        move |event: InstrumentationEvent<'_>| {
            if matches!(event, InstrumentationEvent::StartQuery { .. }) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // 1. Statements have an identity; results attach to their own statement.

    #[test]
    fn interleaved_connections_attach_rows_and_time_to_their_own_statement() {
        let tdb = C::test_db();
        let base = id_base(80);
        // Committed: the second connection must see the rows.
        let _rows = CommittedRows::insert(&tdb.db, base, base + 50);
        let mut a = tdb.conn();
        let mut b = tdb.conn();
        let (looked_up, ledger) = testing::record(&mut *a, |a| {
            let mut n = 0;
            for item in items::table
                .filter(in_range(base, 50))
                .budget(Budget::rows(100))
                .stream_by(items::id, |i: &Item| i.id, a)
            {
                let item = item?;
                let again: Item = items::table
                    .find(item.id)
                    .budget(Budget::rows(1))
                    .first(&mut *b)?;
                assert_eq!(again, item);
                n += 1;
            }
            Ok::<_, Error>(n)
        });
        assert_eq!(looked_up.expect("walk and lookups"), 50);
        assert_eq!(ledger.rows(), 100, "{ledger}");
        assert_eq!(ledger.rows_delivered(), 100, "{ledger}");
        let st = ledger.statements();
        assert_eq!(st.len(), 51, "one stream and 50 lookups:\n{ledger}");
        assert!(st.iter().all(|s| s.kind == StatementKind::Budgeted));
        let (stream, lookups) = (&st[0], &st[1..]);
        assert_eq!(stream.rows, Some(50), "{ledger}");
        assert_eq!(stream.rows_delivered, Some(50), "{ledger}");
        assert!(stream.elapsed > Duration::ZERO, "{ledger}");
        let b_conn = lookups[0].id.connection;
        assert_ne!(stream.id.connection, b_conn, "{ledger}");
        for (i, lookup) in lookups.iter().enumerate() {
            assert_eq!(lookup.id.connection, b_conn, "{ledger}");
            assert_eq!(lookup.rows, Some(1), "lookup {i}:\n{ledger}");
            assert_eq!(lookup.rows_delivered, Some(1), "lookup {i}:\n{ledger}");
            assert!(lookup.elapsed > Duration::ZERO, "lookup {i}:\n{ledger}");
            assert!(!lookup.failed);
        }
        assert!(
            lookups.windows(2).all(|w| w[0].id.seq < w[1].id.seq),
            "{ledger}"
        );
        if <C as BudgetConnection>::STREAMS {
            // The stream finishes when it ends, after every lookup ran inside it.
            let lookups_time: Duration = lookups.iter().map(|s| s.elapsed).sum();
            assert!(
                stream.elapsed >= lookups_time,
                "the stream's time is its own: {:?} < {lookups_time:?}\n{ledger}",
                stream.elapsed
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // 2. Rows received vs rows delivered.

    #[test]
    fn rows_received_and_delivered_are_counted_apart() {
        let tdb = C::private_db(1); // counters nobody else moves
        let mut conn = tdb.conn();
        conn.begin_test_transaction();
        let base = id_base(81);
        C::seed(&mut conn, base, base + 20);
        let sizes: Vec<u64> = (base..base + 20)
            .map(|id| Item::generate(id).get_size() as u64)
            .collect();
        let max = *sizes.iter().max().expect("rows");
        let before = tdb.db.stats();
        let q = || items::table.filter(in_range(base, 20)).order(items::id);
        let ((), ledger) = testing::record(&mut *conn, |conn| {
            // Strict overflow: the probe row came, nothing was delivered.
            let over = q().budget(Budget::rows(5)).load::<Item>(conn);
            assert!(over.expect_err("20 rows > 5").is_budget_exceeded());
            // Truncated: the probe row came, five were delivered.
            let cut = q().budget(Budget::rows(5).truncate()).load::<Item>(conn);
            assert_eq!(cut.expect("truncated").len(), 5);
            // get_result loads what the budget allows to check it, delivers one.
            let one = q()
                .filter(in_range(base, 3))
                .budget(Budget::rows(10))
                .get_result::<Item>(conn);
            assert_eq!(one.expect("first of three").id, base);
            // Nothing found: nothing received, nothing delivered.
            let none = items::table
                .find(-1)
                .budget(Budget::rows(1))
                .first::<Item>(conn);
            assert!(none.expect_err("no row").is_not_found());
        });
        let got: Vec<_> = ledger
            .statements()
            .iter()
            .map(|s| (s.rows, s.rows_delivered))
            .collect();
        assert_eq!(
            got,
            [
                (Some(6), Some(0)),
                (Some(6), Some(5)),
                (Some(3), Some(1)),
                (Some(0), Some(0))
            ],
            "{ledger}"
        );
        assert_eq!((ledger.rows(), ledger.rows_delivered()), (15, 6));
        let d = tdb.db.stats().since(&before);
        assert_eq!((d.rows, d.rows_delivered), (15, 6), "{d:?}");

        // A byte-budgeted walk whose batches stop early on bytes: each stopped batch read a row
        // it did not deliver (on MySQL the client buffered the whole LIMIT), so the ledger shows
        // re-reading. A stream reads each row once.
        for mode in [BatchMode::Keyset, BatchMode::Stream] {
            let before = tdb.db.stats();
            let (walked, ledger) = testing::record(&mut *conn, |conn| {
                items::table
                    .filter(in_range(base, 20))
                    .budget(Budget::rows(10).bytes(max * 7 / 2))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode)
                    .collect::<Result<Vec<_>, _>>()
            });
            let walked = walked.expect("walk");
            assert!(walked.iter().all(|b| b.len() <= 3), "{mode:?}");
            let ids: Vec<i32> = walked.iter().flatten().map(|i| i.id).collect();
            assert_eq!(ids, (base..base + 20).collect::<Vec<_>>(), "{mode:?}");
            assert_eq!(ledger.rows_delivered(), 20, "{mode:?}:\n{ledger}");
            for s in ledger.statements() {
                assert!(s.rows >= s.rows_delivered, "{mode:?}:\n{ledger}");
            }
            if mode == BatchMode::Stream && <C as BudgetConnection>::STREAMS {
                assert_eq!(ledger.rows(), 20, "one stream reads each row once:\n{ledger}");
            } else {
                assert!(
                    ledger.rows() > ledger.rows_delivered(),
                    "{mode:?}: re-reading not seen:\n{ledger}"
                );
                // The first batch stops on bytes, reading one row more; later batches are sized
                // from what fitted (each row crosses the wire about once), so each re-reads only
                // the row after it, read for its key (`LIMIT n + 1`, see `diesel_budget::batch`).
                let stopped = ledger
                    .statements()
                    .iter()
                    .filter(|s| s.rows > s.rows_delivered)
                    .count();
                assert!(stopped >= 1, "{mode:?}: {stopped} batches re-read:\n{ledger}");
                // (The first batch may receive its whole LIMIT where the client buffers: MySQL.)
                for s in &ledger.statements()[1..] {
                    let reread = s.rows.unwrap_or(0) - s.rows_delivered.unwrap_or(0);
                    assert!(
                        reread <= 1,
                        "{mode:?}: a later byte-limited batch re-read {reread} rows:\n{ledger}"
                    );
                }
            }
            let d = tdb.db.stats().since(&before);
            assert_eq!(
                (d.rows, d.rows_delivered),
                (ledger.rows(), ledger.rows_delivered()),
                "{mode:?}: the pool's statistics agree with the ledger"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // 3. Recording keeps the user's instrumentation; pooled connections never go blind.

    #[test]
    fn recording_a_plain_connection_keeps_what_it_carried() {
        let select_one = |conn: &mut C| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                .get_result::<i32>(conn)
                .expect("SELECT 1")
        };
        // No instrumentation: ours for the recording, none again after it.
        let mut plain = C::plain();
        let (one, ledger) = testing::record(&mut plain, |c| select_one(c));
        assert_eq!(one, 1);
        assert_eq!(ledger.unbudgeted().count(), 1, "{ledger}");
        assert!(
            plain
                .instrumentation()
                .downcast_ref::<BudgetInstrumentation>()
                .is_none(),
            "the recording left its instrumentation behind"
        );
        let (_, again) = testing::record(&mut plain, |c| select_one(c));
        assert_eq!(again.unbudgeted().count(), 1, "a second recording: {again}");

        // The user's own: never replaced. Recording it would destroy it, so `record` refuses...
        let mut plain = C::plain();
        let mine = Arc::new(AtomicUsize::new(0));
        plain.set_instrumentation(counting(&mine));
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            testing::record(&mut plain, |c| select_one(c))
        }));
        let msg = refused.expect_err("record replaced the user's instrumentation");
        let msg = msg
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| msg.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("forward_to"), "{msg}");
        select_one(&mut plain);
        assert_eq!(mine.load(Ordering::SeqCst), 1, "the user's still sees");

        // ...and ours in front of it forwards every event: both see, before, during and after.
        plain.set_instrumentation(BudgetInstrumentation::default().forward_to(counting(&mine)));
        let (_, ledger) = testing::record(&mut plain, |c| select_one(c));
        assert_eq!(ledger.unbudgeted().count(), 1, "{ledger}");
        assert_eq!(mine.load(Ordering::SeqCst), 2);
        select_one(&mut plain);
        assert_eq!(mine.load(Ordering::SeqCst), 3, "still forwarding after the recording");
    }

    #[test]
    fn a_pooled_connection_never_goes_blind_for_good() {
        let tdb = C::private_db(1); // one physical connection, counters of its own
        let base = id_base(82);
        let load = |conn: &mut diesel_budget::Conn<C>| {
            items::table
                .filter(in_range(base, 3))
                .budget(Budget::rows(3))
                .load::<Item>(conn)
                .expect("load")
        };
        let mine = Arc::new(AtomicUsize::new(0));
        {
            let mut conn = tdb.conn();
            // Diesel's own setter replaces ours: blind for this checkout (the user's choice)...
            conn.unbudgeted().set_instrumentation(counting(&mine));
            let before = tdb.db.stats();
            load(&mut conn);
            assert_eq!(tdb.db.stats().since(&before).budgeted, 0);
            assert_eq!(mine.load(Ordering::SeqCst), 1);
            // ...and `Conn::stats` still reads the pool's counters.
            assert_eq!(conn.stats(), tdb.db.stats());
        }
        // ...not for good: the next checkout of the same connection carries ours again.
        let mut conn = tdb.conn();
        let before = tdb.db.stats();
        load(&mut conn);
        let d = tdb.db.stats().since(&before);
        assert_eq!((d.budgeted, d.unbudgeted), (1, 0), "{d:?}");
        assert_eq!(mine.load(Ordering::SeqCst), 1, "the user's went with the checkout");
        let (_, ledger) = testing::record(&mut *conn, |c| load(c));
        assert_eq!(ledger.round_trips(), 1, "{ledger}");

        // `Conn::set_instrumentation` adds the user's behind ours, for this checkout only.
        conn.set_instrumentation(counting(&mine));
        let before = tdb.db.stats();
        let (_, ledger) = testing::record(&mut *conn, |c| load(c));
        assert_eq!(ledger.round_trips(), 1, "{ledger}");
        assert_eq!(tdb.db.stats().since(&before).budgeted, 1);
        assert_eq!(mine.load(Ordering::SeqCst), 2, "the user's saw it too");
        drop(conn);
        let mut conn = tdb.conn();
        load(&mut conn);
        assert_eq!(mine.load(Ordering::SeqCst), 2, "the next borrower does not inherit it");
    }

    // -----------------------------------------------------------------------------------------
    // 4, 5. Safe to log: no bound value or key in any message; each layer printed once.

    #[test]
    fn messages_carry_no_bound_values_and_print_each_layer_once() {
        // Runs statements without a budget on purpose: allowed by name under the suite's strict mode.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("messages carry no bound values and print each layer once");
        let mut ctx = C::ctx(83);
        let base = ctx.base;
        // A row whose name is the secret, and a row too large for the walk's byte budget.
        let small = Item {
            name: SECRET.to_owned(),
            ..Item::generate(base)
        };
        let large = Item {
            name: "zz-large".to_owned(),
            payload: "x".repeat(250),
            ..Item::generate(base + 1)
        };
        diesel::insert_into(items::table)
            .values(vec![small.clone(), large])
            .execute(ctx.conn.unbudgeted())
            .expect("insert");
        let q = || items::table.filter(in_range(base, 2));

        // BudgetExceeded, with the secret bound in the query.
        let (err, ledger) = testing::record(&mut *ctx.conn, |conn| {
            q().filter(items::name.ne(SECRET).or(items::name.eq(SECRET)))
                .budget(Budget::rows(1))
                .load::<Item>(conn)
                .expect_err("two rows > 1")
        });
        assert!(err.is_budget_exceeded(), "{err:?}");
        for text in chain(&err) {
            assert!(!text.contains(SECRET), "{text}");
        }
        let st = &ledger.statements()[0];
        assert!(!st.sql.contains(SECRET), "placeholders only: {}", st.sql);
        assert!(!st.sql.contains("binds"), "{}", st.sql);
        assert_eq!(
            st.binds.iter().filter(|b| b.contains(SECRET)).count(),
            2,
            "the binds are kept apart: {:?}",
            st.binds
        );
        assert_eq!(err.sql(), Some(st.sql.as_str()));

        // Interrupted: the key of the last row delivered is the secret; it stays in the field.
        let mut batches = q()
            .budget(Budget::rows(1).bytes(small.get_size() as u64 + 8))
            .batches_by(items::name, |i: &Item| i.name.clone(), &mut *ctx.conn);
        let first = batches.next().expect("a batch").expect("the small row fits");
        assert_eq!(first, [small]);
        let err = batches
            .next()
            .expect("an error")
            .expect_err("the large row cannot fit");
        match &err {
            Error::Interrupted {
                rows_done: 1,
                resume_after: Some(key),
                source,
            } => {
                assert_eq!(key, &format!("{SECRET:?}"));
                assert!(source.is_budget_exceeded(), "{source:?}");
            }
            other => panic!("expected Interrupted after one row, got {other:?}"),
        }
        assert_eq!(batches.resume_key().map(String::as_str), Some(SECRET));
        for text in chain(&err) {
            assert!(!text.contains(SECRET), "the key in a message: {text}");
        }
        each_layer_once(&err);
        drop(batches);

        // Query: the database rejects a statement with the secret bound.
        let (err, ledger) = testing::record(&mut *ctx.conn, |conn| {
            diesel_budget_no_such_table::table
                .filter(diesel_budget_no_such_table::email.eq(SECRET))
                .select(diesel_budget_no_such_table::id)
                .budget(Budget::rows(1))
                .load::<i32>(conn)
                .expect_err("no such table")
        });
        assert!(matches!(err, Error::Query { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.starts_with("query failed: SELECT"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        each_layer_once(&err);
        let cause = err.source().expect("Diesel's error is the source").to_string();
        assert!(!shown.contains(&cause), "{shown} repeats {cause}");
        let st = &ledger.statements()[0];
        assert!(st.failed, "{ledger}");
        assert!(!st.sql.contains(SECRET), "{}", st.sql);
        assert_eq!(st.binds.first(), Some(&format!("{SECRET:?}")), "{:?}", st.binds);
        assert_eq!(err.sql(), Some(st.sql.as_str()));

        // A Diesel error converted with `?` has no statement: no SQL, no dangling separator.
        let err = Error::from(diesel::result::Error::NotFound);
        assert_eq!(err.sql(), None);
        assert!(!err.to_string().ends_with(": "), "{err}");
        each_layer_once(&err);
    }

    #[test]
    fn pool_errors_print_each_layer_once() {
        let tdb = C::private_db_with(1, Duration::from_millis(300));
        let _held = tdb.conn();
        let err = tdb.db.get().expect_err("the only connection is checked out");
        assert!(matches!(err, Error::Pool(_)), "{err:?}");
        assert!(err.source().is_some());
        each_layer_once(&err);
        assert!(!err.is_connection_lost());
    }
}
