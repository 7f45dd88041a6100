//! The walk state machine driven by rows in memory, the way r2d2 tests its pool with fake
//! managers: a [`Fake`] source plays the database (rows in key order, `WHERE id > after ORDER
//! BY id LIMIT n`, the end probe, one streamed statement) and can fail a statement at a row,
//! end a stream early, hold a key twice, or be read by a `key_of` that reads another column.
//! Each test checks what the walk delivers, its resume key, its row count, the errors
//! ([`Error::KeyOrder`], [`Error::Interrupted`]) and the statements it ran. No database: the
//! rows go through the executor's real [`Cursor`], so metering (rows, bytes, the row that did
//! not fit) is the production code.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::QueryResult;

use super::machine::{Batch, Machine, Source};
use super::BatchMode;
use crate::budget::{Budget, BudgetSpec, Meter, Metering, Overflow};
use crate::error::{Error, Result};
use crate::exec::{Cursor, Loaded, Lookahead, Take};
use crate::instrument::StatementTag;

/// A row: `id` is the key column the fake database orders and filters by; `key` is what the
/// walk's `key_of` reads (equal to `id` unless a test makes it read "another column").
#[derive(Debug, Clone, PartialEq, get_size2::GetSize)]
struct Row {
    id: i64,
    key: i64,
    pad: String,
}

/// Rows `ids`, each read as its own key, with `pad` bytes of payload.
fn rows(ids: impl IntoIterator<Item = i64>, pad: usize) -> Vec<Row> {
    ids.into_iter()
        .map(|id| Row {
            id,
            key: id,
            pad: "x".repeat(pad),
        })
        .collect()
}

/// A statement the walk ran on the fake.
#[derive(Debug, Clone, PartialEq)]
enum Ran {
    Batch { after: Option<i64>, limit: u64 },
    Probe { at: i64 },
    Stream { after: Option<i64> },
}

/// The fake database.
#[derive(Debug, Default)]
struct Fake {
    /// The table in the database's order of `id` (an id may repeat: a key that is not unique).
    table: Vec<Row>,
    /// Whether streamed walks stream (PostgreSQL, SQLite) or run keyset batches (MySQL).
    streams: bool,
    /// Reading the row with this id fails (the connection is lost there).
    fail_at: Option<i64>,
    /// A stream ends, without an error, after this many rows.
    stream_ends_after: Option<usize>,
    /// The walk's query has a LIMIT of its own (refused before any statement).
    own_limit: bool,
    /// The statements run, in order.
    ran: Vec<Ran>,
}

const SQL: &str = "SELECT .. FROM fake WHERE id > ? ORDER BY id LIMIT ?";

impl Fake {
    fn new(table: Vec<Row>) -> Self {
        Fake {
            table,
            ..Fake::default()
        }
    }

    fn streaming(mut self) -> Self {
        self.streams = true;
        self
    }

    /// What the database sends for `WHERE id > after ORDER BY id`: the rows, or an error at the
    /// failing row (and nothing after it).
    fn after(&self, after: Option<i64>) -> Vec<QueryResult<Row>> {
        let mut out = Vec::new();
        for row in self.table.iter().filter(|r| after.is_none_or(|a| r.id > a)) {
            if self.fail_at == Some(row.id) {
                out.push(Err(DieselError::DatabaseError(
                    DatabaseErrorKind::ClosedConnection,
                    Box::new("server closed the connection unexpectedly".to_owned()),
                )));
                break;
            }
            out.push(Ok(row.clone()));
        }
        out
    }
}

type FakeStream<M> = Cursor<std::vec::IntoIter<QueryResult<Row>>, String, Row, M>;

impl<M: Meter<Row>> Source<Row, i64, M> for Fake {
    type Stream = FakeStream<M>;

    fn can_stream(&self) -> bool {
        self.streams
    }

    fn key_columns(&self) -> Vec<&'static str> {
        vec!["id"]
    }

    fn check(&mut self) -> Result<()> {
        if self.own_limit {
            return Err(Error::InvalidArgument {
                name: "query",
                reason: "a LIMIT of its own".into(),
            });
        }
        Ok(())
    }

    fn batch(&mut self, after: Option<i64>, spec: BudgetSpec, limit: u64) -> Result<Batch<Row>> {
        self.ran.push(Ran::Batch { after, limit });
        // `LIMIT limit + 1`, as on a database.
        let sql_limit = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut rows = self.after(after);
        rows.truncate(usize::try_from(sql_limit).unwrap_or(usize::MAX));
        let mut cursor = FakeStream::<M>::new(rows.into_iter(), SQL.to_owned(), spec, None);
        let rows = Lookahead::take(&mut cursor, sql_limit)?;
        let sql = if cursor.needs_sql(false) {
            cursor.sql()?
        } else {
            String::new()
        };
        Ok(Loaded {
            rows,
            sql,
            meter: cursor.seen().meter,
            exceeded: cursor.exceeded(),
            lock_cut: false,
            tag: StatementTag::default(),
        })
    }

    fn probe(&mut self, at: i64, _spec: BudgetSpec) -> Result<Option<Row>> {
        self.ran.push(Ran::Probe { at });
        Ok(self.table.iter().rfind(|r| r.id <= at).cloned())
    }

    fn stream(&mut self, after: Option<i64>, spec: BudgetSpec) -> Result<FakeStream<M>> {
        self.ran.push(Ran::Stream { after });
        let mut rows = self.after(after);
        if let Some(n) = self.stream_ends_after {
            rows.truncate(n);
        }
        Ok(Cursor::new(rows.into_iter(), SQL.to_owned(), spec, None))
    }
}

type Walk<M> = Machine<Fake, FakeStream<M>, i64, Row, fn(&Row) -> i64, M>;

fn key_of(row: &Row) -> i64 {
    row.key
}

/// A walk over `fake` under `budget`, as `batches_by` builds one.
fn walk<M: Meter<Row>, O: Overflow>(fake: Fake, budget: Budget<M, O>) -> Walk<M> {
    let deferred = budget.validate().err();
    Machine::new(fake, key_of, budget.spec(), M::METERS_BYTES, deferred)
}

fn streamed<M: Meter<Row>, O: Overflow>(fake: Fake, budget: Budget<M, O>) -> Walk<M> {
    let mut w = walk(fake, budget);
    w.mode = BatchMode::Stream;
    w
}

/// Every batch up to the end or the first error: the ids of each batch, and the error.
fn batches<M: Meter<Row> + Metering>(w: &mut Walk<M>) -> (Vec<Vec<i64>>, Option<Error>) {
    let mut out = Vec::new();
    while let Some(batch) = w.next_batch() {
        match batch {
            Ok(rows) => out.push(rows.iter().map(|r| r.id).collect()),
            Err(e) => {
                assert!(
                    w.next_batch().is_none(),
                    "a walk ends after its first error"
                );
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

/// Every row up to the end or the first error.
fn each_row<M: Meter<Row> + Metering>(w: &mut Walk<M>) -> (Vec<i64>, Option<Error>) {
    let mut out = Vec::new();
    while let Some(row) = w.next_row() {
        match row {
            Ok(row) => out.push(row.id),
            Err(e) => {
                assert!(w.next_row().is_none(), "a walk ends after its first error");
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

fn batch(after: Option<i64>, limit: u64) -> Ran {
    Ran::Batch { after, limit }
}

/// Full batches then a short one: the short batch is the last statement (no empty batch, no
/// end probe); every row once, in order; the resume key is the last row's.
#[test]
fn a_short_batch_ends_the_walk() {
    let mut w = walk(Fake::new(rows(1..=10, 0)), Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    assert_eq!((w.rows_done, w.last), (10, Some(10)));
    assert_eq!(
        w.source.ran,
        [batch(None, 4), batch(Some(4), 4), batch(Some(8), 4)]
    );
}

/// Each batch reads the row after it (`LIMIT n + 1`): a full last batch with no row after it
/// ends the walk, with no empty batch and no end probe.
#[test]
fn a_full_last_batch_with_no_row_after_it_ends_the_walk() {
    let mut w = walk(Fake::new(rows(1..=8, 0)), Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
    assert_eq!(w.source.ran, [batch(None, 4), batch(Some(4), 4)]);
    // An empty table: one statement, nothing to probe.
    let mut empty = walk(Fake::new(Vec::new()), Budget::rows(4));
    let (got, err) = batches(&mut empty);
    assert!(got.is_empty() && err.is_none(), "{err:?}");
    assert_eq!(empty.source.ran, [batch(None, 4)]);
    assert_eq!((empty.rows_done, empty.last), (0, None));
}

/// One row at a time: each row's key is the resume key as it is handed out; a walk stopped part
/// way and resumed with `after` delivers every row exactly once.
#[test]
fn rows_resume_after_the_last_row_handed_out() {
    let mut w = walk(Fake::new(rows(1..=10, 0)), Budget::rows(4));
    let first: Vec<i64> = (0..6)
        .map(|_| w.next_row().expect("a row").expect("no error").id)
        .collect();
    assert_eq!(first, [1, 2, 3, 4, 5, 6]);
    assert_eq!((w.rows_done, w.last), (6, Some(6)));
    // Rows 7 and 8 were fetched with the second batch but never handed out: the resume key
    // does not pass them.
    let resume = w.last;
    drop(w);

    let mut rest = walk(Fake::new(rows(1..=10, 0)), Budget::rows(4));
    rest.last = resume;
    let (got, err) = each_row(&mut rest);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [7, 8, 9, 10]);
    assert_eq!(rest.source.ran, [batch(Some(6), 4)]);
}

/// A key held twice (a key that is not unique, a join that repeats rows) inside a batch:
/// `KeyOrder` naming both keys and the rows delivered before it; nothing of that batch is
/// delivered and the resume key stays at the last batch handed out. One row at a time, the rows
/// before the repeated key are delivered and counted.
#[test]
fn a_repeated_key_is_a_key_order_error() {
    let table = rows([1, 2, 3, 4, 5, 5, 6], 0);
    let mut w = walk(Fake::new(table.clone()), Budget::rows(3));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3]]);
    match err {
        Some(Error::KeyOrder {
            key,
            previous,
            next,
            rows_done,
        }) => {
            assert_eq!(key, ["id"]);
            assert_eq!((previous.as_str(), next.as_str(), rows_done), ("5", "5", 3));
        }
        other => panic!("expected KeyOrder, got {other:?}"),
    }
    assert_eq!((w.rows_done, w.last), (3, Some(3)));

    let mut w = walk(Fake::new(table), Budget::rows(3));
    let (got, err) = each_row(&mut w);
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(
        matches!(err, Some(Error::KeyOrder { rows_done: 5, .. })),
        "{err:?}"
    );
    assert_eq!((w.rows_done, w.last), (5, Some(5)));
}

/// Keys out of order across a batch boundary (the database orders by `id`, `key_of` reads
/// another value that goes back): `KeyOrder` at the first row of the next batch.
#[test]
fn a_key_going_back_across_batches_is_a_key_order_error() {
    let mut table = rows(1..=6, 0);
    table[3].key = 2; // id 4 reads as key 2
    let mut w = walk(Fake::new(table), Budget::rows(3));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3]]);
    assert!(
        matches!(&err, Some(Error::KeyOrder { previous, next, rows_done: 3, .. })
            if previous == "3" && next == "2"),
        "{err:?}"
    );
    assert_eq!(w.last, Some(3));
}

/// A `key_of` that reads a larger value than the key (a composite read in the wrong order)
/// sends the next batch past every remaining row: the end probe finds the row the walk
/// skipped and reports `KeyOrder` instead of ending as if complete.
#[test]
fn the_end_probe_catches_a_walk_sent_past_its_rows() {
    let mut table = rows(1..=6, 0);
    for row in &mut table {
        row.key = row.id + 100;
    }
    let mut w = walk(Fake::new(table), Budget::rows(3));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3]]);
    assert!(
        matches!(&err, Some(Error::KeyOrder { previous, next, rows_done: 3, .. })
            if previous == "103" && next == "106"),
        "{err:?}"
    );
    assert_eq!(
        w.source.ran,
        [batch(None, 3), batch(Some(103), 3), Ran::Probe { at: 103 }]
    );
}

/// A statement failing mid-batch: `Interrupted` with the rows delivered and the resume key of
/// the last whole batch; the failed batch delivers nothing. Resuming from that key (the
/// failure gone) delivers the rest exactly once.
#[test]
fn an_error_mid_batch_interrupts_with_a_resume_key() {
    let mut fake = Fake::new(rows(1..=10, 0));
    fake.fail_at = Some(6);
    let mut w = walk(fake, Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3, 4]]);
    match err {
        Some(Error::Interrupted {
            rows_done,
            resume_after,
            source,
        }) => {
            assert_eq!((rows_done, resume_after.as_deref()), (4, Some("4")));
            assert!(source.is_connection_lost(), "{source:?}");
            assert_eq!(source.sql(), Some(SQL));
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let mut rest = walk(Fake::new(rows(1..=10, 0)), Budget::rows(4));
    rest.last = w.last;
    let (got, err) = batches(&mut rest);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![5, 6, 7, 8], vec![9, 10]]);
}

/// Streamed: one statement for the whole walk, cut into batches of the budget. A failure in
/// the stream interrupts after the rows already handed out (one at a time: up to the row
/// before the failure).
#[test]
fn a_stream_is_one_statement_and_fails_where_its_rows_stop() {
    let mut w = streamed(Fake::new(rows(1..=10, 0)).streaming(), Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    assert_eq!(w.source.ran, [Ran::Stream { after: None }]);

    let mut fake = Fake::new(rows(1..=10, 0)).streaming();
    fake.fail_at = Some(6);
    let mut w = streamed(fake, Budget::rows(4));
    let (got, err) = each_row(&mut w);
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(
        matches!(&err, Some(Error::Interrupted { rows_done: 5, resume_after: Some(k), .. }) if k == "5"),
        "{err:?}"
    );
    assert_eq!(w.source.ran, [Ran::Stream { after: None }]);

    // Batches from a stream failing mid-batch: the batch in progress is not delivered.
    let mut fake = Fake::new(rows(1..=10, 0)).streaming();
    fake.fail_at = Some(6);
    let mut w = streamed(fake, Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3, 4]]);
    assert!(
        matches!(&err, Some(Error::Interrupted { rows_done: 4, .. })),
        "{err:?}"
    );
}

/// A stream whose rows end early without an error (the server had sent them all before the
/// connection went): the walk ends normally with what arrived; resuming from its key reads the
/// rest.
#[test]
fn a_stream_ending_early_ends_the_walk_at_its_last_row() {
    let mut fake = Fake::new(rows(1..=10, 0)).streaming();
    fake.stream_ends_after = Some(6);
    let mut w = streamed(fake, Budget::rows(4));
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5, 6]]);
    assert_eq!((w.rows_done, w.last), (6, Some(6)));
    assert!(w.next_batch().is_none());
    assert_eq!(w.source.ran, [Ran::Stream { after: None }]);
}

/// `BatchMode::Stream` where the source does not stream (MySQL), or under a time limit (per
/// statement): keyset batches.
#[test]
fn stream_mode_falls_back_to_keyset_batches() {
    let mut w = streamed(Fake::new(rows(1..=5, 0)), Budget::rows(4));
    assert_eq!(batches(&mut w).0, [vec![1, 2, 3, 4], vec![5]]);
    assert_eq!(w.source.ran, [batch(None, 4), batch(Some(4), 4)]);

    let timed = Budget::rows(4).time(Duration::from_secs(5));
    let mut w = streamed(Fake::new(rows(1..=5, 0)).streaming(), timed);
    assert_eq!(batches(&mut w).0, [vec![1, 2, 3, 4], vec![5]]);
    assert_eq!(w.source.ran, [batch(None, 4), batch(Some(4), 4)]);
}

/// Byte budgets: a keyset batch is cut where the bytes run out (the cut rows are read again by
/// the next batch) and later LIMITs are sized from what fitted; a stream keeps the row that did
/// not fit for its next batch. Every row exactly once, in order.
#[test]
fn byte_budgets_cut_batches_and_size_the_next_limit() {
    let size = Row {
        id: 0,
        key: 0,
        pad: "x".repeat(60),
    };
    let row_bytes = get_size2::GetSize::get_size(&size) as u64;
    let budget = Budget::rows(100).bytes(3 * row_bytes + row_bytes / 2);

    let mut w = walk(Fake::new(rows(1..=10, 60)), budget);
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]);
    // The first LIMIT is small (nothing known of the sizes), then 3 rows fit: LIMIT 3.
    assert_eq!(
        w.source.ran,
        [
            batch(None, 100),
            batch(Some(3), 3),
            batch(Some(6), 3),
            batch(Some(9), 3)
        ]
    );

    let mut w = streamed(Fake::new(rows(1..=10, 60)).streaming(), budget);
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9], vec![10]]);
    assert_eq!(w.source.ran, [Ran::Stream { after: None }]);
    assert_eq!(w.rows_done, 10);
}

/// A single row larger than the byte budget: `BudgetExceeded` for that row alone (inside
/// `Interrupted`), after the rows before it, in every mode.
#[test]
fn a_row_over_the_byte_budget_interrupts_the_walk() {
    let mut table = rows(1..=6, 10);
    table[4].pad = "x".repeat(10_000); // id 5
    let budget = Budget::rows(3).bytes(1_000);
    let over = |err: &Option<Error>, rows_done: u64| match err {
        Some(Error::Interrupted {
            rows_done: done,
            source,
            ..
        }) => {
            assert_eq!(*done, rows_done);
            assert!(
                matches!(**source, Error::BudgetExceeded { seen_rows: 1, .. }),
                "{source:?}"
            );
        }
        other => panic!("expected Interrupted(BudgetExceeded), got {other:?}"),
    };

    let mut w = walk(Fake::new(table.clone()), budget);
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3], vec![4]]);
    over(&err, 4);

    for streams in [false, true] {
        let mut fake = Fake::new(table.clone());
        fake.streams = streams;
        let mut w = streamed(fake, budget);
        let (got, err) = each_row(&mut w);
        assert_eq!(got, [1, 2, 3, 4], "streams: {streams}");
        over(&err, 4);
        assert_eq!(w.last, Some(4));
    }
}

/// Refusals before anything runs: a query with a LIMIT of its own, an invalid budget. Neither
/// is wrapped in `Interrupted`, and no statement runs.
#[test]
fn refusals_come_before_any_statement() {
    let mut fake = Fake::new(rows(1..=3, 0));
    fake.own_limit = true;
    let mut w = walk(fake, Budget::rows(2));
    let (got, err) = batches(&mut w);
    assert!(got.is_empty());
    assert!(
        matches!(err, Some(Error::InvalidArgument { name: "query", .. })),
        "{err:?}"
    );
    assert!(w.source.ran.is_empty());
    // The same, one row at a time.
    let mut fake = Fake::new(rows(1..=3, 0));
    fake.own_limit = true;
    let mut w = walk(fake, Budget::rows(2));
    let (got, err) = each_row(&mut w);
    assert!(got.is_empty());
    assert!(
        matches!(err, Some(Error::InvalidArgument { name: "query", .. })),
        "{err:?}"
    );
    assert!(w.source.ran.is_empty());

    let mut w = walk(Fake::new(rows(1..=3, 0)), Budget::rows(0));
    let (got, err) = each_row(&mut w);
    assert!(got.is_empty());
    assert!(matches!(err, Some(Error::InvalidBudget { .. })), "{err:?}");
    assert!(w.source.ran.is_empty());
}

/// Equal keys exactly on a batch boundary (the batch's last row has key k and so do the next
/// rows): the next batch's `id > k` would skip them. `KeyOrder` after the rows before the
/// repeated key in every mode (keyset batches, a stream, a stream that runs keyset batches, one
/// row at a time), under a row budget and under a byte budget that cuts the batch where the
/// key repeats, in the middle of a walk and at its end. The resume key stays the last row
/// handed out.
#[test]
fn a_key_repeated_across_a_batch_boundary_is_a_key_order_error() {
    let size = get_size2::GetSize::get_size(&rows([0], 60)[0]) as u64;
    let by_bytes = Budget::rows(100).bytes(3 * size + size / 2);
    // (ids, budget, rows delivered before the repeated key)
    let cases: [(
        Vec<Row>,
        Budget<crate::budget::Bytes, crate::budget::Strict>,
        u64,
    ); 4] = [
        (
            rows([1, 2, 3, 4, 4, 5, 6], 60),
            Budget::rows(4).bytes(1 << 30),
            4,
        ),
        (rows([1, 2, 3, 4, 4], 60), Budget::rows(4).bytes(1 << 30), 4),
        (
            rows([1, 2, 3, 4, 4, 4, 5], 60),
            Budget::rows(4).bytes(1 << 30),
            4,
        ),
        (rows([1, 2, 3, 3, 4, 5], 60), by_bytes, 3),
    ];
    for (i, (table, budget, before)) in cases.into_iter().enumerate() {
        let k = table[usize::try_from(before).unwrap_or(0)].id;
        let is_repeat = |err: &Option<Error>, what: &str| match err {
            Some(Error::KeyOrder {
                key,
                previous,
                next,
                rows_done,
            }) => {
                assert_eq!(key, &["id"], "{what}");
                assert_eq!(
                    (previous.clone(), next.clone(), *rows_done),
                    (k.to_string(), k.to_string(), before),
                    "{what}"
                );
            }
            other => panic!("{what}: expected KeyOrder, got {other:?}"),
        };
        for (mode, streams) in [
            (BatchMode::Keyset, false),
            (BatchMode::Stream, false),
            (BatchMode::Stream, true),
        ] {
            let what = format!("case {i}, {mode:?}, streams: {streams}");
            let fake = || {
                let mut fake = Fake::new(table.clone());
                fake.streams = streams;
                fake
            };
            let mut w = walk(fake(), budget);
            w.mode = mode;
            let (got, err) = batches(&mut w);
            assert_eq!(got.concat().len() as u64, before, "{what}: {got:?}");
            is_repeat(&err, &what);
            assert_eq!((w.rows_done, w.last), (before, Some(k)), "{what}");

            let mut w = walk(fake(), budget);
            w.mode = mode;
            let (got, err) = each_row(&mut w);
            assert_eq!(got.len() as u64, before, "{what}, rows: {got:?}");
            is_repeat(&err, &format!("{what}, rows"));
            assert_eq!((w.rows_done, w.last), (before, Some(k)), "{what}, rows");
        }
        // And with a row budget only (no byte metering) where the rows cut the batch.
        if budget.spec().rows == 4 {
            let mut w = walk(Fake::new(table.clone()), Budget::rows(4));
            let (got, err) = batches(&mut w);
            assert_eq!(got.concat().len() as u64, before, "case {i}, rows only");
            is_repeat(&err, &format!("case {i}, rows only"));
        }
    }
}

/// A `key_of` whose value grows faster than the key (`id * 2`) sends the next batch past rows
/// that still exist: the batch starts past the row read after the previous one, so the end
/// probe runs and reports `KeyOrder` instead of skipping rows 4 to 6.
#[test]
fn a_batch_starting_past_the_row_after_the_last_runs_the_end_probe() {
    let mut table = rows(1..=9, 0);
    for row in &mut table {
        row.key = row.id * 2;
    }
    let mut w = walk(Fake::new(table), Budget::rows(3));
    let (got, err) = batches(&mut w);
    assert_eq!(got, [vec![1, 2, 3]]);
    assert!(
        matches!(&err, Some(Error::KeyOrder { previous, next, rows_done: 3, .. })
            if previous == "6" && next == "12"),
        "{err:?}"
    );
    assert_eq!(
        w.source.ran,
        [batch(None, 3), batch(Some(6), 3), Ran::Probe { at: 6 }]
    );
    // Rows deleted between batches also start a batch past that row: the probe runs, finds
    // the last row handed out, and the walk goes on.
    let mut w = walk(Fake::new(rows(1..=9, 0)), Budget::rows(3));
    assert!(matches!(w.next_batch(), Some(Ok(b)) if b.len() == 3));
    w.source.table.retain(|r| r.id != 4);
    let (got, err) = batches(&mut w);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, [vec![5, 6, 7], vec![8, 9]]);
    assert_eq!(w.source.ran[2], Ran::Probe { at: 3 });
}
