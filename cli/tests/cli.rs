//! End-to-end tests of the `aegisctl` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const POLICY: &str = r#"apiVersion: aegis.dev/v1
kind: AgentPolicy
metadata: {tenant: acme, name: finance, owner: pay@acme.example, risk_tier: high}
spec:
  agent_id: finance-agent
  callers: {allowed_direct: [planner], never: [scraper], max_depth: 3}
  log_masking: {params: [account_number]}
  rules:
    - id: pay
      tool_id: payments
      actions: [create_payment]
      conditions:
        - {param: currency, one_of: [USD, EUR], code: currency_not_allowed}
        - {param: amount, lte: 5000, on_violation: approval_needed, code: amount_requires_approval}
        - {param: amount, lte: 25000, code: amount_over_limit}
"#;

const VECTORS: &str = r#"apiVersion: aegis.dev/v1
kind: TestVectors
vectors:
  - name: small payment is allowed
    input: {tenant: acme, agent_id: finance-agent, call_chain: [planner], tool_id: payments, action: create_payment, params: {amount: 100, currency: USD}}
    expect: {decision: allow}
  - name: large payment is denied
    input: {tenant: acme, agent_id: finance-agent, call_chain: [planner], tool_id: payments, action: create_payment, params: {amount: 50000, currency: USD}}
    expect: {decision: deny, reasons: [amount_over_limit]}
"#;

const FAILING_VECTOR: &str = r#"apiVersion: aegis.dev/v1
kind: TestVectors
vectors:
  - name: wrongly expects allow
    input: {tenant: acme, agent_id: finance-agent, call_chain: [planner], tool_id: payments, action: create_payment, params: {amount: 50000, currency: USD}}
    expect: {decision: allow}
"#;

fn aegisctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aegisctl"))
        .args(args)
        .output()
        .expect("run aegisctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_lists_exit_codes_and_every_command_has_an_example() {
    let o = aegisctl(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains("3  eval decision: deny"), "{}", text(&o));
    for cmd in [
        &["init"][..],
        &["lint"],
        &["test"],
        &["eval"],
        &["bundle", "build"],
        &["bundle", "verify"],
        &["bundle", "inspect"],
        &["keys", "generate"],
        &["diff"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = aegisctl(&args);
        assert_eq!(code(&o), 0, "{cmd:?}");
        assert!(
            text(&o).contains("aegisctl "),
            "{cmd:?} help has no example: {}",
            text(&o)
        );
    }
}

#[test]
fn lint_clean_tree_is_ok() {
    let t = tree(&[("policy.yaml", POLICY), ("vectors.yaml", VECTORS)]);
    let o = aegisctl(&["lint", s(t.path())]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("ok: 1 policy, 1 vector file"),
        "{}",
        text(&o)
    );
}

#[test]
fn lint_bad_file_exits_2_with_file_line_and_field() {
    let bad = POLICY.replace("lte: 25000", "lte: lots");
    let t = tree(&[("bad.yaml", &bad)]);
    let o = aegisctl(&["lint", s(t.path())]);
    let out = text(&o);
    assert_eq!(code(&o), 2, "{out}");
    let line = bad.lines().position(|l| l.contains("lte: lots")).unwrap() + 1;
    assert!(
        out.contains(&format!("bad.yaml:{line}")),
        "expected file:line {line}: {out}"
    );
    assert!(
        out.contains("spec.rules[0].conditions[2]"),
        "expected the field path: {out}"
    );
    assert!(out.contains("1 file, "), "{out}");

    let o = aegisctl(&["lint", "--json", s(t.path())]);
    assert_eq!(code(&o), 2);
    let diags: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        diags.as_array().unwrap().iter().any(|d| d["line"] == line),
        "{diags}"
    );
}

#[test]
fn test_passes_and_reports_failures() {
    let t = tree(&[("policy.yaml", POLICY), ("vectors.yaml", VECTORS)]);
    let o = aegisctl(&["test", s(t.path())]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("test result: ok. 2 passed; 0 failed"),
        "{}",
        text(&o)
    );

    let t = tree(&[
        ("policy.yaml", POLICY),
        ("vectors.yaml", VECTORS),
        ("more/failing.yaml", FAILING_VECTOR),
    ]);
    let o = aegisctl(&["test", s(t.path())]);
    let out = text(&o);
    assert_eq!(code(&o), 1, "{out}");
    assert!(out.contains("wrongly expects allow ... FAILED"), "{out}");
    assert!(out.contains("failing.yaml:4"), "{out}");
    assert!(
        out.contains("expected: allow") && out.contains("actual:   deny"),
        "{out}"
    );
    assert!(out.contains("2 passed; 1 failed"), "{out}");

    let o = aegisctl(&["test", s(t.path()), "--filter", "small"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("running 1 vector\n"), "{}", text(&o));
}

#[test]
fn test_on_invalid_tree_exits_2() {
    let t = tree(&[("policy.yaml", &POLICY.replace("agent_id:", "agent_idd:"))]);
    assert_eq!(code(&aegisctl(&["test", s(t.path())])), 2);
}

fn eval_args<'a>(dir: &'a str, amount: &'a str) -> Vec<String> {
    [
        "eval",
        dir,
        "--tenant",
        "acme",
        "--agent",
        "finance-agent",
        "--tool",
        "payments",
        "--action",
        "create_payment",
        "--chain",
        "planner",
        "--params",
        amount,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn run_owned(args: &[String]) -> Output {
    aegisctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn eval_exit_codes_follow_the_decision() {
    let t = tree(&[("policy.yaml", POLICY)]);
    let dir = s(t.path());
    let o = run_owned(&eval_args(dir, r#"{"amount": 100, "currency": "USD"}"#));
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).starts_with("ALLOW"), "{}", text(&o));

    let o = run_owned(&eval_args(dir, r#"{"amount": 50000, "currency": "USD"}"#));
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("DENY") && text(&o).contains("amount_over_limit: "),
        "{}",
        text(&o)
    );

    let o = run_owned(&eval_args(dir, r#"{"amount": 6000, "currency": "USD"}"#));
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(text(&o).contains("APPROVAL_NEEDED"), "{}", text(&o));

    let mut json = eval_args(dir, r#"{"amount": 6000, "currency": "USD"}"#);
    json.push("--json".into());
    let o = run_owned(&json);
    assert_eq!(code(&o), 4);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["decision"], "approval_needed");

    // Whole input from a file.
    let elsewhere = tempfile::tempdir().unwrap(); // not inside the policy tree
    let input = elsewhere.path().join("in.json");
    std::fs::write(&input, r#"{"tenant":"acme","agent_id":"finance-agent","call_chain":["scraper","planner"],"tool_id":"payments","action":"create_payment","params":{"amount":1,"currency":"USD"}}"#).unwrap();
    let o = aegisctl(&["eval", dir, "--input", s(&input)]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    // Bad --params is invalid input.
    let o = run_owned(&eval_args(dir, "{not json"));
    assert_eq!(code(&o), 2, "{}", text(&o));
}

struct Signed {
    _dir: tempfile::TempDir,
    keys: PathBuf,
    policies: PathBuf,
    root: PathBuf,
}

fn signed_setup() -> Signed {
    let dir = tree(&[
        ("policies/policy.yaml", POLICY),
        ("policies/vectors.yaml", VECTORS),
    ]);
    let root = dir.path().to_path_buf();
    let keys = root.join("keys");
    let o = aegisctl(&["keys", "generate", "--out", s(&keys)]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("key id:"), "{}", text(&o));
    assert!(keys.join("signing.key.json").exists() && keys.join("signing.pub.json").exists());
    Signed {
        policies: root.join("policies"),
        keys,
        root,
        _dir: dir,
    }
}

fn build(s_: &Signed, out: &Path, extra: &[&str]) -> Output {
    let key = s_.keys.join("signing.key.json");
    let mut args = vec![
        "bundle",
        "build",
        s(&s_.policies),
        "--tenant",
        "acme",
        "--version",
        "3",
        "--key",
        s(&key),
        "--out",
        s(out),
        "--created-at",
        "2025-01-02T03:04:05Z",
        "--author",
        "tester",
    ];
    args.extend_from_slice(extra);
    aegisctl(&args)
}

#[test]
fn keys_build_verify_round_trip() {
    let st = signed_setup();
    let bundle = st.root.join("acme-v3.tar.gz");
    let o = build(&st, &bundle, &["--change", "CR-1"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("digest:  sha256:"), "{}", text(&o));

    let o = aegisctl(&[
        "bundle",
        "verify",
        s(&bundle),
        "--trust",
        s(&st.keys),
        "--tenant",
        "acme",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).starts_with("verified: acme v3 sha256:"),
        "{}",
        text(&o)
    );

    // Wrong trust directory (a different key): rejected.
    let other = st.root.join("other-keys");
    assert_eq!(
        code(&aegisctl(&["keys", "generate", "--out", s(&other)])),
        0
    );
    let o = aegisctl(&["bundle", "verify", s(&bundle), "--trust", s(&other)]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("rejected: "), "{}", text(&o));

    // Wrong tenant: rejected.
    let o = aegisctl(&[
        "bundle",
        "verify",
        s(&bundle),
        "--trust",
        s(&st.keys),
        "--tenant",
        "globex",
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));

    // Inspect needs no trust.
    let o = aegisctl(&["bundle", "inspect", s(&bundle)]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("does not check the signature")
            && text(&o).contains("data.json")
            && text(&o).contains("matches"),
        "{}",
        text(&o)
    );
    let o = aegisctl(&["bundle", "inspect", s(&bundle), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["version"], 3);
    assert_eq!(v["manifest"]["source_change"], "CR-1");

    // Eval against the verified bundle carries its provenance.
    let mut args = eval_args(s(&bundle), r#"{"amount": 50000, "currency": "USD"}"#);
    args.extend([
        "--trust".to_string(),
        s(&st.keys).to_string(),
        "--json".to_string(),
    ]);
    let o = run_owned(&args);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["policy_version"], 3);
    assert!(d["bundle_digest"].as_str().unwrap().starts_with("sha256:"));

    // A bundle without --trust is refused; with the wrong trust it is rejected.
    let o = run_owned(&eval_args(
        s(&bundle),
        r#"{"amount": 1, "currency": "USD"}"#,
    ));
    assert_eq!(code(&o), 2, "{}", text(&o));
    let mut args = eval_args(s(&bundle), r#"{"amount": 1, "currency": "USD"}"#);
    args.extend(["--trust".to_string(), s(&other).to_string()]);
    assert_eq!(code(&run_owned(&args)), 1);
}

#[test]
fn bundle_build_is_deterministic() {
    let st = signed_setup();
    let (a, b) = (st.root.join("a.tar.gz"), st.root.join("b.tar.gz"));
    assert_eq!(code(&build(&st, &a, &[])), 0);
    assert_eq!(code(&build(&st, &b, &[])), 0);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn bundle_build_refuses_failing_vectors_bad_trees_and_unknown_tenants() {
    let st = signed_setup();
    std::fs::write(st.policies.join("failing.yaml"), FAILING_VECTOR).unwrap();
    let out = st.root.join("x.tar.gz");
    let o = build(&st, &out, &[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("FAILED") && !out.exists(), "{}", text(&o));
    assert_eq!(code(&build(&st, &out, &["--skip-tests"])), 0);

    std::fs::write(st.policies.join("bad.yaml"), "kind: Nope\n").unwrap();
    assert_eq!(
        code(&build(&st, &st.root.join("y.tar.gz"), &["--skip-tests"])),
        2
    );
    std::fs::remove_file(st.policies.join("bad.yaml")).unwrap();

    let key = st.keys.join("signing.key.json");
    let o = aegisctl(&[
        "bundle",
        "build",
        s(&st.policies),
        "--tenant",
        "globex",
        "--version",
        "1",
        "--key",
        s(&key),
        "--out",
        s(&st.root.join("z.tar.gz")),
    ]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("globex"), "{}", text(&o));
}

#[test]
fn diff_trees_and_bundles() {
    let st = signed_setup();
    let old = st.root.join("old.tar.gz");
    assert_eq!(code(&build(&st, &old, &[])), 0);
    let newer = tree(&[("policy.yaml", &POLICY.replace("lte: 25000", "lte: 10000"))]);
    for old_side in [s(&st.policies), s(&old)] {
        let o = aegisctl(&["diff", old_side, s(newer.path())]);
        let out = text(&o);
        assert_eq!(code(&o), 0, "{out}");
        assert!(out.contains("acme/finance-agent:"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("stricter") && l.contains("25000")),
            "{out}"
        );
        assert!(out.contains("1 stricter"), "{out}");
    }
    let o = aegisctl(&["diff", s(&st.policies), s(&old), "--json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn init_writes_a_template_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("fin");
    let o = aegisctl(&["init", "--template", "finance", "--dir", s(&target)]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("aegisctl lint") && text(&o).contains("aegisctl test"),
        "{}",
        text(&o)
    );
    assert!(target.join("policy.yaml").exists() && target.join("vectors.yaml").exists());

    std::fs::write(target.join("policy.yaml"), "mine").unwrap();
    let o = aegisctl(&["init", "--template", "finance", "--dir", s(&target)]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(target.join("policy.yaml")).unwrap(),
        "mine",
        "existing file untouched"
    );
}

/// EXPECTATION: every template shipped under `policies/` passes its own vectors. This test
/// depends on the shipped files (all others build their policies inline); if it fails, a
/// template or its vectors are wrong, not the CLI.
#[test]
fn shipped_policies_pass_their_vectors() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let o = aegisctl(&["test", s(&policies)]);
    assert_eq!(
        code(&o),
        0,
        "shipped policies must pass `aegisctl test ../policies`:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("test result: ok."), "{}", text(&o));
}
