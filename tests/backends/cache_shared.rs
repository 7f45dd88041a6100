// The shared cache tiers (issue 11) against the real local Redis (127.0.0.1:6379) and
// Memcached (127.0.0.1:11211), and against throwaway servers this file starts and stops on
// ports of its own: two caches on two pools (two processes) share hits and invalidations;
// entries not written by us (forged, another format version, another row identity, moved from
// another key) are misses; entries over the item limit are not stored; every key expires; a
// server stopped or frozen mid-run costs no error and serves nothing stale once it is back.
// Included once per backend by `tests/backends.rs` (`C` is the backend's connection type);
// test numbers 89 (sub-ranges of 10,000 ids) and 98.

#[cfg(all(feature = "redis", feature = "memcached"))]
mod cache_shared {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use diesel::prelude::*;
    use diesel_budget::cache::tier::memcached::MemcachedTier;
    use diesel_budget::cache::tier::redis::RedisTier;
    use diesel_budget::cache::tier::SharedTier;
    use diesel_budget::cache::SharedCache;
    use diesel_budget::demo::{items, Item};
    use diesel_budget::prelude::*;
    use diesel_budget::BudgetConnection;

    use super::C;
    use crate::common::{another_pool, expected, id_base, in_range, Backend, CommittedRows};

    const KEY: [u8; 32] = [42; 32];
    const REDIS_URL: &str = "redis://127.0.0.1:6379/";
    const MEMCACHED: &str = "127.0.0.1:11211";

    /// Ports of this backend's throwaway servers (the three backend modules run in parallel).
    fn own_port(base: u16) -> u16 {
        base + match C::KIND {
            diesel_budget::BackendKind::Sqlite => 1,
            diesel_budget::BackendKind::Postgres => 2,
            _ => 3,
        }
    }

    fn namespace(test: &str, tier: &str) -> String {
        format!("dbt-{}-{}-{test}-{tier}", std::process::id(), C::KIND)
    }

    fn redis_tier(url: &str) -> RedisTier {
        RedisTier::new(url).expect("redis url")
    }

    fn memcached_tier(addr: &str) -> MemcachedTier {
        MemcachedTier::new(addr).expect("memcached addr")
    }

    fn cache<T: SharedTier + 'static>(tier: T, ns: &str) -> SharedCache {
        SharedCache::builder(tier, &KEY)
            .namespace(ns)
            .ttl(Duration::from_secs(300))
            .retry_after(Duration::from_millis(100))
            .build()
            .expect("shared cache")
    }

    type Range = diesel::dsl::Order<
        diesel::dsl::Filter<items::table, diesel::dsl::Between<items::id, i32, i32>>,
        items::id,
    >;

    fn range(base: i32, n: i32) -> Range {
        items::table.filter(in_range(base, n)).order(items::id)
    }

    fn load(cache: &SharedCache, conn: &mut Conn<C>, base: i32, n: i32) -> Vec<Item> {
        cache
            .load(range(base, n).budget(Budget::rows(1000)), conn)
            .unwrap_or_else(|e| panic!("shared load on {}: {e}", C::KIND))
    }

    fn rename(conn: &mut Conn<C>, id: i32, name: &str) {
        diesel::update(items::table.filter(items::id.eq(id)))
            .set(items::name.eq(name))
            .execute(conn.unbudgeted())
            .expect("update");
    }

    /// Two caches on one namespace, each attached to its own pool: one process each.
    fn two_processes<T: SharedTier + 'static>(make: impl Fn() -> T, tier: &str, base: i32) {
        let tdb = C::private_db(2);
        let rows = CommittedRows::insert(&tdb.db, base, base + 5);
        let other_db = another_pool(&tdb, 2);
        let ns = namespace("two", tier);
        let (a, b) = (cache(make(), &ns), cache(make(), &ns));
        a.attach(&tdb.db);
        b.attach(&other_db);
        let mut ca = tdb.db.get().expect("checkout a");
        let mut cb = other_db.get().expect("checkout b");
        let from = rows.from;

        assert_eq!(load(&a, &mut ca, from, 5), expected(from, from + 5));
        let before = other_db.stats();
        assert_eq!(load(&b, &mut cb, from, 5), expected(from, from + 5));
        assert_eq!(
            other_db.stats().since(&before).statements,
            0,
            "{tier}: b's read is a hit, filled by a"
        );
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.misses, sa.fills, sb.hits), (1, 1, 1), "{tier}: {sa:?} {sb:?}");

        // A write on b's pool: a (which does not follow that pool) sees it through the tier.
        rename(&mut cb, from, "seen by a");
        assert_eq!(load(&a, &mut ca, from, 5)[0].name, "seen by a", "{tier}");
        assert_eq!(load(&b, &mut cb, from, 5)[0].name, "seen by a", "{tier}");
        // ... and the other way round, inside a committed transaction.
        ca.transaction(|c| {
            rename(c, from + 1, "seen by b");
            Ok::<_, diesel_budget::Error>(())
        })
        .expect("commit");
        assert_eq!(load(&b, &mut cb, from, 5)[1].name, "seen by b", "{tier}");
        let hits = a.stats().hits;
        assert_eq!(load(&a, &mut ca, from, 5)[1].name, "seen by b", "{tier}");
        assert_eq!(a.stats().hits, hits + 1, "{tier}: b's fill serves a");
        // `invalidate` reaches the other process too.
        let misses = b.stats().misses;
        a.invalidate("items");
        load(&b, &mut cb, from, 5);
        assert_eq!(b.stats().misses, misses + 1, "{tier}");
        drop(rows);
    }

    #[test]
    fn two_processes_share_hits_and_invalidations_on_redis_and_memcached() {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        two_processes(|| redis_tier(REDIS_URL), "redis", id_base(89));
        two_processes(|| memcached_tier(MEMCACHED), "memcached", id_base(89) + 10_000);
    }

    /// Entries put straight into the server: none is served.
    fn not_ours<T: SharedTier + 'static>(make: impl Fn() -> T, tier: &str, base: i32) {
        let tdb = C::private_db(2);
        let rows = CommittedRows::insert(&tdb.db, base, base + 3);
        let from = rows.from;
        let ns = namespace("forged", tier);
        let cache = cache(make(), &ns);
        cache.attach(&tdb.db);
        let raw = make();
        let mut conn = tdb.db.get().expect("checkout");
        let q = || range(from, 3).budget(Budget::rows(1000));
        let key = cache.entry_key::<_, _, _, Item>(&q(), &mut conn);
        let truth = expected(from, from + 3);

        assert_eq!(load(&cache, &mut conn, from, 3), truth);
        let good = raw.get_many(&[&key]).expect("get")[0]
            .clone()
            .expect("the fill is in the server");
        assert_eq!(load(&cache, &mut conn, from, 3), truth);
        assert_eq!(cache.stats().hits, 1, "{tier}: the genuine entry is a hit");

        // A forged entry: our format, rows of the attacker's choosing, a tag made without the
        // key (here: the genuine tag, over other rows).
        let mut forged = good.clone();
        let at = forged.len() - 40;
        forged[at] ^= 0x01;
        // Another format version (0 and the next one), otherwise intact.
        let mut old_format = good.clone();
        old_format[3] = 0;
        let mut next_format = good.clone();
        next_format[3] = 2;
        // Truncated, empty, junk.
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("forged rows", forged),
            ("format 0", old_format),
            ("format 2", next_format),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("junk", b"not an entry at all".to_vec()),
        ];
        for (what, value) in cases {
            assert!(raw.set(&key, &value, Duration::from_secs(60)).expect("set"));
            let rejected = cache.stats().rejected;
            assert_eq!(load(&cache, &mut conn, from, 3), truth, "{tier}: {what}");
            assert_eq!(cache.stats().rejected, rejected + 1, "{tier}: {what} is refused");
        }

        // A genuine entry of another row identity (the next version of the row type): the
        // same key, a valid tag under the same key, refused.
        let next_version = SharedCache::builder(make(), &KEY)
            .namespace(&ns)
            .row_version("v2")
            .build()
            .expect("cache v2");
        next_version.attach(&tdb.db);
        load(&next_version, &mut conn, from, 3); // refills the key as v2
        let v2 = raw.get_many(&[&key]).expect("get")[0].clone().expect("v2 entry");
        assert_ne!(v2, good);
        let rejected = cache.stats().rejected;
        assert_eq!(load(&cache, &mut conn, from, 3), truth, "{tier}: v2 entry");
        assert_eq!(cache.stats().rejected, rejected + 1, "{tier}: another row identity");

        // A genuine entry moved to another query's key (the tag covers the key).
        let other_key = cache.entry_key::<_, _, _, Item>(&range(from, 2).budget(Budget::rows(1000)), &mut conn);
        assert!(raw.set(&other_key, &good, Duration::from_secs(60)).expect("set"));
        let rejected = cache.stats().rejected;
        assert_eq!(load(&cache, &mut conn, from, 2), expected(from, from + 2), "{tier}: moved");
        assert_eq!(cache.stats().rejected, rejected + 1, "{tier}: moved entry refused");

        // The same key read into another row type: another key altogether, and if an entry
        // of `Item` rows is put there it is refused.
        let ids_query = || {
            items::table
                .filter(in_range(from, 3))
                .order(items::id)
                .select((items::id, items::category, items::name, items::created_at))
                .budget(Budget::rows(1000))
        };
        let tuple_key =
            cache.entry_key::<_, _, _, (i32, i32, String, i64)>(&ids_query(), &mut conn);
        assert!(raw.set(&tuple_key, &good, Duration::from_secs(60)).expect("set"));
        let rejected = cache.stats().rejected;
        let tuples: Vec<(i32, i32, String, i64)> =
            cache.load(ids_query(), &mut conn).expect("tuples");
        assert_eq!(tuples.len(), 3);
        assert_eq!(cache.stats().rejected, rejected + 1, "{tier}: wrong row type refused");
        drop(rows);
    }

    #[test]
    fn forged_stale_format_and_wrong_row_type_entries_are_misses() {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        not_ours(|| redis_tier(REDIS_URL), "redis", id_base(89) + 20_000);
        not_ours(|| memcached_tier(MEMCACHED), "memcached", id_base(89) + 30_000);
    }

    /// Memcached's remaining TTL of `key` (`mg <key> t`): `None` when missing, `-1` for none.
    fn memcached_ttl(key: &str) -> Option<i64> {
        let mut s = TcpStream::connect(MEMCACHED).expect("memcached");
        s.write_all(format!("mg {key} t\r\n").as_bytes()).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        let line = line.trim_end();
        if line == "EN" {
            return None;
        }
        line.split(' ')
            .find_map(|f| f.strip_prefix('t'))
            .and_then(|t| t.parse().ok())
    }

    #[test]
    fn entries_over_the_item_limit_are_not_stored_and_every_key_expires() {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let base = id_base(89) + 40_000;
        let tdb = C::private_db(2);
        let rows = CommittedRows::insert(&tdb.db, base, base + 200);
        let from = rows.from;
        let mut conn = tdb.db.get().expect("checkout");

        // The server's own limit: Memcached refuses a value over its 1 MiB item size, the
        // tier reports "not stored" and the connection stays usable.
        let told_more = memcached_tier(MEMCACHED).item_limit(64 << 20);
        let ns = namespace("limit", "memcached");
        let big = vec![7u8; 2 << 20];
        assert!(!told_more.set(&format!("{ns}:big"), &big, Duration::from_secs(60)).expect("set"));
        assert_eq!(told_more.get_many(&[&format!("{ns}:big")]).expect("get"), vec![None]);

        for tier in ["redis", "memcached"] {
            let ns = namespace("limit", tier);
            // A limit of 4 KiB: 200 rows (~8 KiB) are served and not stored; 20 rows are.
            let build = |limit: usize| -> SharedCache {
                let b = match tier {
                    "redis" => SharedCache::builder(redis_tier(REDIS_URL).max_value_bytes(limit), &KEY),
                    _ => SharedCache::builder(memcached_tier(MEMCACHED).item_limit(limit + 512), &KEY),
                };
                b.namespace(&ns).build().expect("cache")
            };
            let cache = build(4096);
            cache.attach(&tdb.db);
            assert_eq!(load(&cache, &mut conn, from, 200).len(), 200);
            assert_eq!(load(&cache, &mut conn, from, 200).len(), 200);
            let s = cache.stats();
            assert_eq!((s.too_large, s.fills, s.hits), (2, 0, 0), "{tier}: {s:?}");
            let key = cache.entry_key::<_, _, _, Item>(&range(from, 200).budget(Budget::rows(1000)), &mut conn);
            let raw = redis_tier(REDIS_URL);
            if tier == "redis" {
                assert_eq!(raw.get_many(&[&key]).expect("get"), vec![None]);
            } else {
                assert_eq!(memcached_ttl(&key), None, "not stored");
            }
            load(&cache, &mut conn, from, 20);
            load(&cache, &mut conn, from, 20);
            assert_eq!(cache.stats().hits, 1, "{tier}: small entries are stored");
            // Counters too: a write bumps them.
            rename(&mut conn, from, "bumped");
            assert_eq!(load(&cache, &mut conn, from, 20)[0].name, "bumped");

            // Every key has an expiry.
            if tier == "redis" {
                let client = redis::Client::open(REDIS_URL).expect("client");
                let mut c = client.get_connection().expect("redis");
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{ns}:*"))
                    .query(&mut c)
                    .expect("KEYS");
                assert!(keys.len() >= 3, "entries and counters: {keys:?}");
                for k in &keys {
                    let pttl: i64 = redis::cmd("PTTL").arg(k).query(&mut c).expect("PTTL");
                    assert!(pttl > 0, "{k} has no expiry (PTTL {pttl})");
                }
            } else {
                let small = cache.entry_key::<_, _, _, Item>(&range(from, 20).budget(Budget::rows(1000)), &mut conn);
                for k in [small, format!("{ns}:g:epoch"), format!("{ns}:g:any"), format!("{ns}:t:items")] {
                    let ttl = memcached_ttl(&k);
                    assert!(matches!(ttl, Some(t) if t > 0), "{k}: ttl {ttl:?}");
                }
            }
        }
        drop(rows);
    }

    /// A throwaway server of our own: started, frozen, stopped, restarted.
    struct Own {
        args: Vec<String>,
        program: &'static str,
        port: u16,
        child: Option<Child>,
    }

    impl Own {
        fn redis(port: u16) -> Own {
            let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
            Own::start("redis-server", args.iter().map(|s| s.to_string()).collect(), port)
        }

        fn memcached(port: u16) -> Own {
            let args = ["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0", "-u", "nobody"];
            Own::start("memcached", args.iter().map(|s| s.to_string()).collect(), port)
        }

        fn start(program: &'static str, args: Vec<String>, port: u16) -> Own {
            let mut own = Own { args, program, port, child: None };
            own.up();
            own
        }

        fn up(&mut self) {
            let child = Command::new(self.program)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.program));
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "{} did not listen on {}", self.program, self.port);
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn signal(&self, sig: i32) {
            let pid = self.child.as_ref().expect("running").id();
            // SAFETY: a signal to our own child process.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::kill(pid as i32, sig) };
            assert_eq!(rc, 0, "kill({pid}, {sig})");
        }

        fn down(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for Own {
        fn drop(&mut self) {
            if let Some(c) = &self.child {
                // A frozen server cannot die of SIGKILL's cleanup otherwise: wake it first.
                // SAFETY: a signal to our own child process.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGCONT);
                }
            }
            self.down();
        }
    }

    fn outage<T: SharedTier + 'static>(
        make: impl Fn() -> T,
        server: &mut Own,
        tier: &str,
        base: i32,
    ) {
        let tdb = C::private_db(2);
        let rows = CommittedRows::insert(&tdb.db, base, base + 3);
        let other_db = another_pool(&tdb, 2);
        let from = rows.from;
        let ns = namespace("outage", tier);
        let (a, b) = (cache(make(), &ns), cache(make(), &ns));
        a.attach(&tdb.db);
        b.attach(&other_db);
        let mut ca = tdb.db.get().expect("checkout a");
        let mut cb = other_db.get().expect("checkout b");
        let bounded = |what: &str, started: Instant| {
            assert!(started.elapsed() < Duration::from_secs(2), "{tier}: {what} took {:?}", started.elapsed());
        };

        load(&a, &mut ca, from, 3);
        load(&b, &mut cb, from, 3);
        assert_eq!(b.stats().hits, 1, "{tier}: shared before the outage");

        // 1. Frozen (slow): reads time out to the database. `a` finds out first, so the
        // invalidation of its write is never sent: the server keeps the old entry and
        // counters, and `b` never saw the outage.
        server.signal(libc::SIGSTOP);
        let t = Instant::now();
        assert_eq!(load(&a, &mut ca, from, 3)[0].name, Item::generate(from).name);
        bounded("a read with the server frozen", t);
        let t = Instant::now();
        rename(&mut ca, from, "written while frozen");
        bounded("a write with the server frozen", t);
        assert_eq!(load(&a, &mut ca, from, 3)[0].name, "written while frozen", "{tier}");
        assert!(a.stats().tier_errors > 0, "{tier}");
        // Back, with its data (the old entry and counters) intact: `a` reads first, and its
        // recovery publishes what it missed (an epoch bump); `b` then reads the new rows.
        server.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(load(&a, &mut ca, from, 3)[0].name, "written while frozen", "{tier}: a after");
        assert_eq!(a.stats().recoveries, 1, "{tier}");
        assert_eq!(b.stats().tier_errors, 0, "{tier}: b saw no outage");
        for _ in 0..3 {
            assert_eq!(load(&b, &mut cb, from, 3)[0].name, "written while frozen", "{tier}: b after");
        }
        let hits = b.stats().hits;
        load(&b, &mut cb, from, 3);
        assert_eq!(b.stats().hits, hits + 1, "{tier}: shared again");

        // 1b. Frozen again, and this time `b` sees it: its own recovery bumps the epoch.
        server.signal(libc::SIGSTOP);
        assert_eq!(load(&b, &mut cb, from, 3)[0].name, "written while frozen");
        rename(&mut cb, from, "written while frozen again");
        server.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(load(&b, &mut cb, from, 3)[0].name, "written while frozen again", "{tier}");
        assert_eq!(load(&a, &mut ca, from, 3)[0].name, "written while frozen again", "{tier}");
        assert!(b.stats().recoveries >= 1, "{tier}");

        // 2. Stopped: the same, with no server at all, then a fresh (empty) one.
        server.down();
        let t = Instant::now();
        assert_eq!(load(&b, &mut cb, from, 3)[0].name, "written while frozen again");
        bounded("a read with the server stopped", t);
        rename(&mut cb, from, "written while stopped");
        assert_eq!(load(&a, &mut ca, from, 3)[0].name, "written while stopped", "{tier}");
        server.up();
        std::thread::sleep(Duration::from_millis(150));
        for _ in 0..3 {
            assert_eq!(load(&a, &mut ca, from, 3)[0].name, "written while stopped", "{tier}");
            assert_eq!(load(&b, &mut cb, from, 3)[0].name, "written while stopped", "{tier}");
        }
        let hits = a.stats().hits + b.stats().hits;
        load(&a, &mut ca, from, 3);
        load(&b, &mut cb, from, 3);
        assert_eq!(a.stats().hits + b.stats().hits, hits + 2, "{tier}: hits again");
        drop(rows);
    }

    #[test]
    fn server_stopped_or_frozen_mid_run_reads_keep_working_and_nothing_stale_after() {
        let _allowed = diesel_budget::testing::allow_unbudgeted_scope("cache test writes");
        let timeout = Duration::from_millis(100);
        let redis_port = own_port(6390);
        let mut redis = Own::redis(redis_port);
        let url = format!("redis://127.0.0.1:{redis_port}/");
        outage(|| redis_tier(&url).timeout(timeout), &mut redis, "redis", id_base(98));
        let mc_port = own_port(11290);
        let mut memcached = Own::memcached(mc_port);
        let addr = format!("127.0.0.1:{mc_port}");
        outage(
            || memcached_tier(&addr).timeout(timeout),
            &mut memcached,
            "memcached",
            id_base(98) + 10_000,
        );
    }
}
