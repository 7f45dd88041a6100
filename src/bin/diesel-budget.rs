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
//!
//! `diesel-budget explain` runs the plan checks of `diesel_budget::testing::explain` against a
//! database URL for a query given on the command line or in a file, and prints each table
//! access (full scan or index, the index, the planner's estimated rows) and a verdict. It exits
//! with 1 when a table of more than `--max-scan-rows` rows (default 1,000) is read in full, or
//! any table is with `--require-index` (which asks whether an index *can* serve, so it holds on
//! a nearly empty CI database too), 2 when the query cannot be explained, 0 otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diesel_budget::testing::lockfile::{committed_dir, run_dir};
use diesel_budget::testing::{
    explain_sql, Access, ExplainOptions, LockError, LockReport, Lockfile, SqlExplain, Verdict,
};

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
    /// Explain a query on a database: full scans, indexes used, estimated rows; exit 1 when a
    /// table over --max-scan-rows (or, with --require-index, any table) is read in full.
    Explain {
        /// The database: postgres://.., mysql://.., or an SQLite file (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        url: String,
        /// The query (SQL text, literals for values), or use --file.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        query: Option<String>,
        /// Read the query from this file (`-`: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Fail on any full scan, whatever the table's size, asking whether an index can serve
        /// (PostgreSQL: planned with enable_seqscan off, rolled back; MySQL: a usable key counts).
        #[arg(long)]
        require_index: bool,
        /// A full scan fails only on a table of more rows than this.
        #[arg(long, default_value_t = 1_000)]
        max_scan_rows: u64,
        /// Also print the backend's own plan output (it can hold the query's literals).
        #[arg(long)]
        raw: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { committed, run } => check(
            &committed.unwrap_or_else(committed_dir),
            &run.unwrap_or_else(run_dir),
        ),
        Command::Explain {
            url,
            query,
            file,
            require_index,
            max_scan_rows,
            raw,
        } => {
            let options = ExplainOptions::default()
                .require_index(require_index)
                .max_scan_rows(max_scan_rows);
            explain(&url, query, file.as_deref(), options, raw)
        }
    }
}

/// The query text: the argument, or the file (`-`: standard input); surrounding whitespace and
/// one trailing `;` dropped.
fn query_text(query: Option<String>, file: Option<&Path>) -> Result<String, String> {
    let text = match (query, file) {
        (Some(q), _) => q,
        (None, Some(path)) if path == Path::new("-") => {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
        }
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, None) => return Err("give a query, or --file".to_owned()),
    };
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text).trim_end();
    if text.is_empty() {
        return Err("the query is empty".to_owned());
    }
    Ok(text.to_owned())
}

fn explain(
    url: &str,
    query: Option<String>,
    file: Option<&Path>,
    options: ExplainOptions,
    raw: bool,
) -> ExitCode {
    let colour = std::io::stdout().is_terminal();
    let sql = match query_text(query, file) {
        Ok(sql) => sql,
        Err(e) => {
            eprintln!("diesel-budget explain: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match explain_sql(url, &sql, options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("diesel-budget explain: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    print_explain(&sql, &report, raw, colour);
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

const GREEN: &str = "\x1b[32m";

fn print_explain(sql: &str, report: &SqlExplain, raw: bool, colour: bool) {
    let plan = &report.plan;
    let options = report.options;
    println!("query ({}): {sql}", plan.backend);
    let estimate = plan
        .estimated_rows
        .map_or_else(|| "none".to_owned(), |r| r.to_string());
    println!("plan: {}; estimated rows: {estimate}", plan.shape());
    let header = [
        "table",
        "access",
        "index",
        "est. rows",
        "table rows",
        "verdict",
    ];
    let mut rows: Vec<([String; 6], Option<&str>)> = Vec::new();
    for node in &plan.nodes {
        let table = node.table.clone().unwrap_or_else(|| "-".to_owned());
        let access = match node.access {
            Access::FullScan => "full scan",
            Access::Index => "index",
            _ => "other",
        };
        let index = node.index.clone().unwrap_or_else(|| {
            if node.possible_indexes.is_empty() {
                "-".to_owned()
            } else {
                format!("(possible: {})", node.possible_indexes.join(", "))
            }
        });
        let estimated = node
            .estimated_rows
            .map_or_else(|| "-".to_owned(), |r| r.to_string());
        let scan = report
            .scans
            .iter()
            .find(|s| node.access == Access::FullScan && Some(&s.table) == node.table.as_ref());
        let (size, verdict, tone) = match scan {
            Some(s) => {
                let size = match s.rows {
                    Some(n) if n > options.max_scan_rows => format!("> {}", options.max_scan_rows),
                    Some(n) => n.to_string(),
                    None => "unknown".to_owned(),
                };
                let verdict = if !s.fails {
                    format!("ok: at most {} rows", options.max_scan_rows)
                } else if options.require_index {
                    "FAIL: no usable index".to_owned()
                } else if s.rows.is_none() {
                    "FAIL: full scan, size unknown".to_owned()
                } else {
                    format!("FAIL: full scan over {} rows", options.max_scan_rows)
                };
                (
                    size,
                    verdict,
                    if s.fails { Some(RED) } else { Some(YELLOW) },
                )
            }
            None => ("-".to_owned(), "ok".to_owned(), None),
        };
        rows.push((
            [table, access.to_owned(), index, estimated, size, verdict],
            tone,
        ));
    }
    if !rows.is_empty() {
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
                .trim_end()
                .to_owned()
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
            println!("{}", paint(&line(row), *tone, colour));
        }
    }
    if raw {
        println!("raw plan:\n{}", plan.raw.trim_end());
    }
    let failing: Vec<&str> = report
        .scans
        .iter()
        .filter(|s| s.fails)
        .map(|s| s.table.as_str())
        .collect();
    let summary = if !failing.is_empty() {
        let why = if options.require_index {
            "no usable index (--require-index)".to_owned()
        } else {
            format!("more than {} rows (--max-scan-rows)", options.max_scan_rows)
        };
        format!("FAILED: full scan of {}: {why}", failing.join(", "))
    } else if report.scans.is_empty() {
        "ok: no full scan".to_owned()
    } else {
        format!(
            "ok: full scans only of tables of at most {} rows",
            options.max_scan_rows
        )
    };
    let tone = if failing.is_empty() { GREEN } else { RED };
    println!("{}", paint(&summary, Some(tone), colour));
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
