//! Bulk-write scenarios (issue 6), one per process, one JSON line each:
//! `cargo run --release --all-features --example bench -- bulk-insert --backend postgres --rows 100000`.
//!
//! Every scenario writes the demo rows 1..=rows, generated from an iterator, into an emptied
//! `items` table, then checks the count. Plain-Diesel baselines: `diesel-insert-rows` (one INSERT
//! per row, one transaction), `diesel-insert-chunks` (multi-row VALUES, the best of 100 / 1,000
//! / 10,000 rows a statement, each timed on an emptied table), `diesel-copy` (PostgreSQL:
//! `copy_from(..).from_insertable(&vec)` of the whole Vec), `psql-copy` (PostgreSQL: `psql
//! \copy` of the same rows as CSV). Ours: `bulk-insert` (default path), `bulk-upsert` (half the
//! keys already there, `on_conflict_do_update`, default path; the pre-fill is not timed),
//! `bulk-upsert-insert` (the same through chunked `INSERT .. ON CONFLICT`, `.insert_only()`),
//! `bulk-upsert-staging` (the same through the COPY-fed staging table, `.staging()`;
//! PostgreSQL only, the others ignore it).
//!
//! Updates and deletes run on a pre-filled table (not timed): `diesel-update-rows` (one
//! `UPDATE items SET name = ? WHERE id = ?` per row, one transaction) against `bulk-update`
//! (every row renamed by `bulk::update` of `(id, name)` rows); `diesel-delete-chunks` (`delete(filter(id.eq_any(chunk)))`, 10,000 keys a
//! statement, one transaction) against `bulk-delete` (`bulk::delete` of every key).
//!
//! PostgreSQL `unnest-insert` and `unnest-upsert` (half the keys already there, `ON CONFLICT
//! (id) DO UPDATE`; untimed pre-fill): plain Diesel's `UNNEST`, the baseline of our default
//! upsert path there (`bulk-upsert`; `UNNEST` lost to `COPY` for inserts, so `bulk-insert` stays
//! on `COPY`), written the way a careful user would: `sql_query("INSERT INTO items (..) SELECT
//! * FROM UNNEST($1, $2, $3, $4, $5) ..")` with one `Array<..>` bind per column (5 binds whatever
//! the chunk), 10,000 rows a statement, one transaction, the rows of an iterator gathered into
//! reused column `Vec`s.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_budget::bulk;
use diesel_budget::demo::{self, items, Item, MIGRATIONS};
use diesel_budget::Db;
use serde_json::json;

use super::{database_url, rss, Backend, BoxResult};

/// The row of the update scenarios: the key and the one column both paths set.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = items, treat_none_as_default_value = false)]
struct Rename {
    id: i32,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BulkScenario {
    DieselInsertRows,
    DieselInsertChunks,
    DieselCopy,
    PsqlCopy,
    BulkInsert,
    BulkUpsert,
    BulkUpsertInsert,
    BulkUpsertStaging,
    DieselUpdateRows,
    BulkUpdate,
    DieselDeleteChunks,
    BulkDelete,
    UnnestInsert,
    UnnestUpsert,
}

/// Rows an `unnest-*` statement holds.
const UNNEST_ROWS: usize = 10_000;

#[derive(Debug, Parser)]
struct BulkArgs {
    #[arg(value_enum)]
    scenario: BulkScenario,
    #[arg(long, value_enum)]
    backend: Backend,
    #[arg(long)]
    rows: u64,
    #[arg(long)]
    url: Option<String>,
    /// `bulk-insert` / `bulk-upsert*`: rows a chunk (default: the library's).
    #[arg(long)]
    chunk_rows: Option<std::num::NonZeroUsize>,
}

/// Whether the first argument names a bulk scenario.
pub(crate) fn is_bulk(arg: Option<&str>) -> bool {
    arg.is_some_and(|a| BulkScenario::from_str(a, true).is_ok())
}

pub(crate) fn main() -> BoxResult<()> {
    let args = BulkArgs::parse();
    let url = database_url(args.backend, args.rows, args.url.as_deref())?;
    let n = i32::try_from(args.rows)?;
    let (wall, extra) = match args.backend {
        Backend::Sqlite => sqlite::run(args.scenario, &url, n, args.chunk_rows)?,
        Backend::Postgres => postgres::run(args.scenario, &url, n, args.chunk_rows)?,
        Backend::Mysql => mysql::run(args.scenario, &url, n, args.chunk_rows)?,
    };
    let (peak, _) = rss()?;
    let name = args
        .scenario
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    println!(
        "{}",
        json!({
            "scenario": name,
            "backend": args.backend.name(),
            "rows": args.rows,
            "wall_s": wall.as_secs_f64(),
            "rows_per_s": args.rows as f64 / wall.as_secs_f64(),
            "peak_rss_mib": peak as f64 / f64::from(1 << 20),
            "detail": extra,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        })
    );
    Ok(())
}

macro_rules! bulk_backend {
    ($feature:literal, $module:ident, $conn:ty, $truncate:literal, $pg:expr) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            fn generated(from: i32, to: i32) -> impl Iterator<Item = Item> {
                (from..=to).map(Item::generate)
            }

            fn check(conn: &mut $conn, n: i32) -> BoxResult<()> {
                let count: i64 = items::table.count().get_result(conn)?;
                if count != i64::from(n) {
                    return Err(format!("{count} rows after writing {n}").into());
                }
                Ok(())
            }

            pub(crate) fn run(
                scenario: BulkScenario,
                url: &str,
                n: i32,
                chunk_rows: Option<std::num::NonZeroUsize>,
            ) -> BoxResult<(Duration, serde_json::Value)> {
                demo::create_database::<$conn>(url)?;
                let db = Db::<$conn>::builder(url)
                    .migrations(MIGRATIONS)
                    .max_size(1)
                    .build()?;
                let mut conn = db.get()?;
                conn.unbudgeted().batch_execute($truncate)?;
                let started = Instant::now();
                let mut extra = json!(null);
                match scenario {
                    BulkScenario::DieselInsertRows => {
                        conn.unbudgeted().transaction::<_, diesel::result::Error, _>(|c| {
                            for item in generated(1, n) {
                                diesel::insert_into(items::table).values(&item).execute(c)?;
                            }
                            Ok(())
                        })?;
                    }
                    BulkScenario::DieselInsertChunks => {
                        let mut best: Option<(Duration, usize)> = None;
                        for size in [100usize, 1_000, 10_000] {
                            conn.unbudgeted().batch_execute($truncate)?;
                            let t = Instant::now();
                            let mut rows = generated(1, n).peekable();
                            let written = conn
                                .unbudgeted()
                                .transaction::<_, diesel::result::Error, _>(|c| {
                                    while rows.peek().is_some() {
                                        let chunk: Vec<Item> = rows.by_ref().take(size).collect();
                                        diesel::insert_into(items::table).values(&chunk).execute(c)?;
                                    }
                                    Ok(())
                                });
                            // A size past the bind limit (SQLite: 10,000 rows x 5 binds) fails:
                            // that is the point of bulk; skip it.
                            if written.is_err() {
                                continue;
                            }
                            check(conn.unbudgeted(), n)?;
                            let took = t.elapsed();
                            if best.is_none_or(|(b, _)| took < b) {
                                best = Some((took, size));
                            }
                        }
                        let (took, size) = best.ok_or("no chunk size ran")?;
                        return Ok((took, json!({ "best_chunk": size })));
                    }
                    BulkScenario::DieselCopy | BulkScenario::PsqlCopy => {
                        $pg(scenario, conn.unbudgeted(), url, n)?;
                    }
                    BulkScenario::UnnestInsert => {
                        $pg(scenario, conn.unbudgeted(), url, n)?;
                        extra = json!({ "rows_per_statement": UNNEST_ROWS });
                    }
                    BulkScenario::UnnestUpsert => {
                        bulk::insert_into(items::table, generated(1, n / 2)).execute(&mut conn)?;
                        let t = Instant::now();
                        $pg(scenario, conn.unbudgeted(), url, n)?;
                        let took = t.elapsed();
                        check(conn.unbudgeted(), n)?;
                        return Ok((took, json!({ "rows_per_statement": UNNEST_ROWS })));
                    }
                    BulkScenario::BulkInsert => {
                        let mut insert = bulk::insert_into(items::table, generated(1, n));
                        if let Some(rows) = chunk_rows {
                            insert = insert.chunk_rows(rows);
                        }
                        let report = insert.execute(&mut conn)?;
                        extra = json!({ "chunks": report.chunks, "copy_chunks": report.copy_chunks });
                    }
                    BulkScenario::BulkUpsert
                    | BulkScenario::BulkUpsertInsert
                    | BulkScenario::BulkUpsertStaging => {
                        bulk::insert_into(items::table, generated(1, n / 2)).execute(&mut conn)?;
                        let t = Instant::now();
                        let mut upsert = bulk::insert_into(items::table, generated(1, n))
                            .on_conflict_do_update(items::id, |i: &Item| i.id);
                        if let Some(rows) = chunk_rows {
                            upsert = upsert.chunk_rows(rows);
                        }
                        if scenario == BulkScenario::BulkUpsertInsert {
                            upsert = upsert.insert_only();
                        } else if scenario == BulkScenario::BulkUpsertStaging {
                            upsert = upsert.staging();
                        }
                        let report = upsert.execute(&mut conn)?;
                        check(conn.unbudgeted(), n)?;
                        let detail = json!({
                            "chunks": report.chunks,
                            "copy_chunks": report.copy_chunks,
                            "statements": report.statements,
                        });
                        return Ok((t.elapsed(), detail));
                    }
                    BulkScenario::DieselUpdateRows | BulkScenario::BulkUpdate => {
                        bulk::insert_into(items::table, generated(1, n)).execute(&mut conn)?;
                        let renamed = |id: i32| Rename { id, name: format!("renamed-{id}") };
                        let t = Instant::now();
                        let detail = if scenario == BulkScenario::BulkUpdate {
                            let report = bulk::update(items::table, items::id, |r: &Rename| r.id, (1..=n).map(renamed))
                                .execute(&mut conn)?;
                            json!({ "chunks": report.chunks, "affected": report.affected })
                        } else {
                            conn.unbudgeted().transaction::<_, diesel::result::Error, _>(|c| {
                                for item in (1..=n).map(renamed) {
                                    diesel::update(items::table.find(item.id))
                                        .set(items::name.eq(&item.name))
                                        .execute(c)?;
                                }
                                Ok(())
                            })?;
                            json!(null)
                        };
                        let took = t.elapsed();
                        let renamed_count: i64 = items::table
                            .filter(items::name.like("renamed-%"))
                            .count()
                            .get_result(conn.unbudgeted())?;
                        if renamed_count != i64::from(n) {
                            return Err(format!("{renamed_count} rows renamed of {n}").into());
                        }
                        return Ok((took, detail));
                    }
                    BulkScenario::DieselDeleteChunks | BulkScenario::BulkDelete => {
                        bulk::insert_into(items::table, generated(1, n)).execute(&mut conn)?;
                        let t = Instant::now();
                        let detail = if scenario == BulkScenario::BulkDelete {
                            let report = bulk::delete(items::table, items::id, 1..=n).execute(&mut conn)?;
                            json!({ "chunks": report.chunks, "affected": report.affected })
                        } else {
                            let mut keys = (1..=n).peekable();
                            conn.unbudgeted().transaction::<_, diesel::result::Error, _>(|c| {
                                while keys.peek().is_some() {
                                    let chunk: Vec<i32> = keys.by_ref().take(10_000).collect();
                                    diesel::delete(items::table.filter(items::id.eq_any(&chunk)))
                                        .execute(c)?;
                                }
                                Ok(())
                            })?;
                            json!(null)
                        };
                        let took = t.elapsed();
                        check(conn.unbudgeted(), 0)?;
                        return Ok((took, detail));
                    }
                }
                let took = started.elapsed();
                check(conn.unbudgeted(), n)?;
                Ok((took, extra))
            }
        }
    };
}

fn not_postgres<C>(scenario: BulkScenario, _: &mut C, _: &str, _: i32) -> BoxResult<()> {
    Err(format!("{scenario:?} runs on PostgreSQL only").into())
}

/// `unnest-insert` / `unnest-upsert`: the rows `1..=n` as plain Diesel writes them with one
/// array bind per column, [`UNNEST_ROWS`] rows a statement, one transaction.
#[cfg(feature = "postgres")]
fn pg_unnest(upsert: bool, conn: &mut diesel::pg::PgConnection, n: i32) -> BoxResult<()> {
    use diesel::sql_types::{Array, BigInt, Integer, Text};
    const INSERT: &str = "INSERT INTO items (id, category, name, payload, created_at) \
                          SELECT * FROM UNNEST($1, $2, $3, $4, $5)";
    const UPSERT: &str = "INSERT INTO items (id, category, name, payload, created_at) \
                          SELECT * FROM UNNEST($1, $2, $3, $4, $5) \
                          ON CONFLICT (id) DO UPDATE SET category = excluded.category, \
                          name = excluded.name, payload = excluded.payload, \
                          created_at = excluded.created_at";
    let sql = if upsert { UPSERT } else { INSERT };
    let mut ids: Vec<i32> = Vec::with_capacity(UNNEST_ROWS);
    let mut categories: Vec<i32> = Vec::with_capacity(UNNEST_ROWS);
    let mut names: Vec<String> = Vec::with_capacity(UNNEST_ROWS);
    let mut payloads: Vec<String> = Vec::with_capacity(UNNEST_ROWS);
    let mut created: Vec<i64> = Vec::with_capacity(UNNEST_ROWS);
    let mut rows = (1..=n).map(Item::generate).peekable();
    conn.transaction::<_, diesel::result::Error, _>(|c| {
        while rows.peek().is_some() {
            ids.clear();
            categories.clear();
            names.clear();
            payloads.clear();
            created.clear();
            for item in rows.by_ref().take(UNNEST_ROWS) {
                ids.push(item.id);
                categories.push(item.category);
                names.push(item.name);
                payloads.push(item.payload);
                created.push(item.created_at);
            }
            diesel::sql_query(sql)
                .bind::<Array<Integer>, _>(&ids)
                .bind::<Array<Integer>, _>(&categories)
                .bind::<Array<Text>, _>(&names)
                .bind::<Array<Text>, _>(&payloads)
                .bind::<Array<BigInt>, _>(&created)
                .execute(c)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The PostgreSQL-only scenarios: `diesel-copy`, `psql-copy`, `unnest-insert`, `unnest-upsert`.
#[cfg(feature = "postgres")]
fn pg_only(
    scenario: BulkScenario,
    conn: &mut diesel::pg::PgConnection,
    url: &str,
    n: i32,
) -> BoxResult<()> {
    use std::io::Write as _;
    if matches!(
        scenario,
        BulkScenario::UnnestInsert | BulkScenario::UnnestUpsert
    ) {
        return pg_unnest(scenario == BulkScenario::UnnestUpsert, conn, n);
    }
    if scenario == BulkScenario::DieselCopy {
        let all: Vec<Item> = (1..=n).map(Item::generate).collect();
        diesel::copy_from(items::table)
            .from_insertable(&all)
            .execute(conn)?;
        return Ok(());
    }
    // psql \copy of the same rows as CSV (written to a temp file first; not timed apart).
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("items.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for item in (1..=n).map(Item::generate) {
        writeln!(
            out,
            "{},{},{},{},{}",
            item.id, item.category, item.name, item.payload, item.created_at
        )?;
    }
    out.flush()?;
    drop(out);
    let status = std::process::Command::new("psql")
        .arg(url)
        .arg("-qc")
        .arg(format!(
            "\\copy items (id, category, name, payload, created_at) FROM '{}' CSV",
            path.display()
        ))
        .status()?;
    if !status.success() {
        return Err(format!("psql exited with {status}").into());
    }
    Ok(())
}

bulk_backend!(
    "sqlite",
    sqlite,
    diesel::sqlite::SqliteConnection,
    "DELETE FROM items",
    not_postgres
);
bulk_backend!(
    "postgres",
    postgres,
    diesel::pg::PgConnection,
    "TRUNCATE TABLE items",
    pg_only
);
bulk_backend!(
    "mysql",
    mysql,
    diesel::mysql::MysqlConnection,
    "TRUNCATE TABLE items",
    not_postgres
);
