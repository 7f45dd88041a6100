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

    diesel::table! {
        bulk_def (a) {
            a -> Integer,
            b -> Integer,
            c -> Integer,
        }
    }

    #[derive(Debug, Clone, Insertable)]
    #[diesel(table_name = bulk_def)]
    struct RDef {
        a: i32,
        b: Option<i32>,
        c: i32,
    }

    /// Rows that leave a column to its `DEFAULT` (a `None`), scattered and in a run, among
    /// rows that set every column, across several default chunks: every row written once with
    /// its values or the default; on PostgreSQL the full rows go by `COPY` (encoded as they
    /// are taken, the chunk cut at a `DEFAULT` row) and the others by `INSERT`.
    #[test]
    fn bulk_insert_mixed_default_rows() {
        let mut conn = conn();
        diesel::sql_query(
            "CREATE TEMPORARY TABLE bulk_def (a INTEGER PRIMARY KEY, \
             b INTEGER NOT NULL DEFAULT 42, c INTEGER NOT NULL)",
        )
        .execute(&mut conn)
        .expect("create temp table");
        let n = 25_000;
        let defaulted = |i: i32| i % 4_001 == 7 || (12_345..12_348).contains(&i) || i == n - 1;
        let rows = (0..n).map(|i| RDef {
            a: i,
            b: (!defaulted(i)).then_some(i.wrapping_mul(3)),
            c: -i,
        });
        let report = bulk::insert_into(bulk_def::table, rows)
            .execute(&mut conn)
            .expect("mixed rows");
        assert_eq!(report.rows, n as u64);
        if C::KIND == BackendKind::Postgres {
            assert!(report.copy_chunks > 0, "{report:?}");
            assert!(report.copy_chunks < report.chunks, "{report:?}");
        }
        let got: Vec<(i32, i32, i32)> = bulk_def::table
            .order(bulk_def::a)
            .load(&mut conn)
            .expect("load");
        let want: Vec<(i32, i32, i32)> = (0..n)
            .map(|i| (i, if defaulted(i) { 42 } else { i.wrapping_mul(3) }, -i))
            .collect();
        assert_eq!(got.len(), want.len());
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        assert!(got == want, "first difference at {first_diff:?}");
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
        for (update, staging) in [(true, false), (false, false), (true, true), (false, true)] {
            for chunk in [1000, 7, 1] {
                diesel::delete(bulk_c3::table).execute(&mut conn).expect("clear");
                diesel::insert_into(bulk_c3::table)
                    .values(&existing)
                    .execute(&mut conn)
                    .expect("existing");
                let chunk_rows = NonZeroUsize::new(chunk).expect("non-zero");
                let mut insert = bulk::insert_into(bulk_c3::table, input.iter().cloned())
                    .chunk_rows(chunk_rows);
                if staging {
                    // PostgreSQL: through the COPY-fed staging table (the others ignore it).
                    insert = insert.staging();
                }
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
                if C::KIND == BackendKind::Postgres {
                    assert_eq!(report.copy_chunks > 0, staging, "staging {staging}");
                }
                let back: Vec<R3> = bulk_c3::table
                    .order(bulk_c3::a)
                    .load(&mut conn)
                    .expect("load");
                let expected = if update { &last_wins } else { &first_wins };
                assert!(
                    &back == expected,
                    "update {update}, staging {staging}, chunk {chunk}: {back:?}"
                );
            }
        }
    }

    diesel::table! {
        bulk_types (k) {
            k -> Integer,
            t -> Nullable<Text>,
            big -> BigInt,
            d -> Double,
            flag -> Bool,
            bin -> Nullable<Binary>,
            def -> Integer,
        }
    }

    /// `def: None` is its column's `DEFAULT` (42); `t` and `bin` bind NULL for a `None`.
    #[derive(Debug, Clone, PartialEq, Insertable)]
    #[diesel(table_name = bulk_types)]
    struct RTypes {
        k: i32,
        #[diesel(treat_none_as_default_value = false)]
        t: Option<String>,
        big: i64,
        d: f64,
        flag: bool,
        #[diesel(treat_none_as_default_value = false)]
        bin: Option<Vec<u8>>,
        def: Option<i32>,
    }

    type TypesRow = (i32, Option<String>, i64, f64, bool, Option<Vec<u8>>, i32);

    /// An upsert of rows of several types with NULLs, duplicate keys across chunks, half the
    /// keys existing, and rows that leave a column to its `DEFAULT` scattered among them: every
    /// key ends as its last input row (a `DEFAULT` as 42). On PostgreSQL the rows that bind
    /// every column go as `INSERT .. SELECT * FROM UNNEST(..)` (one array a column, NULLs
    /// inside), the `DEFAULT` rows as multi-row `INSERT`s.
    #[test]
    fn bulk_upsert_of_typed_rows_with_nulls_and_defaults() {
        let mut conn = conn();
        let (binary, double) = match C::KIND {
            BackendKind::Postgres => ("BYTEA", "DOUBLE PRECISION"),
            BackendKind::Mysql => ("VARBINARY(16)", "DOUBLE"),
            _ => ("BLOB", "DOUBLE"),
        };
        diesel::sql_query(format!(
            "CREATE TEMPORARY TABLE bulk_types (k INTEGER PRIMARY KEY, t TEXT, \
             big BIGINT NOT NULL, d {double} NOT NULL, flag BOOLEAN NOT NULL, bin {binary}, \
             def INTEGER NOT NULL DEFAULT 42)"
        ))
        .execute(&mut conn)
        .expect("create temp table");
        let row = |i: i32| RTypes {
            k: if i < 2_500 { i % 1_000 } else { i },
            t: (i % 5 != 0).then(|| format!("t-{i}, \"x\"")),
            big: i64::from(i) * 1_000_000_007,
            d: f64::from(i) * 0.5 - 3.25,
            flag: i % 2 == 0,
            bin: (i % 7 != 0).then(|| vec![i as u8, 0, 255, (i >> 8) as u8]),
            // Unique keys only: on SQLite a DEFAULT column is left out of the statement, so
            // an update would keep the old value there.
            def: (i < 2_500 || i % 3 != 0).then_some(i),
        };
        let existing: Vec<RTypes> = (0..500)
            .map(|k| RTypes {
                t: Some("old".into()),
                def: Some(-1),
                ..row(k)
            })
            .collect();
        let input: Vec<RTypes> = (0..2_600).map(row).collect();
        let mut want: std::collections::BTreeMap<i32, TypesRow> = Default::default();
        for r in &input {
            let r = r.clone();
            want.insert(r.k, (r.k, r.t, r.big, r.d, r.flag, r.bin, r.def.unwrap_or(42)));
        }
        let want: Vec<TypesRow> = want.into_values().collect();
        for chunk in [None, Some(7)] {
            diesel::delete(bulk_types::table).execute(&mut conn).expect("clear");
            diesel::insert_into(bulk_types::table)
                .values(&existing)
                .execute(&mut conn)
                .expect("existing");
            let (report, ledger) = diesel_budget::testing::record(&mut conn, |conn| {
                let mut insert = bulk::insert_into(bulk_types::table, input.iter().cloned());
                if let Some(chunk) = chunk {
                    insert = insert.chunk_rows(NonZeroUsize::new(chunk).expect("non-zero"));
                }
                insert
                    .on_conflict_do_update(bulk_types::k, |r: &RTypes| r.k)
                    .execute(conn)
                    .unwrap_or_else(|e| panic!("chunk {chunk:?}: {e:?}"))
            });
            assert_eq!(report.rows, 2_600);
            if C::KIND == BackendKind::Postgres {
                let count = |what: &str| {
                    ledger
                        .statements()
                        .iter()
                        .filter(|s| s.sql.contains(what))
                        .count()
                };
                assert!(count("UNNEST(") > 0, "no UNNEST chunk:\n{ledger}");
                assert!(count("VALUES") > 0, "no DEFAULT chunk:\n{ledger}");
            }
            let got: Vec<TypesRow> = bulk_types::table
                .order(bulk_types::k)
                .load(&mut conn)
                .expect("load");
            assert_eq!(got.len(), want.len(), "chunk {chunk:?}");
            let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
            assert!(
                got == want,
                "chunk {chunk:?}: first difference at {first_diff:?}: {:?}",
                first_diff.map(|i| (&got[i], &want[i]))
            );
        }
    }
}

/// Bulk writes, continued (issue 6): update by key, delete by keys, RETURNING under a budget,
/// 64 columns (the `bulk_wide` migration), MySQL's packet limit, and the rows read back by each
/// backend's own command-line client.
mod bulk_more_tests {
    use super::C;
    use crate::common::{id_base, Backend};
    use diesel::prelude::*;
    use diesel_budget::bulk::{self, BulkConnection};
    use diesel_budget::demo::{items, Item};
    use diesel_budget::{BackendKind, BudgetConnection, Error};
    use std::num::NonZeroUsize;

    diesel::table! {
        bulk_c3 (a) {
            a -> Integer,
            b -> Integer,
            c -> Integer,
        }
    }

    diesel::table! {
        bulk_auto (id) {
            id -> Integer,
            name -> Text,
        }
    }

    diesel::table! {
        bulk_text (a) {
            a -> Integer,
            t -> Text,
        }
    }

    diesel::table! {
        bulk_wide (c0) {
            c0 -> Integer, c1 -> Integer, c2 -> Integer, c3 -> Integer, c4 -> Integer, c5 -> Integer, c6 -> Integer, c7 -> Integer, c8 -> Integer, c9 -> Integer, c10 -> Integer, c11 -> Integer, c12 -> Integer, c13 -> Integer, c14 -> Integer, c15 -> Integer, c16 -> Integer, c17 -> Integer, c18 -> Integer, c19 -> Integer, c20 -> Integer, c21 -> Integer, c22 -> Integer, c23 -> Integer, c24 -> Integer, c25 -> Integer, c26 -> Integer, c27 -> Integer, c28 -> Integer, c29 -> Integer, c30 -> Integer, c31 -> Integer, c32 -> Integer, c33 -> Integer, c34 -> Integer, c35 -> Integer, c36 -> Integer, c37 -> Integer, c38 -> Integer, c39 -> Integer, c40 -> Integer, c41 -> Integer, c42 -> Integer, c43 -> Integer, c44 -> Integer, c45 -> Integer, c46 -> Integer, c47 -> Integer, c48 -> Integer, c49 -> Integer, c50 -> Integer, c51 -> Integer, c52 -> Integer, c53 -> Integer, c54 -> Integer, c55 -> Integer, c56 -> Integer, c57 -> Integer, c58 -> Integer, c59 -> Integer, c60 -> Integer, c61 -> Integer, c62 -> Integer, c63 -> Integer
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_c3, treat_none_as_default_value = false)]
    struct R3 {
        a: i32,
        b: i32,
        c: i32,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable)]
    #[diesel(table_name = bulk_auto)]
    struct NewAuto {
        name: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable)]
    #[diesel(table_name = bulk_auto)]
    struct NewAutoWithId {
        id: i32,
        name: String,
    }

    diesel::table! {
        bulk_auto_shared (id) {
            id -> Integer,
            name -> Text,
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable)]
    #[diesel(table_name = bulk_auto_shared)]
    struct NewShared {
        name: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_text, treat_none_as_default_value = false)]
    struct RText {
        a: i32,
        t: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_wide, treat_none_as_default_value = false)]
    struct R64 {
        c0: i32, c1: i32, c2: i32, c3: i32, c4: i32, c5: i32, c6: i32, c7: i32, c8: i32, c9: i32, c10: i32, c11: i32, c12: i32, c13: i32, c14: i32, c15: i32, c16: i32, c17: i32, c18: i32, c19: i32, c20: i32, c21: i32, c22: i32, c23: i32, c24: i32, c25: i32, c26: i32, c27: i32, c28: i32, c29: i32, c30: i32, c31: i32, c32: i32, c33: i32, c34: i32, c35: i32, c36: i32, c37: i32, c38: i32, c39: i32, c40: i32, c41: i32, c42: i32, c43: i32, c44: i32, c45: i32, c46: i32, c47: i32, c48: i32, c49: i32, c50: i32, c51: i32, c52: i32, c53: i32, c54: i32, c55: i32, c56: i32, c57: i32, c58: i32, c59: i32, c60: i32, c61: i32, c62: i32, c63: i32
    }

    fn r64(i: i32) -> R64 {
        R64 { c0: i, c1: i.wrapping_mul(131).wrapping_add(1), c2: i.wrapping_mul(131).wrapping_add(2), c3: i.wrapping_mul(131).wrapping_add(3), c4: i.wrapping_mul(131).wrapping_add(4), c5: i.wrapping_mul(131).wrapping_add(5), c6: i.wrapping_mul(131).wrapping_add(6), c7: i.wrapping_mul(131).wrapping_add(7), c8: i.wrapping_mul(131).wrapping_add(8), c9: i.wrapping_mul(131).wrapping_add(9), c10: i.wrapping_mul(131).wrapping_add(10), c11: i.wrapping_mul(131).wrapping_add(11), c12: i.wrapping_mul(131).wrapping_add(12), c13: i.wrapping_mul(131).wrapping_add(13), c14: i.wrapping_mul(131).wrapping_add(14), c15: i.wrapping_mul(131).wrapping_add(15), c16: i.wrapping_mul(131).wrapping_add(16), c17: i.wrapping_mul(131).wrapping_add(17), c18: i.wrapping_mul(131).wrapping_add(18), c19: i.wrapping_mul(131).wrapping_add(19), c20: i.wrapping_mul(131).wrapping_add(20), c21: i.wrapping_mul(131).wrapping_add(21), c22: i.wrapping_mul(131).wrapping_add(22), c23: i.wrapping_mul(131).wrapping_add(23), c24: i.wrapping_mul(131).wrapping_add(24), c25: i.wrapping_mul(131).wrapping_add(25), c26: i.wrapping_mul(131).wrapping_add(26), c27: i.wrapping_mul(131).wrapping_add(27), c28: i.wrapping_mul(131).wrapping_add(28), c29: i.wrapping_mul(131).wrapping_add(29), c30: i.wrapping_mul(131).wrapping_add(30), c31: i.wrapping_mul(131).wrapping_add(31), c32: i.wrapping_mul(131).wrapping_add(32), c33: i.wrapping_mul(131).wrapping_add(33), c34: i.wrapping_mul(131).wrapping_add(34), c35: i.wrapping_mul(131).wrapping_add(35), c36: i.wrapping_mul(131).wrapping_add(36), c37: i.wrapping_mul(131).wrapping_add(37), c38: i.wrapping_mul(131).wrapping_add(38), c39: i.wrapping_mul(131).wrapping_add(39), c40: i.wrapping_mul(131).wrapping_add(40), c41: i.wrapping_mul(131).wrapping_add(41), c42: i.wrapping_mul(131).wrapping_add(42), c43: i.wrapping_mul(131).wrapping_add(43), c44: i.wrapping_mul(131).wrapping_add(44), c45: i.wrapping_mul(131).wrapping_add(45), c46: i.wrapping_mul(131).wrapping_add(46), c47: i.wrapping_mul(131).wrapping_add(47), c48: i.wrapping_mul(131).wrapping_add(48), c49: i.wrapping_mul(131).wrapping_add(49), c50: i.wrapping_mul(131).wrapping_add(50), c51: i.wrapping_mul(131).wrapping_add(51), c52: i.wrapping_mul(131).wrapping_add(52), c53: i.wrapping_mul(131).wrapping_add(53), c54: i.wrapping_mul(131).wrapping_add(54), c55: i.wrapping_mul(131).wrapping_add(55), c56: i.wrapping_mul(131).wrapping_add(56), c57: i.wrapping_mul(131).wrapping_add(57), c58: i.wrapping_mul(131).wrapping_add(58), c59: i.wrapping_mul(131).wrapping_add(59), c60: i.wrapping_mul(131).wrapping_add(60), c61: i.wrapping_mul(131).wrapping_add(61), c62: i.wrapping_mul(131).wrapping_add(62), c63: i.wrapping_mul(131).wrapping_add(63) }
    }

    fn r3(i: i32) -> R3 {
        R3 { a: i, b: i.wrapping_mul(7), c: -i }
    }

    fn nz(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    /// A plain connection with the temporary tables `bulk_c3`, `bulk_auto`, `bulk_text`.
    fn conn() -> C {
        let mut conn = C::plain();
        let (auto, text) = match C::KIND {
            BackendKind::Sqlite => ("id INTEGER PRIMARY KEY", "TEXT"),
            BackendKind::Postgres => ("id SERIAL PRIMARY KEY", "TEXT"),
            _ => ("id INTEGER AUTO_INCREMENT PRIMARY KEY", "LONGTEXT"),
        };
        for ddl in [
            "CREATE TEMPORARY TABLE bulk_c3 (a INTEGER PRIMARY KEY, b INTEGER NOT NULL, \
             c INTEGER NOT NULL)"
                .to_string(),
            format!("CREATE TEMPORARY TABLE bulk_auto ({auto}, name VARCHAR(64) NOT NULL)"),
            format!("CREATE TEMPORARY TABLE bulk_text (a INTEGER PRIMARY KEY, t {text} NOT NULL)"),
        ] {
            diesel::sql_query(ddl).execute(&mut conn).expect("create temp table");
        }
        conn
    }

    fn load3(conn: &mut C) -> Vec<R3> {
        bulk_c3::table.order(bulk_c3::a).load(conn).expect("load")
    }

    /// Update by key: the last row of a key wins whatever the chunk size, keys not in the
    /// table change nothing, and the default chunk is exactly what the bind limit allows (one
    /// row under, at, over a chunk's worth).
    #[test]
    fn bulk_update_by_key_last_row_wins_and_straddles_the_limit() {
        let mut conn = conn();
        let limit = conn.bind_limit().expect("bind limit");
        let per_chunk = limit / 3;
        let n = 300;
        diesel::insert_into(bulk_c3::table)
            .values((0..n).map(r3).collect::<Vec<_>>())
            .execute(&mut conn)
            .expect("rows");
        // Keys 0..200 twice (second time wins), and 400..420, which are not in the table.
        let input: Vec<R3> = (0..200)
            .map(|k| R3 { a: k, b: 1, c: 1 })
            .chain((0..200).map(|k| R3 { a: k, b: k * 2, c: 5 }))
            .chain((400..420).map(|k| R3 { a: k, b: 0, c: 0 }))
            .collect();
        let expected: Vec<R3> = (0..n)
            .map(|k| if k < 200 { R3 { a: k, b: k * 2, c: 5 } } else { r3(k) })
            .collect();
        for chunk in [None, Some(7), Some(1)] {
            let mut update = bulk::update(bulk_c3::table, bulk_c3::a, |r: &&R3| r.a, &input);
            if let Some(c) = chunk {
                update = update.chunk_rows(nz(c));
            }
            let report = update
                .execute(&mut conn)
                .unwrap_or_else(|e| panic!("chunk {chunk:?}: {e:?}"));
            assert_eq!(report.rows, input.len() as u64);
            assert!(report.affected >= 200, "{report:?}");
            assert_eq!(load3(&mut conn), expected, "chunk {chunk:?}");
        }

        for rows in [per_chunk - 1, per_chunk, per_chunk + 1] {
            let rows_i32 = i32::try_from(rows).expect("fits");
            diesel::delete(bulk_c3::table).execute(&mut conn).expect("clear");
            bulk::insert_into(bulk_c3::table, (0..rows_i32).map(r3))
                .execute(&mut conn)
                .expect("rows");
            let changed = |i: i32| R3 { a: i, b: -i, c: i };
            let mut progress = Vec::new();
            let report =
                bulk::update(bulk_c3::table, bulk_c3::a, |r: &R3| r.a, (0..rows_i32).map(changed))
                    .per_chunk()
                    .on_progress(|p: bulk::Progress| progress.push(p.rows_done))
                    .execute(&mut conn)
                    .unwrap_or_else(|e| panic!("{rows} rows: {e:?}"));
            assert_eq!(report.chunks, rows.div_ceil(per_chunk) as u64, "{rows} rows");
            assert_eq!((report.rows, report.affected), (rows as u64, rows as u64));
            assert_eq!(progress.last(), Some(&(rows as u64)));
            let back = load3(&mut conn);
            assert!(back == (0..rows_i32).map(changed).collect::<Vec<_>>(), "{rows} rows differ");
        }

        // A row that sets no column but its key is refused before anything is written.
        let err = bulk::update(
            bulk_auto::table,
            bulk_auto::name,
            |r: &NewAuto| r.name.clone(),
            [NewAuto { name: "x".into() }],
        )
        .execute(&mut conn)
        .expect_err("nothing to set");
        assert!(matches!(err, Error::InvalidArgument { name: "rows", .. }), "{err:?}");
    }

    /// Delete by keys: `= ANY($1)` on PostgreSQL and `IN (..)` on MySQL, 10,000 keys a chunk by
    /// default; on SQLite `IN (..)` with as many keys as the bind limit allows (one kept for a
    /// RETURNING's LIMIT): one key under, at, over a chunk's worth; keys not in the table
    /// delete nothing. On MySQL a `chunk_rows` of the bind limit (less the one) straddles it too.
    #[test]
    fn bulk_delete_by_keys_straddles_the_chunk() {
        let mut conn = conn();
        let limit = conn.bind_limit().expect("bind limit");
        let per_chunk = match C::KIND {
            BackendKind::Sqlite => limit - 1,
            _ => 10_000,
        };
        let mut cases: Vec<(usize, Option<usize>)> =
            [per_chunk - 1, per_chunk, per_chunk + 1].map(|k| (k, None)).into();
        if C::KIND == BackendKind::Mysql {
            cases.push((limit, Some(limit - 1)));
        }
        for (keys, chunk_rows) in cases {
            let per_chunk = chunk_rows.unwrap_or(per_chunk);
            let keys_i32 = i32::try_from(keys).expect("fits");
            diesel::delete(bulk_c3::table).execute(&mut conn).expect("clear");
            bulk::insert_into(bulk_c3::table, (0..keys_i32 + 10).map(r3))
                .execute(&mut conn)
                .expect("rows");
            // Every other key is missing from the table.
            let doomed = (0..keys_i32).map(|k| if k % 2 == 0 { k } else { -k });
            let mut delete = bulk::delete(bulk_c3::table, bulk_c3::a, doomed).per_chunk();
            if let Some(n) = chunk_rows {
                delete = delete.chunk_rows(nz(n));
            }
            let report = delete
                .execute(&mut conn)
                .unwrap_or_else(|e| panic!("{keys} keys: {e:?}"));
            assert_eq!(report.rows, keys as u64);
            assert_eq!(report.chunks, keys.div_ceil(per_chunk) as u64, "{keys} keys");
            assert_eq!(report.affected, keys.div_ceil(2) as u64, "{keys} keys");
            let left: Vec<i32> = load3(&mut conn).into_iter().map(|r| r.a).collect();
            let expected: Vec<i32> =
                (0..keys_i32 + 10).filter(|k| *k >= keys_i32 || k % 2 == 1).collect();
            assert!(left == expected, "{keys} keys: wrong rows left");
        }
        let too_many = nz(match C::KIND {
            BackendKind::Postgres => 10_000_000,
            _ => limit,
        });
        let result = bulk::delete(bulk_c3::table, bulk_c3::a, 0..10)
            .chunk_rows(too_many)
            .execute(&mut conn);
        match C::KIND {
            BackendKind::Postgres => assert!(result.is_ok(), "{result:?}"),
            _ => assert!(
                matches!(result, Err(Error::InvalidArgument { name: "chunk_rows", .. })),
                "{result:?}"
            ),
        }
    }

    /// RETURNING under a budget: the generated ids of an insert come back in input order; a
    /// write that would return more than the budget fails with `BudgetExceeded` before the
    /// chunk that passes it, having loaded at most budget + 1 rows, and nothing is written or
    /// deleted (always atomic). MySQL/MariaDB: both are emulated (insert: the generated
    /// AUTO_INCREMENT ids read back; delete: a locking read first), same assertions.
    #[test]
    fn bulk_returning_ids_in_input_order_under_a_budget() {
        let mut conn = conn();
        let n: usize = 2_500;
        // Names in an order unrelated to the ids the database hands out.
        let names: Vec<String> = (0..n).map(|i| format!("n-{}", (i * 7919) % n)).collect();
        let rows = || names.iter().map(|name| NewAuto { name: name.clone() });
        let (report, ids) = bulk::insert_into(bulk_auto::table, rows())
            .chunk_rows(nz(100))
            .returning(bulk_auto::id, diesel_budget::Budget::rows(n as u64))
            .execute::<_, _, _, i32>(&mut conn)
            .expect("insert returning");
        assert_eq!((report.rows, report.chunks, ids.len()), (n as u64, 25, n));

        // One row over the budget: refused before the last chunk, nothing written.
        let err = bulk::insert_into(bulk_auto::table, rows())
            .chunk_rows(nz(100))
            .returning(bulk_auto::id, diesel_budget::Budget::rows(n as u64 - 1))
            .execute::<_, _, _, i32>(&mut conn)
            .expect_err("over budget");
        assert!(
            matches!(err, Error::BudgetExceeded { seen_rows, .. } if seen_rows == n as u64),
            "{err:?}"
        );
        let stored: std::collections::HashMap<i32, String> = bulk_auto::table
            .load::<(i32, String)>(&mut conn)
            .expect("load")
            .into_iter()
            .collect();
        assert_eq!(stored.len(), n, "the refused insert wrote rows");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(stored.get(id), Some(&names[i]), "id {id} of input row {i}");
        }

        // Delete returning, within the budget.
        let first: Vec<i32> = ids[..100].to_vec();
        let (report, gone) = bulk::delete(bulk_auto::table, bulk_auto::id, &first)
            .chunk_rows(nz(30))
            .returning((bulk_auto::id, bulk_auto::name), diesel_budget::Budget::rows(100))
            .execute::<_, _, (i32, String)>(&mut conn)
            .expect("delete returning");
        assert_eq!((report.affected, gone.len()), (100, 100));
        let mut gone_ids: Vec<i32> = gone.iter().map(|(id, _)| *id).collect();
        gone_ids.sort_unstable();
        let mut want = first.clone();
        want.sort_unstable();
        assert_eq!(gone_ids, want);
        for (id, name) in &gone {
            assert_eq!(stored.get(id), Some(name));
        }

        // Over the budget: at most budget + 1 rows loaded, nothing deleted.
        let rest: Vec<i32> = ids[100..].to_vec();
        let err = bulk::delete(bulk_auto::table, bulk_auto::id, &rest)
            .chunk_rows(nz(5))
            .returning(bulk_auto::id, diesel_budget::Budget::rows(10))
            .execute::<_, _, i32>(&mut conn)
            .expect_err("over budget");
        assert!(matches!(err, Error::BudgetExceeded { seen_rows: 11, .. }), "{err:?}");
        let count: i64 = bulk_auto::table.count().get_result(&mut conn).expect("count");
        assert_eq!(count, n as i64 - 100, "the refused delete deleted rows");
    }

    /// MySQL/MariaDB insert RETURNING refuses, with a typed error and nothing written, what it
    /// cannot make exact: rows that set the AUTO_INCREMENT column themselves (also when an
    /// earlier insert left `LAST_INSERT_ID()` set on the connection), an upsert.
    #[test]
    fn bulk_returning_mysql_refuses_rows_that_set_the_id() {
        if C::KIND != BackendKind::Mysql {
            return;
        }
        let mut conn = conn();
        let names: Vec<String> = (0..250).map(|i| format!("a-{i}")).collect();
        // A returning insert first, one chunk: LAST_INSERT_ID() is its first id, stale for the
        // next insert (which, were it believed, would read these rows back as its own).
        let (_, before) = bulk::insert_into(
            bulk_auto::table,
            names.iter().map(|name| NewAuto { name: name.clone() }),
        )
        .returning((bulk_auto::id, bulk_auto::name), diesel_budget::Budget::rows(1_000))
        .execute::<_, _, _, (i32, String)>(&mut conn)
        .expect("insert returning");
        assert_eq!(before.len(), 250);
        let is_refusal = |err: &Error| {
            matches!(
                err,
                Error::Query { source: diesel::result::Error::QueryBuilderError(_), .. }
            )
        };
        let with_ids = (0..250).map(|i| NewAutoWithId { id: 10_000 + i, name: format!("b-{i}") });
        let err = bulk::insert_into(bulk_auto::table, with_ids)
            .chunk_rows(nz(100))
            .returning((bulk_auto::id, bulk_auto::name), diesel_budget::Budget::rows(1_000))
            .execute::<_, _, _, (i32, String)>(&mut conn)
            .expect_err("rows that set the id");
        assert!(is_refusal(&err), "{err:?}");
        let with_ids = (0..250).map(|i| NewAutoWithId { id: 10_000 + i, name: format!("c-{i}") });
        let upsert = bulk::insert_into(bulk_auto::table, with_ids)
            .on_conflict_do_update(bulk_auto::id, |r: &NewAutoWithId| r.id)
            .returning(bulk_auto::id, diesel_budget::Budget::rows(1_000))
        .execute::<_, _, _, i32>(&mut conn)
        .expect_err("an upsert");
        assert!(is_refusal(&upsert), "{upsert:?}");
        let all: Vec<(i32, String)> =
            bulk_auto::table.order(bulk_auto::id).load(&mut conn).expect("load");
        assert_eq!(all, before, "a refused insert wrote rows");
    }

    /// MySQL/MariaDB insert RETURNING with another connection inserting into the same table
    /// between the chunks (after each one's progress callback): each chunk's ids are
    /// consecutive, and the rows returned are ours, in input order, equal to the table; with
    /// `auto_increment_increment = 3` on the session, the ids step by 3.
    #[test]
    fn bulk_returning_mysql_ids_with_a_concurrent_inserter() {
        if C::KIND != BackendKind::Mysql {
            return;
        }
        let mut conn = C::plain();
        let mut other = C::plain();
        for ddl in [
            "DROP TABLE IF EXISTS bulk_auto_shared",
            "CREATE TABLE bulk_auto_shared (id INTEGER AUTO_INCREMENT PRIMARY KEY, \
             name VARCHAR(64) NOT NULL) ENGINE = InnoDB",
        ] {
            diesel::sql_query(ddl).execute(&mut conn).expect("ddl");
        }
        for step in [1, 3] {
            diesel::sql_query(format!("SET SESSION auto_increment_increment = {step}"))
                .execute(&mut conn)
                .expect("set increment");
            let names: Vec<String> = (0..1_000).map(|i| format!("ours-{step}-{i}")).collect();
            let mut theirs = 0;
            let (report, got) = bulk::insert_into(
                bulk_auto_shared::table,
                names.iter().map(|name| NewShared { name: name.clone() }),
            )
            .chunk_rows(nz(100))
            .on_progress(|_| {
                let rows: Vec<NewShared> = (0..3)
                    .map(|k| NewShared { name: format!("theirs-{step}-{theirs}-{k}") })
                    .collect();
                diesel::insert_into(bulk_auto_shared::table)
                    .values(&rows)
                    .execute(&mut other)
                    .expect("concurrent insert");
                theirs += 1;
            })
            .returning(
                (bulk_auto_shared::id, bulk_auto_shared::name),
                diesel_budget::Budget::rows(1_000),
            )
            .execute::<_, _, _, (i32, String)>(&mut conn)
            .expect("insert returning");
            assert_eq!((report.rows, report.chunks, got.len()), (1_000, 10, 1_000));
            assert!(theirs >= 9, "the other connection inserted between the chunks");
            let got_names: Vec<&String> = got.iter().map(|(_, name)| name).collect();
            let want_names: Vec<&String> = names.iter().collect();
            assert_eq!(got_names, want_names, "rows in input order, ours only");
            for chunk in got.chunks(100) {
                for pair in chunk.windows(2) {
                    assert_eq!(pair[1].0 - pair[0].0, step, "ids of one chunk: {pair:?}");
                }
            }
            // The chunks are not contiguous: the other connection's rows came in between.
            assert!(got[100].0 > got[99].0 + step, "{:?} {:?}", got[99], got[100]);
            let stored: std::collections::HashMap<i32, String> = bulk_auto_shared::table
                .load::<(i32, String)>(&mut conn)
                .expect("load")
                .into_iter()
                .collect();
            for (id, name) in &got {
                assert_eq!(stored.get(id), Some(name), "id {id}");
            }
        }
        diesel::sql_query("DROP TABLE bulk_auto_shared").execute(&mut conn).expect("drop");
    }

    /// MySQL's `max_allowed_packet`, read from the server, bounds a chunk before the bind limit
    /// does: 600 rows of 60,000 bytes (36 MB) go in chunks under the packet; PostgreSQL's
    /// `COPY` streams its rows (no chunk is held in memory) and SQLite holds them by
    /// reference, so nothing but the row limit bounds them there (one chunk). Every row read
    /// back equal.
    #[test]
    fn bulk_wide_rows_are_chunked_by_the_packet() {
        let mut conn = conn();
        let n = 600;
        let row = |i: i32| RText { a: i, t: format!("{i:08}").repeat(7_500) };
        let report = bulk::insert_into(bulk_text::table, (0..n).map(row))
            .execute(&mut conn)
            .expect("wide rows");
        assert_eq!(report.rows, n as u64);
        if C::KIND == BackendKind::Mysql {
            let packet: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "CAST(@@max_allowed_packet AS SIGNED)",
            ))
            .get_result(&mut conn)
            .expect("max_allowed_packet");
            let packet = packet as u64;
            let at_least = (n as u64 * 60_000).div_ceil(packet);
            assert!(
                report.chunks >= at_least.max(2) && report.chunks <= at_least + 1,
                "{} chunks for {} bytes under a {packet}-byte packet",
                report.chunks,
                n * 60_000
            );
        } else if C::KIND == BackendKind::Postgres {
            assert_eq!((report.chunks, report.copy_chunks), (1, 1), "{report:?}");
        } else {
            assert_eq!(report.chunks, 1);
        }
        for from in (0..n).step_by(100) {
            let back: Vec<RText> = bulk_text::table
                .filter(bulk_text::a.between(from, from + 99))
                .order(bulk_text::a)
                .load(&mut conn)
                .expect("read back");
            assert!(back == (from..from + 100).map(row).collect::<Vec<_>>(), "rows {from}..");
        }
    }

    /// 64 columns (the `bulk_wide` migration): one row's worth under, at and over the bind
    /// limit, through INSERT and through the default path (COPY on PostgreSQL), in a test
    /// transaction in this test's key range; every row read back equal.
    #[test]
    fn bulk_insert_64_columns_straddles_the_bind_limit() {
        let mut conn = C::plain();
        if C::KIND == BackendKind::Sqlite {
            conn.run_migrations(diesel_budget::demo::MIGRATIONS).expect("migrations");
        }
        conn.begin_test_transaction().expect("test transaction");
        let base = id_base(26);
        let limit = conn.bind_limit().expect("bind limit");
        let per_chunk = limit / 64;
        let range = |n: usize| base..base + i32::try_from(n).expect("fits");
        for n in [per_chunk - 1, per_chunk, per_chunk + 1] {
            for insert_only in [true, false] {
                let mut insert = bulk::insert_into(bulk_wide::table, range(n).map(r64));
                if insert_only {
                    insert = insert.insert_only();
                }
                let report = insert
                    .execute(&mut conn)
                    .unwrap_or_else(|e| panic!("{n} rows, insert_only {insert_only}: {e:?}"));
                assert_eq!(report.rows, n as u64);
                if insert_only || C::KIND != BackendKind::Postgres {
                    assert_eq!(report.chunks, n.div_ceil(per_chunk) as u64, "{n} rows");
                } else {
                    assert_eq!(report.copy_chunks, report.chunks);
                }
                let mine = bulk_wide::c0.between(base, base + 999_999);
                let back: Vec<R64> = bulk_wide::table
                    .filter(mine)
                    .order(bulk_wide::c0)
                    .load(&mut conn)
                    .expect("read back");
                assert!(back == range(n).map(r64).collect::<Vec<_>>(), "{n} rows differ");
                diesel::delete(bulk_wide::table.filter(mine))
                    .execute(&mut conn)
                    .expect("clear");
            }
        }
    }

    /// Runs the backend's own command-line client on `url` and returns its output: one line
    /// a row, fields separated by tabs.
    fn client_rows(url: &str, sql: &str) -> Vec<String> {
        let mut cmd = match C::KIND {
            BackendKind::Sqlite => {
                let mut c = std::process::Command::new("sqlite3");
                c.args(["-batch", "-separator", "\t", url, sql]);
                c
            }
            BackendKind::Postgres => {
                let mut c = std::process::Command::new("psql");
                c.args(["-X", "-A", "-t", "-F", "\t", "-d", url, "-c", sql]);
                c
            }
            _ => {
                // mysql://user[:password]@host:port/db
                let rest = url.strip_prefix("mysql://").expect("mysql URL");
                let (auth, hostdb) = rest.split_once('@').expect("user@host");
                let (host, db) = hostdb.split_once('/').expect("host/db");
                let (host, port) = host.split_once(':').unwrap_or((host, "3306"));
                let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
                let mut c = std::process::Command::new("mariadb");
                c.args(["-h", host, "-P", port, "-u", user, "-N", "-B", "-D", db, "-e", sql]);
                if !password.is_empty() {
                    c.env("MYSQL_PWD", password);
                }
                c
            }
        };
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running the {} client: {e}", C::KIND));
        assert!(
            out.status.success(),
            "{} client failed: {}",
            C::KIND,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The rows a bulk insert and a bulk update committed, read back by `sqlite3`, `psql` or
    /// `mariadb` and compared field by field with what was written.
    #[test]
    fn bulk_rows_read_back_by_the_command_line_client() {
        let tdb = C::private_db(1);
        let url = C::url(&tdb);
        let base = id_base(28);
        let n = 3_000;
        let mut conn = tdb.conn();
        C::delete_range(&mut conn, base, base + n);
        let mut written: Vec<Item> = (base..base + n).map(Item::generate).collect();
        let report = bulk::insert_into(items::table, &written)
            .per_chunk()
            .chunk_rows(nz(700))
            .execute(&mut *conn)
            .expect("bulk insert");
        assert_eq!(report.rows, n as u64);
        for item in written.iter_mut().step_by(3) {
            item.name = format!("renamed\u{e9}-{}", item.id);
            item.category += 100;
        }
        let changed: Vec<Item> = written.iter().step_by(3).cloned().collect();
        bulk::update(items::table, items::id, |i: &&Item| i.id, &changed)
            .chunk_rows(nz(333))
            .execute(&mut *conn)
            .expect("bulk update");
        let sql = format!(
            "SELECT id, category, name, payload, created_at FROM items \
             WHERE id BETWEEN {base} AND {} ORDER BY id",
            base + n - 1
        );
        let back = client_rows(&url, &sql);
        let expected: Vec<String> = written
            .iter()
            .map(|i| {
                format!("{}\t{}\t{}\t{}\t{}", i.id, i.category, i.name, i.payload, i.created_at)
            })
            .collect();
        let deleted = C::delete_range(&mut conn, base, base + n);
        assert_eq!(back.len(), expected.len(), "rows read back by the client");
        for (got, want) in back.iter().zip(&expected) {
            assert_eq!(got, want);
        }
        assert_eq!(deleted, n as usize);
    }
}
