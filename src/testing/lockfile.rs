//! Budget lockfiles: what a named recording did, committed under `tests/budgets/<name>.json`,
//! and held against later runs.
//!
//! One entry per SQL shape ([`fingerprint`](super::fingerprint)) and call site, sorted: the
//! declared budget, round trips, the most rows and bytes one statement received, all rows
//! received, and the plan's shape when one was attached ([`Lockfile::with_plan`]). A later
//! run fails when any of those grew, when a query shape is new, or when a plan gained a full
//! scan; when something shrank or a shape is gone, it passes and says the file could be
//! tightened.
//!
//! - `DIESEL_BUDGET_UPDATE=1`: (re)write the committed file and pass.
//! - A missing file is written (and the run passes), except under `CI=true`, where it is a
//!   failure.
//! - Every run also writes what it saw to `target/diesel-budget/<name>.json` (under
//!   `CARGO_TARGET_DIR` when set), for `diesel-budget check` to compare with the committed
//!   files.
//!
//! Entries are matched by shape and call site (`file:line:column`); when a line moved, by shape
//! and file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::explain::Plan;
use super::Ledger;

/// What one query shape did at one call site, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockEntry {
    /// The SQL shape (placeholders only).
    pub query: String,
    /// `file:line:column` of the executor call, or `unknown`.
    pub call_site: String,
    /// The declared row budget.
    pub budget_rows: Option<u64>,
    /// The declared byte budget.
    pub budget_bytes: Option<u64>,
    /// Statements of this shape from this call site.
    pub round_trips: u64,
    /// The most rows one statement received.
    pub max_rows: u64,
    /// The most bytes one statement received (byte-metered statements).
    pub max_bytes: u64,
    /// Rows received by all of them.
    pub rows_received: u64,
    /// The plan's shape ([`Plan::shape`]), when attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl LockEntry {
    fn key(&self) -> (&str, &str) {
        (&self.query, &self.call_site)
    }

    fn file(&self) -> &str {
        self.call_site.split(':').next().unwrap_or("")
    }

    fn budget(&self) -> String {
        match (self.budget_rows, self.budget_bytes) {
            (Some(r), Some(b)) => format!("{r} rows, {b} bytes"),
            (Some(r), None) => format!("{r} rows"),
            (None, Some(b)) => format!("{b} bytes"),
            (None, None) => "none".to_owned(),
        }
    }

    fn figures(&self) -> String {
        let mut s = format!(
            "{} rt, {} rows max, {} rows, {} B max",
            self.round_trips, self.max_rows, self.rows_received, self.max_bytes
        );
        if let Some(p) = &self.plan {
            s.push_str(&format!(", {p}"));
        }
        s
    }
}

/// A named recording's budget file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lockfile {
    /// The recording's name (the file's stem).
    pub name: String,
    /// One entry per shape and call site, sorted by shape then call site.
    pub queries: Vec<LockEntry>,
}

impl Lockfile {
    /// What `ledger` did, as a lockfile named `name`.
    pub fn from_ledger(name: &str, ledger: &Ledger) -> Self {
        let mut queries: Vec<LockEntry> = ledger
            .shapes()
            .into_iter()
            .map(|s| LockEntry {
                call_site: s
                    .location
                    .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
                query: s.fingerprint,
                budget_rows: s.budget.map(|b| b.rows),
                budget_bytes: s.budget.and_then(|b| b.bytes),
                round_trips: s.count as u64,
                max_rows: s.max_rows,
                max_bytes: s.max_bytes,
                rows_received: s.rows,
                plan: None,
            })
            .collect();
        queries.sort_by(|a, b| a.key().cmp(&b.key()));
        Lockfile {
            name: name.to_owned(),
            queries,
        }
    }

    /// Attaches `plan`'s shape to the entries whose SQL shape is `query_fingerprint`.
    pub fn with_plan(mut self, query_fingerprint: &str, plan: &Plan) -> Self {
        let shape = plan.shape();
        for e in self
            .queries
            .iter_mut()
            .filter(|e| e.query == query_fingerprint)
        {
            e.plan = Some(shape.clone());
        }
        self
    }

    /// The file's text: pretty JSON, stable order, a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a lockfile.
    ///
    /// # Errors
    /// [`LockError::Io`] or [`LockError::Parse`].
    pub fn read(path: &Path) -> Result<Self, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: path.to_owned(),
            source: source.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses the text of the lockfile at `path` (named in the error).
    fn parse(path: &Path, text: &str) -> Result<Self, LockError> {
        serde_json::from_str(text).map_err(|e| LockError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Writes the lockfile to `path`, creating its directory.
    ///
    /// # Errors
    /// [`LockError::Io`].
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let io = |e: std::io::Error| LockError::Io {
            path: path.to_owned(),
            source: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, self.to_json()).map_err(io)
    }

    /// Compares `now` (a run) with `self` (the committed file).
    pub fn compare(&self, now: &Lockfile) -> LockReport {
        let mut used = vec![false; self.queries.len()];
        let mut changes = Vec::new();
        for entry in &now.queries {
            let found = self
                .queries
                .iter()
                .enumerate()
                .find(|(i, b)| !used[*i] && b.key() == entry.key())
                .or_else(|| {
                    self.queries.iter().enumerate().find(|(i, b)| {
                        !used[*i] && b.query == entry.query && b.file() == entry.file()
                    })
                })
                .map(|(i, b)| (i, b.clone()));
            let before = found.map(|(i, b)| {
                used[i] = true;
                b
            });
            changes.push(Change::new(before, Some(entry.clone())));
        }
        for (i, b) in self.queries.iter().enumerate() {
            if !used[i] {
                changes.push(Change::new(Some(b.clone()), None));
            }
        }
        LockReport {
            name: now.name.clone(),
            changes,
        }
    }
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// As committed.
    Same,
    /// Less of something, more of nothing: the file could be tightened.
    Tighter,
    /// More rows, bytes or round trips, a new full scan, or a new query: a regression.
    Regressed,
    /// Committed but not seen in this run: the file could be tightened.
    Gone,
}

/// One row of a [`LockReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The committed entry, if any.
    pub before: Option<LockEntry>,
    /// This run's entry, if any.
    pub now: Option<LockEntry>,
    /// The verdict.
    pub verdict: Verdict,
    /// What changed, in words (`round trips 2 -> 3`, `new query`, `new full scan`).
    pub what: String,
}

impl Change {
    fn new(before: Option<LockEntry>, now: Option<LockEntry>) -> Self {
        let (verdict, what) = match (&before, &now) {
            (None, Some(_)) => (Verdict::Regressed, "new query".to_owned()),
            (Some(_), None) => (Verdict::Gone, "not run any more".to_owned()),
            (None, None) => (Verdict::Same, String::new()),
            (Some(b), Some(n)) => {
                let pairs = [
                    ("round trips", b.round_trips, n.round_trips),
                    ("max rows", b.max_rows, n.max_rows),
                    ("max bytes", b.max_bytes, n.max_bytes),
                    ("rows received", b.rows_received, n.rows_received),
                ];
                let mut more = Vec::new();
                let mut less = Vec::new();
                for (name, was, is) in pairs {
                    if is > was {
                        more.push(format!("{name} {was} -> {is}"));
                    } else if is < was {
                        less.push(format!("{name} {was} -> {is}"));
                    }
                }
                let scan =
                    |p: &Option<String>| p.as_deref().is_some_and(|p| p.contains("full scan"));
                if scan(&n.plan) && !scan(&b.plan) {
                    more.push("new full scan".to_owned());
                }
                if !more.is_empty() {
                    (Verdict::Regressed, more.join(", "))
                } else if !less.is_empty() {
                    (Verdict::Tighter, less.join(", "))
                } else {
                    (Verdict::Same, String::new())
                }
            }
        };
        Change {
            before,
            now,
            verdict,
            what,
        }
    }

    fn entry(&self) -> Option<&LockEntry> {
        self.now.as_ref().or(self.before.as_ref())
    }
}

/// A run compared with its committed lockfile ([`Lockfile::compare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockReport {
    /// The recording's name.
    pub name: String,
    /// One row per entry of either file.
    pub changes: Vec<Change>,
}

impl LockReport {
    /// Whether anything regressed.
    pub fn regressed(&self) -> bool {
        self.changes.iter().any(|c| c.verdict == Verdict::Regressed)
    }

    /// Whether the committed file could be tightened (something shrank or is gone).
    pub fn could_tighten(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Tighter | Verdict::Gone))
    }

    /// The table's rows: query, call site, budget, before, now, change.
    pub fn table(&self) -> Vec<[String; 6]> {
        self.changes
            .iter()
            .filter(|c| c.verdict != Verdict::Same)
            .filter_map(|c| {
                let e = c.entry()?;
                Some([
                    e.query.clone(),
                    e.call_site.clone(),
                    e.budget(),
                    c.before
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), LockEntry::figures),
                    c.now
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), LockEntry::figures),
                    format!("{:?}: {}", c.verdict, c.what),
                ])
            })
            .collect()
    }
}

impl fmt::Display for LockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.regressed() {
            writeln!(f, "budget lockfile {}: regressed", self.name)?;
        } else if self.could_tighten() {
            writeln!(
                f,
                "budget lockfile {}: within budget; could be tightened (DIESEL_BUDGET_UPDATE=1)",
                self.name
            )?;
        } else {
            writeln!(f, "budget lockfile {}: as committed", self.name)?;
        }
        for [query, site, budget, before, now, change] in self.table() {
            writeln!(
                f,
                "  {change}\n    query: {query}\n    at {site}, budget {budget}\n    \
                 before: {before}\n    now:    {now}"
            )?;
        }
        Ok(())
    }
}

/// For the `cargo fuzz` target in `fuzz/` (not an API): reads `bytes` as the text of a
/// lockfile, as [`Lockfile::read`] does. A lockfile that parses must write back to text that
/// parses to the same lockfile, compare with itself without a regression, and print its report
/// (each of these panics otherwise, which is what the fuzzer looks for). Returns whether it
/// parsed.
#[doc(hidden)]
pub fn __fuzz_lockfile(bytes: &[u8]) -> bool {
    let path = Path::new("fuzz.json");
    let Some(lock) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| Lockfile::parse(path, text).ok())
    else {
        return false;
    };
    let again = Lockfile::parse(path, &lock.to_json());
    assert_eq!(
        again.as_ref(),
        Ok(&lock),
        "a lockfile does not survive writing it back"
    );
    let report = lock.compare(&lock);
    assert!(!report.regressed(), "a lockfile regressed against itself");
    let _ = (report.to_string(), report.table());
    true
}

/// Why a lockfile check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// The run did more than the committed file allows.
    Regressed(LockReport),
    /// No committed file, under `CI=true`.
    Missing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// A file could not be read or written.
    Io {
        /// Which.
        path: PathBuf,
        /// The I/O error's message.
        source: String,
    },
    /// A file is not a lockfile.
    Parse {
        /// Which.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Regressed(report) => write!(
                f,
                "{report}(if this is intended, rewrite the file: DIESEL_BUDGET_UPDATE=1)"
            ),
            LockError::Missing { path } => write!(
                f,
                "budget lockfile {} is missing and CI=true: run the tests locally (or with \
                 DIESEL_BUDGET_UPDATE=1) and commit it",
                path.display()
            ),
            LockError::Io { path, source } => {
                write!(f, "budget lockfile {}: {source}", path.display())
            }
            LockError::Parse { path, reason } => {
                write!(
                    f,
                    "budget lockfile {} is not readable: {reason}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LockError {}

fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where committed lockfiles live: `DIESEL_BUDGET_DIR`, or `tests/budgets` in the package.
pub fn committed_dir() -> PathBuf {
    std::env::var_os("DIESEL_BUDGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("tests").join("budgets"))
}

/// Where runs write what they saw: `target/diesel-budget` (under `CARGO_TARGET_DIR` when set).
pub fn run_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
        .join("diesel-budget")
}

/// Holds `lockfile` (built from a ledger with [`Lockfile::from_ledger`], plans attached) to
/// its committed file `<committed_dir>/<name>.json`, as the module docs say.
///
/// # Errors
/// [`LockError`]: a regression, a missing file under `CI=true`, or a file that cannot be read
/// or written.
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(10)?;
/// # let dir = tempfile::tempdir()?;
/// # let dir = dir.path();
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::{items, Item};
/// use diesel_budget::testing::{self, Lockfile};
///
/// let list = |conn: &mut Conn<DbConnection>| {
///     items::table.budget(Budget::rows(20)).load::<Item>(conn)
/// };
/// let (_, ledger) = testing::record(&mut conn, |conn| list(conn));
/// // The first run writes <dir>/doc_example.json (`check_lockfile`: tests/budgets/), unless
/// // under CI.
/// testing::check_lockfile_in(dir, &Lockfile::from_ledger("doc_example", &ledger), false, false)?;
/// // A later run that reads more rows fails.
/// let (_, more) = testing::record(&mut conn, |conn| {
///     list(conn)?;
///     list(conn)
/// });
/// let err = testing::check_lockfile_in(dir, &Lockfile::from_ledger("doc_example", &more), false, false)
///     .unwrap_err();
/// assert!(err.to_string().contains("round trips 1 -> 2"), "{err}");
/// # Ok(()) }
/// ```
pub fn check_lockfile(lockfile: &Lockfile) -> Result<LockReport, LockError> {
    lockfile.write(&run_dir().join(format!("{}.json", lockfile.name)))?;
    check_lockfile_in(
        &committed_dir(),
        lockfile,
        flag("DIESEL_BUDGET_UPDATE"),
        flag("CI"),
    )
}

/// [`check_lockfile`] against the committed files in `dir`, with the environment's switches
/// given: `update` (`DIESEL_BUDGET_UPDATE=1`: rewrite and pass) and `ci` (`CI=true`: a missing
/// file fails). Writes no run copy.
///
/// # Errors
/// As [`check_lockfile`].
pub fn check_lockfile_in(
    dir: &Path,
    lockfile: &Lockfile,
    update: bool,
    ci: bool,
) -> Result<LockReport, LockError> {
    let path = dir.join(format!("{}.json", lockfile.name));
    let committed = if path.exists() {
        Some(Lockfile::read(&path)?)
    } else {
        None
    };
    let report = committed
        .as_ref()
        .unwrap_or(&Lockfile {
            name: lockfile.name.clone(),
            queries: Vec::new(),
        })
        .compare(lockfile);
    if update {
        lockfile.write(&path)?;
        return Ok(report);
    }
    match committed {
        None if ci => Err(LockError::Missing { path }),
        None => {
            lockfile.write(&path)?;
            Ok(report)
        }
        Some(_) if report.regressed() => Err(LockError::Regressed(report)),
        Some(_) => Ok(report),
    }
}

/// [`check_lockfile`] of `ledger` under `name`, panicking with the report on failure.
#[track_caller]
pub fn assert_lockfile(name: &str, ledger: &Ledger) -> LockReport {
    match check_lockfile(&Lockfile::from_ledger(name, ledger)) {
        Ok(report) => report,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{LockEntry, Lockfile, Verdict};

    fn entry(site: &str, round_trips: u64, plan: Option<&str>) -> LockEntry {
        LockEntry {
            query: "SELECT a FROM t WHERE (b = ?) LIMIT ?".into(),
            call_site: site.into(),
            budget_rows: Some(10),
            budget_bytes: None,
            round_trips,
            max_rows: 3,
            max_bytes: 0,
            rows_received: 3 * round_trips,
            plan: plan.map(str::to_owned),
        }
    }

    fn file(entries: Vec<LockEntry>) -> Lockfile {
        Lockfile {
            name: "t".into(),
            queries: entries,
        }
    }

    #[test]
    fn a_new_full_scan_regresses_and_a_moved_line_still_matches() {
        let before = file(vec![entry("src/a.rs:10:5", 1, Some("index t_b on t"))]);
        // The call moved down 3 lines: matched by shape and file, as committed.
        let moved = before.compare(&file(vec![entry(
            "src/a.rs:13:5",
            1,
            Some("index t_b on t"),
        )]));
        assert_eq!(moved.changes.len(), 1);
        assert_eq!(moved.changes[0].verdict, Verdict::Same);
        // The index went away: a new full scan.
        let scan = before.compare(&file(vec![entry("src/a.rs:10:5", 1, Some("full scan t"))]));
        assert!(scan.regressed());
        assert_eq!(scan.changes[0].what, "new full scan");
        // Not run any more: the file could be tightened, no regression.
        let gone = before.compare(&file(vec![]));
        assert!(!gone.regressed() && gone.could_tighten());
        assert_eq!(gone.changes[0].verdict, Verdict::Gone);
        // From another file: a new query (and the old one gone).
        let other = before.compare(&file(vec![entry(
            "src/b.rs:10:5",
            1,
            Some("index t_b on t"),
        )]));
        assert!(other.regressed());
        assert_eq!(other.changes.len(), 2);
        // JSON round trip, stable.
        let json = before.to_json();
        assert_eq!(
            serde_json::from_str::<Lockfile>(&json).expect("json"),
            before
        );
        assert!(json.ends_with("}\n"));
    }
}
