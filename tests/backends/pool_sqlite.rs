// SQLite's session settings on the pool builder (`journal_mode`, `foreign_keys`,
// `busy_timeout`): an existing file is left as it is unless the builder asks. Included in the
// SQLite module only (the setters exist only on `DbBuilder<SqliteConnection>`).

mod pool_sqlite {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    use diesel_budget::{Db, JournalMode};

    use super::C;

    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }

    #[derive(QueryableByName)]
    struct ForeignKeys {
        #[diesel(sql_type = BigInt)]
        foreign_keys: i64,
    }

    #[derive(QueryableByName)]
    struct Busy {
        #[diesel(sql_type = BigInt)]
        timeout: i64,
    }

    /// (journal mode, foreign keys enforced, busy timeout in ms) of `conn`'s session.
    fn pragmas(conn: &mut C) -> (String, bool, i64) {
        let mode = diesel::sql_query("PRAGMA journal_mode")
            .get_result::<Mode>(conn)
            .expect("PRAGMA journal_mode")
            .journal_mode;
        let fk = diesel::sql_query("PRAGMA foreign_keys")
            .get_result::<ForeignKeys>(conn)
            .expect("PRAGMA foreign_keys")
            .foreign_keys;
        let busy = diesel::sql_query("PRAGMA busy_timeout")
            .get_result::<Busy>(conn)
            .expect("PRAGMA busy_timeout")
            .timeout;
        (mode.to_lowercase(), fk == 1, busy)
    }

    #[test]
    fn an_existing_file_keeps_its_journal_mode_and_foreign_keys_unless_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("existing.db");
        let path = path.to_str().expect("utf-8 path");
        // Whether foreign keys are enforced on a plain connection depends on how SQLite was
        // compiled (the bundled build: on). The pool must not change it unless asked.
        let plain_fk = {
            let mut own = C::establish(path).expect("open the file");
            own.batch_execute("CREATE TABLE t (x INTEGER)")
                .expect("create");
            assert_eq!(pragmas(&mut own).0, "delete");
            pragmas(&mut own).1
        };

        // Defaults: the file's journal mode, a plain connection's foreign keys; waiting 10 s.
        let db = Db::<C>::builder(path).max_size(2).build().expect("build");
        let mut conn = db.get().expect("checkout");
        assert_eq!(
            pragmas(conn.unbudgeted()),
            ("delete".to_owned(), plain_fk, 10_000)
        );
        drop(conn);
        drop(db);
        let mut own = C::establish(path).expect("reopen");
        assert_eq!(pragmas(&mut own).0, "delete", "the pool changed the file");
        drop(own);

        // Asked for: WAL (stored in the file, as documented), foreign keys, a shorter wait.
        let db = Db::<C>::builder(path)
            .max_size(2)
            .journal_mode(JournalMode::Wal)
            .foreign_keys(!plain_fk)
            .busy_timeout(std::time::Duration::from_millis(250))
            .build()
            .expect("build");
        let mut conn = db.get().expect("checkout");
        assert_eq!(pragmas(conn.unbudgeted()), ("wal".to_owned(), !plain_fk, 250));
        drop(conn);
        drop(db);
        let mut own = C::establish(path).expect("reopen");
        assert_eq!(pragmas(&mut own).0, "wal");
        drop(own);


        // A file already in WAL stays in WAL under the defaults too.
        let db = Db::<C>::builder(path).max_size(2).build().expect("build");
        let mut conn = db.get().expect("checkout");
        assert_eq!(pragmas(conn.unbudgeted()).0, "wal");
        drop(conn);
        drop(db);

        // And out of WAL, when asked, with no waiting for locks. (Leaving WAL needs the only
        // connection to the file, and a dropped pool's connections may still be closing on
        // r2d2's threads: a file of its own, put in WAL by a plain connection.)
        let other = dir.path().join("was-wal.db");
        let other = other.to_str().expect("utf-8 path");
        {
            let mut own = C::establish(other).expect("open the second file");
            own.batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
                .expect("WAL");
            assert_eq!(pragmas(&mut own).0, "wal");
        }
        let db = Db::<C>::builder(other)
            .max_size(1)
            .journal_mode(JournalMode::Delete)
            .busy_timeout(std::time::Duration::ZERO)
            .build()
            .expect("build");
        let mut conn = db.get().expect("checkout");
        assert_eq!(
            pragmas(conn.unbudgeted()),
            ("delete".to_owned(), plain_fk, 0)
        );
    }
}
