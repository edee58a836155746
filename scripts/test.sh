#!/usr/bin/env bash
# The Aegis test command (README, CI): setup, unit + integration + doc tests, clippy, rustfmt.
# Stops at the first failure. Its last line is always "N passed, N failed", summed over every
# `test result:` line cargo printed (CI reads it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

: "${CARGO_TARGET_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/aegis/target}"
export CARGO_TARGET_DIR
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

section() { printf '\n== %s ==\n' "$*"; }

TEST_LOG="$(mktemp "${TMPDIR:-/tmp}/aegis-test-log.XXXXXX")"

summary() {
    local rc=$?
    local passed failed
    read -r passed failed < <(
        sed -n 's/.*test result: [A-Za-z]*\. \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed;.*/\1 \2/p' "$TEST_LOG" |
            awk '{ p += $1; f += $2 } END { printf "%d %d\n", p, f }'
    )
    rm -f "$TEST_LOG"
    if [ "$rc" -ne 0 ]; then
        printf '\n[test] FAILED (exit %s)\n' "$rc"
    fi
    printf '%s passed, %s failed\n' "${passed:-0}" "${failed:-0}"
    exit "$rc"
}
trap summary EXIT

section setup
# Sourced so AEGIS_NATS_SERVER (used by the nats-server test fixture) and PATH reach us.
# shellcheck source=/dev/null
source "$ROOT/scripts/setup.sh"
export AEGIS_NATS_SERVER
printf 'CARGO_TARGET_DIR=%s\n' "$CARGO_TARGET_DIR"

# clippy and rustfmt are rustup components; add whichever is missing.
missing=()
cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "[test] ERROR: missing cargo components (${missing[*]}) and no rustup to add them" >&2
        exit 1
    fi
    echo "[test] running: rustup component add ${missing[*]}"
    rustup component add "${missing[@]}"
fi

section "cargo build (binaries the end-to-end tests start)"
cargo build --workspace --bins

section "cargo test (all targets)"
cargo test --workspace --all-targets 2>&1 | tee -a "$TEST_LOG"

section "cargo test (doc tests)"
cargo test --workspace --doc 2>&1 | tee -a "$TEST_LOG"

section clippy
cargo clippy --workspace --all-targets -- -D warnings

section rustfmt
cargo fmt --all -- --check

section "done"
