// Bulk writes whose connection is killed between chunks (issue 6): insert, update and delete.
// Included for PostgreSQL and MySQL only: SQLite is embedded, there is no server session to
// kill. The rows are committed (per-chunk mode) in the test's own id range and deleted again at
// the end.

mod bulk_killed_tests {
    use super::C;
    use crate::common::{expected, id_base, in_range, Backend, CommittedRows, Killable};
    use diesel::prelude::*;
    use diesel_budget::bulk;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::{BudgetConnection, Error};
    use std::num::NonZeroUsize;

    /// A per-chunk bulk insert whose session is killed (`pg_terminate_backend` / `KILL
    /// CONNECTION`) right after its third chunk committed: the error carries the exact
    /// checkpoint, the cause is a lost connection, and resuming on a fresh connection completes
    /// the set with no row lost or written twice.
    #[test]
    fn bulk_per_chunk_killed_between_chunks_resumes_to_the_exact_set() {
        let tdb = C::test_db();
        let base = id_base(27);
        let (n, chunk) = (5_000, 500);
        let mut killer = tdb.conn();
        C::delete_range(&mut killer, base, base + n);
        let mut victim = tdb.conn();
        let pid = <C as Killable>::session_id(&mut victim);
        let rows = || (base..base + n).map(Item::generate);
        let err = bulk::insert_into(items::table, rows())
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"))
            .on_progress(|p: bulk::Progress| {
                if p.chunks_done == 3 {
                    <C as Killable>::kill(&mut killer, pid);
                }
            })
            .execute(&mut *victim)
            .expect_err("the session was killed");
        let Error::BulkInterrupted { checkpoint, source } = &err else {
            panic!("expected BulkInterrupted, got {err:?}");
        };
        assert_eq!((checkpoint.rows_done, checkpoint.chunks_done), (1_500, 3), "{err}");
        assert!(source.is_connection_lost(), "the cause is the lost session: {source:?}");
        drop(victim);

        let mut conn = tdb.conn();
        assert_ne!(<C as Killable>::session_id(&mut conn), pid);
        let report = bulk::insert_into(items::table, rows())
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"))
            .resume(*checkpoint)
            .execute(&mut *conn)
            .expect("resume");
        assert_eq!((report.rows, report.chunks), (3_500, 7));
        let back: Vec<Item> = items::table
            .filter(in_range(base, n))
            .order(items::id)
            .budget(Budget::rows(n as u64))
            .load(&mut *conn)
            .expect("read back");
        let deleted = C::delete_range(&mut conn, base, base + n);
        assert!(back == expected(base, base + n), "lost or doubled rows");
        assert_eq!(deleted, n as usize);
        let _ = C::KIND;
    }

    /// Rows `base..base + 500` and the 500 after the set: untouched by the bulk write.
    const OUTSIDE: i32 = 500;
    /// Keys in the set.
    const N: i32 = 5_000;
    /// Rows (keys) a chunk: the session is killed after the 3rd chunk committed.
    const CHUNK: usize = 500;

    /// Runs `write` (a per-chunk bulk write of the set, chunks of [`CHUNK`]) on a session that
    /// is killed right after its third chunk committed; checks the error is
    /// `BulkInterrupted` at exactly 1,500 rows / 3 chunks, caused by the lost connection.
    fn killed_after_three_chunks(
        tdb: &crate::common::TestDb<C>,
        write: impl FnOnce(&mut Conn<C>, &mut dyn FnMut(bulk::Progress)) -> Result<bulk::Report, Error>,
    ) -> bulk::Checkpoint {
        let mut killer = tdb.conn();
        let mut victim = tdb.conn();
        let pid = <C as Killable>::session_id(&mut victim);
        let mut kill = |p: bulk::Progress| {
            if p.chunks_done == 3 {
                <C as Killable>::kill(&mut killer, pid);
            }
        };
        let err = write(&mut victim, &mut kill).expect_err("the session was killed");
        let Error::BulkInterrupted { checkpoint, source } = &err else {
            panic!("expected BulkInterrupted, got {err:?}");
        };
        assert_eq!((checkpoint.rows_done, checkpoint.chunks_done), (1_500, 3), "{err}");
        assert!(source.is_connection_lost(), "the cause is the lost session: {source:?}");
        *checkpoint
    }

    /// The rows `from..to` as they are now.
    fn load(conn: &mut Conn<C>, from: i32, to: i32) -> Vec<Item> {
        items::table
            .filter(in_range(from, to - from))
            .order(items::id)
            .budget(Budget::rows((to - from) as u64))
            .load(conn)
            .expect("read back")
    }

    /// A per-chunk bulk update whose session is killed after its third chunk: exact
    /// checkpoint, lost-connection cause; resuming on a fresh connection updates every row of
    /// the set exactly once (the rows the first run updated are tagged before the resume: a
    /// chunk applied again would overwrite the tag) and touches nothing outside the set.
    #[test]
    fn bulk_update_per_chunk_killed_between_chunks_resumes_exactly_once() {
        let tdb = C::test_db();
        let base = id_base(39);
        let (first, end) = (base + OUTSIDE, base + OUTSIDE + N);
        let _rows = CommittedRows::insert(&tdb.db, base, end + OUTSIDE);
        let renamed = |id: i32| Item {
            name: format!("{}-renamed", Item::generate(id).name),
            ..Item::generate(id)
        };
        let input = || (first..end).map(renamed);
        let checkpoint = killed_after_three_chunks(&tdb, |conn, kill| {
            bulk::update(items::table, items::id, |i: &Item| i.id, input())
                .per_chunk()
                .chunk_rows(NonZeroUsize::new(CHUNK).expect("non-zero"))
                .on_progress(kill)
                .execute(conn)
        });

        let mut conn = tdb.conn();
        let now = load(&mut conn, first, end);
        let done = now.iter().filter(|i| i.name.ends_with("-renamed")).count();
        assert_eq!(done, 1_500, "rows updated by the killed run");
        assert!(now[..1_500].iter().all(|i| i.name.ends_with("-renamed")));
        // Tag what the first run wrote: the resume must not write these rows again.
        let tagged = diesel_budget::testing::allow_unbudgeted("fixture: tag rows", || {
            diesel::update(items::table.filter(in_range(first, 1_500)))
                .set(items::category.eq(-1))
                .execute(conn.unbudgeted())
        })
        .expect("tag");
        assert_eq!(tagged, 1_500);

        let report = bulk::update(items::table, items::id, |i: &Item| i.id, input())
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(CHUNK).expect("non-zero"))
            .resume(checkpoint)
            .execute(&mut *conn)
            .expect("resume");
        let want: Vec<Item> = (base..end + OUTSIDE)
            .map(|id| match id {
                id if id < first || id >= end => Item::generate(id),
                id if id < first + 1_500 => Item {
                    category: -1,
                    ..renamed(id)
                },
                id => renamed(id),
            })
            .collect();
        let back = load(&mut conn, base, end + OUTSIDE);
        let wrong: Vec<(&Item, &Item)> = back.iter().zip(&want).filter(|(b, w)| b != w).collect();
        assert_eq!(back.len(), want.len(), "rows lost");
        assert!(wrong.is_empty(), "{} rows wrong, first: {:?}", wrong.len(), wrong.first());
        assert_eq!(
            (report.rows, report.chunks, report.affected),
            (3_500, 7, 3_500),
            "{report:?}"
        );
    }

    /// A per-chunk bulk delete whose session is killed after its third chunk: exact
    /// checkpoint, lost-connection cause; resuming on a fresh connection deletes the rest of
    /// the keys (3,500 rows, 7 chunks: no chunk sent again) and nothing outside the set.
    #[test]
    fn bulk_delete_per_chunk_killed_between_chunks_resumes_to_the_exact_set() {
        let tdb = C::test_db();
        let base = id_base(99);
        let (first, end) = (base + OUTSIDE, base + OUTSIDE + N);
        let _rows = CommittedRows::insert(&tdb.db, base, end + OUTSIDE);
        let checkpoint = killed_after_three_chunks(&tdb, |conn, kill| {
            bulk::delete(items::table, items::id, first..end)
                .per_chunk()
                .chunk_rows(NonZeroUsize::new(CHUNK).expect("non-zero"))
                .on_progress(kill)
                .execute(conn)
        });

        let mut conn = tdb.conn();
        let left = load(&mut conn, first, end);
        assert_eq!(left.len(), 3_500, "rows deleted by the killed run");
        assert_eq!(left.first().map(|i| i.id), Some(first + 1_500));

        let report = bulk::delete(items::table, items::id, first..end)
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(CHUNK).expect("non-zero"))
            .resume(checkpoint)
            .execute(&mut *conn)
            .expect("resume");
        let back = load(&mut conn, base, end + OUTSIDE);
        let want: Vec<Item> = (base..first).chain(end..end + OUTSIDE).map(Item::generate).collect();
        assert!(back == want, "{} rows left, want {}", back.len(), want.len());
        assert_eq!(
            (report.rows, report.chunks, report.affected),
            (3_500, 7, 3_500),
            "{report:?}"
        );
    }
}
