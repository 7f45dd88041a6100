// Included by tests/faults.rs for PostgreSQL and MariaDB: faults that kill server sessions.

// ---------------------------------------------------------------------------------------------
// Faults that kill server sessions.

/// The faults that kill server sessions (PostgreSQL, MariaDB).
fn server_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("killed", |e, r| killed_at_random_rows(e, r, BatchMode::Keyset)),
        ("killed", |e, r| killed_at_random_rows(e, r, BatchMode::Stream)),
        ("killed", |e, r| killed_at_random_times(e, r, BatchMode::Keyset)),
        ("killed", |e, r| killed_at_random_times(e, r, BatchMode::Stream)),
        ("killed", killed_idle),
        ("killed", killed_in_use),
        ("bulk", |e, r| bulk_killed(e, r, true)),
        ("bulk", |e, r| bulk_killed(e, r, false)),
    ]
}

/// Walks the walk table on a checked-out connection with `kill` called once `kill_at` rows
/// were delivered (or from another thread); then resumes after the last delivered key on a
/// fresh connection and compares.
fn walk_with_kill(
    env: &Env<C>,
    mode: BatchMode,
    row: &mut Row,
    kill_at: Option<usize>,
    killer: impl FnOnce(i64) -> Box<dyn FnOnce() + Send>,
) {
    let (from, n) = env.table(mode);
    let mut victim = env.tdb.db.get().expect("victim checkout");
    let pid = C::session_id(&mut victim);
    let mut kill = Some(killer(pid));
    if kill_at.is_none() {
        // Timed kill: started now, joined below.
        if let Some(k) = kill.take() {
            k();
        }
    }
    let mut seen: Vec<i32> = Vec::new();
    let mut failure = None;
    {
        let mut rows = items::table
            .filter(in_range(from, n))
            .budget(Budget::rows(WALK_BATCH))
            .batches_by(items::id, |i: &Item| i.id, &mut victim)
            .mode(mode)
            .rows();
        loop {
            if kill_at.is_some_and(|k| seen.len() >= k) {
                if let Some(k) = kill.take() {
                    k();
                }
            }
            match rows.next() {
                Some(Ok(item)) => seen.push(item.id),
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                None => break,
            }
        }
    }
    drop(victim);
    if let Some(e) = failure {
        let resume = seen.last().map(|k| format!("{k:?}"));
        match &e {
            Error::Interrupted { resume_after, .. }
                if *resume_after == resume && e.is_connection_lost() =>
            {
                row.typed += 1
            }
            _ => row.other(format!("{e:?}")),
        }
        // Resume where the error says.
        let mut conn = env.tdb.db.get().expect("checkout to resume");
        let walk = items::table
            .filter(in_range(from, n))
            .budget(Budget::rows(WALK_BATCH))
            .batches_by(items::id, |i: &Item| i.id, &mut conn)
            .mode(mode);
        let walk = match seen.last() {
            Some(&k) => walk.after(k),
            None => walk,
        };
        for r in walk.rows() {
            match r {
                Ok(item) => seen.push(item.id),
                Err(e) => return row.other(format!("resuming: {e}")),
            }
        }
    }
    row.compare(&seen, &all_ids(from, from + n));
}

/// The session killed after a random number of delivered rows.
fn killed_at_random_rows(
    env: &Env<C>,
    rng: &mut Rng,
    mode: BatchMode,
) -> Row {
    let mut row = Row::new::<C>(match mode {
        BatchMode::Keyset => "killed mid-walk at a random row, keyset",
        _ => "killed mid-walk at a random row, stream",
    });
    for _ in 0..env_u64("FAULT_RUNS", 100) {
        let at = rng.below(env.table(mode).1 as u64) as usize;
        row.run(|row| {
            walk_with_kill(env, mode, row, Some(at), |pid| {
                let db = env.tdb.db.clone();
                Box::new(move || {
                    let mut killer = db.get().expect("killer checkout");
                    C::kill(&mut killer, pid);
                })
            })
        });
    }
    row
}

/// The session killed from another thread after a random time (within about one walk).
fn killed_at_random_times(
    env: &Env<C>,
    rng: &mut Rng,
    mode: BatchMode,
) -> Row {
    let mut row = Row::new::<C>(match mode {
        BatchMode::Keyset => "killed mid-walk at a random time, keyset",
        _ => "killed mid-walk at a random time, stream",
    });
    // How long one walk takes here.
    let (from, rows) = env.table(mode);
    let start = Instant::now();
    {
        let mut conn = env.tdb.db.get().expect("checkout");
        let n = items::table
            .filter(in_range(from, rows))
            .budget(Budget::rows(WALK_BATCH))
            .batches_by(items::id, |i: &Item| i.id, &mut conn)
            .mode(mode)
            .rows()
            .count();
        assert_eq!(n, rows as usize);
    }
    let walk_us = start.elapsed().as_micros().max(1) as u64;
    for _ in 0..env_u64("FAULT_RUNS", 100) {
        let after = Duration::from_micros(rng.below(walk_us));
        row.run(|row| {
            let handle: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
            let h = Arc::clone(&handle);
            // The killer's connection is checked out before the walk starts.
            let mut killer = env.tdb.db.get().expect("killer checkout");
            walk_with_kill(env, mode, row, None, move |pid| {
                Box::new(move || {
                    let t = std::thread::spawn(move || {
                        std::thread::sleep(after);
                        C::kill(&mut killer, pid);
                    });
                    *h.lock().expect("handle") = Some(t);
                })
            });
            let killer_thread = handle.lock().expect("handle").take();
            if let Some(t) = killer_thread {
                if t.join().is_err() {
                    row.other("the killer thread panicked");
                }
            }
        });
    }
    row
}

/// Sessions killed while idle in the pool: the next checkouts get working connections.
fn killed_idle(env: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("connection killed idle");
    for _ in 0..20 {
        row.run(|row| {
            // The killer first, so that it is not the victim handed out again.
            let mut killer = env.tdb.db.get().expect("killer");
            let pid = {
                let mut c = env.tdb.db.get().expect("checkout");
                C::session_id(&mut c)
            };
            C::kill(&mut killer, pid);
            drop(killer);
            for _ in 0..4 {
                let mut c = env.tdb.db.get().expect("checkout after the kill");
                if let Err(e) = items::table
                    .filter(items::id.eq(env.walk_from))
                    .budget(Budget::rows(1))
                    .first::<Item>(&mut c)
                {
                    row.other(e);
                }
            }
        });
    }
    row
}

/// A session killed while a statement runs on it: a typed connection-lost error, and the pool
/// replaces it.
fn killed_in_use(env: &Env<C>, rng: &mut Rng) -> Row {
    let mut row = Row::new::<C>("connection killed in use");
    for _ in 0..20 {
        let after = Duration::from_millis(20 + rng.below(60));
        row.run(|row| {
            let mut victim = env.tdb.db.get().expect("victim");
            let pid = C::session_id(&mut victim);
            let mut killer = env.tdb.db.get().expect("killer");
            let t = std::thread::spawn(move || {
                std::thread::sleep(after);
                C::kill(&mut killer, pid);
            });
            let r = items::table
                .filter(in_range(env.walk_from, 10))
                .filter(C::sleepy(31))
                .budget(Budget::rows(20))
                .load::<Item>(&mut victim);
            match r {
                Err(e) if e.is_connection_lost() => row.typed += 1,
                Err(e) => row.other(e),
                Ok(_) => row.other("a 310 ms statement finished on a session killed at <80 ms"),
            }
            if t.join().is_err() {
                row.other("the killer thread panicked");
            }
            drop(victim);
            let mut c = env.tdb.db.get().expect("checkout after the kill");
            if let Err(e) = items::table
                .filter(items::id.eq(env.walk_from))
                .budget(Budget::rows(1))
                .first::<Item>(&mut c)
            {
                row.other(e);
            }
        });
    }
    row
}

