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
