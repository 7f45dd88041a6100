#!/usr/bin/env bash
# The pagination table of the README (issue 10): offset and keyset pages at depths 1, 2, 1,000 and
# 9,000 of a 10^6-row table, keys `id` and `(created_at DESC, id DESC)`, on every backend, and on
# PostgreSQL the i-love-jesus baseline (`ilj-page`, the separate crate benches/ilj, which
# measures ilj, ours and the hand-written queries in the same shuffled rounds of one process).
# Appends the JSON lines to benches/results/pages-<run>.jsonl and prints a markdown table.
#
# Settings (environment):
#   BACKENDS        sqlite postgres mysql
#   ROWS            1000000
#   REPS            200 measured rounds of the keyset scenarios (20 warm-up rounds first)
#   OFFSET_REPS     15 measured rounds of offset-page (2 warm-up rounds first)
#   BENCH_PG_URL    PostgreSQL bench database (default postgres://postgres@127.0.0.1:5432/diesel_budget_bench)
#   BENCH_MYSQL_URL MySQL bench database (default mysql://root@127.0.0.1:3306/diesel_budget_bench)
#   NICE            a prefix for every run (e.g. "nice"), empty by default
# Seeding truncates `items` in the bench databases, never in the test databases.
set -euo pipefail

cd "$(dirname "$0")/.."

BACKENDS=${BACKENDS:-"sqlite postgres mysql"}
ROWS=${ROWS:-1000000}
REPS=${REPS:-200}
OFFSET_REPS=${OFFSET_REPS:-15}
NICE=${NICE:-}
export PG_DATABASE_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/diesel_budget_bench}
export MYSQL_DATABASE_URL=${BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/diesel_budget_bench}
export BENCH_RUN=${BENCH_RUN:-$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src examples benches/ilj 2>/dev/null; then
    BENCH_COMMIT="$BENCH_COMMIT+dirty"
fi
export BENCH_COMMIT
mkdir -p benches/results
RESULTS=${RESULTS:-benches/results/pages-$BENCH_RUN.jsonl}
DEPTHS="--depth 1 --depth 2 --depth 1000 --depth 9000"

echo "== build (release): the bench, and benches/ilj" >&2
cargo build --release --all-features --example bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench
if [[ " $BACKENDS " == *" postgres "* ]]; then
    cargo build --release --manifest-path benches/ilj/Cargo.toml >&2
fi
ILJ=benches/ilj/target/release/ilj-page

echo "== run $BENCH_RUN (commit $BENCH_COMMIT), load: $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS" >&2
for backend in $BACKENDS; do
    echo "== $backend: seed $ROWS rows" >&2
    $NICE "$BIN" seed --backend "$backend" --rows "$ROWS" >&2
    for key in id created-id; do
        echo "   $backend $key: offset-page" >&2
        $NICE "$BIN" offset-page --backend "$backend" --rows "$ROWS" $DEPTHS --page-key "$key" \
            --reps "$OFFSET_REPS" --warmup 2 >>"$RESULTS"
        if [ "$backend" = postgres ]; then
            # ilj, ours and the hand-written queries in one process.
            echo "   $backend $key: ilj-page" >&2
            $NICE "$ILJ" --rows "$ROWS" $DEPTHS --page-key "$key" --reps "$REPS" --warmup 20 \
                >>"$RESULTS"
        fi
        echo "   $backend $key: keyset-page" >&2
        $NICE "$BIN" keyset-page --backend "$backend" --rows "$ROWS" $DEPTHS --page-key "$key" \
            --reps "$REPS" --warmup 20 >>"$RESULTS"
    done
done
echo "== load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$RESULTS" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = {"Id": "`id`", "CreatedId": "`created_at DESC, id DESC`"}
print("| backend | key | scenario | impl | depth 1 | depth 2 | depth 1,000 | depth 9,000 | 9,000 / 2 | ours / best hand-written (9,000) | ours / ilj (9,000) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for l in lines:
    by = {}
    for d in l["depths"]:
        by.setdefault(d["impl"], {})[d["depth"]] = d
    best = None
    hand = [by[i] for i in ("diesel", "diesel-row") if i in by]
    if hand:
        best = min(h[9000]["page_ms"] for h in hand if 9000 in h)
    for impl, ds in by.items():
        cells = [f'{ds[d]["page_ms"]:.3f} ({ds[d]["p90_ms"]:.3f})' if d in ds else "" for d in (1, 2, 1000, 9000)]
        ratio = f'{ds[9000]["page_ms"] / ds[2]["page_ms"]:.2f}x' if 9000 in ds and 2 in ds else ""
        vs_hand = vs_ilj = ""
        if impl == "ours" and best and 9000 in ds:
            vs_hand = f'{ds[9000]["page_ms"] / best:.2f}x'
        if impl == "ours" and "ilj" in by and 9000 in ds:
            vs_ilj = f'{ds[9000]["page_ms"] / by["ilj"][9000]["page_ms"]:.2f}x'
        print(f'| {l["backend"]} | {keys.get(l["page_key"], l["page_key"])} | {l["scenario"]} | {impl} | '
              + " | ".join(cells) + f" | {ratio} | {vs_hand} | {vs_ilj} |")
EOF
echo "JSON lines: $RESULTS" >&2
