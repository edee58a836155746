//! `aegisctl up`: the real binaries (nats-server, aegis-controlplane, aegis-gateway) started,
//! provisioned and detached by `aegisctl up --detach`, the finance story decided by the gateway
//! it started, the decisions read back with `aegisctl tail`, and `aegisctl up --down` leaving no
//! process behind.
//!
//! Needs the workspace's binaries next to this test executable (`cargo build --bins`, which
//! `scripts/test.sh` runs) and a nats-server `aegisctl up` can find (`./scripts/setup.sh`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_tests::controlplane::binary;
use aegis_tests::gateway::{HttpClient, free_port};
use serde_json::{Value, json};
use std::fs;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn show(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `aegisctl up --down` when dropped, so a failed assertion leaves nothing running; then
/// removes the temporary directory that holds the state directory.
struct Down {
    aegisctl: PathBuf,
    dir: PathBuf,
    armed: bool,
    _tmp: TempDir,
}

impl Down {
    fn run(&mut self) -> Output {
        self.armed = false;
        Command::new(&self.aegisctl)
            .args(["up", "--down", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("running aegisctl up --down")
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.run();
        }
    }
}

/// What each test starts from: the aegisctl binary, a state directory (not created yet) with
/// its `up --down` guard, and two different free ports for NATS and the gateway.
struct Setup {
    aegisctl: PathBuf,
    dir: PathBuf,
    nats_port: u16,
    gateway_port: u16,
    down: Down,
}

fn setup() -> Setup {
    let aegisctl = binary("aegisctl").expect("the aegisctl binary (cargo build --bins)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("up");
    let nats_port = free_port().unwrap();
    let mut gateway_port = free_port().unwrap();
    while gateway_port == nats_port {
        gateway_port = free_port().unwrap();
    }
    let down = Down {
        aegisctl: aegisctl.clone(),
        dir: dir.clone(),
        armed: true,
        _tmp: tmp,
    };
    Setup {
        aegisctl,
        dir,
        nats_port,
        gateway_port,
        down,
    }
}

/// Waits up to `timeout` for `child` to exit; kills it and panics with `what` after that.
fn wait_or_kill(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pid from `<dir>/pids` is gone when /proc has no live process for it (a zombie is gone).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    })
}

/// Live processes whose command line mentions `needle` (the state directory).
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// The value of `export NAME=value` in the env file (unquoted: tokens and URLs need no quoting).
fn env_value(env: &str, name: &str) -> String {
    let prefix = format!("export {name}=");
    env.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in the env file:\n{env}"))
        .trim_matches('\'')
        .to_owned()
}

fn finance_call(amount: u64) -> Value {
    json!({
        "tool_id": "payments",
        "action": "create_payment",
        "params": {"amount": amount, "currency": "USD", "account_number": "DE89370400440532013000"},
    })
}

/// The same token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut chars: Vec<char> = signature.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

#[test]
fn up_detached_decides_the_finance_story_and_down_leaves_no_process() {
    let Setup {
        aegisctl,
        dir,
        nats_port,
        gateway_port,
        mut down,
    } = setup();
    let up = Command::new(&aegisctl)
        .args(["up", "--detach", "--fresh", "--dir"])
        .arg(&dir)
        .args(["--nats-port", &nats_port.to_string()])
        .args(["--gateway-port", &gateway_port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("running aegisctl up");
    assert!(up.status.success(), "aegisctl up failed: {}", show(&up));
    let stdout = String::from_utf8_lossy(&up.stdout);
    for expected in [
        "acme: pat publishes",
        "stmarys: pat publishes",
        "buildco: pat publishes",
        "Aegis is up.",
        "curl -s",
        "aegisctl tail --tenant acme",
        "aegisctl approvals grant <id> --tenant acme",
        "aegisctl block agent planner",
        "-> detached:",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }

    // The pids file names the three processes, in stop order.
    let pids_text = fs::read_to_string(dir.join("pids")).unwrap();
    let pids: Vec<(String, u32)> = pids_text
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let name = parts.next().unwrap().to_owned();
            let pid = parts.next().unwrap().parse().unwrap();
            (name, pid)
        })
        .collect();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["gateway", "controlplane", "nats-server"],
        "{pids_text}"
    );
    for (name, pid) in &pids {
        assert!(
            alive(*pid),
            "{name} (pid {pid}) is not running after up --detach"
        );
    }

    // The env file is what scripts source.
    let env = fs::read_to_string(dir.join("env")).unwrap();
    let gateway_url = env_value(&env, "AEGIS_GATEWAY_URL");
    assert_eq!(gateway_url, format!("http://127.0.0.1:{gateway_port}"));
    let nats_url = env_value(&env, "AEGIS_NATS_URL");
    assert_eq!(nats_url, format!("nats://127.0.0.1:{nats_port}"));
    let token = env_value(&env, "AEGIS_DEMO_TOKEN");
    for key in [
        "AEGIS_ROOT_KEY",
        "AEGIS_ISSUER_KEY",
        "AEGIS_CONTROL_PLANE_PUB",
    ] {
        assert!(Path::new(&env_value(&env, key)).is_file(), "{key}");
    }

    // The finance story, as the planner driving the finance agent.
    let addr = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let mut http = HttpClient::connect(addr).unwrap();
    let (status, body) = http.decide(&token, &finance_call(50_000)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "deny", "{body}");
    assert_eq!(body["reasons"][0]["code"], "amount_over_limit", "{body}");

    let (status, body) = http.decide(&token, &finance_call(3_000)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow", "{body}");

    let (status, body) = http.decide(&token, &finance_call(6_000)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "approval_needed", "{body}");
    assert_eq!(
        body["reasons"][0]["code"], "amount_requires_approval",
        "{body}"
    );
    let approval = body["approval"]["id"].as_str().unwrap_or_default();
    assert!(!approval.is_empty(), "no approval id: {body}");

    let (status, body) = http
        .decide(&tampered(&token), &finance_call(3_000))
        .unwrap();
    assert_eq!(status, 401, "a tampered token was accepted: {body}");
    assert_eq!(body["decision"], "deny", "{body}");
    assert_eq!(body["reasons"][0]["code"], "token_bad_signature", "{body}");

    // Every decision reaches the decision log: aegisctl tail reads the four back.
    let mut tail = Command::new(&aegisctl)
        .args(["tail", "--tenant", "acme", "--from-start", "--limit", "4"])
        .args(["--format", "json", "--nats", &nats_url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(
        &mut tail,
        Duration::from_secs(30),
        "aegisctl tail --limit 4 did not print 4 records within 30s",
    );
    let mut records = String::new();
    tail.stdout
        .take()
        .unwrap()
        .read_to_string(&mut records)
        .unwrap();
    let mut errors = String::new();
    tail.stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert!(status.success(), "aegisctl tail: {status}\n{errors}");
    let decisions: Vec<String> = records
        .lines()
        .map(|l| {
            let record: Value = serde_json::from_str(l).unwrap();
            record["decision"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        decisions,
        ["deny", "allow", "approval_needed", "deny"],
        "{records}"
    );

    // Down: every process stops, nothing is left.
    let stopped = down.run();
    assert!(
        stopped.status.success(),
        "aegisctl up --down failed: {}",
        show(&stopped)
    );
    let report = String::from_utf8_lossy(&stopped.stdout);
    for name in ["gateway", "controlplane", "nats-server"] {
        assert!(
            report.contains(&format!("stopping {name}")),
            "no stop of {name}:\n{report}"
        );
    }
    assert!(!dir.join("pids").exists(), "the pids file is still there");
    for (name, pid) in &pids {
        assert!(
            !alive(*pid),
            "{name} (pid {pid}) still runs after up --down"
        );
    }
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// Runs `aegisctl up` in the foreground on `dir` until it says it is running; returns the child
/// and everything it printed so far.
fn start_foreground(
    aegisctl: &Path,
    dir: &Path,
    nats_port: u16,
    gateway_port: u16,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    String,
) {
    let mut child = Command::new(aegisctl)
        .args(["up", "--no-walkthrough", "--dir"])
        .arg(dir)
        .args(["--nats-port", &nats_port.to_string()])
        .args(["--gateway-port", &gateway_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running aegisctl up");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
                if line.starts_with("-> running in the foreground") {
                    return (child, rx, printed);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("aegisctl up did not reach the foreground loop:\n{printed}");
            }
        }
    }
}

/// Sends `signal` to the foreground `up`, which must stop everything and exit 0.
fn stop_foreground(
    mut child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    signal: &str,
) -> String {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_or_kill(
        &mut child,
        Duration::from_secs(60),
        &format!("aegisctl up did not stop within 60s of SIG{signal}"),
    );
    let mut printed = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(
        status.success(),
        "up exited {status} on SIG{signal}:\n{printed}"
    );
    printed
}

#[test]
fn up_in_the_foreground_stops_everything_in_order_on_a_signal_and_reuses_its_state() {
    let Setup {
        aegisctl,
        dir,
        nats_port,
        gateway_port,
        mut down,
    } = setup();

    // First run: provisions everything; Ctrl-C (SIGINT) stops gateway, control plane, nats.
    let (child, rx, printed) = start_foreground(&aegisctl, &dir, nats_port, gateway_port);
    assert!(printed.contains("acme: pat publishes"), "{printed}");
    let pids = fs::read_to_string(dir.join("pids")).unwrap();
    assert!(pids.starts_with("supervisor "), "{pids}");
    // A second `up` on a directory whose stack runs is refused.
    let again = Command::new(&aegisctl)
        .args(["up", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        show(&again)
    );
    let stopped = stop_foreground(child, rx, "INT");
    let order: Vec<&str> = stopped
        .lines()
        .filter_map(|l| l.strip_prefix("-> stopping "))
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        ["gateway", "controlplane", "nats-server"],
        "{stopped}"
    );
    assert!(!stopped.contains("killed"), "{stopped}");
    assert!(!dir.join("pids").exists());
    assert!(processes_mentioning(&dir).is_empty());

    // Second run on the same directory: nothing to provision, ready again; SIGTERM stops it.
    let (child, rx, printed) = start_foreground(&aegisctl, &dir, nats_port, gateway_port);
    for expected in [
        "reusing",
        "keys: reusing",
        "acme: operators alice, bob, carol, pat already registered",
        "acme: token issuer acme-idp",
        "acme: version 1 is live",
        "buildco: version 1 is live",
        "Aegis is up.",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    assert!(!printed.contains("proposes"), "{printed}");
    stop_foreground(child, rx, "TERM");
    down.armed = false;
    assert!(processes_mentioning(&dir).is_empty());
}
