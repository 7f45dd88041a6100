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

/// The faults every backend gets, each with the key `FAULT_ONLY` selects it by. Add yours
/// here (see the module docs).
#[allow(clippy::let_and_return)] // without the shared cache tiers' features
fn cases() -> Vec<(&'static str, Case)> {
    let cases: Vec<(&'static str, Case)> = vec![
        ("panic", panic_caught),
        ("panic", panic_uncaught),
        ("exhaustion", pool_exhaustion),
        ("time", time_budget_exceeded),
        ("hostile", hostile_budgets_and_inputs),
        ("bulk", |e, r| bulk_injected(e, r, true)),
        ("bulk", |e, r| bulk_injected(e, r, false)),
        ("tokens", tampered_page_tokens),
        ("soak", soak),
    ];
    #[cfg(all(feature = "redis", feature = "memcached"))]
    let cases = cases.into_iter().chain(tier_cases()).collect();
    cases
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
    type Load = fn(&mut diesel_budget::Conn<C>) -> diesel_budget::Result<Vec<Item>>;
    let invalid: [Load; 4] = [
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

/// What the soak's threads committed: the rows there now, the ids whose delete has begun, and
/// those whose delete was acknowledged (ids are never reused).
#[derive(Clone, Default)]
struct SoakModel {
    committed: BTreeSet<i32>,
    deleting: BTreeSet<i32>,
    deleted: BTreeSet<i32>,
}

/// 8 threads on a pool of 4 for a bounded time: writes (some panicking inside their
/// transaction), deletes, keyset and streamed walks, reads, timed reads and reads through the
/// in-process cache, checked against a model of the committed rows. A cached read that misses
/// a row acknowledged before it began, or returns a row whose delete was acknowledged before
/// it began, is a stale read.
fn soak(_: &Env<C>, rng: &mut Rng) -> Row {
    let mut row = Row::new::<C>("soak: 8 threads, pool of 4, cached reads");
    let tdb = C::private_db(4);
    let cache = diesel_budget::cache::Cache::builder()
        .max_bytes(16 << 20)
        .build()
        .expect("cache");
    cache.attach(&tdb.db);
    let base = id_base(27);
    {
        let mut conn = tdb.db.get().expect("checkout");
        C::delete_range(&mut conn, base, base + 1_000_000);
    }
    let model: Arc<Mutex<SoakModel>> = Arc::default();
    let report = Arc::new(Mutex::new(Row::new::<C>("soak")));
    let stop = Arc::new(AtomicBool::new(false));
    let cached_reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let secs = env_u64("FAULT_SOAK_SECS", 8);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = tdb.db.clone();
            let model = Arc::clone(&model);
            let report = Arc::clone(&report);
            let stop = Arc::clone(&stop);
            let cache = cache.clone();
            let cached_reads = Arc::clone(&cached_reads);
            let seed = rng.next();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut next_id = base + t * 100_000;
                let mut mine: Vec<i32> = Vec::new();
                let mut local = Row::default();
                while !stop.load(Ordering::Relaxed) {
                    local.run(|row| {
                        let mut step = SoakStep {
                            db: &db,
                            cache: &cache,
                            model: &model,
                            rng: &mut rng,
                            next_id: &mut next_id,
                            mine: &mut mine,
                            row,
                        };
                        if step.run() {
                            cached_reads.fetch_add(1, Ordering::Relaxed);
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
                r.stale += local.stale;
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
    row.stale = r.stale;
    row.notes = r.notes;
    let stats = cache.stats();
    eprintln!(
        "{} / {}: {} cached reads ({} hits, {} misses, {} invalidations)",
        row.fault,
        row.backend,
        cached_reads.load(Ordering::Relaxed),
        stats.hits,
        stats.misses,
        stats.invalidations
    );
    // The end state is exactly the model.
    let model = model.lock().expect("model").committed.clone();
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

/// One operation of a soak thread.
struct SoakStep<'a> {
    db: &'a diesel_budget::Db<C>,
    cache: &'a diesel_budget::cache::Cache,
    model: &'a Mutex<SoakModel>,
    rng: &'a mut Rng,
    next_id: &'a mut i32,
    /// This thread's committed ids (the ones it may delete).
    mine: &'a mut Vec<i32>,
    row: &'a mut Row,
}

impl SoakStep<'_> {
    /// The rows a read that began at `before` must return: those committed then, minus those
    /// whose delete has begun by now.
    fn expected(&self, before: &SoakModel, range: std::ops::Range<i32>) -> BTreeSet<i32> {
        let deleting = self.model.lock().expect("model").deleting.clone();
        before
            .committed
            .range(range)
            .filter(|id| !deleting.contains(id))
            .copied()
            .collect()
    }

    /// Runs one random operation; returns whether it was a cached read.
    fn run(&mut self) -> bool {
        let base = id_base(27);
        let mut conn = match self.db.get() {
            Ok(c) => c,
            Err(e) => {
                self.row.other(e);
                return false;
            }
        };
        let before = self.model.lock().expect("model").clone();
        match self.rng.below(100) {
            // Write 1..=5 rows in a transaction; one in ten panics inside it.
            0..=29 => {
                let n = 1 + self.rng.below(5) as i32;
                let ids: Vec<i32> = (*self.next_id..*self.next_id + n).collect();
                *self.next_id += n;
                let doomed = self.rng.below(10) == 0;
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
                    Ok(Ok(())) => {
                        self.model.lock().expect("model").committed.extend(&ids);
                        self.mine.extend(&ids);
                    }
                    Ok(Err(e)) => {
                        self.row.other(format!("write: {e}"));
                        // Whatever is there now is the truth.
                        drop(conn);
                        let there = present(self.db, &ids);
                        self.mine.extend(&there);
                        self.model.lock().expect("model").committed.extend(there);
                    }
                    Err(_) if doomed => {
                        // The next write on the same `Conn` must commit for real.
                        let id = *self.next_id;
                        *self.next_id += 1;
                        match conn.transaction::<(), Error, _>(|c| insert_one(c, id)) {
                            Ok(()) => {
                                self.model.lock().expect("model").committed.insert(id);
                                self.mine.push(id);
                            }
                            Err(e) => self.row.other(format!("write after a panic: {e}")),
                        };
                    }
                    Err(p) => std::panic::resume_unwind(p),
                }
            }
            // Delete one of this thread's rows.
            30..=34 => {
                if self.mine.is_empty() {
                    return false;
                }
                let id = self
                    .mine
                    .swap_remove(self.rng.below(self.mine.len() as u64) as usize);
                self.model.lock().expect("model").deleting.insert(id);
                match diesel::delete(items::table.filter(items::id.eq(id)))
                    .execute(conn.unbudgeted())
                {
                    Ok(1) => {
                        let mut m = self.model.lock().expect("model");
                        m.committed.remove(&id);
                        m.deleted.insert(id);
                    }
                    Ok(n) => self.row.other(format!("delete of one row deleted {n}")),
                    Err(e) => self.row.other(format!("delete: {e}")),
                }
            }
            // Walk everything, keyset or streamed.
            35..=59 => {
                let mode = if self.rng.below(2) == 0 {
                    BatchMode::Keyset
                } else {
                    BatchMode::Stream
                };
                let mut seen = Vec::new();
                for r in items::table
                    .filter(in_range(base, 1_000_000))
                    .budget(Budget::rows(1 + self.rng.below(50)))
                    .batches_by(items::id, |i: &Item| i.id, &mut conn)
                    .mode(mode)
                    .rows()
                {
                    match r {
                        Ok(item) => seen.push(item.id),
                        Err(e) => {
                            self.row.other(format!("walk: {e}"));
                            return false;
                        }
                    }
                }
                let expected = self.expected(&before, base..base + 1_000_000);
                self.row.compare(&seen, &expected);
            }
            // Read a window, some under a time limit.
            60..=79 => {
                let from = base + self.rng.below(8) as i32 * 100_000;
                let budget = Budget::rows(100_000);
                let budget = if self.rng.below(2) == 0 {
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
                        let expected = self.expected(&before, from..from + 100_000);
                        self.row.compare(&ids, &expected);
                    }
                    Err(e) => self.row.other(format!("read: {e}")),
                }
            }
            // Read a window through the cache, three times in a row (hits, unless a write
            // came in between), each read held to the model.
            _ => {
                let from = base + self.rng.below(8) as i32 * 100_000;
                for _ in 0..3 {
                    self.cached_read(&mut conn, from);
                }
                return true;
            }
        }
        false
    }

    /// One read of the window at `from` through the cache: no row acknowledged before it began
    /// is missing, no row whose delete was acknowledged before it began is returned.
    fn cached_read(&mut self, conn: &mut diesel_budget::Conn<C>, from: i32) {
        let before = self.model.lock().expect("model").clone();
        let q = items::table
            .filter(in_range(from, 100_000))
            .select(items::id)
            .order(items::id)
            .budget(Budget::rows(100_000));
        match self.cache.load::<_, _, _, i32>(q, conn) {
            Ok(ids) => {
                let expected = self.expected(&before, from..from + 100_000);
                let unique: BTreeSet<i32> = ids.iter().copied().collect();
                self.row.duplicated += (ids.len() - unique.len()) as u64;
                let missing = expected.difference(&unique).count();
                let resurrected = unique.intersection(&before.deleted).count();
                if missing + resurrected > 0 {
                    self.row.stale += 1;
                    self.row.note(format!(
                        "stale read: {missing} acknowledged rows missing, \
                         {resurrected} deleted rows returned"
                    ));
                }
            }
            Err(e) => self.row.other(format!("cached read: {e}")),
        }
    }
}

/// Runs every case for this backend.
pub fn run_backend(extra: Vec<(&'static str, Case)>, seed: u64) -> Vec<Row> {
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
    let mut rows = Vec::new();
    for (i, (key, case)) in cases().into_iter().chain(extra).enumerate() {
        if !selected::<C>(key) {
            continue;
        }
        // Each case its own generator, so that FAULT_ONLY replays a case of a FAULT_SEED run.
        let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let start = Instant::now();
        let mut r = case(&env, &mut rng);
        r.key = key;
        eprintln!(
            "{} / {}: {} runs in {:.1} s",
            r.fault,
            r.backend,
            r.runs,
            start.elapsed().as_secs_f64()
        );
        rows.push(r);
    }
    if C::KIND == diesel_budget::BackendKind::Sqlite && selected::<C>("restart") {
        rows.push(Row {
            key: "restart",
            ..Row::new::<C>("server restart: n/a (embedded)")
        });
    }
    rows
}
