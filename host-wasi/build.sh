#!/usr/bin/env bash
# Builds dbguard-wasi for wasm32-wasip1 (release). Installs nothing: it checks that the C
# toolchain for bundled SQLite is present and names the Debian package for anything missing.
# The compiler settings themselves live in .cargo/config.toml.
#
#   host-wasi/build.sh            build target/wasm32-wasip1/release/dbguard-wasi.wasm
#   host-wasi/build.sh --check    only check the tools
#
# If binaryen's wasm-opt is installed, also writes dbguard-wasi.opt.wasm (wasm-opt -Oz).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
need() { # need <apt package> <what to test> <description>
    local pkg="$1" test="$2" what="$3"
    if ! eval "$test" >/dev/null 2>&1; then
        echo "build.sh: missing $what (Debian package: $pkg)" >&2
        missing+=("$pkg")
    fi
}
# Only the C compile of SQLite needs Debian's tools: rustc links with its own rust-lld and its
# self-contained wasi-libc, so lld and libclang-rt-14-dev-wasm32 are not used.
need clang     'command -v clang'                          'clang (C compiler for SQLite)'
need llvm-14   'command -v llvm-ar-14'                     'llvm-ar-14 (archiver)'
need wasi-libc 'test -f /usr/include/wasm32-wasi/stdio.h'  'wasi-libc headers in /usr/include/wasm32-wasi'
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "build.sh: install with: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    echo "build.sh: missing Rust target wasm32-wasip1 (rustup target add wasm32-wasip1)" >&2
    exit 1
fi
[[ "${1:-}" == "--check" ]] && { echo "build.sh: toolchain complete"; exit 0; }

cargo build --release --target wasm32-wasip1
out="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release"
echo "built $out/dbguard-wasi.wasm ($(stat -c %s "$out/dbguard-wasi.wasm") bytes)"

if command -v wasm-opt >/dev/null 2>&1; then
    # Rust 1.95 emits these proposals by default for wasm32-wasip1; old binaryen needs them named.
    wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
        "$out/dbguard-wasi.wasm" -o "$out/dbguard-wasi.opt.wasm"
    echo "optimized $out/dbguard-wasi.opt.wasm ($(stat -c %s "$out/dbguard-wasi.opt.wasm") bytes)"
fi
