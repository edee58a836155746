#!/usr/bin/env bash
# Aegis demo (the README's main command). First the whole stack on this machine: `aegisctl up`
# starts nats-server, the control plane and a gateway, has the three templates proposed, approved
# and published, and the finance story is played against the gateway's HTTP API with curl (deny,
# allow, approval_needed, a tampered token refused); the approval request reaches a webhook, an
# approver grants it with `aegisctl approvals grant`, the retry is allowed once and a second one
# denied; `aegisctl block agent planner` stops the planner; all of it is read back from the
# decision log with `aegisctl tail`. Then, offline: lint and test the shipped policy templates, evaluate example
# calls against each template, generate a signing key, build, verify and inspect a signed bundle
# per tenant. Then the control plane against a local nats-server of its own: a change through
# propose -> checks -> four-eyes approval -> publish -> rollback -> freeze, and the audit trail
# exported and verified. Everything it writes goes to a temp dir that is removed at the end (set
# AEGIS_DEMO_KEEP=1 to keep it).
#
# Each step states the outcome it expects and the script fails loudly if a different one comes
# back: HTTP status and decision for the gateway calls; exit codes for `aegisctl eval` (0
# allow/sanitize, 3 deny, 4 approval_needed) and for the control-plane commands.
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
PIDS=()
UP_DIR="" # set while a stack started by `aegisctl up --detach` may be running
cleanup() {
    if [ -n "$UP_DIR" ] && [ -n "${AEGISCTL:-}" ]; then
        "$AEGISCTL" up --down --dir "$UP_DIR" >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
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

# The walk-through talks to the gateway's HTTP API with curl.
if ! command -v curl >/dev/null 2>&1; then
    _aegis_apt_install curl || { echo "the walk-through needs curl; install it and run again" >&2; exit 1; }
fi

section build
run cargo build --release -p aegisctl -p aegis-controlplane -p aegis-gateway
AEGISCTL="$CARGO_TARGET_DIR/release/aegisctl"
CONTROLPLANE="$CARGO_TARGET_DIR/release/aegis-controlplane"
if [ ! -x "$AEGISCTL" ]; then
    echo "aegisctl not found at $AEGISCTL after the build" >&2
    exit 1
fi
aegisctl() { "$AEGISCTL" "$@"; }

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------------------------
# The whole stack on this machine. `aegisctl up` finds nats-server and the aegis-controlplane and
# aegis-gateway binaries next to aegisctl, generates keys, starts the three processes, registers
# the operators (alice proposes, bob and carol approve, pat publishes) and a token issuer per
# tenant, takes each template through propose -> checks -> two approvals -> publish, starts
# gateway gw1 for acme, stmarys and buildco and waits until it has a verified bundle for each.
# --detach leaves the processes running; `aegisctl up --down` stops them.
section "aegisctl up: nats-server, control plane and a gateway, provisioned with the templates"
UP_DIR="$WORK/up"
UP_NATS_PORT="$(free_port)"
UP_GATEWAY_PORT="$(free_port)"
while [ "$UP_GATEWAY_PORT" = "$UP_NATS_PORT" ]; do UP_GATEWAY_PORT="$(free_port)"; done
# A stand-in for a Slack incoming webhook: it appends every JSON body it is POSTed to a file.
WEBHOOK_PORT="$(free_port)"
WEBHOOK_LOG="$WORK/webhook.jsonl"
python3 - "$WEBHOOK_PORT" "$WEBHOOK_LOG" <<'PY' &
import http.server, sys
port, log = int(sys.argv[1]), sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(log, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Hook).serve_forever()
PY
PIDS+=("$!")
run aegisctl up --detach --fresh --dir "$UP_DIR" \
    --nats-port "$UP_NATS_PORT" --gateway-port "$UP_GATEWAY_PORT" --no-walkthrough \
    --approval-webhook "http://127.0.0.1:$WEBHOOK_PORT/services/hook"
show . "$UP_DIR/env"
# shellcheck source=/dev/null
. "$UP_DIR/env" # AEGIS_GATEWAY_URL, AEGIS_NATS_URL, AEGIS_DEMO_TOKEN (finance-agent called by planner), key paths

# decide_expect STATUS DECISION REASON DESCRIPTION TOKEN_VAR AMOUNT [APPROVAL_ID]: POST the
# finance call for AMOUNT to the gateway with the token in variable TOKEN_VAR (retrying with
# APPROVAL_ID when given); the HTTP status, the decision and the first reason code must match
# (REASON - means any), else the demo stops. An approval id in the answer is left in
# $LAST_APPROVAL.
LAST_APPROVAL=""
decide_expect() {
    local want_status="$1" want_decision="$2" want_reason="$3" description="$4" token_var="$5" amount="$6"
    local approval_id="${7:-}"
    local body response status got decision reason approval
    body="{\"tool_id\":\"payments\",\"action\":\"create_payment\",\"params\":{\"amount\":$amount,\"currency\":\"USD\",\"account_number\":\"DE89370400440532013000\"}${approval_id:+,\"approval_id\":\"$approval_id\"}}"
    printf '\n-- %s (expect HTTP %s %s%s)\n' "$description" "$want_status" "$want_decision" \
        "$([ "$want_reason" = - ] || printf ' %s' "$want_reason")"
    printf '$ curl -s "$AEGIS_GATEWAY_URL/v1/decide" -H "Authorization: Bearer $%s" \\\n    -H %s -d %s\n' \
        "$token_var" "'Content-Type: application/json'" "'$body'"
    if ! response="$(curl -sS -w '\n%{http_code}' "$AEGIS_GATEWAY_URL/v1/decide" \
        -H "Authorization: Bearer ${!token_var}" -H 'Content-Type: application/json' -d "$body")"; then
        echo "   => curl could not reach the gateway at $AEGIS_GATEWAY_URL (log: $UP_DIR/logs/gateway.log)" >&2
        exit 1
    fi
    status="${response##*$'\n'}"
    response="${response%$'\n'*}"
    printf '%s\n' "$response"
    got="$(printf '%s' "$response" | python3 -c '
import json, sys
r = json.load(sys.stdin)
reasons = r.get("reasons") or [{}]
print(r.get("decision"), reasons[0].get("code", "-"), (r.get("approval") or {}).get("id") or "")')" || got="unreadable - "
    read -r decision reason approval <<<"$got"
    if [ "$status" != "$want_status" ] || [ "$decision" != "$want_decision" ] ||
        { [ "$want_reason" != - ] && [ "$reason" != "$want_reason" ]; }; then
        echo "   => HTTP $status $decision ($reason), expected HTTP $want_status $want_decision ($want_reason)" >&2
        exit 1
    fi
    printf '   => HTTP %s %s (%s)%s, as expected\n' "$status" "$decision" "$reason" \
        "${approval:+, approval id $approval}"
    LAST_APPROVAL="$approval"
}

# until_code REASON TOKEN_VAR AMOUNT: quietly repeats the finance call for up to 20 s until its
# first reason code is REASON (a control-plane change takes a moment to reach the gateway).
until_code() {
    local want="$1" token_var="$2" amount="$3" i got
    local body="{\"tool_id\":\"payments\",\"action\":\"create_payment\",\"params\":{\"amount\":$amount,\"currency\":\"USD\",\"account_number\":\"DE89370400440532013000\"}}"
    for i in $(seq 1 200); do
        got="$(curl -sS "$AEGIS_GATEWAY_URL/v1/decide" -H "Authorization: Bearer ${!token_var}" \
            -H 'Content-Type: application/json' -d "$body" |
            python3 -c 'import json,sys; print(((json.load(sys.stdin).get("reasons") or [{}])[0]).get("code",""))' || true)"
        [ "$got" = "$want" ] && return 0
        sleep 0.1
    done
    echo "   => the gateway still answers $got, expected $want" >&2
    exit 1
}

section "the finance story at the gateway: the planner drives finance-agent (tenant acme)"
decide_expect 200 deny amount_over_limit "pay 50,000 USD: over the hard limit" AEGIS_DEMO_TOKEN 50000
decide_expect 200 allow - "pay 3,000 USD: within the limit" AEGIS_DEMO_TOKEN 3000
decide_expect 200 approval_needed amount_requires_approval \
    "pay 6,000 USD: a treasury approver must say yes" AEGIS_DEMO_TOKEN 6000
APPROVAL="$LAST_APPROVAL"
# The same token with its claims edited (direct caller planner -> treasury-ui), signature kept.
TAMPERED="$(python3 - "$AEGIS_DEMO_TOKEN" <<'PY'
import base64, json, sys
header, claims, signature = sys.argv[1].split(".")
data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
data["act"] = {"sub": "treasury-ui"}
claims = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()
print(f"{header}.{claims}.{signature}")
PY
)"
decide_expect 401 deny token_bad_signature \
    "the token with its caller edited to treasury-ui: the signature no longer matches" TAMPERED 3000

section "runtime approval: the 6,000 payment is granted once by an approver"
printf '\n-- the gateway posted the request to the webhook (a Slack-compatible message):\n'
for i in $(seq 1 100); do [ -s "$WEBHOOK_LOG" ] && break; sleep 0.1; done
if [ ! -s "$WEBHOOK_LOG" ]; then
    echo "   => the webhook received nothing (gateway log: $UP_DIR/logs/gateway.log)" >&2
    exit 1
fi
head -n 1 "$WEBHOOK_LOG" | python3 -c '
import json, sys
m = json.load(sys.stdin)
print("   text:", m["text"])
print("   blocks:", len(m["blocks"]))
assert sys.argv[1] in json.dumps(m), "the approval id is not in the message"' "$APPROVAL"
run aegisctl approvals list
run aegisctl approvals grant "$APPROVAL" --ttl 15m --comment "invoice INV-2291 checked" \
    --actor carol --key "$AEGIS_KEYS_DIR/carol.key.json"
decide_expect 200 allow approval_granted \
    "the agent retries the same payment with the approval id: allowed, once" AEGIS_DEMO_TOKEN 6000 "$APPROVAL"
decide_expect 200 deny approval_used \
    "a second retry with the same id: the grant is used up" AEGIS_DEMO_TOKEN 6000 "$APPROVAL"

section "kill switch: aegisctl block agent planner stops the planner on every gateway"
run aegisctl block agent planner --reason "INC-42: the planner is looping on payments" \
    --actor pat --key "$AEGIS_KEYS_DIR/pat.key.json"
until_code agent_blocked AEGIS_DEMO_TOKEN 3000
decide_expect 200 deny agent_blocked \
    "pay 3,000 USD, driven by the planner: blocked, without any policy change" AEGIS_DEMO_TOKEN 3000
run aegisctl unblock agent planner --reason "INC-42 resolved" \
    --actor pat --key "$AEGIS_KEYS_DIR/pat.key.json"
until_code allowed AEGIS_DEMO_TOKEN 3000
decide_expect 200 allow - "pay 3,000 USD again after unblock" AEGIS_DEMO_TOKEN 3000

section "every decision is an event: aegisctl tail reads them back from NATS"
run aegisctl tail --tenant acme --from-start --no-follow --format table
run aegisctl up --down --dir "$UP_DIR"
UP_DIR=""
unset AEGIS_UP_DIR AEGIS_NATS_URL AEGIS_GATEWAY_URL AEGIS_DEMO_TOKEN AEGIS_TENANT AEGIS_KEYS_DIR \
    AEGIS_ROOT_KEY AEGIS_CONTROL_PLANE_PUB AEGIS_ISSUER_KEY TAMPERED

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

# ---------------------------------------------------------------------------------------------
# The control plane: every edit, approval and publish is a signed event on NATS JetStream; the
# control plane folds them into RocksDB and is the only one that signs bundles.
section "control plane: start nats-server and aegis-controlplane"
NATS_PORT="$(free_port)"
mkdir -p "$WORK/nats"
cat >"$WORK/nats/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$WORK/nats/store", sync_interval: always }
CONF
"$AEGIS_NATS_SERVER" -c "$WORK/nats/nats.conf" >"$WORK/nats/nats.log" 2>&1 &
PIDS+=($!)
export AEGIS_NATS_URL="nats://127.0.0.1:$NATS_PORT" AEGIS_TENANT=acme
echo "nats-server on $AEGIS_NATS_URL (log: $WORK/nats/nats.log)"

for who in root control-plane alice bob carol pat; do
    "$AEGISCTL" keys generate --out "$KEYS" --name "$who" >/dev/null
done
# wait for the server, then provision the streams, object store and KV bucket
for _ in $(seq 1 100); do "$AEGISCTL" nats init >/dev/null 2>&1 && break; sleep 0.1; done
run aegisctl nats init

show aegis-controlplane run --data "$WORK/cp-data" --key "$KEYS/control-plane.key.json" \
    --root-admin "root=$KEYS/root.pub.json"
"$CONTROLPLANE" run --data "$WORK/cp-data" --key "$KEYS/control-plane.key.json" \
    --root-admin "root=$KEYS/root.pub.json" >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
echo "control plane started (log: $WORK/cp.log)"

# as ACTOR aegisctl-arguments...: run aegisctl signed by ACTOR's key
as() {
    local actor="$1"
    shift
    printf '%s   # as %s\n' "$(show aegisctl "$@")" "$actor"
    AEGIS_ACTOR="$actor" AEGIS_KEY="$KEYS/$actor.key.json" "$AEGISCTL" "$@"
}
# expect_exit CODE ACTOR aegisctl-arguments...: the command must exit with CODE
expect_exit() {
    local want="$1" rc=0
    shift
    as "$@" || rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "   => exit $rc, expected $want" >&2
        exit 1
    fi
    echo "   => exit $rc, as expected"
}
open_change() {
    AEGIS_ACTOR=pat AEGIS_KEY="$KEYS/pat.key.json" "$AEGISCTL" changes list --state open --json |
        python3 -c 'import json,sys; c=json.load(sys.stdin); print(c[0]["change_id"])'
}
for _ in $(seq 1 100); do as root status >/dev/null 2>&1 && break; sleep 0.2; done

section "control plane: actors and roles (signed by the root admin)"
as root actor add alice --public-key "$KEYS/alice.pub.json" --name "Alice (policy author)" --role editor --role approver
as root actor add bob --public-key "$KEYS/bob.pub.json" --role approver
as root actor add carol --public-key "$KEYS/carol.pub.json" --role approver
as root actor add pat --public-key "$KEYS/pat.pub.json" --role publisher
as root actor list

section "control plane: propose the finance policy; the control plane runs the checks"
as alice propose "$TEMPLATES/finance" --intent "Finance agent: pay invoices within thresholds" --ticket FIN-1001
C1="$(open_change)"
as alice changes show "$C1"

section "control plane: four eyes"
echo "-- alice cannot approve her own change:"
expect_exit 5 alice approve "$C1"
echo "-- nor can pat publish before two approvals (the policy is high risk):"
expect_exit 5 pat publish "$C1"
as bob approve "$C1" --comment "thresholds match the treasury policy"
as carol approve "$C1"
as pat publish "$C1"

section "control plane: a second version, then a rollback"
cp -r "$TEMPLATES/finance" "$WORK/finance-v2"
sed -i 's/lte: 5000$/lte: 4000/' "$WORK/finance-v2/policy.yaml"
echo "-- the checks run the tenant's test vectors against the candidate: one no longer holds"
expect_exit 1 alice propose "$WORK/finance-v2" --intent "Lower the approval threshold to 4,000" --ticket FIN-1002
FAILED="$(open_change)"
as bob reject "$FAILED" --reason "the 5,000 vector fails; update the vectors with the threshold"
sed -i 's/exactly 5,000 is still allowed/exactly 4,000 is still allowed/; s/amount: 5000, currency: GBP/amount: 4000, currency: GBP/' \
    "$WORK/finance-v2/vectors.yaml"
as alice propose "$WORK/finance-v2" --intent "Lower the approval threshold to 4,000" --ticket FIN-1002
C2="$(open_change)"
as bob approve "$C2"
as carol approve "$C2"
as pat publish "$C2"
as pat rollback --to 1 --reason "treasury asked to restore 5,000"
as pat history

section "control plane: freeze blocks publishing"
as pat freeze --reason "quarter close"
as alice propose "$WORK/finance-v2" --intent "Lower the approval threshold to 4,000 (again)" --ticket FIN-1003
C3="$(open_change)"
as bob approve "$C3"
as carol approve "$C3"
expect_exit 5 pat publish "$C3"
as pat unfreeze --reason "quarter closed"
as pat publish "$C3"
as pat status

section "control plane: audit"
as pat audit export --format csv
# checkpoints are signed after a second without new events
for _ in $(seq 1 50); do
    out="$(AEGIS_ACTOR=pat AEGIS_KEY="$KEYS/pat.key.json" "$AEGISCTL" audit verify --trust "$KEYS/control-plane.pub.json" 2>&1 || true)"
    case "$out" in *"chain intact"*) [[ "$out" == *"not covered yet"* ]] || break ;; esac
    sleep 0.2
done
as pat audit verify --trust "$KEYS/control-plane.pub.json"

section "done"
echo "demo finished"
