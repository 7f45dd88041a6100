// 6. A connection killed in the middle of a batched walk. Included for PostgreSQL and MySQL
// only: SQLite is embedded, there is no server session to kill.
//
// The rows are committed (a killed session's transaction is lost) in the test's own id range,
// and deleted again by the `CommittedRows` guard.

use crate::common::{id_base, CommittedRows, Killable};

fn killed_mid_walk(test_no: i32, mode: BatchMode, n: i32, batch: u64) {
    let tdb = C::test_db();
    let base = id_base(test_no);
    let _rows = CommittedRows::insert(&tdb.db, base, base + n);

    let mut victim = tdb.conn();
    let pid = <C as Killable>::session_id(&mut victim);
    let mut killer = tdb.conn();
    let mut seen: Vec<i32> = Vec::new();
    let (err, resume) = {
        let mut batches = items::table
            .filter(in_range(base, n))
            .budget(Budget::rows(batch))
            .batches_by(items::id, |i: &Item| i.id, &mut *victim)
            .mode(mode);
        let first = batches
            .next()
            .expect("a first batch")
            .expect("first batch before the kill");
        assert_eq!(first.len() as u64, batch);
        seen.extend(ids(&first));
        <C as Killable>::kill(&mut killer, pid);
        // Keyset: the next batch is a new statement on a dead session and fails at once. A
        // stream may still hand out rows the server had already sent before it died.
        let err = loop {
            match batches.next() {
                Some(Ok(rows)) => {
                    assert!(
                        mode == BatchMode::Stream && <C as BudgetConnection>::STREAMS,
                        "{mode:?}: a batch of {} rows after the kill",
                        rows.len()
                    );
                    seen.extend(ids(&rows));
                }
                Some(Err(e)) => break e,
                None => panic!("{mode:?}: the walk of {n} rows ended normally after the kill"),
            }
        };
        assert!(batches.next().is_none(), "batches end after the error");
        assert_eq!(batches.rows_done(), seen.len() as u64);
        (err, batches.resume_key().copied())
    };
    let resume = resume.expect("a resume key after the first batch");
    assert_eq!(resume, *seen.last().expect("rows"));
    match &err {
        Error::Interrupted {
            rows_done,
            resume_after: Some(after),
            source,
        } => {
            assert_eq!(*rows_done, seen.len() as u64, "{err}");
            assert_eq!(after, &format!("{resume:?}"), "{err}");
            assert!(
                matches!(**source, Error::Query { .. }),
                "the cause is the database error: {source:?}"
            );
        }
        other => panic!("{mode:?}: expected Interrupted with a resume key, got {other:?}"),
    }
    assert!(
        seen.len() < n as usize,
        "{mode:?}: everything arrived despite the kill"
    );

    // The dead connection goes back to the pool; r2d2 tests it on checkout and replaces it.
    drop(victim);
    for round in 0..4 {
        let mut conn = tdb.conn();
        assert_ne!(
            <C as Killable>::session_id(&mut conn),
            pid,
            "checkout {round} handed out the killed session"
        );
        let one = items::table
            .filter(items::id.eq(base))
            .budget(Budget::rows(1))
            .first::<Item>(&mut *conn)
            .unwrap_or_else(|e| panic!("checkout {round}: {e}"));
        assert_eq!(one.id, base);
    }
    let held: Vec<_> = (0..3).map(|_| tdb.conn()).collect();
    for mut conn in held {
        assert_ne!(<C as Killable>::session_id(&mut conn), pid);
    }

    // Resuming after the key in the error delivers the rest: nothing lost, nothing repeated.
    let mut conn = tdb.conn();
    let rest = walk(
        items::table
            .filter(in_range(base, n))
            .budget(Budget::rows(batch))
            .batches_by(items::id, |i: &Item| i.id, &mut *conn)
            .mode(mode)
            .after(resume),
        batch as usize,
    );
    seen.extend(rest.iter().flat_map(|b| ids(b)));
    assert_eq!(seen, span(base, base + n), "{mode:?}: resumed walk");
}

#[test]
fn a_killed_connection_interrupts_keyset_batches_with_a_resume_key() {
    killed_mid_walk(40, BatchMode::Keyset, 2_000, 100);
}

#[test]
fn a_killed_connection_interrupts_a_stream_with_a_resume_key() {
    // Enough rows that the kill lands before the server has pushed the whole result into the
    // socket buffers.
    killed_mid_walk(41, BatchMode::Stream, 50_000, 100);
}
