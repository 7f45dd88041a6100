//! The `diesel-budget` command (feature `cli`): `check` against lockfiles on disk.
#![cfg(feature = "cli")]

use std::process::Command;

const COMMITTED: &str = r#"{
  "name": "cli_demo",
  "queries": [
    {
      "query": "SELECT `items`.`id` FROM `items` WHERE (`items`.`category` = ?) LIMIT ?",
      "call_site": "src/handlers.rs:12:9",
      "budget_rows": 50,
      "budget_bytes": null,
      "round_trips": 1,
      "max_rows": 10,
      "max_bytes": 0,
      "rows_received": 10
    }
  ]
}
"#;

fn run_check(now: &str) -> (i32, String) {
    let committed = tempfile::tempdir().expect("temp dir");
    let run = tempfile::tempdir().expect("temp dir");
    std::fs::write(committed.path().join("cli_demo.json"), COMMITTED).expect("write");
    std::fs::write(run.path().join("cli_demo.json"), now).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_diesel-budget"))
        .arg("check")
        .arg("--committed")
        .arg(committed.path())
        .arg("--run")
        .arg(run.path())
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_passes_as_committed_and_fails_on_a_regression_with_a_table() {
    let (code, out) = run_check(COMMITTED);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 lockfiles checked"), "{out}");
    assert!(out.contains("as committed"), "{out}");

    let more = COMMITTED
        .replace("\"round_trips\": 1", "\"round_trips\": 3")
        .replace("\"rows_received\": 10", "\"rows_received\": 30");
    let (code, out) = run_check(&more);
    assert_eq!(code, 1, "{out}");
    for column in ["query", "call site", "budget", "before", "now", "change"] {
        assert!(out.contains(column), "{column}: {out}");
    }
    assert!(out.contains("src/handlers.rs:12:9"), "{out}");
    assert!(
        out.contains("Regressed: round trips 1 -> 3, rows received 10 -> 30"),
        "{out}"
    );
    assert!(out.contains("REGRESSED"), "{out}");
    // Not a terminal: no colour codes.
    assert!(!out.contains('\u{1b}'), "{out}");

    let fewer = COMMITTED.replace("\"max_rows\": 10", "\"max_rows\": 4");
    let (code, out) = run_check(&fewer);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("could be tightened"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// `diesel-budget explain` against each backend: a nearly empty table of its own (test number 38,
// and the process id, in its name), queried on an unindexed column, then indexed.

mod common;

use diesel::connection::SimpleConnection;
use diesel::Connection;

/// Runs `diesel-budget explain --url <url> <args..>`: (exit code, stdout, stderr).
fn run_explain(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_diesel-budget"))
        .arg("explain")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same body on every backend: `conn` is a plain connection to the database at `url`.
fn explain_flags_a_scan_until_the_column_is_indexed(conn: &mut impl SimpleConnection, url: &str) {
    let table = format!("cli_explain_38_{}", std::process::id());
    let index = format!("{table}_a");
    conn.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .expect("drop");
    conn.batch_execute(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY NOT NULL, a INTEGER NOT NULL, \
         label VARCHAR(32) NOT NULL); \
         INSERT INTO {table} (id, a, label) VALUES (1, 1, 'x'), (2, 2, 'y'), (3, 3, 'z')"
    ))
    .expect("create the table");
    let query = format!("SELECT id, label FROM {table} WHERE a = 2");

    // Unindexed, asked whether an index can serve: no.
    let (code, out, err) = run_explain(url, &["--require-index", &query]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "table ",
        "access",
        "est. rows",
        "full scan",
        "FAIL: no usable index",
        &format!("FAILED: full scan of {table}: no usable index (--require-index)"),
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    // Not a terminal: no colour codes.
    assert!(!out.contains('\u{1b}'), "{out}");

    // The same plan under the size threshold: a 3-row table may be scanned (default 1,000)...
    let (code, out, err) = run_explain(url, &[&query]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: at most 1000 rows"), "{out}");
    // ...but not over a threshold of 2 rows; the count stops past the threshold.
    let (code, out, err) = run_explain(url, &["--max-scan-rows", "2", &query]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAIL: full scan over 2 rows"), "{out}");
    assert!(out.contains("> 2"), "{out}");
    assert!(
        out.contains(&format!("FAILED: full scan of {table}: more than 2 rows")),
        "{out}"
    );

    // Indexed: an index serves the query, however small the table; the query read from a file.
    conn.batch_execute(&format!("CREATE INDEX {index} ON {table} (a)"))
        .expect("create the index");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("query.sql");
    std::fs::write(&file, format!("{query};\n")).expect("write");
    let file = file.to_str().expect("utf-8 path");
    let (code, out, err) = run_explain(url, &["--require-index", "--file", file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&index), "{index} in:\n{out}");
    assert!(out.contains("ok: no full scan"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    // A query the database rejects: exit 2 and the reason on stderr.
    let (code, out, err) = run_explain(url, &["SELECT nope FROM no_such_table_38"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no_such_table_38"), "{err}");

    conn.batch_execute(&format!("DROP TABLE {table}"))
        .expect("drop");
}

#[cfg(feature = "sqlite")]
#[test]
fn explain_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let path = path.to_str().expect("utf-8 path");
    let mut conn = diesel::sqlite::SqliteConnection::establish(path).expect("SQLite file");
    explain_flags_a_scan_until_the_column_is_indexed(&mut conn, path);
    // A file that is not there is not created.
    let missing = dir.path().join("missing.db");
    let (code, _, err) = run_explain(missing.to_str().expect("utf-8"), &["SELECT 1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no SQLite database file"), "{err}");
    assert!(!missing.exists());
}

#[cfg(feature = "postgres")]
#[test]
fn explain_postgres() {
    use common::Backend as _;
    let mut conn = diesel::pg::PgConnection::plain();
    explain_flags_a_scan_until_the_column_is_indexed(&mut conn, &common::pg_url());
}

#[cfg(feature = "mysql")]
#[test]
fn explain_mysql() {
    use common::Backend as _;
    let mut conn = diesel::mysql::MysqlConnection::plain();
    explain_flags_a_scan_until_the_column_is_indexed(&mut conn, &common::mysql_url());
}
