// Bulk writes (issue 6): chunks at each backend's bind limit, atomic and per-chunk failure with
// resume, upserts whose result does not depend on chunk boundaries. Each test works on its own
// TEMPORARY tables on a plain connection (they vanish with it), so commits are real and no other
// test sees them.

mod bulk_tests {
    use super::C;
    use crate::common::Backend;
    use diesel::prelude::*;
    use diesel_budget::bulk::{self, BulkConnection};
    use diesel_budget::{BackendKind, BudgetConnection, Error};
    use std::num::NonZeroUsize;

    diesel::table! {
        bulk_c1 (a) {
            a -> Integer,
        }
    }

    diesel::table! {
        bulk_c3 (a) {
            a -> Integer,
            b -> Integer,
            c -> Integer,
        }
    }

    diesel::table! {
        bulk_c16 (c0) {
            c0 -> Integer, c1 -> Integer, c2 -> Integer, c3 -> Integer,
            c4 -> Integer, c5 -> Integer, c6 -> Integer, c7 -> Integer,
            c8 -> Integer, c9 -> Integer, c10 -> Integer, c11 -> Integer,
            c12 -> Integer, c13 -> Integer, c14 -> Integer, c15 -> Integer,
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_c1, treat_none_as_default_value = false)]
    struct R1 {
        a: i32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_c3, treat_none_as_default_value = false)]
    struct R3 {
        a: i32,
        b: i32,
        c: i32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_c16, treat_none_as_default_value = false)]
    struct R16 {
        c0: i32, c1: i32, c2: i32, c3: i32, c4: i32, c5: i32, c6: i32, c7: i32,
        c8: i32, c9: i32, c10: i32, c11: i32, c12: i32, c13: i32, c14: i32, c15: i32,
    }

    fn r1(i: i32) -> R1 {
        R1 { a: i }
    }
    fn r3(i: i32) -> R3 {
        R3 { a: i, b: i.wrapping_mul(7), c: -i }
    }
    fn r16(i: i32) -> R16 {
        let v = |k: i32| i.wrapping_mul(31).wrapping_add(k);
        R16 {
            c0: i, c1: v(1), c2: v(2), c3: v(3), c4: v(4), c5: v(5), c6: v(6), c7: v(7),
            c8: v(8), c9: v(9), c10: v(10), c11: v(11), c12: v(12), c13: v(13), c14: v(14),
            c15: v(15),
        }
    }

    /// A plain connection with the temporary tables `bulk_c1`, `bulk_c3`, `bulk_c16`.
    fn conn() -> C {
        let mut conn = C::plain();
        let c16: Vec<String> = (0..16)
            .map(|k| {
                let pk = if k == 0 { " PRIMARY KEY" } else { " NOT NULL" };
                format!("c{k} INTEGER{pk}")
            })
            .collect();
        for ddl in [
            "CREATE TEMPORARY TABLE bulk_c1 (a INTEGER PRIMARY KEY)".to_string(),
            "CREATE TEMPORARY TABLE bulk_c3 (a INTEGER PRIMARY KEY, b INTEGER NOT NULL, \
             c INTEGER NOT NULL)"
                .to_string(),
            format!("CREATE TEMPORARY TABLE bulk_c16 ({})", c16.join(", ")),
        ] {
            diesel::sql_query(ddl).execute(&mut conn).expect("create temp table");
        }
        conn
    }

    fn chunks_for(rows: usize, per_chunk: usize) -> u64 {
        rows.div_ceil(per_chunk) as u64
    }

    /// Row counts at the bind limit (one row's worth under, at, over) for 1, 3 and 16 columns:
    /// every row written once, read back equal; the INSERT path uses exactly the chunks the
    /// limit allows (a chunker that ignored it would make the server refuse the statement), and
    /// the default path (COPY on PostgreSQL) writes the same rows.
    #[test]
    fn bulk_insert_straddles_the_bind_limit() {
        let mut conn = conn();
        let limit = conn.bind_limit().expect("bind limit");
        match C::KIND {
            BackendKind::Sqlite => assert!(limit >= 999, "{limit}"),
            _ => assert_eq!(limit, 65_535),
        }
        macro_rules! straddle {
            ($table:ident, $cols:expr, $make:ident, $ty:ty) => {
                let per_chunk = limit / $cols;
                for n in [per_chunk - 1, per_chunk, per_chunk + 1] {
                    for insert_only in [true, false] {
                        let n_i32 = i32::try_from(n).expect("fits");
                        let mut progress = Vec::new();
                        let mut insert = bulk::insert_into($table::table, (0..n_i32).map($make))
                            .on_progress(|p: bulk::Progress| progress.push(p));
                        if insert_only {
                            insert = insert.insert_only();
                        }
                        let report = insert.execute(&mut conn).unwrap_or_else(|e| {
                            panic!("{} cols, {n} rows, insert_only {insert_only}: {e:?}", $cols)
                        });
                        assert_eq!(report.rows, n as u64);
                        if insert_only || C::KIND != BackendKind::Postgres {
                            assert_eq!(report.chunks, chunks_for(n, per_chunk), "{n} rows");
                            assert_eq!(report.copy_chunks, 0);
                        } else {
                            assert_eq!(report.copy_chunks, report.chunks);
                        }
                        assert_eq!(report.statements, report.chunks);
                        let last = progress.last().expect("progress");
                        assert_eq!(last.rows_done, n as u64);
                        assert_eq!(last.rows_total, Some(n as u64));
                        assert_eq!(last.chunks_done, report.chunks);
                        assert_eq!(progress.len() as u64, report.chunks);
                        let back: Vec<$ty> = $table::table
                            .order($table::table.primary_key())
                            .load(&mut conn)
                            .expect("read back");
                        let expected: Vec<$ty> = (0..n_i32).map($make).collect();
                        assert!(back == expected, "{} cols, {n} rows differ", $cols);
                        diesel::delete($table::table).execute(&mut conn).expect("clear");
                    }
                }
            };
        }
        straddle!(bulk_c1, 1, r1, R1);
        straddle!(bulk_c3, 3, r3, R3);
        straddle!(bulk_c16, 16, r16, R16);
    }

    /// A chunk size whose rows pass the bind limit is refused before anything is written.
    #[test]
    fn bulk_chunk_rows_over_the_limit_is_refused_before_writing() {
        let mut conn = conn();
        let limit = conn.bind_limit().expect("bind limit");
        let too_many = NonZeroUsize::new(limit / 3 + 1).expect("non-zero");
        let err = bulk::insert_into(bulk_c3::table, (0..10).map(r3))
            .insert_only()
            .chunk_rows(too_many)
            .execute(&mut conn)
            .expect_err("too many rows a chunk");
        assert!(
            matches!(err, Error::InvalidArgument { name: "chunk_rows", .. }),
            "{err:?}"
        );
        let count: i64 = bulk_c3::table.count().get_result(&mut conn).expect("count");
        assert_eq!(count, 0);
        let fits = NonZeroUsize::new(limit / 3).expect("non-zero");
        let report = bulk::insert_into(bulk_c3::table, (0..10).map(r3))
            .insert_only()
            .chunk_rows(fits)
            .execute(&mut conn)
            .expect("fits");
        assert_eq!((report.rows, report.chunks), (10, 1));
    }

    /// A pseudo-random position in `0..n`, printed so a failure can be replayed.
    fn random_position(n: u64) -> u64 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(12345)
            ^ u64::from(std::process::id());
        let pos = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33;
        let pos = pos % n;
        eprintln!("bad row at position {pos} of {n}");
        pos
    }

    /// `(count, sum of b)` of `bulk_c3`.
    fn count_and_checksum(conn: &mut C) -> (i64, i64) {
        let rows: Vec<R3> = bulk_c3::table.load(conn).expect("load");
        (
            rows.len() as i64,
            rows.iter().map(|r| i64::from(r.b) * 31 + i64::from(r.c)).sum(),
        )
    }

    /// A row whose key is already taken, at a random position: atomic leaves the table as it
    /// was; per-chunk commits exactly the chunks before it, and resume (once the blocking row
    /// is gone) completes the set with no row lost or doubled.
    #[test]
    fn bulk_bad_row_atomic_rolls_back_per_chunk_resumes() {
        let mut conn = conn();
        let n: u64 = 1_000;
        let chunk = 70usize;
        let bad = random_position(n);
        let bad_key = i32::try_from(bad).expect("fits");
        let blocker = R3 { a: bad_key, b: 1, c: 1 };
        diesel::insert_into(bulk_c3::table)
            .values(&blocker)
            .execute(&mut conn)
            .expect("blocker");
        let before = count_and_checksum(&mut conn);
        let input: Vec<R3> = (0..n as i32).map(r3).collect();

        let err = bulk::insert_into(bulk_c3::table, &input)
            .chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"))
            .execute(&mut conn)
            .expect_err("atomic: duplicate key");
        assert!(matches!(err, Error::Query { .. }), "{err:?}");
        assert_eq!(count_and_checksum(&mut conn), before, "atomic left rows behind");

        let err = bulk::insert_into(bulk_c3::table, &input)
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"))
            .execute(&mut conn)
            .expect_err("per chunk: duplicate key");
        let Error::BulkInterrupted { checkpoint, .. } = err else {
            panic!("expected BulkInterrupted, got {err:?}");
        };
        let committed = bad / chunk as u64 * chunk as u64;
        assert_eq!(checkpoint.rows_done, committed);
        assert_eq!(checkpoint.chunks_done, bad / chunk as u64);
        assert_eq!(count_and_checksum(&mut conn).0, committed as i64 + 1);

        diesel::delete(bulk_c3::table.filter(bulk_c3::a.eq(bad_key)))
            .execute(&mut conn)
            .expect("remove blocker");
        let report = bulk::insert_into(bulk_c3::table, &input)
            .per_chunk()
            .chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"))
            .resume(checkpoint)
            .execute(&mut conn)
            .expect("resume");
        assert_eq!(report.rows, n - committed);
        let back: Vec<R3> = bulk_c3::table
            .order(bulk_c3::a)
            .load(&mut conn)
            .expect("load");
        assert!(back == input, "resume lost or doubled rows");
    }

    /// Upserts with duplicate keys inside one chunk and across chunks: the same table whatever
    /// the chunk size (last row wins for do_update, first for do_nothing), half the keys
    /// existing before.
    #[test]
    fn bulk_upserts_do_not_depend_on_chunk_boundaries() {
        let mut conn = conn();
        let keys = 97;
        let input: Vec<R3> = (0..300).map(|i| R3 { a: i % keys, b: i, c: -i }).collect();
        let existing: Vec<R3> = (0..keys / 2).map(|k| R3 { a: k, b: -1, c: -1 }).collect();
        let last_wins: Vec<R3> = (0..keys)
            .map(|k| input.iter().rev().find(|r| r.a == k).cloned().expect("key"))
            .collect();
        let first_wins: Vec<R3> = (0..keys)
            .map(|k| match existing.iter().find(|r| r.a == k) {
                Some(e) => e.clone(),
                None => input.iter().find(|r| r.a == k).cloned().expect("key"),
            })
            .collect();
        for update in [true, false] {
            for chunk in [1000, 7, 1] {
                diesel::delete(bulk_c3::table).execute(&mut conn).expect("clear");
                diesel::insert_into(bulk_c3::table)
                    .values(&existing)
                    .execute(&mut conn)
                    .expect("existing");
                let chunk_rows = NonZeroUsize::new(chunk).expect("non-zero");
                let insert = bulk::insert_into(bulk_c3::table, input.iter().cloned())
                    .chunk_rows(chunk_rows);
                let report = if update {
                    insert
                        .on_conflict_do_update(bulk_c3::a, |r: &R3| r.a)
                        .execute(&mut conn)
                } else {
                    insert
                        .on_conflict_do_nothing(bulk_c3::a, |r: &R3| r.a)
                        .execute(&mut conn)
                }
                .unwrap_or_else(|e| panic!("update {update}, chunk {chunk}: {e:?}"));
                assert_eq!(report.rows, 300);
                let back: Vec<R3> = bulk_c3::table
                    .order(bulk_c3::a)
                    .load(&mut conn)
                    .expect("load");
                let expected = if update { &last_wins } else { &first_wins };
                assert!(
                    &back == expected,
                    "update {update}, chunk {chunk}: {back:?}"
                );
            }
        }
    }
}
