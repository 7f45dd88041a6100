// Included by tests/faults.rs into one module per backend: bulk writes that fail part-way
// (an injected constraint violation at a random row; on the servers also the session killed
// at a random time, tests/faults/bulk_killed.rs).

/// The bulk cases' ids: `BULK_FROM..BULK_FROM + BULK_PRE` exist before each run (the region's
/// "before" state); the input is `BULK_ROWS` rows after them.
fn bulk_from() -> i32 {
    id_base(28) + 300_000
}
const BULK_PRE: i32 = 100;
const BULK_ROWS: i32 = 1_000;
const BULK_CHUNK: usize = 100;

/// The region's rows in id order: (count, checksum over every column).
fn bulk_state(db: &diesel_budget::Db<C>) -> Result<(Vec<i32>, u64), Error> {
    let mut conn = db.get()?;
    let rows = items::table
        .filter(in_range(bulk_from(), BULK_PRE + BULK_ROWS + 1))
        .order(items::id)
        .budget(Budget::rows((BULK_PRE + BULK_ROWS + 2) as u64))
        .load::<Item>(&mut conn)?;
    Ok((rows.iter().map(|i| i.id).collect(), checksum(&rows)))
}

/// FNV-1a over the rows' `Debug` form: every column of every row, in order.
fn checksum(rows: &[Item]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in rows {
        for b in format!("{r:?}").bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The state the region must have when the first `n` input rows are written.
fn bulk_expected(n: i32) -> (Vec<i32>, u64) {
    let rows: Vec<Item> = (bulk_from()..bulk_from() + BULK_PRE + n)
        .map(Item::generate)
        .collect();
    (rows.iter().map(|i| i.id).collect(), checksum(&rows))
}

/// Empties the region and commits the "before" rows.
fn bulk_reset(db: &diesel_budget::Db<C>) {
    let mut conn = db.get().expect("checkout");
    C::delete_range(&mut conn, bulk_from(), bulk_from() + BULK_PRE + BULK_ROWS + 1);
    C::seed(&mut conn, bulk_from(), bulk_from() + BULK_PRE);
}

/// Compares the region with the state of `n` input rows written: lost and duplicated ids, and
/// a checksum mismatch (a row changed) as an other error.
fn bulk_check(row: &mut Row, db: &diesel_budget::Db<C>, n: i32, when: &str) {
    match bulk_state(db) {
        Ok((ids, sum)) => {
            let (want, want_sum) = bulk_expected(n);
            let want_set: BTreeSet<i32> = want.iter().copied().collect();
            row.compare(&ids, &want_set);
            let extra = ids.iter().filter(|id| !want_set.contains(id)).count();
            if extra > 0 {
                row.other(format!("{when}: {extra} rows that must not be there"));
            } else if ids.len() == want.len() && sum != want_sum {
                row.other(format!("{when}: the rows' contents differ (checksum)"));
            }
        }
        Err(e) => row.other(format!("{when}: reading the region: {e:?}")),
    }
}

/// The input with row `at` made to fail: its id made a duplicate of a row that exists (one of
/// the "before" rows, or an earlier input row).
fn bulk_input(rng: &mut Rng, at: usize) -> Vec<Item> {
    let first = bulk_from() + BULK_PRE;
    let mut input: Vec<Item> = (first..first + BULK_ROWS).map(Item::generate).collect();
    let dup = if at == 0 || rng.below(2) == 0 {
        bulk_from() + rng.below(BULK_PRE as u64) as i32
    } else {
        first + rng.below(at as u64) as i32
    };
    input[at] = Item {
        name: "the bad row".into(),
        ..Item::generate(dup)
    };
    input
}

/// A constraint violation at a random row of a bulk insert: atomic leaves the region as it
/// was (count and checksum); per chunk stops at the checkpoint of the failing chunk and,
/// the row fixed, resumes from it to the exact set.
fn bulk_injected(env: &Env<C>, rng: &mut Rng, atomic: bool) -> Row {
    let mut row = Row::new::<C>(if atomic {
        "bulk insert, atomic: constraint violation at a random row"
    } else {
        "bulk insert, per chunk: constraint violation at a random row, resumed"
    });
    let chunk = std::num::NonZeroUsize::new(BULK_CHUNK).expect("non-zero");
    for _ in 0..30 {
        let at = rng.below(BULK_ROWS as u64) as usize;
        let input = bulk_input(rng, at);
        row.run(|row| {
            bulk_reset(&env.tdb.db);
            let mut conn = env.tdb.db.get().expect("checkout");
            let write = bulk::insert_into(items::table, &input).chunk_rows(chunk);
            let write = if atomic { write.atomic() } else { write.per_chunk() };
            let unique = |e: &Error| {
                matches!(
                    e,
                    Error::Query {
                        source: diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::UniqueViolation,
                            _
                        ),
                        ..
                    }
                )
            };
            let committed = (at / BULK_CHUNK * BULK_CHUNK) as i32;
            match write.execute(&mut conn) {
                Ok(_) => return row.other("a bulk insert with a duplicate key succeeded"),
                Err(e) if atomic && unique(&e) => row.typed += 1,
                Err(Error::BulkInterrupted { checkpoint, source })
                    if !atomic && unique(&source) =>
                {
                    if checkpoint.rows_done == committed as u64 {
                        row.typed += 1;
                    } else {
                        row.other(format!(
                            "checkpoint at {} rows, the failing chunk starts at {committed}",
                            checkpoint.rows_done
                        ));
                    }
                    drop(conn);
                    bulk_check(row, &env.tdb.db, committed, "at the checkpoint");
                    // The bad row fixed, the same input resumes from the checkpoint.
                    let mut fixed = input.clone();
                    fixed[at] = Item::generate(bulk_from() + BULK_PRE + at as i32);
                    let mut conn = env.tdb.db.get().expect("checkout to resume");
                    if let Err(e) = bulk::insert_into(items::table, &fixed)
                        .chunk_rows(chunk)
                        .per_chunk()
                        .resume(checkpoint)
                        .execute(&mut conn)
                    {
                        return row.other(format!("resuming: {e:?}"));
                    }
                    drop(conn);
                    return bulk_check(row, &env.tdb.db, BULK_ROWS, "resumed");
                }
                Err(e) => return row.other(format!("{e:?}")),
            }
            drop(conn);
            bulk_check(row, &env.tdb.db, 0, "after the failed atomic write");
        });
    }
    let mut conn = env.tdb.db.get().expect("checkout");
    C::delete_range(&mut conn, bulk_from(), bulk_from() + BULK_PRE + BULK_ROWS + 1);
    row
}
