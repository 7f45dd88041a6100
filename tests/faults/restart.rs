// Included by tests/faults.rs for PostgreSQL and MariaDB: the server restarted under the pool,
// on a throwaway server the suite starts itself (tests/faults/server.rs), never on the servers
// the rest of the suite uses.

/// What the restart cases wrote: every id a write tried, and those whose write was
/// acknowledged (its transaction returned `Ok`).
#[derive(Default)]
struct Writes {
    attempted: BTreeSet<i32>,
    acked: BTreeSet<i32>,
    /// Writes that returned an error: their ids and the failing statement.
    failed: Vec<(Vec<i32>, String)>,
}

/// An error while the server is down or coming back: typed when it says the connection is gone
/// ([`Error::is_connection_lost`]) or that no connection could be had ([`Error::Pool`]: the
/// checkout timed out).
fn outage_error(row: &mut Row, e: &Error) {
    if e.is_connection_lost() || matches!(e, Error::Pool(_)) {
        row.typed += 1;
    } else {
        row.other(format!("{e:?}"));
    }
}

/// One write: `ids` in one transaction on a fresh checkout; acknowledged when it returns `Ok`.
fn restart_write(db: &diesel_budget::Db<C>, writes: &Mutex<Writes>, ids: &[i32]) -> Result<(), Error> {
    writes.lock().expect("writes").attempted.extend(ids);
    let r = db.get().and_then(|mut conn| {
        conn.transaction::<(), Error, _>(|c| {
            for &id in ids {
                insert_one(c, id)?;
            }
            Ok(())
        })
    });
    let mut w = writes.lock().expect("writes");
    match &r {
        Ok(()) => w.acked.extend(ids),
        Err(e) => w.failed.push((
            ids.to_vec(),
            match e {
                Error::Pool(_) => "checkout".to_owned(),
                e => e.sql().unwrap_or("?").chars().take(12).collect(),
            },
        )),
    }
    r
}

/// One read of every row the restart cases wrote, held to what was acknowledged before it
/// began (nothing lost, nothing twice).
fn restart_read(
    db: &diesel_budget::Db<C>,
    writes: &Mutex<Writes>,
    base: i32,
    row: &mut Row,
) -> Result<(), Error> {
    let before = writes.lock().expect("writes").acked.clone();
    let mut conn = db.get()?;
    let ids = items::table
        .filter(in_range(base, 1_000_000))
        .select(items::id)
        .budget(Budget::rows(1_000_000))
        .load::<i32>(&mut conn)?;
    row.compare(&ids, &before);
    Ok(())
}

/// Starts this backend's throwaway server.
fn own_server() -> Result<server::Server, String> {
    match C::KIND {
        diesel_budget::BackendKind::Postgres => server::Server::postgres(),
        _ => server::Server::mariadb(),
    }
}

/// The server restarted with the pool idle, then with checkouts in flight: typed errors during
/// the outage, no panic, the pool working again after it, and every acknowledged write there
/// exactly once.
fn server_restart(rng: &mut Rng) -> Vec<Row> {
    let mut idle = Row {
        key: "restart",
        ..Row::new::<C>("server restart, pool idle")
    };
    let mut busy = Row {
        key: "restart",
        ..Row::new::<C>("server restart, pool busy (6 threads, pool of 4)")
    };
    let started = Instant::now();
    let mut srv = match own_server() {
        Ok(s) => s,
        Err(e) => {
            idle.other(format!("starting a server of its own: {e}"));
            return vec![idle, busy];
        }
    };
    let url = srv.url("diesel_budget_faults");
    let db = diesel_budget::demo::create_database::<C>(&url).and_then(|()| {
        diesel_budget::Db::<C>::builder(url.as_str())
            .max_size(4)
            .min_idle(4)
            .connection_timeout(Duration::from_millis(500))
            .migrations(diesel_budget::demo::MIGRATIONS)
            .build()
    });
    let db = match db {
        Ok(db) => db,
        Err(e) => {
            idle.other(format!("pool on the server of its own: {e:?}"));
            return vec![idle, busy];
        }
    };
    let writes = Arc::new(Mutex::new(Writes::default()));
    let base = id_base(28);
    let mut next_id = base;
    // Each operation is a run (counted inside); a panic escaping a restart is counted here.
    for _ in 0..3 {
        let r = catch_unwind(AssertUnwindSafe(|| {
            restart_idle(&db, &mut srv, &writes, base, &mut next_id, &mut idle)
        }));
        idle.panics += u64::from(r.is_err());
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        restart_busy(&db, &mut srv, &writes, base, rng, &mut busy)
    }));
    busy.panics += u64::from(r.is_err());
    // Every acknowledged write is there exactly once, and nothing that was never written.
    let _ = restart_until_read(&db, &writes, base, &mut busy, Duration::from_secs(20));
    match db.get().and_then(|mut c| {
        items::table
            .filter(in_range(base, 1_000_000))
            .select(items::id)
            .budget(Budget::rows(1_000_000))
            .load::<i32>(&mut c)
    }) {
        Ok(seen) => {
            let w = writes.lock().expect("writes");
            busy.compare(&seen, &w.acked);
            let phantom = seen.iter().filter(|id| !w.attempted.contains(id)).count();
            if phantom > 0 {
                busy.other(format!("{phantom} rows nobody wrote"));
            }
            let there: BTreeSet<i32> = seen.iter().copied().collect();
            let mut failed: std::collections::BTreeMap<(&str, bool), usize> = Default::default();
            for (ids, sql) in &w.failed {
                *failed
                    .entry((sql.as_str(), ids.iter().any(|id| there.contains(id))))
                    .or_default() += 1;
            }
            eprintln!(
                "server restart / {}: {} rows written and acknowledged; failed writes by \
                 failing step and (committed anyway): {failed:?}",
                C::KIND,
                w.acked.len(),
            );
        }
        Err(e) => busy.other(format!("final read: {e:?}")),
    }
    drop(db);
    if let Err(e) = srv.stop() {
        busy.other(e);
    }
    eprintln!(
        "server restart / {}: own server started, restarted 5 times, stopped in {:.1} s",
        C::KIND,
        started.elapsed().as_secs_f64()
    );
    vec![idle, busy]
}

/// Reads until a read succeeds (the pool recovered) or `limit` passed; typed errors on the way
/// are counted, others reported.
fn restart_until_read(
    db: &diesel_budget::Db<C>,
    writes: &Mutex<Writes>,
    base: i32,
    row: &mut Row,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        row.runs += 1;
        match restart_read(db, writes, base, row) {
            Ok(()) => return Some(start.elapsed()),
            Err(e) => outage_error(row, &e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    row.other(format!("the pool did not recover within {limit:?} of the restart"));
    None
}

/// One idle restart: writes, the pool's 4 connections idle, the server stopped; checkouts
/// during the outage fail typed; after the start the pool hands out working connections.
fn restart_idle(
    db: &diesel_budget::Db<C>,
    srv: &mut server::Server,
    writes: &Mutex<Writes>,
    base: i32,
    next_id: &mut i32,
    row: &mut Row,
) {
    for _ in 0..10 {
        row.runs += 1;
        if let Err(e) = restart_write(db, writes, &[*next_id]) {
            row.other(format!("write before the restart: {e:?}"));
        }
        *next_id += 1;
    }
    // Four connections checked out together and returned: the pool holds them idle.
    let held: Vec<_> = (0..4).filter_map(|_| db.get().ok()).collect();
    drop(held);
    if let Err(e) = srv.stop() {
        return row.other(e);
    }
    for i in 0..3 {
        row.runs += 1;
        let r = if i % 2 == 0 {
            let id = *next_id;
            *next_id += 1;
            restart_write(db, writes, &[id])
        } else {
            restart_read(db, writes, base, row)
        };
        match r {
            Err(e) => outage_error(row, &e),
            Ok(()) => row.other("a statement succeeded while the server was down"),
        }
    }
    if let Err(e) = srv.start() {
        return row.other(e);
    }
    if restart_until_read(db, writes, base, row, Duration::from_secs(20)).is_none() {
        return;
    }
    // Recovered: every checkout works now, the dead idle connections were replaced.
    for i in 0..12 {
        row.runs += 1;
        let r = if i % 3 == 0 {
            let id = *next_id;
            *next_id += 1;
            restart_write(db, writes, &[id])
        } else {
            restart_read(db, writes, base, row)
        };
        if let Err(e) = r {
            row.other(format!("after the pool recovered: {e:?}"));
        }
    }
}

/// Six threads writing and reading on a pool of 4 while the server is stopped and started
/// twice: typed errors only, and each thread works again after each restart.
fn restart_busy(
    db: &diesel_budget::Db<C>,
    srv: &mut server::Server,
    writes: &Arc<Mutex<Writes>>,
    base: i32,
    rng: &mut Rng,
    row: &mut Row,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(Row::default()));
    // Per thread: successes since the last restart.
    let since: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..6).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (db, writes, stop, report, since) = (
                db.clone(),
                Arc::clone(writes),
                Arc::clone(&stop),
                Arc::clone(&report),
                Arc::clone(&since),
            );
            let seed = rng.next();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut local = Row::default();
                let mut next_id = base + 100_000 * (t as i32 + 1);
                while !stop.load(Ordering::Relaxed) {
                    local.run(|row| {
                        let r = if rng.below(2) == 0 {
                            let n = 1 + rng.below(3) as i32;
                            let ids: Vec<i32> = (next_id..next_id + n).collect();
                            next_id += n;
                            restart_write(&db, &writes, &ids)
                        } else {
                            restart_read(&db, &writes, base, row)
                        };
                        match r {
                            Ok(()) => {
                                since[t].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                outage_error(row, &e);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    });
                }
                let mut r = report.lock().expect("report");
                r.runs += local.runs;
                r.typed += local.typed;
                r.other += local.other;
                r.panics += local.panics;
                r.lost += local.lost;
                r.duplicated += local.duplicated;
                r.notes.extend(local.notes);
            })
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        if let Err(e) = srv.stop() {
            row.other(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(800));
        for s in since.iter() {
            s.store(0, Ordering::Relaxed);
        }
        if let Err(e) = srv.start() {
            row.other(e);
            break;
        }
        // Every thread succeeds again within 20 s.
        let up = Instant::now();
        while since.iter().any(|s| s.load(Ordering::Relaxed) < 3) {
            if up.elapsed() > Duration::from_secs(20) {
                row.other("a thread did not recover within 20 s of the restart");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if t.join().is_err() {
            row.panics += 1;
        }
    }
    let r = report.lock().expect("report").clone();
    row.runs += r.runs;
    row.typed += r.typed;
    row.other += r.other;
    row.panics += r.panics;
    row.lost += r.lost;
    row.duplicated += r.duplicated;
    row.notes.extend(r.notes);
}
