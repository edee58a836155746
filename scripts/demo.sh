#!/usr/bin/env bash
# Aegis demo (the README's main command): lint and test the shipped policy templates, evaluate
# example calls against each template, then generate a signing key, build, verify and inspect a
# signed bundle per tenant. Everything it writes goes to a temp dir that is removed at the end
# (set AEGIS_DEMO_KEEP=1 to keep it).
#
# `aegisctl eval` exits 0 for allow/sanitize, 3 for deny and 4 for approval_needed; each example
# below states the decision it expects and the script fails if a different one comes back.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

: "${CARGO_TARGET_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/aegis/target}"
export CARGO_TARGET_DIR

POLICIES="policies" # relative to $ROOT (the working dir), so the printed commands stay short
TEMPLATES="$POLICIES/templates"
CREATED_AT="2026-01-01T00:00:00Z"

section() { printf '\n== %s ==\n' "$*"; }
# Prints a command the way it can be pasted back into a shell.
show() {
    local arg out="\$"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            out+=" $arg"
        else
            out+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "$out"
}
run() {
    show "$@"
    "$@"
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/aegis-demo.XXXXXX")"
cleanup() {
    if [ "${AEGIS_DEMO_KEEP:-0}" = "1" ]; then
        echo "demo files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
section setup
# shellcheck source=/dev/null
source "$ROOT/scripts/setup.sh"

section build
run cargo build --release -p aegisctl
AEGISCTL="$CARGO_TARGET_DIR/release/aegisctl"
if [ ! -x "$AEGISCTL" ]; then
    echo "aegisctl not found at $AEGISCTL after the build" >&2
    exit 1
fi
aegisctl() { "$AEGISCTL" "$@"; }

# ---------------------------------------------------------------------------------------------
section lint
run aegisctl lint "$POLICIES/"

section test
run aegisctl test "$POLICIES/"

# ---------------------------------------------------------------------------------------------
# eval_expect EXPECTED DESCRIPTION -- <aegisctl eval arguments...>
# EXPECTED is allow (exit 0: allow or sanitize), deny (3) or approval_needed (4).
FAILURES=0
eval_expect() {
    local expected="$1" description="$2"
    shift 3
    local want rc=0
    case "$expected" in
        allow) want=0 ;;
        deny) want=3 ;;
        approval_needed) want=4 ;;
        *) echo "eval_expect: unknown expectation $expected" >&2; return 2 ;;
    esac
    printf '\n-- %s (expect %s)\n' "$description" "$expected"
    show aegisctl eval "$@"
    "$AEGISCTL" eval "$@" || rc=$?
    if [ "$rc" -eq "$want" ]; then
        printf '   => exit %s, as expected\n' "$rc"
    else
        printf '   => exit %s, expected %s (%s)\n' "$rc" "$want" "$expected" >&2
        FAILURES=$((FAILURES + 1))
    fi
}

section "eval: finance (tenant acme)"
FIN=("$TEMPLATES/finance")
FIN_ARGS=(--tenant acme --agent finance-agent --tool payments --action create_payment --chain planner)
eval_expect allow "payment of 3000 USD via planner" -- \
    "${FIN[@]}" "${FIN_ARGS[@]}" \
    --params '{"amount":3000,"currency":"USD","account_number":"DE89370400440532013000"}'
eval_expect approval_needed "payment of 6000 USD needs approval" -- \
    "${FIN[@]}" "${FIN_ARGS[@]}" \
    --params '{"amount":6000,"currency":"USD","account_number":"DE89370400440532013000"}'
eval_expect deny "payment of 50000 USD is over the hard limit" -- \
    "${FIN[@]}" "${FIN_ARGS[@]}" \
    --params '{"amount":50000,"currency":"USD","account_number":"DE89370400440532013000"}'

section "eval: ehr (tenant stmarys)"
EHR=("$TEMPLATES/ehr")
EHR_ARGS=(--tenant stmarys --agent clinical-agent --tool ehr --params '{}'
    --context '{"purpose":"care","destination":"internal-ehr","region":"eu-west"}')
eval_expect allow "read a record for care, internal, in the EU" -- \
    "${EHR[@]}" "${EHR_ARGS[@]}" --action read_record
eval_expect deny "export a record" -- \
    "${EHR[@]}" "${EHR_ARGS[@]}" --action export_record

section "eval: cicd (tenant buildco)"
CICD=("$TEMPLATES/cicd")
CICD_ARGS=(--tenant buildco --agent deploy-agent --tool deploy --action deploy)
eval_expect allow "deploy to staging from the CI pipeline" -- \
    "${CICD[@]}" "${CICD_ARGS[@]}" --params '{"environment":"staging"}' --chain ci-pipeline
eval_expect approval_needed "deploy to production needs approval" -- \
    "${CICD[@]}" "${CICD_ARGS[@]}" --params '{"environment":"production"}' --chain ci-pipeline
eval_expect deny "deploy requested by an untrusted bot" -- \
    "${CICD[@]}" "${CICD_ARGS[@]}" --params '{"environment":"staging"}' --chain untrusted-bot

if [ "$FAILURES" -ne 0 ]; then
    echo "$FAILURES evaluation(s) did not return the expected decision" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
section keys
KEYS="$WORK/keys"
mkdir -p "$KEYS"
run aegisctl keys generate --out "$KEYS" --name demo
ls -l "$KEYS"

# ---------------------------------------------------------------------------------------------
section bundles
BUNDLES="$WORK/bundles"
mkdir -p "$BUNDLES"
# tenant:template-folder pairs; each bundle is version 1 of its tenant.
for pair in acme:finance stmarys:ehr buildco:cicd; do
    tenant="${pair%%:*}"
    template="${pair#*:}"
    bundle="$BUNDLES/$tenant-v1.tar.gz"
    printf '\n-- %s (%s)\n' "$tenant" "$template"
    run aegisctl bundle build "$TEMPLATES/$template" \
        --tenant "$tenant" --version 1 --key "$KEYS/demo.key.json" \
        --created-at "$CREATED_AT" --out "$bundle"
    run aegisctl bundle verify "$bundle" --trust "$KEYS"
    run aegisctl bundle inspect "$bundle"
done

# A bundle signed by a key the verifier does not trust is rejected.
section "untrusted signer is rejected"
OTHER="$WORK/other-keys"
mkdir -p "$OTHER"
run aegisctl keys generate --out "$OTHER" --name other
show aegisctl bundle verify "$BUNDLES/acme-v1.tar.gz" --trust "$OTHER"
if "$AEGISCTL" bundle verify "$BUNDLES/acme-v1.tar.gz" --trust "$OTHER"; then
    echo "bundle verified against a key set that does not contain its signer" >&2
    exit 1
else
    echo "   => rejected, as expected"
fi

# Building the same inputs twice gives the same bytes.
section "bundles are deterministic"
again="$BUNDLES/acme-v1-again.tar.gz"
run aegisctl bundle build "$TEMPLATES/finance" \
    --tenant acme --version 1 --key "$KEYS/demo.key.json" \
    --created-at "$CREATED_AT" --out "$again"
if cmp -s "$BUNDLES/acme-v1.tar.gz" "$again"; then
    echo "identical: $(sha256sum "$again" | cut -d' ' -f1)"
else
    echo "bundle build is not deterministic" >&2
    exit 1
fi

section "done"
echo "demo finished"
