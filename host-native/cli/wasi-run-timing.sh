#!/usr/bin/env bash
# Times `dbguard wasi run` of the WASI host with the release binary: without the compile cache
# (DBGUARD_WASI_CACHE=off, every run compiles), cold (an empty cache: compile and store) and
# warm (the module already in the cache). Prints each run and the medians in milliseconds.
#
#   host-native/cli/wasi-run-timing.sh [RUNS]     RUNS of each kind, default 10
#
# Wall time of whole processes, so run it on a quiet machine: other builds distort it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
runs=${1:-10}

if pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; then
    echo "warning: a build is running on this machine; the numbers will be distorted" >&2
fi
cargo build --release --locked -p dbguard-cli
host-wasi/build.sh >/dev/null
dbguard="${CARGO_TARGET_DIR:-target}/release/dbguard"
module=host-wasi/target/wasm32-wasip1/release/dbguard-wasi.wasm

cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export DBGUARD_WASI_CACHE_DIR="$cache/wasi"

# One `dbguard wasi run <module> -- help`, in milliseconds.
run_ms() {
    local start end
    start=$(date +%s%N)
    "$dbguard" wasi run "$module" -- help >/dev/null
    end=$(date +%s%N)
    echo $(((end - start) / 1000000))
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# measure <name> <command run before each timed run>
measure() {
    local name="$1" before="$2" times=()
    for _ in $(seq "$runs"); do
        eval "$before"
        times+=("$(run_ms)")
    done
    local med
    med=$(printf '%s\n' "${times[@]}" | median)
    echo "$name: median ${med} ms over $runs runs (${times[*]})"
    printf -v "median_$name" '%s' "$med"
}

measure off "export DBGUARD_WASI_CACHE=off"
unset DBGUARD_WASI_CACHE
measure cold 'rm -rf "$DBGUARD_WASI_CACHE_DIR"'
run_ms >/dev/null # the cache holds the module from here on
measure warm ":"
# shellcheck disable=SC2154 # set by measure through printf -v
awk -v cold="$median_cold" -v warm="$median_warm" 'BEGIN { printf "cold / warm: %.1f\n", cold / warm }'
echo "module: $module ($(stat -c %s "$module") bytes); $(nproc) cores; $(git describe --always --dirty)"
