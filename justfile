# Recipes for humans. CI runs .ci/run.

# Run the service on the embedded SQLite default.
run:
    cargo run --release -p dbguard -- serve

# The test suite (PostgreSQL at 127.0.0.1:5432 or DBGUARD_TEST_PG_URL).
test:
    cargo test --workspace

# Format check and clippy, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate schemas/ from the code.
schemas:
    cargo run -p dbguard -- schemas

# Build the pure core for both WebAssembly targets.
wasm-check:
    cargo build -p dbguard-core --target wasm32-unknown-unknown
    cargo build -p dbguard-core --target wasm32-wasip2

# Everything CI does, on this machine.
ci:
    bash .ci/run

# Build the guest SDK's example plugins (WebAssembly components) into plugin-wasi/guest/target.
plugins:
    cd plugin-wasi/guest && cargo build --release --target wasm32-wasip2

# Build the WASI host (needs Debian's clang, llvm-14 and wasi-libc).
wasi:
    host-wasi/build.sh

# Fault drills: break the database on purpose under load; one summary line per drill.
drills:
    #!/usr/bin/env bash
    set -uo pipefail
    mkdir -p target
    cargo test -p dbguard-tests -p dbguard --no-fail-fast \
        --test drill_restart --test drill_kill9 --test drill_terminate --test drill_blackhole \
        --test drill_latency --test drill_max_connections --test drill_startup_down \
        --test serve_startup_down --test drill_sqlite --test drill_reconnect --test drill_failover \
        -- --nocapture --test-threads=1 2>&1 | tee target/drills.log | grep -E 'SKIP |panicked at|^test result: FAILED'
    status=${PIPESTATUS[0]}
    echo
    grep -o 'DRILL .*' target/drills.log
    exit "$status"
