//! `diesel-budget`: the command line of diesel-budget (`cargo install diesel-budget --features
//! cli`, or `cargo run --features cli --bin diesel-budget -- --help` in this repository).
//!
//! Its home is this binary target, built only with the `cli` feature (`required-features` in
//! Cargo.toml), so clap and whatever the subcommands need stay out of library users' builds.
//! For now it prints its usage and version; the subcommands of issue 7 (`check`: hold a code
//! path's recorded ledgers to their budget snapshots in CI; `explain`: EXPLAIN the budgeted
//! queries and flag full scans) come next.

use clap::{CommandFactory, Parser};

/// Memory budgets for Diesel queries, checked in CI: subcommands are coming.
///
/// Coming (issue 7): `check` compares recorded budget ledgers with their snapshots; `explain`
/// runs EXPLAIN on the budgeted queries and flags full scans. This version prints its usage and
/// version only.
#[derive(Debug, Parser)]
#[command(name = "diesel-budget", version)]
struct Cli {}

fn main() -> std::io::Result<()> {
    // `--help` and `--version` print and exit here; anything else is a usage error.
    let Cli {} = Cli::parse();
    // No subcommand yet: the version and the usage.
    let mut command = Cli::command();
    print!("{}", command.render_version());
    command.print_help()
}
