// Included by tests/faults.rs for PostgreSQL and MariaDB: bulk writes whose session is killed
// at a random time.

/// The session of a bulk insert killed from another thread at a random time within about one
/// write: atomic leaves the region as it was (or, when the kill came after the commit, holds
/// everything); per chunk stops at a checkpoint, and resuming from it on a fresh connection
/// gives the exact set.
fn bulk_killed(env: &Env<C>, rng: &mut Rng, atomic: bool) -> Row {
    let mut row = Row::new::<C>(if atomic {
        "bulk insert, atomic: killed at a random time"
    } else {
        "bulk insert, per chunk: killed at a random time, resumed"
    });
    let chunk = std::num::NonZeroUsize::new(BULK_CHUNK).expect("non-zero");
    let first = bulk_from() + BULK_PRE;
    let input: Vec<Item> = (first..first + BULK_ROWS).map(Item::generate).collect();
    let write = |conn: &mut diesel_budget::Conn<C>, resume: Option<bulk::Checkpoint>| {
        let w = bulk::insert_into(items::table, &input).chunk_rows(chunk);
        let w = if atomic { w.atomic() } else { w.per_chunk() };
        match resume {
            Some(c) => w.resume(c).execute(conn),
            None => w.execute(conn),
        }
    };
    // How long one write takes here.
    bulk_reset(&env.tdb.db);
    let start = Instant::now();
    {
        let mut conn = env.tdb.db.get().expect("checkout");
        write(&mut conn, None).expect("a bulk write without faults");
    }
    let write_us = start.elapsed().as_micros().max(1) as u64;
    let mut ambiguous = 0;
    for _ in 0..env_u64("FAULT_BULK_RUNS", 30) {
        let after = Duration::from_micros(rng.below(write_us));
        row.run(|row| {
            bulk_reset(&env.tdb.db);
            let mut victim = env.tdb.db.get().expect("victim");
            let pid = C::session_id(&mut victim);
            let mut killer = env.tdb.db.get().expect("killer");
            let t = std::thread::spawn(move || {
                std::thread::sleep(after);
                C::kill(&mut killer, pid);
            });
            let r = write(&mut victim, None);
            if t.join().is_err() {
                row.other("the killer thread panicked");
            }
            drop(victim);
            let state = bulk_state(&env.tdb.db).map(|(ids, _)| ids.len() as i32 - BULK_PRE);
            match r {
                // The kill came after the last commit.
                Ok(_) => bulk_check(row, &env.tdb.db, BULK_ROWS, "written"),
                Err(e) if atomic && e.is_connection_lost() => {
                    row.typed += 1;
                    // All or nothing: nothing, or everything when the kill took the
                    // acknowledgement of a COMMIT that happened.
                    let all = state.as_ref().is_ok_and(|&n| n == BULK_ROWS);
                    ambiguous += u64::from(all);
                    bulk_check(row, &env.tdb.db, if all { BULK_ROWS } else { 0 }, "atomic, killed");
                }
                Err(e) if !atomic && e.is_connection_lost() => {
                    let Error::BulkInterrupted { checkpoint, .. } = e else {
                        return row.other(format!("not BulkInterrupted: {e:?}"));
                    };
                    row.typed += 1;
                    let done = checkpoint.rows_done as i32;
                    // The chunks before the checkpoint; one more when the kill took the
                    // acknowledgement of its COMMIT.
                    let n = match state {
                        Ok(n) if n == done + BULK_CHUNK as i32 => {
                            ambiguous += 1;
                            n
                        }
                        _ => done,
                    };
                    bulk_check(row, &env.tdb.db, n, "at the checkpoint");
                    let mut conn = env.tdb.db.get().expect("checkout to resume");
                    let resumed = if n == done {
                        write(&mut conn, Some(checkpoint))
                    } else {
                        // Its commit happened: the idempotent form skips that chunk's rows.
                        bulk::insert_into(items::table, &input)
                            .chunk_rows(chunk)
                            .per_chunk()
                            .on_conflict_do_nothing(items::id, |i: &&Item| i.id)
                            .resume(checkpoint)
                            .execute(&mut conn)
                    };
                    if let Err(e) = resumed {
                        return row.other(format!("resuming: {e:?}"));
                    }
                    drop(conn);
                    bulk_check(row, &env.tdb.db, BULK_ROWS, "resumed");
                }
                Err(e) => row.other(format!("{e:?}")),
            }
        });
    }
    if ambiguous > 0 {
        eprintln!(
            "{} / {}: {ambiguous} kills took the acknowledgement of a COMMIT that happened",
            row.fault, row.backend
        );
    }
    let mut conn = env.tdb.db.get().expect("checkout");
    C::delete_range(&mut conn, bulk_from(), bulk_from() + BULK_PRE + BULK_ROWS + 1);
    row
}
