// Included by tests/faults.rs into one module per backend, where `C` is the connection type.

fn insert_one(conn: &mut diesel_budget::Conn<C>, id: i32) -> diesel_budget::Result<()> {
    diesel_budget::demo::seed(conn, id, id + 1, |_| {}).map(drop)
}

/// Which of `ids` are in the table (read on a fresh checkout).
fn present(db: &diesel_budget::Db<C>, ids: &[i32]) -> BTreeSet<i32> {
    let mut conn = db.get().expect("checkout to read back");
    items::table
        .filter(items::id.eq_any(ids.to_vec()))
        .select(items::id)
        .budget(Budget::rows(ids.len() as u64 + 1))
        .load::<i32>(&mut conn)
        .expect("read back")
        .into_iter()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Faults on every backend.

type Case = fn(&Env<C>, &mut Rng) -> Row;

/// The faults every backend gets. Add yours here (see the module docs).
fn cases() -> Vec<Case> {
    vec![
        panic_caught,
        panic_uncaught,
        pool_exhaustion,
        time_budget_exceeded,
        hostile_budgets_and_inputs,
        soak,
    ]
}

/// A panic inside `transaction`, caught while the `Conn` is held: the write is rolled back and
/// the next transaction on that `Conn` commits for real.
fn panic_caught(env: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("panic in transaction, caught");
    let base = id_base(26);
    for i in 0..20 {
        row.run(|row| {
            let (doomed, kept) = (base + 2 * i, base + 2 * i + 1);
            let mut conn = env.tdb.db.get().expect("checkout");
            C::delete_range(&mut conn, doomed, kept + 1);
            let r = catch_unwind(AssertUnwindSafe(|| {
                conn.transaction::<(), Error, _>(|c| {
                    insert_one(c, doomed)?;
                    panic!("{INTENTIONAL}")
                })
            }));
            assert!(r.is_err(), "the closure panicked");
            match conn.transaction::<(), Error, _>(|c| insert_one(c, kept)) {
                Ok(()) => {}
                Err(e) => row.other(format!("the next transaction: {e}")),
            }
            drop(conn);
            let there = present(&env.tdb.db, &[doomed, kept]);
            row.lost += u64::from(!there.contains(&kept));
            if there.contains(&doomed) {
                row.other("the panicking transaction's write survived");
            }
            let mut conn = env.tdb.db.get().expect("checkout");
            C::delete_range(&mut conn, doomed, kept + 1);
        });
    }
    row
}

/// A panic inside `transaction` that ends its thread: the write is rolled back, the pool keeps
/// working.
fn panic_uncaught(env: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("panic in transaction, uncaught");
    let base = id_base(26) + 100;
    for i in 0..20 {
        row.run(|row| {
            let (doomed, kept) = (base + 2 * i, base + 2 * i + 1);
            let db = env.tdb.db.clone();
            let joined = std::thread::spawn(move || {
                let mut conn = db.get().expect("checkout");
                let _ = conn.transaction::<(), Error, _>(|c| {
                    insert_one(c, doomed)?;
                    panic!("{INTENTIONAL}")
                });
            })
            .join();
            assert!(joined.is_err(), "the thread panicked");
            let mut conn = env.tdb.db.get().expect("checkout after the panic");
            match conn.transaction::<(), Error, _>(|c| insert_one(c, kept)) {
                Ok(()) => {}
                Err(e) => row.other(format!("a transaction after the panic: {e}")),
            }
            drop(conn);
            let there = present(&env.tdb.db, &[doomed, kept]);
            row.lost += u64::from(!there.contains(&kept));
            if there.contains(&doomed) {
                row.other("the panicking transaction's write survived");
            }
            let mut conn = env.tdb.db.get().expect("checkout");
            C::delete_range(&mut conn, doomed, kept + 1);
        });
    }
    row
}

/// Every connection held: a checkout is a typed `Pool` error after the timeout; one connection
/// back and checkouts work again.
fn pool_exhaustion(_: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("pool exhaustion and recovery");
    let tdb = C::private_db_with(2, Duration::from_millis(150));
    for _ in 0..10 {
        row.run(|row| {
            let a = tdb.db.get().expect("first");
            let b = tdb.db.get().expect("second");
            match tdb.db.get() {
                Err(Error::Pool(_)) => row.typed += 1,
                Err(e) => row.other(e),
                Ok(_) => row.other("a third checkout from a pool of 2"),
            }
            drop(a);
            let mut c = tdb.db.get().expect("checkout after recovery");
            let n = items::table
                .select(items::id)
                .filter(items::id.eq(-1))
                .budget(Budget::rows(1))
                .load::<i32>(&mut c);
            if let Err(e) = n {
                row.other(e);
            }
            drop(b);
        });
    }
    row
}

/// A statement past its time budget: `BudgetExceeded` on time, nothing left running, the
/// connection usable.
fn time_budget_exceeded(env: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("time budget exceeded");
    for _ in 0..20 {
        row.run(|row| {
            let mut conn = env.tdb.db.get().expect("checkout");
            C::prepare(&mut conn);
            let r = items::table
                .filter(in_range(env.walk_from, 10))
                .filter(C::sleepy(47))
                .budget(Budget::rows(20).time(Duration::from_millis(60)))
                .load::<Item>(&mut conn);
            match r {
                Err(Error::BudgetExceeded {
                    exceeded: Exceeded::Time,
                    ..
                }) => row.typed += 1,
                Err(e) => row.other(e),
                Ok(_) => row.other("10 rows of 47 ms each within 60 ms"),
            }
            let mut other = env.tdb.db.get().expect("checkout");
            if C::running(&mut other, 47) != 0 {
                std::thread::sleep(Duration::from_millis(200));
                if C::running(&mut other, 47) != 0 {
                    row.other("the cancelled statement still runs");
                }
            }
            let back = items::table
                .filter(in_range(env.walk_from, 10))
                .budget(Budget::rows(20))
                .load::<Item>(&mut conn);
            match back {
                Ok(rows) => row.compare(
                    &rows.iter().map(|i| i.id).collect::<Vec<_>>(),
                    &all_ids(env.walk_from, env.walk_from + 10),
                ),
                Err(e) => row.other(format!("after the time-out: {e}")),
            }
        });
    }
    row
}

/// Budgets that admit nothing or too much, a 1,000-deep filter, 17 and 64 MiB binds: typed
/// errors or results, never a panic, and the pool works after each.
fn hostile_budgets_and_inputs(env: &Env<C>, _: &mut Rng) -> Row {
    let mut row = Row::new::<C>("hostile budgets and inputs");
    let invalid: [fn(&mut diesel_budget::Conn<C>) -> diesel_budget::Result<Vec<Item>>; 4] = [
        |c| items::table.budget(Budget::rows(0)).load(c),
        |c| items::table.budget(Budget::rows(MAX_ROWS + 1)).load(c),
        |c| items::table.budget(Budget::rows(1).bytes(0)).load(c),
        |c| {
            items::table
                .budget(Budget::rows(1).time(Duration::ZERO))
                .load(c)
        },
    ];
    for f in invalid {
        row.run(|row| {
            let mut conn = env.tdb.db.get().expect("checkout");
            match f(&mut conn) {
                Err(Error::InvalidBudget { .. }) => row.typed += 1,
                Err(e) => row.other(e),
                Ok(_) => row.other("an invalid budget ran"),
            }
        });
    }
    // 1,000 nested ORs (SQLite refuses expressions deeper than 1,000: a typed query error).
    row.run(|row| {
        let mut conn = env.tdb.db.get().expect("checkout");
        let mut q = items::table.into_boxed();
        for i in 0..1_000 {
            q = q.or_filter(items::id.eq(-1 - i));
        }
        match q.budget(Budget::rows(10)).load::<Item>(&mut conn) {
            Ok(rows) if rows.is_empty() => {}
            Ok(_) => row.other("rows for ids that do not exist"),
            Err(e @ Error::Query { .. }) => {
                row.typed += 1;
                let _ = e;
            }
            Err(e) => row.other(e),
        }
    });
    // A walk with the largest row budget and a key past the end.
    row.run(|row| {
        let mut conn = env.tdb.db.get().expect("checkout");
        let n = items::table
            .filter(in_range(env.walk_from, WALK_ROWS))
            .budget(Budget::rows(MAX_ROWS))
            .batches_by(items::id, |i: &Item| i.id, &mut conn)
            .after(i32::MAX)
            .count();
        if n != 0 {
            row.other("a walk after i32::MAX returned batches");
        }
    });
    for mib in [17usize, 64] {
        row.run(|row| {
            let big = "x".repeat(mib << 20);
            {
                let mut conn = env.tdb.db.get().expect("checkout");
                match items::table
                    .filter(items::name.eq(&big))
                    .budget(Budget::rows(1))
                    .load::<Item>(&mut conn)
                {
                    Ok(rows) if rows.is_empty() => {}
                    Ok(_) => row.other("rows for a name that does not exist"),
                    Err(Error::Query { .. }) => row.typed += 1,
                    Err(e) => row.other(e),
                }
            }
            // The pool hands out a working connection afterwards.
            let mut conn = env.tdb.db.get().expect("checkout after the big bind");
            if let Err(e) = items::table
                .filter(items::id.eq(env.walk_from))
                .budget(Budget::rows(1))
                .first::<Item>(&mut conn)
            {
                row.other(format!("after a {mib} MiB bind: {e}"));
            }
        });
    }
    row
}

/// 8 threads on a pool of 4 for a bounded time: writes (some panicking inside their
/// transaction), keyset and streamed walks, reads and timed reads, checked against a model of
/// the committed rows.
fn soak(_: &Env<C>, rng: &mut Rng) -> Row {
    let mut row = Row::new::<C>("soak: 8 threads, pool of 4");
    let tdb = C::private_db(4);
    let base = id_base(27);
    {
        let mut conn = tdb.db.get().expect("checkout");
        C::delete_range(&mut conn, base, base + 1_000_000);
    }
    let model: Arc<Mutex<BTreeSet<i32>>> = Arc::default();
    let report = Arc::new(Mutex::new(Row::new::<C>("soak")));
    let stop = Arc::new(AtomicBool::new(false));
    let secs = env_u64("FAULT_SOAK_SECS", 8);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = tdb.db.clone();
            let model = Arc::clone(&model);
            let report = Arc::clone(&report);
            let stop = Arc::clone(&stop);
            let seed = rng.next();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut next_id = base + t * 100_000;
                let mut local = Row::default();
                while !stop.load(Ordering::Relaxed) {
                    local.run(|row| soak_step(&db, &model, &mut rng, &mut next_id, row));
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
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if t.join().is_err() {
            row.panics += 1;
        }
    }
    let r = report.lock().expect("report").clone();
    row.runs = r.runs;
    row.typed = r.typed;
    row.other = r.other;
    row.panics += r.panics;
    row.lost = r.lost;
    row.duplicated = r.duplicated;
    row.notes = r.notes;
    // The end state is exactly the model.
    let model = model.lock().expect("model").clone();
    let mut conn = tdb.db.get().expect("checkout");
    let mut seen = Vec::new();
    for batch in items::table
        .filter(in_range(base, 1_000_000))
        .budget(Budget::rows(500))
        .batches_by(items::id, |i: &Item| i.id, &mut conn)
    {
        match batch {
            Ok(b) => seen.extend(b.iter().map(|i| i.id)),
            Err(e) => row.other(format!("final walk: {e}")),
        }
    }
    row.compare(&seen, &model);
    let extra = seen.iter().filter(|id| !model.contains(id)).count();
    if extra > 0 {
        row.other(format!("{extra} rows in the table the model does not have"));
    }
    C::delete_range(&mut conn, base, base + 1_000_000);
    row
}

fn soak_step(
    db: &diesel_budget::Db<C>,
    model: &Mutex<BTreeSet<i32>>,
    rng: &mut Rng,
    next_id: &mut i32,
    row: &mut Row,
) {
    let base = id_base(27);
    let mut conn = match db.get() {
        Ok(c) => c,
        Err(e) => return row.other(e),
    };
    let before = model.lock().expect("model").clone();
    match rng.below(100) {
        // Write 1..=5 rows in a transaction; one in ten panics inside it.
        0..=34 => {
            let n = 1 + rng.below(5) as i32;
            let ids: Vec<i32> = (*next_id..*next_id + n).collect();
            *next_id += n;
            let doomed = rng.below(10) == 0;
            let r = catch_unwind(AssertUnwindSafe(|| {
                conn.transaction::<(), Error, _>(|c| {
                    for &id in &ids {
                        insert_one(c, id)?;
                    }
                    if doomed {
                        panic!("{INTENTIONAL}");
                    }
                    Ok(())
                })
            }));
            match r {
                Ok(Ok(())) => model.lock().expect("model").extend(&ids),
                Ok(Err(e)) => {
                    row.other(format!("write: {e}"));
                    // Whatever is there now is the truth.
                    drop(conn);
                    let there = present(db, &ids);
                    model.lock().expect("model").extend(there);
                }
                Err(_) if doomed => {
                    // The next write on the same `Conn` must commit for real.
                    let id = *next_id;
                    *next_id += 1;
                    match conn.transaction::<(), Error, _>(|c| insert_one(c, id)) {
                        Ok(()) => model.lock().expect("model").insert(id),
                        Err(e) => return row.other(format!("write after a panic: {e}")),
                    };
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        // Walk everything, keyset or streamed.
        35..=59 => {
            let mode = if rng.below(2) == 0 {
                BatchMode::Keyset
            } else {
                BatchMode::Stream
            };
            let mut seen = Vec::new();
            for r in items::table
                .filter(in_range(base, 1_000_000))
                .budget(Budget::rows(1 + rng.below(50)))
                .batches_by(items::id, |i: &Item| i.id, &mut conn)
                .mode(mode)
                .rows()
            {
                match r {
                    Ok(item) => seen.push(item.id),
                    Err(e) => return row.other(format!("walk: {e}")),
                }
            }
            row.compare(&seen, &before);
        }
        // Read a window, some under a time limit.
        _ => {
            let from = base + rng.below(8) as i32 * 100_000;
            let budget = Budget::rows(100_000);
            let budget = if rng.below(2) == 0 {
                budget.time(Duration::from_secs(10))
            } else {
                budget
            };
            match items::table
                .filter(in_range(from, 100_000))
                .select(items::id)
                .order(items::id)
                .budget(budget)
                .load::<i32>(&mut conn)
            {
                Ok(ids) => {
                    let expected: BTreeSet<i32> =
                        before.range(from..from + 100_000).copied().collect();
                    row.compare(&ids, &expected);
                }
                Err(e) => row.other(format!("read: {e}")),
            }
        }
    }
}

/// Runs every case for this backend.
pub fn run_backend(extra: Vec<Case>, seed: u64) -> Vec<Row> {
    let tdb = C::private_db(4);
    let walk_from = id_base(28);
    let stream_from = walk_from + 100_000;
    let env = Env {
        tdb,
        walk_from,
        stream_from,
    };
    // Dropped before `env` (whose SQLite file goes with it).
    let _rows = CommittedRows::insert(&env.tdb.db, walk_from, walk_from + WALK_ROWS);
    let _stream = CommittedRows::insert(&env.tdb.db, stream_from, stream_from + stream_rows::<C>());
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for case in cases().into_iter().chain(extra) {
        let start = Instant::now();
        let r = case(&env, &mut rng);
        eprintln!(
            "{} / {}: {} runs in {:.1} s",
            r.fault,
            r.backend,
            r.runs,
            start.elapsed().as_secs_f64()
        );
        rows.push(r);
    }
    rows.push(Row {
        notes: vec![],
        ..Row::new::<C>(if C::KIND == diesel_budget::BackendKind::Sqlite {
            "server restart: n/a (embedded)"
        } else {
            "server restart: skipped (the suite did not start this server)"
        })
    });
    rows
}

