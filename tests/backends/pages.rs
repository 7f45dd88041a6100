// Keyset and offset pages, and page tokens (issue 10). Included once per backend; test numbers
// 61..=69. The rows live in a table of these tests' own, `page_rows` (a nullable column, ties),
// created before each test's transaction (MySQL commits DDL).

mod pages {
    use super::C;

    use std::sync::Mutex;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use diesel::connection::SimpleConnection as _;
    use diesel::prelude::*;
    use diesel_budget::page::{asc, desc, Page, PageKeys, PageRequest, Pager, Total};
    use diesel_budget::prelude::*;
    use diesel_budget::{BackendKind, BudgetConnection, Error};

    use crate::common::{id_base, Backend, TestConn, TestDb};

    diesel::table! {
        page_rows (id) {
            id -> Integer,
            grp -> Integer,
            score -> Nullable<Integer>,
            name -> Text,
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, serde::Serialize)]
    #[diesel(table_name = page_rows, treat_none_as_default_value = false)]
    struct Row {
        id: i32,
        grp: i32,
        score: Option<i32>,
        name: String,
    }

    /// Serialises `CREATE TABLE IF NOT EXISTS` across this process's threads (PostgreSQL
    /// races on concurrent creation of the same table).
    static DDL: Mutex<()> = Mutex::new(());

    /// A connection in a test transaction with `page_rows` there, and the test's id base.
    fn ctx(test_no: i32) -> (TestDb<C>, TestConn<C>, i32) {
        let tdb = C::test_db();
        let mut conn = tdb.conn();
        {
            let _guard = DDL.lock().unwrap_or_else(|e| e.into_inner());
            conn.unbudgeted()
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS page_rows (id INTEGER PRIMARY KEY NOT NULL, \
                     grp INTEGER NOT NULL, score INTEGER, name VARCHAR(32) NOT NULL)",
                )
                .expect("create page_rows");
        }
        conn.begin_test_transaction();
        (tdb, conn, id_base(test_no))
    }

    /// Row `i` of a test: 4 groups, scores with ties and NULLs (every 5th), names with ties.
    fn row(base: i32, i: i32) -> Row {
        Row {
            id: base + i,
            grp: (i * 7) % 4,
            score: (i % 5 != 0).then_some((i * 3) % 7),
            name: format!("n{}", (i * 11) % 6),
        }
    }

    fn insert(conn: &mut TestConn<C>, rows: &[Row]) {
        for chunk in rows.chunks(500) {
            diesel::insert_into(page_rows::table)
                .values(chunk)
                .execute(conn.unbudgeted())
                .expect("insert page_rows");
        }
    }

    fn pager() -> Pager {
        Pager::new(PageKeys::new(1, &[11u8; 32]).expect("key"))
    }

    fn ids(rows: &[Row]) -> Vec<i32> {
        rows.iter().map(|r| r.id).collect()
    }

    /// The database's own order of the test's rows for an ORDER BY given as (column, descending,
    /// nulls first) parts; MySQL has no NULLS FIRST/LAST, so it gets `col IS NULL` first there
    /// (the documented MySQL idiom). The SQL is constant text (no user input).
    fn db_order(conn: &mut TestConn<C>, base: i32, parts: &[(&str, bool, Option<bool>)]) -> Vec<i32> {
        let mysql = C::KIND == BackendKind::Mysql;
        let mut order = Vec::new();
        for &(col, d, nulls) in parts {
            let dir = if d { "DESC" } else { "ASC" };
            match nulls {
                Some(first) if mysql => {
                    order.push(format!("{col} IS NULL {}", if first { "DESC" } else { "ASC" }));
                    order.push(format!("{col} {dir}"));
                }
                Some(first) => order.push(format!(
                    "{col} {dir} NULLS {}",
                    if first { "FIRST" } else { "LAST" }
                )),
                None => order.push(format!("{col} {dir}")),
            }
        }
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            id: i32,
        }
        let sql = format!(
            "SELECT id FROM page_rows WHERE id >= {base} AND id < {} ORDER BY {}",
            base + 1_000_000,
            order.join(", ")
        );
        diesel::sql_query(sql)
            .load::<Id>(conn.unbudgeted())
            .expect("reference order")
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    /// Walks every page of a listing forward from the first page and backward from the last
    /// one; both must give `expected` exactly, every page but the final one full.
    macro_rules! check_walks {
        ($conn:expr, $base:expr, $size:expr, $key:expr, $key_of:expr, $expected:expr, $what:expr) => {{
            let pager = pager();
            let base: i32 = $base;
            let what: &str = $what;
            let expected: Vec<i32> = $expected;
            let page = |conn: &mut TestConn<C>, req: PageRequest<'_>| -> Page<Row> {
                page_rows::table
                    .filter(page_rows::id.between(base, base + 999_999))
                    .budget(Budget::rows($size))
                    .keyset_page(&pager, $key, $key_of, req, &mut **conn)
                    .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            };
            // Forward.
            let mut got = Vec::new();
            let mut p = page($conn, PageRequest::First);
            assert!(p.prev.is_none(), "{what}: first page has a prev");
            loop {
                got.extend(ids(&p.items));
                assert!(got.len() <= expected.len(), "{what}: too many rows {got:?}");
                let Some(next) = p.next.clone() else { break };
                assert_eq!(p.items.len() as u64, $size, "{what}: a short page before the end");
                assert!(p.has_more);
                let back = p.items.clone();
                p = page($conn, PageRequest::Token(&next));
                // The new page's prev leads back to the page we came from.
                let prev = p.prev.clone().unwrap_or_else(|| panic!("{what}: no prev"));
                let again = page($conn, PageRequest::Token(&prev));
                assert_eq!(ids(&again.items), ids(&back), "{what}: prev of next");
            }
            assert_eq!(got, expected, "{what}: forward pages");
            // Backward.
            let mut got: Vec<i32> = Vec::new();
            let mut p = page($conn, PageRequest::Last);
            assert!(p.next.is_none(), "{what}: last page has a next");
            loop {
                let mut here = ids(&p.items);
                here.extend(got);
                got = here;
                assert!(got.len() <= expected.len(), "{what}: too many rows {got:?}");
                let Some(prev) = p.prev.clone() else { break };
                assert_eq!(p.items.len() as u64, $size, "{what}: a short page before the start");
                p = page($conn, PageRequest::Token(&prev));
                assert!(p.next.is_some(), "{what}: a prev page has no next");
            }
            assert_eq!(got, expected, "{what}: backward pages");
        }};
    }

    /// The 8 cases (forward/backward x first page/token x ASC/DESC) on a unique key, mixed
    /// directions, ties broken by the last column, and NULLs first and last in both directions:
    /// the pages, concatenated, are the database's own ORDER BY output exactly.
    #[test]
    fn keyset_pages_concatenate_to_the_databases_order() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(61);
        let rows: Vec<Row> = (0..37).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let c = &mut conn;

        let e = db_order(c, base, &[("id", false, None)]);
        check_walks!(c, base, 5, asc(page_rows::id), |r: &Row| r.id, e, "id asc");
        let e = db_order(c, base, &[("id", true, None)]);
        check_walks!(c, base, 5, desc(page_rows::id), |r: &Row| r.id, e, "id desc");
        let e = db_order(c, base, &[("grp", false, None), ("id", false, None)]);
        check_walks!(c, base, 4, (asc(page_rows::grp), asc(page_rows::id)),
            |r: &Row| (r.grp, r.id), e, "grp asc, id asc");
        let e = db_order(c, base, &[("grp", true, None), ("id", true, None)]);
        check_walks!(c, base, 6, (desc(page_rows::grp), desc(page_rows::id)),
            |r: &Row| (r.grp, r.id), e, "grp desc, id desc");
        let e = db_order(c, base, &[("grp", true, None), ("id", false, None)]);
        check_walks!(c, base, 5, (desc(page_rows::grp), asc(page_rows::id)),
            |r: &Row| (r.grp, r.id), e, "grp desc, id asc");
        let e = db_order(c, base, &[("score", false, Some(true)), ("id", false, None)]);
        check_walks!(c, base, 5, (asc(page_rows::score).nulls_first(), asc(page_rows::id)),
            |r: &Row| (r.score, r.id), e, "score asc nulls first, id asc");
        let e = db_order(c, base, &[("score", false, Some(false)), ("id", true, None)]);
        check_walks!(c, base, 3, (asc(page_rows::score).nulls_last(), desc(page_rows::id)),
            |r: &Row| (r.score, r.id), e, "score asc nulls last, id desc");
        let e = db_order(c, base, &[("score", true, Some(true)), ("id", false, None)]);
        check_walks!(c, base, 4, (desc(page_rows::score).nulls_first(), asc(page_rows::id)),
            |r: &Row| (r.score, r.id), e, "score desc nulls first, id asc");
        let e = db_order(c, base, &[("score", true, Some(false)), ("id", true, None)]);
        check_walks!(c, base, 5, (desc(page_rows::score).nulls_last(), desc(page_rows::id)),
            |r: &Row| (r.score, r.id), e, "score desc nulls last, id desc");
        let e = db_order(c, base, &[("grp", false, None), ("name", true, None), ("id", false, None)]);
        check_walks!(c, base, 4, (asc(page_rows::grp), desc(page_rows::name), asc(page_rows::id)),
            |r: &Row| (r.grp, r.name.clone(), r.id), e, "grp, name desc, id");
        let e = db_order(
            c,
            base,
            &[("grp", true, None), ("score", false, Some(false)), ("name", false, None), ("id", true, None)],
        );
        check_walks!(
            c,
            base,
            3,
            (
                desc(page_rows::grp),
                asc(page_rows::score).nulls_last(),
                asc(page_rows::name),
                desc(page_rows::id)
            ),
            |r: &Row| (r.grp, r.score, r.name.clone(), r.id),
            e,
            "4 columns"
        );
    }

    /// A key whose last column is not unique: ties are a KeyOrder error, never a lost row.
    #[test]
    fn a_non_unique_key_is_a_key_order_error() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(62);
        let rows: Vec<Row> = (0..20).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let err = page_rows::table
            .filter(page_rows::id.between(base, base + 999_999))
            .budget(Budget::rows(10))
            .keyset_page(&pager(), asc(page_rows::grp), |r: &Row| r.grp, PageRequest::First, &mut *conn)
            .unwrap_err();
        assert!(matches!(err, Error::KeyOrder { .. }), "{err:?}");
    }

    /// Every way a token can be bad is InvalidPageToken, with no statement sent.
    #[test]
    fn bad_tokens_are_refused_before_any_sql() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(63);
        let rows: Vec<Row> = (0..30).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let listing = |grp_max: i32| {
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .filter(page_rows::grp.le(grp_max))
                .budget(Budget::rows(4))
        };
        let key = (asc(page_rows::score).nulls_first(), asc(page_rows::id));
        let key_of = |r: &Row| (r.score, r.id);
        let first = listing(3)
            .keyset_page(&pager(), key, key_of, PageRequest::First, &mut *conn)
            .expect("first page");
        let token = first.next.clone().expect("a next page");
        // The real token works.
        listing(3)
            .keyset_page(&pager(), key, key_of, PageRequest::Token(&token), &mut *conn)
            .expect("the real token");

        let raw = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        let mut bad: Vec<(String, String)> = Vec::new();
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            bad.push((format!("bit {bit} flipped"), URL_SAFE_NO_PAD.encode(&flipped)));
        }
        bad.push(("truncated".into(), token[..token.len() - 3].to_owned()));
        bad.push(("empty".into(), String::new()));
        bad.push(("not base64".into(), "!!!!".into()));
        bad.push(("oversized".into(), "A".repeat(5_000)));
        let mut version = raw.clone();
        version[0] = 9;
        bad.push(("unknown version".into(), URL_SAFE_NO_PAD.encode(&version)));

        let ((), ledger) = diesel_budget::testing::record(&mut *conn, |conn| {
        for (what, t) in &bad {
            let err = listing(3)
                .keyset_page(&pager(), key, key_of, PageRequest::Token(t), conn)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidPageToken { .. }), "{what}: {err:?}");
            assert!(!err.to_string().contains(t.as_str()) || t.is_empty(), "{what}: token in message");
        }
        // Another filter value, another key (secret), another page size, another value type.
        let other = |name: &str, r: Result<Page<Row>, Error>| match r {
            Err(Error::InvalidPageToken { .. }) => {}
            other => panic!("{name}: {other:?}"),
        };
        other(
            "other filter value",
            listing(2).keyset_page(&pager(), key, key_of, PageRequest::Token(&token), conn),
        );
        let other_key = Pager::new(PageKeys::new(1, &[12u8; 32]).expect("key"));
        other(
            "other secret",
            listing(3).keyset_page(&other_key, key, key_of, PageRequest::Token(&token), conn),
        );
        other(
            "other page size",
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .filter(page_rows::grp.le(3))
                .budget(Budget::rows(5))
                .keyset_page(&pager(), key, key_of, PageRequest::Token(&token), conn),
        );
        other(
            "other value type",
            listing(3).keyset_page(
                &pager(),
                key,
                |r: &Row| (r.score.unwrap_or(-1), r.id),
                PageRequest::Token(&token),
                conn,
            ),
        );
        other(
            "other key direction",
            listing(3).keyset_page(
                &pager(),
                (asc(page_rows::score).nulls_last(), asc(page_rows::id)),
                key_of,
                PageRequest::Token(&token),
                conn,
            ),
        );
        let short_cap = pager().max_token_len(token.len() - 1);
        other(
            "over the size cap",
            listing(3).keyset_page(&short_cap, key, key_of, PageRequest::Token(&token), conn),
        );
        });
        assert!(ledger.statements().is_empty(), "a refused token sent SQL: {:?}", ledger.statements());

        // Rotation: a token signed by the previous key still verifies.
        let rotated = Pager::new(
            PageKeys::new(2, &[13u8; 32])
                .expect("key")
                .with_previous(1, &[11u8; 32])
                .expect("key"),
        );
        let p = listing(3)
            .keyset_page(&rotated, key, key_of, PageRequest::Token(&token), &mut *conn)
            .expect("previous key verifies");
        assert_eq!(p.items.len(), 4);
    }

    /// Rows inserted, deleted and re-sorted between page requests: keyset pages show every row
    /// present for the whole walk exactly once; offset pages over the same schedule skip or
    /// repeat one (so the harness can see an anomaly).
    #[test]
    fn concurrent_changes_keyset_exactly_once_offset_anomalies() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(64);
        let rows: Vec<Row> = (0..40).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let pager = pager();
        let listing = || {
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .order(page_rows::id)
                .budget(Budget::rows(5))
        };
        // Between requests k: delete an early row already seen, insert one before the cursor,
        // insert one far ahead (a new row, allowed either way), move a row's sort value.
        let mutate = |conn: &mut TestConn<C>, k: i32| {
            let gone = base + k * 5 - 3; // already seen
            diesel::delete(page_rows::table.filter(page_rows::id.eq(gone)))
                .execute(conn.unbudgeted())
                .expect("delete");
            diesel::insert_into(page_rows::table)
                .values(row(base, 100 + k))
                .execute(conn.unbudgeted())
                .expect("insert");
            diesel::update(page_rows::table.filter(page_rows::id.eq(base + k * 5 + 30)))
                .set(page_rows::score.eq(Some(99)))
                .execute(conn.unbudgeted())
                .expect("update");
        };
        // Keyset.
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut k = 1;
        loop {
            let p = listing()
                .keyset_page(&pager, asc(page_rows::id), |r: &Row| r.id, token.as_deref(), &mut *conn)
                .expect("keyset page");
            seen.extend(ids(&p.items));
            mutate(&mut conn, k);
            k += 1;
            match p.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let survivors: Vec<i32> = (0..40)
            .map(|i| base + i)
            .filter(|id| !(1..k).any(|j| base + j * 5 - 3 == *id))
            .collect();
        for id in &survivors {
            assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "keyset: row {id} in {seen:?}");
        }
        let mut sorted = seen.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "keyset repeated a row: {seen:?}");

        // Offset, same schedule on fresh rows (the test transaction keeps them apart).
        diesel::delete(page_rows::table.filter(page_rows::id.between(base, base + 999_999)))
            .execute(conn.unbudgeted())
            .expect("reset");
        insert(&mut conn, &rows);
        let mut seen = Vec::new();
        let mut number = 1;
        loop {
            let p: Page<Row> = listing()
                .offset_page(&pager, number, &mut *conn)
                .expect("offset page");
            seen.extend(ids(&p.items));
            mutate(&mut conn, number as i32);
            if p.next.is_none() {
                break;
            }
            number += 1;
        }
        let missed = survivors.iter().filter(|id| !seen.contains(id)).count();
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert!(
            missed > 0 || dedup.len() < seen.len(),
            "offset pages showed no anomaly: {seen:?}"
        );
    }

    /// Offset pages: past the end, a capped count, the depth limit pointing to keyset pages,
    /// and the page-size maximum.
    #[test]
    fn offset_pages_count_cap_depth_and_size() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(65);
        let rows: Vec<Row> = (0..23).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let pager = pager().max_depth(50).max_page_size(10);
        let listing = |size: u64| {
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .order(page_rows::id)
                .budget(Budget::rows(size))
        };
        let p: Page<Row> = listing(10).offset_page(&pager, 3, &mut *conn).expect("page 3");
        assert_eq!(ids(&p.items), (20..23).map(|i| base + i).collect::<Vec<_>>());
        assert_eq!((p.has_more, p.next.as_deref(), p.prev.as_deref()), (false, None, Some("2")));
        let p: Page<Row> = listing(10)
            .offset_page_with_total(&pager, 5, 1_000, &mut *conn)
            .expect("past the end");
        assert!(p.items.is_empty());
        assert_eq!(p.total, Some(Total { rows: 23, capped: false }));
        let p: Page<Row> = listing(10)
            .offset_page_with_total(&pager, 1, 15, &mut *conn)
            .expect("capped");
        assert_eq!(p.total, Some(Total { rows: 15, capped: true }));
        assert_eq!(p.items.len(), 10);
        assert!(p.has_more);
        let err = listing(10).offset_page::<_, Row>(&pager, 7, &mut *conn).unwrap_err();
        assert!(matches!(err, Error::PageTooDeep { offset: 60, max_depth: 50 }), "{err:?}");
        assert!(err.to_string().contains("keyset"), "{err}");
        let err = listing(11).offset_page::<_, Row>(&pager, 1, &mut *conn).unwrap_err();
        assert!(matches!(err, Error::PageSizeTooLarge { size: 11, max: 10 }), "{err:?}");
        let err = listing(11)
            .keyset_page(&pager, asc(page_rows::id), |r: &Row| r.id, PageRequest::First, &mut *conn)
            .unwrap_err();
        assert!(matches!(err, Error::PageSizeTooLarge { .. }), "{err:?}");
        // A query with a LIMIT of its own is refused by both kinds of page.
        let limited = || {
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .order(page_rows::id)
                .limit(3)
                .budget(Budget::rows(5))
        };
        let err = limited()
            .keyset_page(&pager, asc(page_rows::id), |r: &Row| r.id, PageRequest::First, &mut *conn)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { name: "query", .. }), "{err:?}");
        let err = limited().offset_page::<_, Row>(&pager, 1, &mut *conn).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { name: "query", .. }), "{err:?}");
        // A page serialises into a response.
        let p = listing(2)
            .keyset_page(&pager, asc(page_rows::id), |r: &Row| r.id, PageRequest::First, &mut *conn)
            .expect("page");
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["items"][0]["id"], base);
        assert_eq!(json["has_more"], true);
        assert!(json["next"].is_string() && json["prev"].is_null());
    }

    /// The seek predicate as each backend gets it: a row value where the directions agree and
    /// the backend plans it, else the conjunctive expansion, never the bare OR form.
    #[test]
    fn the_predicate_is_the_form_the_backend_plans() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        let (_db, mut conn, base) = ctx(66);
        let rows: Vec<Row> = (0..10).map(|i| row(base, i)).collect();
        insert(&mut conn, &rows);
        let pager = pager();
        let listing = || {
            page_rows::table
                .filter(page_rows::id.between(base, base + 999_999))
                .budget(Budget::rows(3))
        };
        let key = (asc(page_rows::grp), asc(page_rows::id));
        let first = listing()
            .keyset_page(&pager, key, |r: &Row| (r.grp, r.id), PageRequest::First, &mut *conn)
            .expect("first");
        let (second, ledger) = diesel_budget::testing::record(&mut *conn, |conn| {
            listing().keyset_page(
                &pager,
                key,
                |r: &Row| (r.grp, r.id),
                PageRequest::Token(first.next.as_deref().unwrap_or_default()),
                conn,
            )
        });
        second.expect("second page");
        let sql = &ledger.statements()[0].sql;
        let (row_value, expanded) = (
            "(page_rows.grp, page_rows.id) >",
            "page_rows.grp >= ",
        );
        let norm = sql.replace(['"', '`'], "");
        match C::KIND {
            BackendKind::Mysql => assert!(norm.contains(expanded), "{sql}"),
            _ => assert!(norm.contains(row_value), "{sql}"),
        }
        assert!(!norm.contains(" = "), "bare OR form (a = x): {sql}");
    }

    /// Random schedules of inserts, deletes and sort-value updates between page requests
    /// (proptest): on a key with a nullable column, every row present for the whole walk whose
    /// sort value never changed is seen exactly once.
    #[test]
    fn random_schedules_keyset_sees_stable_rows_exactly_once() {
        // Fixtures, reference ORDER BY reads and concurrent writes run unbudgeted on purpose.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("page test fixtures");
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let (_db, conn, base) = ctx(67);
        let cell = std::cell::RefCell::new(conn);
        let pager = pager();
        let key = (asc(page_rows::score).nulls_last(), asc(page_rows::id));
        let key_of = |r: &Row| (r.score, r.id);
        // Between pages: (0: delete, 1: insert, 2: update) of row index 0..60.
        let ops = proptest::collection::vec(
            proptest::collection::vec((0u8..3, 0i32..60, proptest::option::of(0i32..8)), 0..4),
            12,
        );
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&ops, |schedule| {
                let mut guard = cell.borrow_mut();
                let conn: &mut TestConn<C> = &mut guard;
                diesel::delete(page_rows::table.filter(page_rows::id.between(base, base + 999_999)))
                    .execute(conn.unbudgeted())
                    .expect("reset");
                let start: Vec<Row> = (0..30).map(|i| row(base, i)).collect();
                insert(conn, &start);
                let mut touched = std::collections::HashSet::new();
                let mut seen: Vec<i32> = Vec::new();
                let mut token: Option<String> = None;
                let mut done = false;
                for step in &schedule {
                    let p = page_rows::table
                        .filter(page_rows::id.between(base, base + 999_999))
                        .budget(Budget::rows(4))
                        .keyset_page(&pager, key, key_of, token.as_deref(), &mut **conn)
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    seen.extend(ids(&p.items));
                    for &(op, i, score) in step {
                        let id = base + i;
                        touched.insert(id);
                        let c = conn.unbudgeted();
                        match op {
                            0 => {
                                diesel::delete(page_rows::table.filter(page_rows::id.eq(id)))
                                    .execute(c)
                                    .expect("delete");
                            }
                            1 => {
                                let exists = page_rows::table
                                    .filter(page_rows::id.eq(id))
                                    .count()
                                    .get_result::<i64>(c)
                                    .expect("count");
                                if exists == 0 {
                                    let mut r = row(base, i);
                                    r.score = score;
                                    diesel::insert_into(page_rows::table)
                                        .values(r)
                                        .execute(c)
                                        .expect("insert");
                                }
                            }
                            _ => {
                                diesel::update(page_rows::table.filter(page_rows::id.eq(id)))
                                    .set(page_rows::score.eq(score))
                                    .execute(c)
                                    .expect("update");
                            }
                        }
                    }
                    match p.next {
                        Some(t) => token = Some(t),
                        None => {
                            done = true;
                            break;
                        }
                    }
                }
                if !done {
                    // The schedule ran out before the walk did: finish it without changes.
                    loop {
                        let p = page_rows::table
                            .filter(page_rows::id.between(base, base + 999_999))
                            .budget(Budget::rows(4))
                            .keyset_page(&pager, key, key_of, token.as_deref(), &mut **conn)
                            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                        seen.extend(ids(&p.items));
                        match p.next {
                            Some(t) => token = Some(t),
                            None => break,
                        }
                    }
                }
                for r in &start {
                    if touched.contains(&r.id) {
                        continue;
                    }
                    let n = seen.iter().filter(|s| **s == r.id).count();
                    prop_assert_eq!(n, 1, "row {} seen {} times in {:?}", r.id, n, seen);
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
