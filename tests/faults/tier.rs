// Included by tests/faults.rs into one module per backend (features `redis` and `memcached`):
// a shared cache tier server stopped mid-run.

/// The shared cache tier faults: one per tier.
fn tier_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("tier-redis", |e, r| tier_stopped(e, r, tier_server::Kind::Redis)),
        ("tier-memcached", |e, r| {
            tier_stopped(e, r, tier_server::Kind::Memcached)
        }),
    ]
}

/// Rows the tier case reads and rewrites, and the windows its readers read.
const TIER_ROWS: i32 = 20;
const TIER_WINDOW: i32 = 5;
/// The cache's `retry_after` in the tier case: the writer's pause after a fault outlasts it.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The version a row's name carries (`v<n>`).
fn tier_version(name: &str) -> Option<u64> {
    name.strip_prefix('v').and_then(|v| v.parse().ok())
}

/// A `SharedCache` over the suite's pool, on a throwaway tier server of the suite's own: 3
/// reader threads read windows of the rows through it while a writer thread rewrites rows
/// (each write a new version, kept in a model once committed), and the server is frozen
/// (SIGSTOP), killed or restarted at random times for `FAULT_TIER_SECS` (default 4) seconds.
/// The writer writes through each outage once the cache has seen it (so those invalidations
/// are lost), and pauses after the server is back for longer than the cache's `retry_after`
/// (a later write would bump the table's generation and hide the lost invalidations: the
/// read-mostly stretch after an outage is where a stale entry would be served).
/// Every read must succeed (the tier never makes a read fail) and must not be stale: no row
/// older than the last write of it committed before the read began.
fn tier_stopped(env: &Env<C>, rng: &mut Rng, kind: tier_server::Kind) -> Row {
    use diesel_budget::cache::tier::memcached::MemcachedTier;
    use diesel_budget::cache::tier::redis::RedisTier;
    use diesel_budget::cache::SharedCache;
    use std::sync::atomic::AtomicU64;

    let mut row = Row::new::<C>(match kind {
        tier_server::Kind::Redis => {
            "shared cache tier stopped mid-run (frozen, killed, restarted), redis"
        }
        tier_server::Kind::Memcached => {
            "shared cache tier stopped mid-run (frozen, killed, restarted), memcached"
        }
    });
    let mut server = match tier_server::TierServer::start(kind) {
        Ok(s) => s,
        Err(e) => {
            row.other(e);
            return row;
        }
    };
    let timeout = Duration::from_millis(50);
    let key = [29u8; 32];
    let builder = match kind {
        tier_server::Kind::Redis => SharedCache::builder(
            RedisTier::new(&server.address())
                .expect("redis url")
                .timeout(timeout),
            &key,
        ),
        tier_server::Kind::Memcached => SharedCache::builder(
            MemcachedTier::new(&server.address())
                .expect("memcached address")
                .timeout(timeout),
            &key,
        ),
    };
    let cache = builder
        .namespace(&format!(
            "faults-{}-{}-{}",
            std::process::id(),
            C::KIND.name(),
            kind.name()
        ))
        .ttl(Duration::from_secs(60))
        .retry_after(RETRY_AFTER)
        .build()
        .expect("shared cache");
    let base = id_base(29)
        + match kind {
            tier_server::Kind::Redis => 0,
            tier_server::Kind::Memcached => 10_000,
        };
    {
        let mut conn = env.tdb.db.get().expect("checkout");
        C::delete_range(&mut conn, base, base + TIER_ROWS);
        C::seed(&mut conn, base, base + TIER_ROWS);
        diesel::update(items::table.filter(in_range(base, TIER_ROWS)))
            .set(items::name.eq("v0"))
            .execute(conn.unbudgeted())
            .expect("version 0");
    }
    cache.attach(&env.tdb.db);
    // The last committed version of each row.
    let model: Arc<Vec<AtomicU64>> = Arc::new((0..TIER_ROWS).map(|_| AtomicU64::new(0)).collect());
    let report = Arc::new(Mutex::new(Row::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // Set for a while after each fault: no writes, so that a lost invalidation is not hidden
    // by the next write's (a read-mostly stretch after an outage).
    let quiet = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let merge = |report: &Mutex<Row>, local: Row| {
        let mut r = report.lock().expect("report");
        r.runs += local.runs;
        r.other += local.other;
        r.stale += local.stale;
        r.panics += local.panics;
        r.lost += local.lost;
        r.duplicated += local.duplicated;
        r.notes.extend(local.notes);
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (db, cache, model, report, stop, reads) = (
                env.tdb.db.clone(),
                cache.clone(),
                Arc::clone(&model),
                Arc::clone(&report),
                Arc::clone(&stop),
                Arc::clone(&reads),
            );
            let seed = rng.next();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut local = Row::default();
                while !stop.load(Ordering::SeqCst) {
                    local.run(|row| {
                        // The whole range, or one of its windows.
                        let w = rng.below(1 + (TIER_ROWS / TIER_WINDOW) as u64) as i32;
                        let (from, n) = if w == 0 {
                            (base, TIER_ROWS)
                        } else {
                            (base + (w - 1) * TIER_WINDOW, TIER_WINDOW)
                        };
                        let mut conn = match db.get() {
                            Ok(c) => c,
                            Err(e) => return row.other(format!("checkout: {e}")),
                        };
                        let floor: Vec<u64> = (from - base..from - base + n)
                            .map(|i| model[i as usize].load(Ordering::SeqCst))
                            .collect();
                        let q = items::table
                            .filter(in_range(from, n))
                            .order(items::id)
                            .budget(Budget::rows(TIER_ROWS as u64));
                        reads.fetch_add(1, Ordering::Relaxed);
                        match cache.load::<_, _, _, Item>(q, &mut conn) {
                            Ok(items) => {
                                let ids: Vec<i32> = items.iter().map(|i| i.id).collect();
                                row.compare(&ids, &all_ids(from, from + n));
                                let older: Vec<String> = items
                                    .iter()
                                    .filter(|i| (from..from + n).contains(&i.id))
                                    .filter(|i| {
                                        tier_version(&i.name)
                                            .is_none_or(|v| v < floor[(i.id - from) as usize])
                                    })
                                    .map(|i| {
                                        format!(
                                            "row {} read {}, committed v{} before the read",
                                            i.id - base,
                                            i.name,
                                            floor[(i.id - from) as usize]
                                        )
                                    })
                                    .collect();
                                if !older.is_empty() {
                                    row.stale += 1;
                                    row.note(format!("stale read: {}", older.join("; ")));
                                }
                            }
                            Err(e) => row.other(format!("read: {e}")),
                        }
                    });
                }
                merge(&report, local);
            })
        })
        .collect();
    let writer = {
        let (db, model, report, stop, writes, quiet) = (
            env.tdb.db.clone(),
            Arc::clone(&model),
            Arc::clone(&report),
            Arc::clone(&stop),
            Arc::clone(&writes),
            Arc::clone(&quiet),
        );
        let seed = rng.next();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut local = Row::default();
            let mut version = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if quiet.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                local.run(|row| {
                    version += 1;
                    let name = format!("v{version}");
                    let k = 1 + rng.below(3) as usize;
                    let mut rows: Vec<i32> = Vec::new();
                    while rows.len() < k {
                        let r = rng.below(TIER_ROWS as u64) as i32;
                        if !rows.contains(&r) {
                            rows.push(r);
                        }
                    }
                    let mut conn = match db.get() {
                        Ok(c) => c,
                        Err(e) => return row.other(format!("checkout: {e}")),
                    };
                    let update = |c: &mut diesel_budget::Conn<C>, r: i32| {
                        diesel::update(items::table.filter(items::id.eq(base + r)))
                            .set(items::name.eq(&name))
                            .execute(c.unbudgeted())
                            .map_err(Error::from)
                    };
                    // One row in autocommit, or up to three in a transaction.
                    let done = if k == 1 && rng.below(2) == 0 {
                        update(&mut conn, rows[0]).map(|n| vec![n])
                    } else {
                        conn.transaction::<_, Error, _>(|c| {
                            rows.iter().map(|&r| update(c, r)).collect()
                        })
                    };
                    writes.fetch_add(1, Ordering::Relaxed);
                    match done {
                        Ok(counts) if counts.iter().all(|&n| n == 1) => {
                            for &r in &rows {
                                model[r as usize].store(version, Ordering::SeqCst);
                            }
                        }
                        Ok(counts) => row.other(format!("updates of one row each: {counts:?}")),
                        Err(e) => row.other(format!("write: {e}")),
                    }
                    drop(conn);
                    std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
                });
            }
            merge(&report, local);
        })
    };
    // The faults, in rounds of two freezes, a kill and a restart in random order, at random
    // times.
    let secs = env_u64("FAULT_TIER_SECS", 4);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut freezes, mut kills, mut restarts) = (0u64, 0u64, 0u64);
    let mut round: Vec<u64> = Vec::new();
    let pause = |rng: &mut Rng| Duration::from_millis(50 + rng.below(250));
    while Instant::now() < deadline {
        std::thread::sleep(pause(rng));
        if round.is_empty() {
            round = vec![0, 0, 1, 2];
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = round.pop().unwrap_or(0);
        // No writes from the fault until the cache has seen it (a write whose invalidation
        // reaches the frozen server's socket is applied when it runs again), then writes
        // while the tier is down: their invalidations are lost.
        quiet.store(true, Ordering::SeqCst);
        let errors = cache.stats().tier_errors;
        let seen = |cache: &SharedCache| {
            let limit = Instant::now() + Duration::from_secs(2);
            while cache.stats().tier_errors == errors && Instant::now() < limit {
                std::thread::sleep(Duration::from_millis(1));
            }
            quiet.store(false, Ordering::SeqCst);
        };
        let outage = |rng: &mut Rng| Duration::from_millis(30 + rng.below(120));
        let up = match fault {
            0 => {
                freezes += 1;
                server.freeze();
                seen(&cache);
                std::thread::sleep(outage(rng));
                server.thaw();
                Ok(())
            }
            1 => {
                kills += 1;
                server.kill();
                seen(&cache);
                std::thread::sleep(outage(rng));
                server.up()
            }
            _ => {
                restarts += 1;
                server.restart()
            }
        };
        if let Err(e) = up {
            row.other(format!("tier server: {e}"));
            break;
        }
        quiet.store(true, Ordering::SeqCst);
        std::thread::sleep(RETRY_AFTER + pause(rng));
        quiet.store(false, Ordering::SeqCst);
    }
    // Back up for a last stretch: reads recover.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for t in readers.into_iter().chain([writer]) {
        if t.join().is_err() {
            row.panics += 1;
        }
    }
    let r = report.lock().expect("report").clone();
    row.runs = r.runs;
    row.other += r.other;
    row.stale = r.stale;
    row.panics += r.panics;
    row.lost = r.lost;
    row.duplicated = r.duplicated;
    row.notes.extend(r.notes);
    let s = cache.stats();
    eprintln!(
        "{} / {}: {} reads, {} writes; {freezes} freezes, {kills} kills, {restarts} restarts; \
         {} hits, {} misses, {} fills, {} bypassed, {} tier errors, {} recoveries",
        row.fault,
        row.backend,
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        s.hits,
        s.misses,
        s.fills,
        s.bypassed,
        s.tier_errors,
        s.recoveries
    );
    // The case tested something: the tier served hits, failed, and was recovered from.
    if s.hits == 0 || s.tier_errors == 0 || s.recoveries == 0 {
        row.other(format!(
            "the outages were not exercised ({} hits, {} tier errors, {} recoveries)",
            s.hits, s.tier_errors, s.recoveries
        ));
    }
    drop(cache);
    let mut conn = env.tdb.db.get().expect("checkout");
    C::delete_range(&mut conn, base, base + TIER_ROWS);
    row
}
