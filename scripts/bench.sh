#!/usr/bin/env bash
# Whole-process benchmarks: plain Diesel against diesel-budget, on each backend and table size.
#
#   scripts/bench.sh                                  # everything (takes a while)
#   BACKENDS=sqlite SIZES="10000 100000" scripts/bench.sh
#   REPS=1 SCENARIOS="budget-stream diesel-load-iter-rbr" BACKENDS=postgres scripts/bench.sh
#
# Builds examples/bench.rs once (release, --all-features), seeds each backend at each size in
# its own process (`bench seed`, idempotent), runs every scenario REPS times per size and backend
# (one process each, reps interleaved so drift hits every scenario alike), appends the JSON lines
# to benches/results/<date>.jsonl and prints a markdown table of medians (`bench report`), which
# is also written next to the JSON lines as <date>-<run>.md.
#
# Settings (environment):
#   BACKENDS        sqlite postgres mysql
#   SIZES           10000 100000 1000000 10000000
#   REPS            3
#   SCENARIOS       all: diesel-load diesel-load-iter diesel-load-iter-rbr diesel-stream-ordered
#                   diesel-keyset budget-batches budget-stream (diesel-load-iter-rbr runs on
#                   PostgreSQL only, diesel-stream-ordered on PostgreSQL and SQLite)
#   BIG             10000000: from this size on, only the bounded-memory scenarios run
#                   (budget-stream, budget-batches, diesel-keyset, diesel-load-iter-rbr,
#                   diesel-stream-ordered, and
#                   diesel-load-iter on SQLite, whose default mode streams); FULL_LOADS_BIG=1
#                   runs the full-load baselines there too (~4.5 GB of RAM each)
#   BENCH_PG_URL    PostgreSQL bench database (default postgres://postgres@127.0.0.1:5432/diesel_budget_bench)
#   BENCH_MYSQL_URL MySQL bench database (default mysql://root@127.0.0.1:3306/diesel_budget_bench)
#   RESULTS         the JSON-lines file (default benches/results/<date>.jsonl)
#
# The servers' URLs are deliberately not taken from PG_DATABASE_URL / MYSQL_DATABASE_URL here:
# those point the test suite at its own database, and seeding truncates `items`.
set -euo pipefail

cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"sqlite postgres mysql"}
SIZES=${SIZES:-"10000 100000 1000000 10000000"}
REPS=${REPS:-3}
ALL_SCENARIOS="diesel-load diesel-load-iter diesel-load-iter-rbr diesel-stream-ordered diesel-keyset budget-batches budget-stream"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
BIG=${BIG:-10000000}
FULL_LOADS_BIG=${FULL_LOADS_BIG:-0}
export PG_DATABASE_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/diesel_budget_bench}
export MYSQL_DATABASE_URL=${BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/diesel_budget_bench}

mkdir -p benches/results
RESULTS=${RESULTS:-benches/results/$(date -u +%F).jsonl}
export BENCH_RUN=${BENCH_RUN:-$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src Cargo.toml examples/bench.rs 2>/dev/null; then
    BENCH_COMMIT="$BENCH_COMMIT+dirty"
fi
export BENCH_COMMIT
LOG=${LOG:-target/bench/$BENCH_RUN.log}
mkdir -p target/bench

echo "== build (release, --all-features)" >&2
cargo build --release --all-features --example bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench

# Whether $1 runs on backend $2 at size $3.
wanted() {
    local scenario=$1 backend=$2 rows=$3
    if [ "$scenario" = diesel-load-iter-rbr ] && [ "$backend" != postgres ]; then
        return 1
    fi
    if [ "$scenario" = diesel-stream-ordered ] && [ "$backend" = mysql ]; then
        return 1
    fi
    if [ "$rows" -ge "$BIG" ] && [ "$FULL_LOADS_BIG" != 1 ]; then
        case "$scenario" in
            diesel-load) return 1 ;;
            diesel-load-iter) [ "$backend" = sqlite ] || return 1 ;;
        esac
    fi
    return 0
}

failures=0
echo "== run $BENCH_RUN (commit $BENCH_COMMIT), load: $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS; log: $LOG" >&2
for backend in $BACKENDS; do
    for rows in $SIZES; do
        echo "== $backend, $rows rows: seed" >&2
        if ! "$BIN" seed --backend "$backend" --rows "$rows" >>"$LOG" 2> >(tee -a "$LOG" >&2); then
            echo "!! seed failed: $backend $rows (see $LOG)" >&2
            failures=$((failures + 1))
            continue
        fi
        for rep in $(seq 1 "$REPS"); do
            for scenario in $SCENARIOS; do
                wanted "$scenario" "$backend" "$rows" || continue
                if line=$("$BIN" "$scenario" --backend "$backend" --rows "$rows" 2>>"$LOG"); then
                    echo "$line" >>"$RESULTS"
                    echo "$line" >>"$LOG"
                    sed -E 's/.*"peak_rss_mib":([0-9.]+).*"rows_per_s":([0-9.]+).*/\1 \2/' <<<"$line" |
                        awk -v b="$backend" -v r="$rows" -v s="$scenario" -v n="$rep" \
                            '{ printf "   %-8s %9s %-21s rep %s: %7.1f MiB %10.0f rows/s\n", b, r, s, n, $1, $2 }' >&2
                else
                    echo "!! $scenario failed: $backend $rows rep $rep (see $LOG)" >&2
                    failures=$((failures + 1))
                fi
            done
        done
    done
done

echo "== load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
TABLE=${RESULTS%.jsonl}-$BENCH_RUN.md
"$BIN" report --input "$RESULTS" --run "$BENCH_RUN" | tee "$TABLE"
echo >&2
echo "JSON lines: $RESULTS; table: $TABLE" >&2
if [ "$failures" -gt 0 ]; then
    echo "!! $failures runs failed" >&2
    exit 1
fi
