// The result cache (issue 11): hits share rows, committed writes invalidate (through
// `unbudgeted()`, plain Diesel, raw SQL text, transactions), rollbacks do not, the byte bound
// holds under eviction, concurrent misses run once, and a soak of writers and readers never
// reads older than the last committed write. Included once per backend by `tests/backends.rs`
// (`C` is the backend's connection type); test numbers 54..=59 and 87..=89.

mod cache {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::{Error, GetSize};

    use super::C;
    use crate::common::{expected, id_base, in_range, Backend, CommittedRows, TestDb};

    /// A private pool with `rows` committed rows from test `test_no`'s range, and a cache that
    /// follows the pool's writes.
    fn setup(test_no: i32, rows: i32, cache: Cache) -> (TestDb<C>, Cache, CommittedRows<C>) {
        let tdb = C::private_db(4);
        let base = id_base(test_no);
        let committed = CommittedRows::insert(&tdb.db, base, base + rows);
        cache.attach(&tdb.db);
        (tdb, cache, committed)
    }

    fn default_cache() -> Cache {
        Cache::builder().build().expect("default cache")
    }

    type Range = diesel::dsl::Order<
        diesel::dsl::Filter<items::table, diesel::dsl::Between<items::id, i32, i32>>,
        items::id,
    >;

    fn range(base: i32, n: i32) -> Range {
        items::table.filter(in_range(base, n)).order(items::id)
    }

    fn load(cache: &Cache, conn: &mut Conn<C>, base: i32, n: i32) -> Arc<[Item]> {
        cache
            .load(range(base, n).budget(Budget::rows(100)), conn)
            .unwrap_or_else(|e| panic!("cached load on {}: {e}", <C as diesel_budget::BudgetConnection>::KIND))
    }

    #[test]
    fn hits_share_rows_and_every_kind_of_committed_write_invalidates() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(54, 5, default_cache());
        let base = rows.from;
        let mut conn = tdb.conn();

        let first = load(&cache, &mut conn, base, 5);
        assert_eq!(&first[..], &expected(base, base + 5)[..]);
        let before = tdb.db.stats();
        let again = load(&cache, &mut conn, base, 5);
        assert!(Arc::ptr_eq(&first, &again), "a hit hands out the same rows");
        assert_eq!(tdb.db.stats().since(&before).statements, 0, "a hit runs nothing");
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.fills, s.entries), (1, 1, 1, 1));

        // The same SQL into another row type, or under another budget: other entries.
        let ids: Arc<[i32]> = cache
            .load(
                items::table
                    .filter(in_range(base, 5))
                    .order(items::id)
                    .select(items::id)
                    .budget(Budget::rows(100)),
                &mut *conn,
            )
            .expect("ids");
        assert_eq!(ids.len(), 5);
        let _ = cache
            .load::<_, _, _, Item>(range(base, 5).budget(Budget::rows(99)), &mut *conn)
            .expect("another budget");
        assert_eq!(cache.stats().entries, 3);

        // 1. Diesel's update through the escape hatch (autocommit).
        diesel::update(items::table.filter(items::id.eq(base)))
            .set(items::name.eq("one"))
            .execute(conn.unbudgeted())
            .expect("update");
        assert_eq!(cache.stats().entries, 0, "every entry read `items`");
        assert_eq!(load(&cache, &mut conn, base, 5)[0].name, "one");

        // 2. Raw SQL text on a pooled connection.
        conn.unbudgeted()
            .batch_execute(&format!("UPDATE items SET name = 'two' WHERE id = {base}"))
            .expect("raw update");
        assert_eq!(load(&cache, &mut conn, base, 5)[0].name, "two");

        // 3. Plain Diesel in a committed transaction, on another connection of the pool.
        let mut other = tdb.conn();
        other
            .transaction(|c| {
                diesel::update(items::table.filter(items::id.eq(base)))
                    .set(items::name.eq("three"))
                    .execute(c.unbudgeted())
                    .map_err(Error::from)
            })
            .expect("committed transaction");
        assert_eq!(load(&cache, &mut conn, base, 5)[0].name, "three");

        // 4. A delete, and `invalidate` for writes the cache cannot see.
        diesel::delete(items::table.filter(items::id.eq(base + 4)))
            .execute(other.unbudgeted())
            .expect("delete");
        assert_eq!(load(&cache, &mut conn, base, 5).len(), 4);
        let fills = cache.stats().fills;
        cache.invalidate("ITEMS");
        load(&cache, &mut conn, base, 5);
        assert_eq!(cache.stats().fills, fills + 1, "invalidate drops the entry");

        // A write to another table leaves `items` entries alone.
        let hits = cache.stats().hits;
        cache.invalidate("other_table");
        load(&cache, &mut conn, base, 5);
        assert_eq!(cache.stats().hits, hits + 1);
    }

    #[test]
    fn rollback_leaves_the_cache_as_it_was_and_commit_invalidates_only_after_it() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(55, 3, default_cache());
        let base = rows.from;
        let mut reader = tdb.conn();
        let mut writer = tdb.conn();
        let original = load(&cache, &mut reader, base, 3);

        let result: Result<(), Error> = writer.transaction(|c| {
            diesel::update(items::table.filter(items::id.eq(base)))
                .set(items::name.eq("rolled back"))
                .execute(c.unbudgeted())
                .map_err(Error::from)?;
            // In the transaction that wrote: the cache is bypassed, its own write is seen.
            let bypassed = cache.stats().bypassed;
            let own = load(&cache, c, base, 3);
            assert_eq!(own[0].name, "rolled back");
            assert_eq!(cache.stats().bypassed, bypassed + 1);
            Err(Error::InvalidArgument {
                name: "test",
                reason: "roll back".into(),
            })
        });
        assert!(result.is_err());
        let s = cache.stats();
        assert_eq!((s.invalidations, s.entries), (0, 1), "a rollback invalidates nothing");
        let after = load(&cache, &mut reader, base, 3);
        assert!(Arc::ptr_eq(&original, &after), "still the entry from before");

        // A committed transaction: not before COMMIT, at COMMIT.
        writer
            .transaction(|c| {
                diesel::update(items::table.filter(items::id.eq(base)))
                    .set(items::name.eq("committed"))
                    .execute(c.unbudgeted())
                    .map_err(Error::from)?;
                assert_eq!(cache.stats().invalidations, 0, "not before the commit");
                Ok::<_, Error>(())
            })
            .expect("commit");
        assert_eq!(cache.stats().invalidations, 1);
        assert_eq!(load(&cache, &mut reader, base, 3)[0].name, "committed");

        // A nested savepoint rolled back inside a committed transaction: conservative, the
        // outer commit invalidates.
        writer
            .transaction(|c| {
                let _ = c.transaction(|c| {
                    diesel::update(items::table.filter(items::id.eq(base)))
                        .set(items::name.eq("inner"))
                        .execute(c.unbudgeted())
                        .map_err(Error::from)?;
                    Err::<(), _>(Error::InvalidArgument {
                        name: "test",
                        reason: "roll back the savepoint".into(),
                    })
                });
                Ok::<_, Error>(())
            })
            .expect("outer commit");
        assert_eq!(load(&cache, &mut reader, base, 3)[0].name, "committed");
    }

    #[test]
    fn never_more_bytes_than_the_bound_under_eviction() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let bound = 6_000;
        let cache = Cache::builder()
            .max_bytes(bound)
            .max_entry_bytes(2_000)
            .build()
            .expect("cache");
        let (tdb, cache, rows) = setup(56, 40, cache);
        let base = rows.from;
        let mut conn = tdb.conn();
        for i in 0..40 {
            let one = load(&cache, &mut conn, base + i, 1);
            assert_eq!(one.len(), 1);
            let s = cache.stats();
            assert!(s.bytes <= bound, "{} bytes held over a bound of {bound}", s.bytes);
            assert!(
                s.bytes >= s.entries * one[0].get_size() as u64,
                "the accounting counts the rows: {s:?}"
            );
        }
        let s = cache.stats();
        assert!(s.evictions > 0 && s.entries < 40, "{s:?}");
        assert_eq!(s.fills, 40);
        // The most recent entry is still there; the first was evicted.
        let hits = s.hits;
        load(&cache, &mut conn, base + 39, 1);
        load(&cache, &mut conn, base, 1);
        assert_eq!(cache.stats().hits, hits + 1);

        // Over the per-entry limit: served, not stored.
        let big = load(&cache, &mut conn, base, 20);
        assert_eq!(big.len(), 20);
        let s = cache.stats();
        assert_eq!(s.too_large, 1);
        assert!(s.bytes <= bound);
        load(&cache, &mut conn, base, 20);
        assert_eq!(cache.stats().too_large, 2, "never stored, so loaded again");

        // A budget overflow is the usual error, and nothing is stored.
        let err = cache
            .load::<_, _, _, Item>(range(base, 40).budget(Budget::rows(10)), &mut *conn)
            .unwrap_err();
        assert!(err.is_budget_exceeded(), "{err}");
    }

    #[test]
    fn concurrent_misses_of_one_key_run_the_query_once() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(58, 100, default_cache());
        let base = rows.from;
        let (threads, rounds) = (4, 30);
        let before = tdb.db.stats();
        for round in 0..rounds {
            // A fresh miss each round.
            cache.invalidate("items");
            let barrier = Arc::new(Barrier::new(threads));
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let (db, cache, barrier) = (&tdb.db, &cache, Arc::clone(&barrier));
                    s.spawn(move || {
                        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
                        let mut conn = db.get().expect("checkout");
                        barrier.wait();
                        assert_eq!(load(cache, &mut conn, base, 100).len(), 100);
                    });
                }
            });
            let s = cache.stats();
            assert_eq!(s.fills, round + 1, "round {round}: {s:?}");
            assert_eq!(s.misses, round + 1, "round {round}: {s:?}");
        }
        let s = cache.stats();
        assert_eq!(s.hits + s.coalesced, (threads as u64 - 1) * rounds, "{s:?}");
        assert_eq!(tdb.db.stats().since(&before).budgeted, rounds);
    }

    #[test]
    fn ttl_and_reads_on_connections_the_cache_does_not_follow() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(59, 2, default_cache());
        let base = rows.from;
        let mut conn = tdb.conn();
        let q = || range(base, 2).budget(Budget::rows(10));
        q().cached(&cache)
            .ttl(Duration::from_millis(50))
            .load::<Item, _>(&mut *conn)
            .expect("fill");
        q().cached(&cache).load::<Item, _>(&mut *conn).expect("hit");
        assert_eq!(cache.stats().hits, 1);
        std::thread::sleep(Duration::from_millis(80));
        q().cached(&cache).load::<Item, _>(&mut *conn).expect("expired");
        assert_eq!(cache.stats().fills, 2, "an expired entry is a miss");

        // A pool the cache does not follow: bypassed, never stored.
        let unfollowed = C::private_db(1);
        let mut other = unfollowed.conn();
        let _ = cache.load::<_, _, _, Item>(q(), &mut *other);
        assert_eq!(cache.stats().bypassed, 1);
    }

    #[test]
    fn in_a_transaction_hits_are_served_but_nothing_is_stored() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(87, 4, default_cache());
        let base = rows.from;
        let mut conn = tdb.conn();
        load(&cache, &mut conn, base, 2);
        conn.transaction(|c| {
            load(&cache, c, base, 2); // a hit: committed data
            load(&cache, c, base, 4); // a miss: loaded, not stored
            load(&cache, c, base, 4);
            Ok::<_, Error>(())
        })
        .expect("read-only transaction");
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.fills, s.entries), (1, 3, 1, 1), "{s:?}");
    }

    #[test]
    fn raw_begin_and_commit_text_defer_the_invalidation_to_the_commit() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(88, 2, default_cache());
        let base = rows.from;
        let mut reader = tdb.conn();
        let mut writer = tdb.conn();
        load(&cache, &mut reader, base, 2);
        writer.unbudgeted().batch_execute("BEGIN").expect("BEGIN");
        writer
            .unbudgeted()
            .batch_execute(&format!("UPDATE items SET name = 'raw' WHERE id = {base}"))
            .expect("UPDATE");
        assert_eq!(cache.stats().invalidations, 0, "not before COMMIT");
        // The uncommitted write is invisible to others: the cached rows are still right.
        assert_eq!(load(&cache, &mut reader, base, 2)[0].name, Item::generate(base).name);
        writer.unbudgeted().batch_execute("COMMIT").expect("COMMIT");
        assert_eq!(cache.stats().invalidations, 1);
        assert_eq!(load(&cache, &mut reader, base, 2)[0].name, "raw");
    }

    /// A writer bumps a version in committed writes (autocommit and transactions, alternately)
    /// for as long as the readers read; readers note the last committed version before each
    /// read and must never read an older one. At least 10^5 operations: 3 x 33,000 reads and
    /// the writes made meanwhile (at least 1,000).
    #[test]
    fn soak_no_read_is_older_than_the_last_committed_write() {
        // Writes through the escape hatch are what these tests invalidate on: allowed by name.
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let (tdb, cache, rows) = setup(57, 1, default_cache());
        let started = std::time::Instant::now();
        let id = rows.from;
        let committed = Arc::new(AtomicI64::new(Item::generate(id).created_at));
        let done = Arc::new(AtomicBool::new(false));
        let readers_done = Arc::new(AtomicI64::new(0));
        let (min_writes, readers, reads) = (1_000, 3, 33_000);
        let writes = std::thread::scope(|s| {
            let writer = {
                let (db, committed, done) = (&tdb.db, Arc::clone(&committed), Arc::clone(&done));
                let readers_done = Arc::clone(&readers_done);
                s.spawn(move || {
                    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
                    let mut conn = db.get().expect("writer checkout");
                    let start = committed.load(Ordering::SeqCst);
                    let mut v = 0;
                    while v < min_writes || readers_done.load(Ordering::SeqCst) < readers {
                        v += 1;
                        let version = start + v;
                        let update = diesel::update(items::table.filter(items::id.eq(id)))
                            .set(items::created_at.eq(version));
                        if v % 2 == 0 {
                            update.execute(conn.unbudgeted()).expect("autocommit write");
                        } else {
                            conn.transaction(|c| {
                                update
                                    .execute(c.unbudgeted())
                                    .map_err(Error::from)
                            })
                            .expect("transaction write");
                        }
                        committed.store(version, Ordering::SeqCst);
                        // A breath between writes: SQLite's readers (rollback journal) would
                        // otherwise wait out their busy timeout behind back-to-back writes.
                        std::thread::sleep(Duration::from_micros(300));
                    }
                    done.store(true, Ordering::SeqCst);
                    v
                })
            };
            for _ in 0..readers {
                let (db, cache, committed) = (&tdb.db, &cache, Arc::clone(&committed));
                let readers_done = Arc::clone(&readers_done);
                s.spawn(move || {
                    let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
                    // Counted however the reader ends, so the writer stops even if it panics.
                    struct Finished(Arc<AtomicI64>);
                    impl Drop for Finished {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _finished = Finished(readers_done);
                    let mut conn = db.get().expect("reader checkout");
                    for _ in 0..reads {
                        let floor = committed.load(Ordering::SeqCst);
                        let row = cache
                            .load(range(id, 1).budget(Budget::rows(100)), &mut conn)
                            .unwrap_or_else(|e| panic!("soak read: {e:?}"));
                        let row: Arc<[Item]> = row;
                        assert!(
                            row[0].created_at >= floor,
                            "stale read: version {} after {floor} was committed",
                            row[0].created_at
                        );
                    }
                });
            }
            writer.join().expect("writer")
        });
        assert!(done.load(Ordering::SeqCst));
        let s = cache.stats();
        assert!(s.hits > 0 && s.fills > 0, "the soak exercised the cache: {s:?}");
        eprintln!(
            "{} soak: {} operations in {:?}: {s:?}",
            <C as diesel_budget::BudgetConnection>::KIND,
            writes + readers * i64::from(reads),
            started.elapsed()
        );
    }
}
