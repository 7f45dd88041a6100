// PostgreSQL's own types through bulk writes (issue 6): a custom enum and arrays, by the
// streamed `COPY` of a plain insert and the `UNNEST` of an upsert. Included for PostgreSQL only:
// the other backends have no custom types to look up. Temporary type and table (pg_temp), so no
// other test sees them.

mod bulk_pg_tests {
    use super::C;
    use crate::common::Backend;
    use diesel::deserialize::{self, FromSql, FromSqlRow};
    use diesel::expression::AsExpression;
    use diesel::pg::{Pg, PgValue};
    use diesel::prelude::*;
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use diesel_budget::bulk;
    use std::io::Write as _;

    #[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "bulk_mood"))]
    pub struct MoodType;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
    #[diesel(sql_type = MoodType)]
    enum Mood {
        Sad,
        Fine,
        Happy,
    }

    impl ToSql<MoodType, Pg> for Mood {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
            out.write_all(match self {
                Mood::Sad => b"sad".as_slice(),
                Mood::Fine => b"fine",
                Mood::Happy => b"happy",
            })?;
            Ok(IsNull::No)
        }
    }

    impl FromSql<MoodType, Pg> for Mood {
        fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
            match bytes.as_bytes() {
                b"sad" => Ok(Mood::Sad),
                b"fine" => Ok(Mood::Fine),
                b"happy" => Ok(Mood::Happy),
                other => Err(format!("not a mood: {other:?}").into()),
            }
        }
    }

    diesel::table! {
        use diesel::sql_types::*;
        use super::MoodType;

        bulk_moods (a) {
            a -> Integer,
            m -> MoodType,
            ms -> Nullable<Array<MoodType>>,
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable)]
    #[diesel(table_name = bulk_moods, treat_none_as_default_value = false)]
    struct RMood {
        a: i32,
        m: Mood,
        ms: Option<Vec<Mood>>,
    }

    /// The same columns without the array: an upsert of these goes by `UNNEST`.
    #[derive(Debug, Clone, PartialEq, Eq, Insertable)]
    #[diesel(table_name = bulk_moods)]
    struct RMoodOnly {
        a: i32,
        m: Mood,
    }

    fn mood(i: i32) -> Mood {
        [Mood::Sad, Mood::Fine, Mood::Happy][i.rem_euclid(3) as usize]
    }

    fn row(i: i32) -> RMood {
        RMood {
            a: i,
            m: mood(i),
            ms: (i % 4 != 0).then(|| (0..i % 3).map(|k| mood(i + k)).collect()),
        }
    }

    /// A custom enum and an array of it: the streamed `COPY` keeps the types its first row
    /// looked up for the rest of the chunk (a chunk cut at each lookup would give one chunk a
    /// row); an upsert of the enum goes by `UNNEST` with the enum's own array type; one with the
    /// array column (no array of arrays) falls back to multi-row `INSERT`s. Every row read back.
    #[test]
    fn bulk_custom_types_stream_and_unnest() {
        let mut conn = C::plain();
        for ddl in [
            "CREATE TYPE pg_temp.bulk_mood AS ENUM ('sad', 'fine', 'happy')",
            "CREATE TEMPORARY TABLE bulk_moods (a INTEGER PRIMARY KEY, m bulk_mood NOT NULL, \
             ms bulk_mood[])",
        ] {
            diesel::sql_query(ddl).execute(&mut conn).expect("create temp type and table");
        }
        let n = 25_000;
        let report = bulk::insert_into(bulk_moods::table, (0..n).map(row))
            .execute(&mut conn)
            .expect("insert");
        // 10,000 rows a chunk: the lookups of the first row served the others.
        assert_eq!((report.rows, report.chunks, report.copy_chunks), (25_000, 3, 3));
        let load = |conn: &mut C| -> Vec<RMood> {
            bulk_moods::table
                .order(bulk_moods::a)
                .load(conn)
                .expect("load")
        };
        assert!(load(&mut conn) == (0..n).map(row).collect::<Vec<_>>(), "inserted rows");

        // Upsert of the enum alone, keys 20,000..30,000: by UNNEST.
        let renamed = |i: i32| RMoodOnly { a: i, m: mood(i + 1) };
        let (report, ledger) = diesel_budget::testing::record(&mut conn, |conn| {
            bulk::insert_into(bulk_moods::table, (20_000..30_000).map(renamed))
                .on_conflict_do_update(bulk_moods::a, |r: &RMoodOnly| r.a)
                .execute(conn)
                .expect("upsert by UNNEST")
        });
        assert_eq!(report.rows, 10_000);
        let unnest = ledger
            .statements()
            .iter()
            .filter(|s| s.sql.contains("UNNEST("))
            .count();
        assert_eq!(unnest, 1, "{ledger}");
        let mut want: Vec<RMood> = (0..30_000)
            .map(|i| match i {
                ..20_000 => row(i),
                20_000..25_000 => RMood { m: mood(i + 1), ..row(i) },
                _ => RMood { a: i, m: mood(i + 1), ms: None },
            })
            .collect();
        assert!(load(&mut conn) == want, "after the UNNEST upsert");

        // Upsert with the array column: no array of arrays, so multi-row INSERTs.
        let (report, ledger) = diesel_budget::testing::record(&mut conn, |conn| {
            bulk::insert_into(bulk_moods::table, (0..100).map(|i| RMood { a: i, ..row(i + 7) }))
                .on_conflict_do_update(bulk_moods::a, |r: &RMood| r.a)
                .execute(conn)
                .expect("upsert with an array column")
        });
        assert_eq!(report.rows, 100);
        assert!(
            ledger.statements().iter().all(|s| !s.sql.contains("UNNEST(")),
            "{ledger}"
        );
        for i in 0..100 {
            want[i as usize] = RMood { a: i, ..row(i + 7) };
        }
        assert!(load(&mut conn) == want, "after the array upsert");
    }
}
