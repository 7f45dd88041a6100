#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run calls this): scripts/test.sh
#
#  1. scripts/services.sh: installs (Debian packages) and starts whatever is missing:
#     build dependencies, PostgreSQL, MariaDB, Redis, Memcached; creates the test databases.
#     A server that stays unreachable is a failure, never a skip.
#  2. cargo fmt --check, clippy -D warnings, rustdoc -D warnings.
#  3. cargo test --all-features: unit, integration (SQLite, PostgreSQL, MariaDB) and doc tests;
#     then the compile-fail (trybuild) tests with the default features.
#  3b. Each backend feature alone: the library, binary and examples build and the doctests
#      pass on that backend;
#     no backend feature at all is a clear compile error.
#  4. The real diesel CLI runs and redoes our migrations on SQLite, PostgreSQL and MariaDB.
#  5. The tour, small, on all three backends.
#  The fault suite (tests/faults.rs, its table in the README) and the cargo-fuzz targets run
#  between 3 and 3b.
#
# Servers: PG_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/diesel_budget_test) and
# MYSQL_DATABASE_URL (default mysql://root@127.0.0.1:3306/diesel_budget_test).
# Stops at the first failure; prints how long each step took. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PG_DATABASE_URL="${PG_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/diesel_budget_test}"
export MYSQL_DATABASE_URL="${MYSQL_DATABASE_URL:-mysql://root@127.0.0.1:3306/diesel_budget_test}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# shellcheck source=scripts/services.sh
source scripts/services.sh

if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust first (https://rustup.rs)"

SUMMARY=()
CURRENT=""
STARTED=$SECONDS

finish() {
    local rc=$? line
    printf '\n== scripts/test.sh summary ==\n'
    for line in "${SUMMARY[@]}"; do printf '%s\n' "$line"; done
    if [ -n "$CURRENT" ]; then printf '  FAILED        %s\n' "$CURRENT"; fi
    if [ "$rc" -eq 0 ]; then
        printf '  passed in %ds\n' $((SECONDS - STARTED))
    else
        printf '  FAILED after %ds (exit %d)\n' $((SECONDS - STARTED)) "$rc"
    fi
}
trap finish EXIT

# step NAME COMMAND...: runs COMMAND, timing it; the script stops at the first failure.
step() {
    local name=$1 t0=$SECONDS
    shift
    CURRENT=$name
    printf '\n==> %s\n' "$name"
    "$@"
    SUMMARY+=("$(printf '  ok  %6ds  %s' $((SECONDS - t0)) "$name")")
    CURRENT=""
}

# The URL of database NAME on the same server as URL.
sibling_url() {
    local base=${1%%\?*}
    printf '%s/%s%s' "${base%/*}" "$2" "${1#"$base"}"
}

toolchain() {
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null 2>&1 || die "cargo has no $component and there is no rustup to add it"
            rustup component add "$component"
        fi
    done
    cargo --version
}

# Each backend feature alone, as a user who enables one backend builds us: the library, its
# binary and the examples compile (the test targets are ours, not a user's; they build with
# every feature in the steps above), and the doctests pass on that backend
# (tests/doc_setup.rs picks it by feature; the servers' doctests use `<name>_doc` next to
# PG_DATABASE_URL / MYSQL_DATABASE_URL). Without any backend feature the build must stop at
# our compile_error!, not somewhere inside.
single_backends() {
    local feature out
    for feature in sqlite postgres mysql; do
        say "--no-default-features --features $feature,page: cargo check --lib --bins --examples, doctests (servers)"
        # One backend, the other default features (`page`) kept.
        cargo check --no-default-features --features "$feature,page" --lib --bins --examples
        # With every feature on, the doctests already ran on SQLite (tests/doc_setup.rs picks
        # it first): only the servers' runs are new.
        if [ "$feature" != sqlite ]; then
            cargo test --no-default-features --features "$feature,page" --doc
        fi
    done
    say "--no-default-features: must fail with our compile_error!"
    if out=$(cargo check --no-default-features --lib 2>&1); then
        die "the library builds without a backend feature; expected a compile_error!"
    fi
    grep -q 'diesel-budget needs a backend' <<<"$out" || {
        printf '%s\n' "$out"
        die "no backend feature: the build failed, but not with our compile_error!"
    }
}

# The layout rule of issue 8: no file under src/ outside src/backend/ names a connection type,
# a backend module of Diesel or a backend feature flag. Comment lines are skipped (prose may
# name them; doctest code is held by single_backends instead).
backend_knowledge_in_backend() {
    local hits
    hits=$(grep -rnE --include='*.rs' \
        '\b(SqliteConnection|PgConnection|MysqlConnection)\b|diesel::(sqlite|pg|mysql)::|feature *= *"(sqlite|postgres|mysql)"' \
        src | grep -v '^src/backend/' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
    if [ -n "$hits" ]; then
        printf '%s\n' "$hits"
        die "backend knowledge outside src/backend/ (lines above): move it into src/backend/<db>/"
    fi
}

# The real diesel CLI must run (and revert) our migrations on every backend.
diesel_cli_migrations() {
    local diesel scratch pg_cli my_cli
    diesel=$(command -v diesel || true)
    if [ -z "$diesel" ]; then
        say "diesel CLI not found: cargo install diesel_cli (about 1.5 min)"
        cargo install diesel_cli --no-default-features --features postgres,sqlite,mysql --locked
        diesel="${CARGO_HOME:-$HOME/.cargo}/bin/diesel"
    fi
    "$diesel" --version

    scratch=$(mktemp -d)
    migrate "$diesel" SQLite "$scratch/diesel_budget_cli.db"
    rm -rf "$scratch"

    pg_vars
    PGOPTIONS='-c client_min_messages=warning' pg -q \
        -c 'DROP DATABASE IF EXISTS diesel_budget_cli' -c 'CREATE DATABASE diesel_budget_cli'
    pg_cli=$(sibling_url "$PG_DATABASE_URL" diesel_budget_cli)
    migrate "$diesel" PostgreSQL "$pg_cli"

    my_vars
    my -e 'DROP DATABASE IF EXISTS diesel_budget_cli; CREATE DATABASE diesel_budget_cli'
    my_cli=$(sibling_url "$MYSQL_DATABASE_URL" diesel_budget_cli)
    migrate "$diesel" MariaDB "$my_cli"
}

migrate() {
    local diesel=$1 name=$2 url=$3
    say "$name: diesel migration run, redo, list"
    "$diesel" migration run --database-url "$url"
    "$diesel" migration redo --database-url "$url"
    "$diesel" migration list --database-url "$url" | grep -q '\[X\]' ||
        die "$name: diesel migration list shows no applied migration"
}

# The cargo-fuzz targets (fuzz/: page tokens, budget lockfiles), FUZZ_SECONDS (20) each. On
# the stable toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags); installs
# cargo-fuzz when missing (about 2.5 min). The committed lockfiles seed the lockfile corpus;
# corpus, artifacts and fuzz/target stay untracked (.gitignore). The first build compiles
# everything again with coverage instrumentation (no sanitizer); later ones are incremental.
fuzz_targets() {
    local t0 target seeds
    if ! cargo fuzz --version >/dev/null 2>&1; then
        say "cargo-fuzz not found: cargo install cargo-fuzz --locked"
        t0=$SECONDS
        cargo install cargo-fuzz --locked
        say "cargo-fuzz installed in $((SECONDS - t0)) s"
    fi
    for target in page_token lockfile; do
        mkdir -p "fuzz/corpus/$target"
        seeds=()
        if [ "$target" = lockfile ]; then seeds=(../tests/budgets); fi
        # --sanitizer none: the decoders are safe Rust; ASan would instrument every dependency
        # (the bundled SQLite included) for nothing and lengthen the cold build.
        (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "corpus/$target" "${seeds[@]}" \
            -- -max_total_time="${FUZZ_SECONDS:-20}")
    done
}

# The tour, small, on each backend: debug build, same features as the tests (no rebuild).
tour() {
    cargo run --all-features --example tour -- --rows 20000
    cargo run --all-features --example tour -- --rows 20000 \
        --database-url "$(sibling_url "$PG_DATABASE_URL" diesel_budget_tour)"
    cargo run --all-features --example tour -- --rows 20000 \
        --database-url "$(sibling_url "$MYSQL_DATABASE_URL" diesel_budget_tour)"
}

step "services: packages, PostgreSQL, MariaDB, Redis, Memcached, databases" services_up
step "toolchain: rustfmt, clippy" toolchain
step "layout: no connection type or backend feature outside src/backend/" \
    backend_knowledge_in_backend
step "cargo fmt --all -- --check" cargo fmt --all -- --check
step "cargo clippy --all-targets --all-features -- -D warnings" \
    cargo clippy --all-targets --all-features -- -D warnings
# The fault suite has `test = false` (run as a step of its own), so --all-targets leaves it out.
step "cargo clippy --all-features --test faults -- -D warnings" \
    cargo clippy --all-features --test faults -- -D warnings
step "cargo doc --no-deps --all-features (RUSTDOCFLAGS=-D warnings)" \
    env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
step "cargo test --all-features (unit, SQLite/PostgreSQL/MariaDB, doc)" cargo test --all-features
# Budget lockfiles (issue 7): under CI=true a missing tests/budgets/<name>.json fails; then the
# command compares what the run wrote (target/diesel-budget/) with the committed files.
step "budget lockfiles: CI=true suite lockfile test, then diesel-budget check" \
    env CI=true sh -c 'cargo test --all-features --test backends ci::suite && cargo run --all-features --bin diesel-budget -- check'
step "fault suite: cargo test --all-features --test faults (its table in README)" cargo test --all-features --test faults
# trybuild's expected messages list the connection types of one feature set: the default one.
step "cargo test --test compile_fail (default features: trybuild)" cargo test --test compile_fail
step "cargo fuzz: page_token, lockfile (FUZZ_SECONDS=20 each)" fuzz_targets
step "each backend feature alone: check lib, bins, examples; doctests; none: compile_error!" \
    single_backends
step "diesel CLI: migration run/redo on SQLite, PostgreSQL, MariaDB" diesel_cli_migrations
step "tour --rows 20000 on SQLite, PostgreSQL, MariaDB" tour
