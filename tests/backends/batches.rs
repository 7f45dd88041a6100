// Batched loading: keyset batches and streams deliver every row once, in key order (all backends).

// ---------------------------------------------------------------------------------------------
// 5. Batches.

#[test]
fn batches_deliver_every_row_once_in_key_order() {
    let mut ctx = C::seeded(20, 100);
    let base = ctx.base;
    for mode in MODES {
        for (n, b) in [
            (100, 7),
            (70, 7),
            (100, 10),
            (100, 100),
            (100, 1000),
            (1, 1),
        ] {
            let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
                // Any ORDER BY of the query is replaced by the key.
                let mut batches = items::table
                    .filter(in_range(base, n))
                    .order(items::name.desc())
                    .budget(Budget::rows(b as u64))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode);
                let walked = walk(&mut batches, b);
                (walked, batches.rows_done(), batches.resume_key().copied())
            });
            let (walked, rows_done, resume) = res;
            let all: Vec<i32> = walked.iter().flat_map(|b| ids(b)).collect();
            assert_eq!(all, span(base, base + n), "{mode:?}, {n} rows by {b}");
            assert_eq!(walked.len(), (n as usize).div_ceil(b), "{mode:?} batches");
            assert_eq!(rows_done, n as u64);
            assert_eq!(resume, Some(base + n - 1));
            assert_eq!(
                ledger.round_trips(),
                round_trips(mode, n as usize, b),
                "{mode:?}, {n} rows by {b}:\n{ledger}"
            );
            assert_eq!(ledger.rows(), walk_rows(mode, n as usize, b), "{ledger}");
            ledger.assert().no_unbudgeted_queries();
        }
    }
}

#[test]
fn batches_by_a_composite_key() {
    let mut ctx = C::seeded(21, 100);
    let base = ctx.base;
    let mut want: Vec<(i32, i32)> = (base..base + 100)
        .map(|id| (Item::generate(id).category, id))
        .collect();
    want.sort();
    for mode in MODES {
        let walked = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(7))
                .batches_by(
                    Composite(items::category, items::id),
                    |i: &Item| (i.category, i.id),
                    &mut *ctx.conn,
                )
                .mode(mode),
            7,
        );
        let got: Vec<(i32, i32)> = walked
            .iter()
            .flatten()
            .map(|i| (i.category, i.id))
            .collect();
        assert_eq!(got, want, "{mode:?}");
        // Resuming after a composite key.
        let at = want[41];
        let rest: Vec<(i32, i32)> = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(9))
                .batches_by(
                    Composite(items::category, items::id),
                    |i: &Item| (i.category, i.id),
                    &mut *ctx.conn,
                )
                .mode(mode)
                .after(at),
            9,
        )
        .iter()
        .flatten()
        .map(|i| (i.category, i.id))
        .collect();
        assert_eq!(rest, want[42..], "{mode:?} after {at:?}");
    }
}

#[test]
fn byte_budgets_split_batches_without_losing_or_repeating_rows() {
    let mut ctx = C::seeded(22, 50);
    let base = ctx.base;
    let sizes = sizes(&mut ctx, 50);
    let max = *sizes.iter().max().expect("rows");
    // Room for three and a half of the largest rows: batches of 3, whatever the row count.
    let b = max * 7 / 2;
    for mode in MODES {
        let (walked, ledger) = testing::record(&mut *ctx.conn, |conn| {
            walk(
                items::table
                    .filter(in_range(base, 50))
                    .budget(Budget::rows(20).bytes(b))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode),
                20,
            )
        });
        let all: Vec<i32> = walked.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(all, span(base, base + 50), "{mode:?}");
        for (i, batch) in walked.iter().enumerate() {
            let bytes: u64 = batch.iter().map(|i| i.get_size() as u64).sum();
            assert!(bytes <= b, "{mode:?}: batch of {bytes} bytes > {b}");
            // Three rows always fit, so only the last batch may be smaller.
            if i + 1 < walked.len() {
                assert!(
                    batch.len() >= 3,
                    "{mode:?}: batch {i} of {} rows",
                    batch.len()
                );
            }
        }
        assert!(walked.len() >= 50 / 4, "{mode:?}: {} batches", walked.len());
        ledger.assert().no_unbudgeted_queries();

        // A single row larger than the byte budget cannot be delivered.
        let mut batches = items::table
            .filter(in_range(base, 50))
            .budget(Budget::rows(20).bytes(max / 2))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode);
        match batches.next() {
            Some(Err(Error::Interrupted {
                rows_done: 0,
                resume_after: None,
                source,
            })) => assert!(
                matches!(
                    *source,
                    Error::BudgetExceeded {
                        exceeded: Exceeded::Bytes,
                        ..
                    }
                ),
                "{source:?}"
            ),
            other => panic!("{mode:?}: expected Interrupted(BudgetExceeded), got {other:?}"),
        }
        assert!(batches.next().is_none(), "batches end after an error");
    }
}

#[test]
fn after_resumes_right_after_the_key() {
    let mut ctx = C::seeded(23, 100);
    let base = ctx.base;
    for mode in MODES {
        let rest = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(base + 49),
            8,
        );
        let all: Vec<i32> = rest.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(all, span(base + 50, base + 100), "{mode:?}");
        // A walk stopped part-way resumes from its resume key.
        let mut first = items::table
            .filter(in_range(base, 100))
            .budget(Budget::rows(8))
            .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .mode(mode);
        let mut seen: Vec<i32> = Vec::new();
        for _ in 0..3 {
            seen.extend(ids(&first.next().expect("a batch").expect("ok")));
        }
        let key = *first.resume_key().expect("a key after 3 batches");
        assert_eq!(first.rows_done(), 24);
        drop(first);
        assert_eq!(key, base + 23);
        let rest = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(key),
            8,
        );
        seen.extend(rest.iter().flat_map(|b| ids(b)));
        assert_eq!(seen, span(base, base + 100), "{mode:?}");
        // After the last key: nothing.
        let none = walk(
            items::table
                .filter(in_range(base, 100))
                .budget(Budget::rows(8))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
                .after(base + 99),
            8,
        );
        assert!(none.is_empty(), "{mode:?}");
    }
}

#[test]
fn batches_reject_a_query_with_its_own_limit() {
    let mut ctx = C::seeded(24, 30);
    let base = ctx.base;
    for mode in MODES {
        let (first, ledger) = testing::record(&mut *ctx.conn, |conn| {
            let mut batches = items::table
                .filter(in_range(base, 30))
                .order(items::id)
                .limit(5)
                .budget(Budget::rows(10))
                .batches_by(items::id, |i: &Item| i.id, conn)
                .mode(mode);
            let first = batches.next();
            assert!(batches.next().is_none(), "batches end after the error");
            first
        });
        assert!(
            matches!(first, Some(Err(Error::InvalidArgument { .. }))),
            "{mode:?}: {first:?}"
        );
        assert!(ledger.statements().is_empty(), "{ledger}");
    }
}

#[test]
fn a_large_table_is_walked_one_batch_at_a_time() {
    const N: i32 = 200_000;
    const B: usize = 10_000;
    let mut ctx = C::seeded(30, N);
    let base = ctx.base;
    // What one batch and the whole table hold in memory, measured as the executor does.
    let batch_bytes: u64 = sizes(&mut ctx, B as i32).iter().sum();
    let table_bytes = batch_bytes * (N as u64 / B as u64);
    for mode in MODES {
        let ((count, batches, next_id), peak) = crate::alloc::peak_during(|| {
            let (mut count, mut batches, mut next_id) = (0u64, 0usize, base);
            for batch in items::table
                .filter(in_range(base, N))
                .budget(Budget::rows(B as u64))
                .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                .mode(mode)
            {
                let batch = batch.expect("batch");
                assert!(batch.len() <= B);
                for item in &batch {
                    assert_eq!(item.id, next_id, "{mode:?}: order");
                    next_id += 1;
                }
                count += batch.len() as u64;
                batches += 1;
            }
            (count, batches, next_id)
        });
        assert_eq!(count, N as u64, "{mode:?}");
        assert_eq!(next_id, base + N);
        assert_eq!(batches, N as usize / B);
        // One batch at a time, with its Vec's spare capacity (a growing Vec briefly holds its
        // old and new buffers: measured 1.44 batches at most), never two batches (2.0) and
        // nothing like the table (20).
        assert!(
            peak < batch_bytes * 7 / 4 && peak < table_bytes / 10,
            "{mode:?}: peak {peak} bytes held; one batch is {batch_bytes}, the table {table_bytes}"
        );
    }
}

/// `stream_by` / `Batches::rows`: every row once, in key order, one statement where the backend
/// streams; a row over the byte budget is an error; a walk resumes after the last row delivered.
#[test]
fn rows_come_one_at_a_time_in_key_order() {
    const N: i32 = 1_000;
    let mut ctx = C::seeded(31, N);
    let base = ctx.base;
    for b in [1u64, 7, 1_000, 5_000] {
        let (res, ledger) = testing::record(&mut *ctx.conn, |conn| {
            let mut rows = items::table
                .filter(in_range(base, N))
                .budget(Budget::rows(b))
                .stream_by(items::id, |i: &Item| i.id, conn);
            let got: Vec<i32> = (&mut rows).map(|r| r.expect("row").id).collect();
            (got, rows.rows_done(), rows.resume_key().copied())
        });
        let (got, rows_done, resume) = res;
        assert_eq!(got, span(base, base + N), "budget {b}");
        assert_eq!(rows_done, N as u64);
        assert_eq!(resume, Some(base + N - 1));
        assert_eq!(
            ledger.round_trips(),
            round_trips(BatchMode::Stream, N as usize, b as usize),
            "budget {b}:\n{ledger}"
        );
        assert_eq!(
            ledger.rows(),
            walk_rows(BatchMode::Stream, N as usize, b as usize),
            "{ledger}"
        );
        ledger.assert().no_unbudgeted_queries();
    }

    // Keyset batches read one row at a time: same rows, one statement per batch (+1).
    let got: Vec<i32> = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(300))
        .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .rows()
        .map(|r| r.expect("row").id)
        .collect();
    assert_eq!(got, span(base, base + N));

    // Stopping part-way and resuming: `resume_key_is_the_last_row_handed_out` (walks.rs).

    // A byte budget bounds each streamed row (each batch where the backend cannot stream).
    let one_row = sizes(&mut ctx, 1)[0];
    let err = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(10).bytes(one_row - 1))
        .stream_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .find_map(|r| r.err())
        .expect("a row over the byte budget is an error");
    match err {
        Error::Interrupted { source, rows_done: 0, resume_after: None } => assert!(
            matches!(*source, Error::BudgetExceeded { exceeded: Exceeded::Bytes, .. }),
            "{source:?}"
        ),
        other => panic!("expected Interrupted(BudgetExceeded), got {other:?}"),
    }
    let all: Vec<i32> = items::table
        .filter(in_range(base, N))
        .budget(Budget::rows(10).bytes(one_row * 3))
        .stream_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .map(|r| r.expect("row").id)
        .collect();
    assert_eq!(all, span(base, base + N));
}
