// Keyset walks that cannot lose rows: the order check, exact resume keys, boxed queries walked
// from a closure, and byte-budgeted walks that read each row about once. Included once per
// backend (same module as helpers.rs, whose helpers it uses); test numbers 91..=97 and 49.

use diesel_budget::batch::RowsOf;

/// Every way a walk hands out rows, by name.
const WAYS: [&str; 4] = ["batches keyset", "batches stream", "rows keyset", "stream_by"];

/// Drives `iter` (at most `cap` items, so a walk that never ends fails instead of hanging) until
/// its first error; returns the items before it and the error, after checking the iterator ends
/// there. `len` counts the rows of an item.
#[track_caller]
fn first_error<T>(
    what: &str,
    mut iter: impl Iterator<Item = diesel_budget::Result<T>>,
    len: impl Fn(&T) -> usize,
    cap: usize,
) -> (usize, Error) {
    let mut delivered = 0;
    for _ in 0..cap {
        match iter.next() {
            Some(Ok(item)) => delivered += len(&item),
            Some(Err(e)) => {
                assert!(iter.next().is_none(), "{what}: the walk goes on after {e}");
                return (delivered, e);
            }
            None => panic!("{what}: the walk ended normally after {delivered} rows"),
        }
    }
    panic!("{what}: no error and no end after {cap} items ({delivered} rows)")
}

/// Checks `err` is `KeyOrder` on `columns` after `delivered` rows, and that its message names
/// the columns but not the keys.
#[track_caller]
fn assert_key_order(what: &str, err: &Error, columns: &[&str], delivered: usize) {
    match err {
        Error::KeyOrder {
            key,
            previous,
            next,
            rows_done,
        } => {
            assert_eq!(key, columns, "{what}: {err:?}");
            assert_eq!(*rows_done, delivered as u64, "{what}: {err:?}");
            let msg = err.to_string();
            for column in columns {
                assert!(msg.contains(column), "{what}: {msg}");
            }
            for k in [previous, next] {
                assert!(!k.is_empty(), "{what}: {err:?}");
                // Short keys ("3") could be any digit of the message; ids are 7+ digits.
                if k.len() >= 5 {
                    assert!(!msg.contains(k.as_str()), "{what}: key {k} in {msg}");
                }
            }
        }
        other => panic!("{what}: expected KeyOrder, got {other:?}"),
    }
}

/// Runs the walk `$build` (a budgeted query) by `$key`/`$key_of` in every way and checks each
/// ends in `KeyOrder` on `$columns` (after `$before` rows, when given). A macro: each case has
/// its own query, key and key types.
macro_rules! each_way_is_key_order {
    ($conn:expr, $build:expr, $key:expr, $key_of:expr, $columns:expr) => {
        each_way_is_key_order!($conn, $build, $key, $key_of, $columns, None::<usize>)
    };
    ($conn:expr, $build:expr, $key:expr, $key_of:expr, $columns:expr, $before:expr) => {
        for way in WAYS {
            let conn = &mut *$conn;
            let (delivered, err) = match way {
                "batches keyset" | "batches stream" => {
                    let mode = if way == "batches keyset" {
                        BatchMode::Keyset
                    } else {
                        BatchMode::Stream
                    };
                    first_error(
                        way,
                        $build.batches_by($key, $key_of, conn).mode(mode),
                        Vec::len,
                        1_000,
                    )
                }
                "rows keyset" => first_error(
                    way,
                    $build.batches_by($key, $key_of, conn).rows(),
                    |_| 1,
                    10_000,
                ),
                _ => first_error(way, $build.stream_by($key, $key_of, conn), |_| 1, 10_000),
            };
            assert_key_order(way, &err, &$columns, delivered);
            if let Some(before) = $before {
                assert_eq!(delivered, before, "{way}: rows delivered before KeyOrder");
            }
        }
    };
}

#[test]
fn a_non_unique_key_is_a_key_order_error() {
    let mut ctx = C::seeded(91, 100);
    let base = ctx.base;
    each_way_is_key_order!(
        ctx.conn,
        items::table
            .filter(in_range(base, 100))
            .budget(Budget::rows(7)),
        items::category,
        |i: &Item| i.category,
        ["category"]
    );
}

#[test]
fn a_join_that_repeats_rows_is_a_key_order_error() {
    let mut ctx = C::seeded(92, 100);
    let base = ctx.base;
    // Each item joined to itself and to the next id: two rows per item (one for the last).
    let other = diesel::alias!(items as other);
    let fan_out = || {
        items::table
            .inner_join(
                other.on(other
                    .field(items::id)
                    .between(items::id, items::id + 1)),
            )
            .filter(in_range(base, 100))
            .select(items::all_columns)
    };
    let n: i64 = fan_out()
        .count()
        .budget(Budget::rows(1))
        .first(&mut *ctx.conn)
        .expect("count");
    assert_eq!(n, 199, "the join fans out");
    each_way_is_key_order!(
        ctx.conn,
        fan_out().budget(Budget::rows(7)),
        items::id,
        |i: &Item| i.id,
        ["id"]
    );
}

#[test]
fn a_key_reader_that_reads_another_column_is_a_key_order_error() {
    let mut ctx = C::seeded(93, 100);
    let base = ctx.base;
    each_way_is_key_order!(
        ctx.conn,
        items::table
            .filter(in_range(base, 100))
            .budget(Budget::rows(7)),
        items::id,
        |i: &Item| i.category,
        ["id"]
    );
}

#[test]
fn a_composite_read_in_the_wrong_order_is_a_key_order_error() {
    let mut ctx = C::seeded(94, 100);
    let base = ctx.base;
    each_way_is_key_order!(
        ctx.conn,
        items::table
            .filter(in_range(base, 100))
            .budget(Budget::rows(7)),
        Composite(items::category, items::id),
        |i: &Item| (i.id, i.category),
        ["category", "id"]
    );
}

/// A small deterministic generator (no dependency): the seed is printed on failure.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

/// Takes `stop` rows from `rows`, checks `resume_key` is the last one's key at every step,
/// and returns their ids.
#[track_caller]
fn take_checking_resume<'c, Q, F, M>(
    what: &str,
    rows: &mut RowsOf<'c, C, Q, items::id, i32, Item, F, M>,
    stop: usize,
) -> Vec<i32>
where
    RowsOf<'c, C, Q, items::id, i32, Item, F, M>: Iterator<Item = diesel_budget::Result<Item>>,
{
    let mut got = Vec::new();
    for _ in 0..stop {
        let Some(row) = rows.next() else { break };
        let id = row.unwrap_or_else(|e| panic!("{what}: {e}")).id;
        got.push(id);
        assert_eq!(rows.resume_key(), Some(&id), "{what}: after {} rows", got.len());
        assert_eq!(rows.rows_done(), got.len() as u64, "{what}");
    }
    got
}

#[test]
fn resume_key_is_the_last_row_handed_out() {
    const N: i32 = 1_000;
    let mut ctx = C::seeded(95, N);
    let base = ctx.base;
    let mut seed = u64::from(std::process::id()) ^ 0x5eed;
    let random = 1 + (lcg(&mut seed) % (N as u64 - 1)) as usize;
    let key_of = |i: &Item| i.id;
    let q = || items::table.filter(in_range(base, N)).budget(Budget::rows(100));
    for stop in [1, 99, 100, 101, 250, 999, 1_000, random] {
        for way in ["rows keyset", "rows stream", "stream_by"] {
            let what = format!("{way}, stop at {stop} (random: {random})");
            let mode = if way == "rows keyset" {
                BatchMode::Keyset
            } else {
                BatchMode::Stream
            };
            let (mut got, key) = {
                let mut rows = if way == "stream_by" {
                    q().stream_by(items::id, key_of, &mut *ctx.conn)
                } else {
                    q().batches_by(items::id, key_of, &mut *ctx.conn)
                        .mode(mode)
                        .rows()
                };
                let got = take_checking_resume(&what, &mut rows, stop);
                assert_eq!(got.len(), stop, "{what}");
                (got, *rows.resume_key().expect("a key"))
            };
            assert_eq!(key, base + stop as i32 - 1, "{what}");
            // Resume: through the rows iterator's own `after` (stream_by) or the batches'.
            let rest: Vec<i32> = if way == "stream_by" {
                q().stream_by(items::id, key_of, &mut *ctx.conn)
                    .after(key)
                    .map(|r| r.expect("row").id)
                    .collect()
            } else {
                q().batches_by(items::id, key_of, &mut *ctx.conn)
                    .mode(mode)
                    .after(key)
                    .rows()
                    .map(|r| r.expect("row").id)
                    .collect()
            };
            got.extend(rest);
            assert_eq!(got, span(base, base + N), "{what}: every row exactly once");
        }
    }
}

#[test]
fn boxed_queries_are_walked_from_a_closure() {
    type DB = <C as diesel::Connection>::Backend;
    let mut ctx = C::seeded(96, 100);
    let base = ctx.base;
    // Filters chosen at run time, as a request handler would.
    for (category, min_id) in [(Some(3), None), (None, Some(base + 40)), (Some(7), Some(base + 50))]
    {
        let build = || {
            let mut q: items::BoxedQuery<'_, DB> =
                items::table.filter(in_range(base, 100)).into_boxed();
            if let Some(c) = category {
                q = q.filter(items::category.eq(c));
            }
            if let Some(m) = min_id {
                q = q.filter(items::id.ge(m));
            }
            q
        };
        let want: Vec<i32> = (base..base + 100)
            .filter(|id| category.is_none_or(|c| id % 10 == c))
            .filter(|id| min_id.is_none_or(|m| *id >= m))
            .collect();
        let what = format!("category {category:?}, id >= {min_id:?}");
        for mode in MODES {
            let batches = walk(
                Budget::rows(7)
                    .walk(build)
                    .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
                    .mode(mode),
                7,
            );
            let got: Vec<i32> = batches.iter().flat_map(|b| ids(b)).collect();
            assert_eq!(got, want, "{what}, {mode:?}");
        }
        let got: Vec<i32> = Budget::rows(7)
            .walk(build)
            .stream_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
            .map(|r| r.expect("row").id)
            .collect();
        assert_eq!(got, want, "{what}, stream_by");
        // A composite key and a resume work the same on a boxed query.
        let got: Vec<i32> = Budget::rows(3)
            .walk(build)
            .batches_by(
                Composite(items::category, items::id),
                |i: &Item| (i.category, i.id),
                &mut *ctx.conn,
            )
            .rows()
            .map(|r| r.expect("row").id)
            .collect();
        let mut by_category = want.clone();
        by_category.sort_by_key(|id| (id % 10, *id));
        assert_eq!(got, by_category, "{what}, composite");
    }
    // A boxed query with its own LIMIT is refused like any other.
    let first = Budget::rows(7)
        .walk(|| {
            items::table
                .filter(in_range(base, 100))
                .limit(5)
                .into_boxed::<DB>()
        })
        .batches_by(items::id, |i: &Item| i.id, &mut *ctx.conn)
        .next();
    assert!(
        matches!(first, Some(Err(Error::InvalidArgument { .. }))),
        "{first:?}"
    );
}

#[test]
fn byte_budgeted_walks_read_each_row_about_once() {
    const N: i32 = 600;
    let mut ctx = C::seeded(97, N);
    let base = ctx.base;
    let sizes = sizes(&mut ctx, N);
    let avg = sizes.iter().sum::<u64>() / N as u64;
    // Room for about 20 rows, under a row budget far larger than the table.
    let bytes = avg * 20;
    for mode in MODES {
        let (batches, ledger) = testing::record(&mut *ctx.conn, |conn| {
            walk(
                items::table
                    .filter(in_range(base, N))
                    .budget(Budget::rows(100_000).bytes(bytes))
                    .batches_by(items::id, |i: &Item| i.id, conn)
                    .mode(mode),
                100_000,
            )
        });
        let got: Vec<i32> = batches.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(got, span(base, base + N), "{mode:?}");
        for batch in &batches {
            let b: u64 = batch.iter().map(|i| i.get_size() as u64).sum();
            assert!(b <= bytes, "{mode:?}: a batch of {b} bytes > {bytes}");
        }
        if mode == BatchMode::Stream && <C as BudgetConnection>::STREAMS {
            // One statement; the stream hands over one row at a time.
            assert_eq!(ledger.round_trips(), 1, "{ledger}");
            continue;
        }
        // What the server could send: the sum of the LIMITs. Each row about once (the first
        // statement asks for 100 rows before any size is known; a cut batch re-reads a few).
        let limits: i64 = ledger.statements().iter().map(last_bind).sum();
        assert!(
            limits <= i64::from(N) * 5 / 4 + 100,
            "{mode:?}: LIMITs add up to {limits} for {N} rows:\n{ledger}"
        );
        assert!(
            ledger.rows() <= N as u64 * 5 / 4,
            "{mode:?}: received {} rows for {N}:\n{ledger}",
            ledger.rows()
        );
        // And batches stay near what fits, not one row at a time.
        assert!(
            batches.len() <= (N as usize / 20) * 3 / 2 + 2,
            "{mode:?}: {} batches:\n{ledger}",
            batches.len()
        );
    }
}

/// Inserts one row per key of `keys` (ids `from..`): category and `created_at` both the key, so
/// `items::category` and `Composite(category, created_at)` repeat exactly where `keys` does.
fn insert_keys(ctx: &mut Ctx<C>, from: i32, keys: &[i32]) {
    let rows: Vec<Item> = keys
        .iter()
        .zip(from..)
        .map(|(&k, id)| Item {
            category: k,
            created_at: i64::from(k),
            ..Item::generate(id)
        })
        .collect();
    testing::allow_unbudgeted("fixture: rows with repeated keys", || {
        diesel::insert_into(items::table)
            .values(&rows)
            .execute(ctx.conn.unbudgeted())
    })
    .expect("insert rows with repeated keys");
}

/// Equal keys falling exactly on a batch boundary (the batch's last row has key k, the next
/// rows in order have key k too): the next batch's `key > k` would skip them. Every way of
/// walking says `KeyOrder` after the rows before the repeated key, for a column and for a
/// composite whose whole tuple repeats, under a row budget and under byte budgets (cut by the
/// rows, and cut by the bytes), in the middle of a walk and at its very end.
#[test]
fn keys_repeated_across_a_batch_boundary_are_a_key_order_error() {
    let mut ctx = C::ctx(49);
    let base = ctx.base;
    let row_bytes = Item::generate(base).get_size() as u64;
    // (keys, budget rows, budget bytes, rows delivered before the repeated key)
    let cases: [(&[i32], u64, Option<u64>, usize); 5] = [
        // Batches of 4: the 4th and 5th rows share key 3.
        (&[0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9], 4, None, 4),
        // The same at the very end of the walk: the batch after the boundary is empty.
        (&[0, 1, 2, 3, 3], 4, None, 4),
        // Three times over the boundary.
        (&[0, 1, 2, 3, 3, 3, 4], 4, None, 4),
        // A byte budget that never binds: batches of 4 rows, metered.
        (&[0, 1, 2, 3, 3, 4, 5, 6, 7], 4, Some(1 << 30), 4),
        // Batches cut by the bytes after 3 rows: the row that did not fit repeats the key.
        (
            &[0, 1, 2, 2, 3, 4, 5, 6, 7],
            100,
            Some(3 * row_bytes + row_bytes / 2),
            3,
        ),
    ];
    for (i, (keys, rows, bytes, before)) in cases.into_iter().enumerate() {
        let from = base + 1_000 * i as i32;
        let n = keys.len() as i32;
        insert_keys(&mut ctx, from, keys);
        eprintln!("case {i}: keys {keys:?}, rows {rows}, bytes {bytes:?}");
        // Each way stops with KeyOrder after exactly the rows before the repeated key.
        macro_rules! both_keys {
            ($budget:expr) => {{
                each_way_is_key_order!(
                    ctx.conn,
                    items::table.filter(in_range(from, n)).budget($budget),
                    items::category,
                    |i: &Item| i.category,
                    ["category"],
                    Some(before)
                );
                each_way_is_key_order!(
                    ctx.conn,
                    items::table.filter(in_range(from, n)).budget($budget),
                    Composite(items::category, items::created_at),
                    |i: &Item| (i.category, i.created_at),
                    ["category", "created_at"],
                    Some(before)
                );
            }};
        }
        match bytes {
            None => both_keys!(Budget::rows(rows)),
            Some(b) => both_keys!(Budget::rows(rows).bytes(b)),
        }
    }
}
