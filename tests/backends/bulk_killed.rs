// Bulk writes whose connection is killed between chunks (issue 6). Included for PostgreSQL and
// MySQL only: SQLite is embedded, there is no server session to kill. The rows are committed
// (per-chunk mode) in the test's own id range and deleted again at the end.

mod bulk_killed_tests {
    use super::C;
    use crate::common::{expected, id_base, in_range, Backend, Killable};
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
}
