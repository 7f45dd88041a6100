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
