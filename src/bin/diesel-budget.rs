//! `diesel-budget`: the command line of diesel-budget (`cargo install diesel-budget --features
//! cli`, or `cargo run --features cli --bin diesel-budget -- --help` in this repository).
//!
//! Its home is this binary target, built only with the `cli` feature (`required-features` in
//! Cargo.toml), so clap and serde stay out of library users' builds.
//!
//! `diesel-budget check` compares the budget lockfiles a test run wrote (`target/diesel-budget/`,
//! see `diesel_budget::testing::lockfile`) with the committed ones (`tests/budgets/`) and prints
//! a table: lockfile, query, call site, budget, before, now, change. It exits with 1 when
//! anything regressed (more rows, bytes or round trips, a new query shape, a new full scan), 2
//! when a file cannot be read, 0 otherwise. Colour only on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diesel_budget::testing::lockfile::{committed_dir, run_dir};
use diesel_budget::testing::{LockError, LockReport, Lockfile, Verdict};

/// Memory budgets for Diesel queries, checked in CI.
#[derive(Debug, Parser)]
#[command(name = "diesel-budget", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare the lockfiles of a test run with the committed ones; exit 1 on a regression.
    Check {
        /// The committed lockfiles (default: $DIESEL_BUDGET_DIR, or tests/budgets).
        #[arg(long)]
        committed: Option<PathBuf>,
        /// The lockfiles the run wrote (default: $CARGO_TARGET_DIR/diesel-budget, or
        /// target/diesel-budget).
        #[arg(long)]
        run: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { committed, run } => check(
            &committed.unwrap_or_else(committed_dir),
            &run.unwrap_or_else(run_dir),
        ),
    }
}

/// The `*.json` files of `dir`, sorted.
fn lockfiles(dir: &Path) -> Result<Vec<PathBuf>, LockError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LockError::Io {
        path: dir.to_owned(),
        source: e.to_string(),
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads a lockfile, or says why not and exits with 2.
fn read(path: &Path) -> Result<Lockfile, ExitCode> {
    Lockfile::read(path).map_err(|e| {
        eprintln!("diesel-budget check: {e}");
        ExitCode::from(2)
    })
}

fn check(committed: &Path, run: &Path) -> ExitCode {
    match compare_all(committed, run) {
        Ok(code) | Err(code) => code,
    }
}

fn compare_all(committed: &Path, run: &Path) -> Result<ExitCode, ExitCode> {
    let colour = std::io::stdout().is_terminal();
    let files = lockfiles(run).map_err(|e| {
        eprintln!("diesel-budget check: {e} (run the tests first)");
        ExitCode::from(2)
    })?;
    let mut reports = Vec::new();
    for path in &files {
        let now = read(path)?;
        let file = committed.join(path.file_name().unwrap_or_default());
        let before = if file.exists() {
            read(&file)?
        } else {
            println!(
                "{}: no committed lockfile {} (every query counts as new)",
                now.name,
                file.display()
            );
            Lockfile::from_ledger(&now.name, &Default::default())
        };
        reports.push(before.compare(&now));
    }
    let regressed = reports.iter().any(LockReport::regressed);
    print_table(&reports, colour);
    let verdict = if regressed {
        "REGRESSED"
    } else if reports.iter().any(LockReport::could_tighten) {
        "within budget, could be tightened (DIESEL_BUDGET_UPDATE=1 cargo test)"
    } else {
        "as committed"
    };
    let summary = format!(
        "{} lockfiles checked against {}: {verdict}",
        reports.len(),
        committed.display()
    );
    println!("{}", paint(&summary, regressed.then_some(RED), colour));
    Ok(if regressed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";

fn paint(text: &str, colour: Option<&str>, tty: bool) -> String {
    match colour {
        Some(c) if tty => format!("{c}{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// Longest query text shown in a table cell.
const QUERY_WIDTH: usize = 60;

fn print_table(reports: &[LockReport], colour: bool) {
    let header = [
        "lockfile",
        "query",
        "call site",
        "budget",
        "before",
        "now",
        "change",
    ];
    let mut rows: Vec<([String; 7], &str)> = Vec::new();
    for report in reports {
        for (change, row) in report
            .changes
            .iter()
            .filter(|c| c.verdict != Verdict::Same)
            .zip(report.table())
        {
            let [query, site, budget, before, now, what] = row;
            let query = if query.chars().count() > QUERY_WIDTH {
                let cut: String = query.chars().take(QUERY_WIDTH - 3).collect();
                format!("{cut}...")
            } else {
                query
            };
            let tone = if change.verdict == Verdict::Regressed {
                RED
            } else {
                YELLOW
            };
            rows.push((
                [report.name.clone(), query, site, budget, before, now, what],
                tone,
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    let mut widths = header.map(str::len);
    for (row, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(&header.map(str::to_owned)));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for (row, tone) in &rows {
        println!("{}", paint(&line(row), Some(tone), colour));
    }
}
