//! The HTML replay report opens in a real browser without a network and shows its charts:
//! a report of a stricter candidate (finance template, approval bound 5000 → 1000) replayed
//! by the engine over decisions the recording policy made, rendered by
//! `aegis_replayer::html::render`, loaded from a file in headless Chromium (Debian's
//! `chromium`, installed by `./scripts/setup.sh`), and the screenshot checked: not blank,
//! many colours, and the colours of the transition bars, histogram bars and moved bound.
//! Then the same decisions stored in a real nats-server and replayed by the `aegisctl`
//! binary (`cargo build -p aegisctl` first): `--format html --output FILE` renders too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_core::decision::{DecideInput, DecisionKind};
use aegis_core::decision_log::{self, DecisionEvent};
use aegis_core::ids::{AgentId, TenantId, ToolId};
use aegis_nats::topology::{self, Topology};
use aegis_nats::{ConnectOptions, Publish, connect, jetstream, provision, publish};
use aegis_replayer::engine::{Engine, EngineOptions};
use aegis_replayer::html;
use aegis_replayer::report::Report;
use aegis_replayer::source::{Record, SliceStats};
use aegis_replayer::thresholds::changed_thresholds;
use aegis_replayer::{Candidate, SliceSpec};
use aegis_tests::NatsServer;
use aegis_tests::cli::{Run, finish, spawn};
use serde_json::{Map, Value, json};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FINANCE: &str = include_str!("../../policies/templates/finance/policy.yaml");

fn aegisctl(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Run {
    let (child, out_dir) = spawn(args, env, dir);
    finish(child, &out_dir, Duration::from_secs(60), &args.join(" "))
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn unmasked(p: &str) -> String {
    p.replace("  log_masking:\n    params: [account_number]\n", "")
}

fn candidate(dir: &Path, policy: &str) -> Candidate {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    Candidate::from_policy_tree(&[path], &tenant()).unwrap()
}

/// The event a gateway enforcing `recorder` writes for a payment of `amount`.
fn event(recorder: &Candidate, n: usize, agent: &str, amount: u64) -> DecisionEvent {
    let params: Map<String, Value> =
        json!({"amount": amount, "currency": "USD", "account_number": "DE89370400440532013000"})
            .as_object()
            .unwrap()
            .clone();
    let input = DecideInput {
        tenant: tenant(),
        agent_id: AgentId::new(agent).unwrap(),
        call_chain: vec![AgentId::new("planner").unwrap()],
        tool_id: ToolId::new("payments").unwrap(),
        action: "create_payment".into(),
        params: params.clone(),
        context: Map::new(),
    };
    let decision = recorder.evaluator.decide(&input);
    DecisionEvent {
        id: format!("dec-{n:032x}"),
        kind: decision_log::DECISION_TYPE.into(),
        schema_version: decision_log::SCHEMA_VERSION,
        time: "2026-11-26T10:00:00.000Z".into(),
        tenant: tenant(),
        gateway: "gw1".into(),
        site: None,
        request_id: None,
        identity_verified: true,
        agent_id: Some(input.agent_id.clone()),
        call_chain: input.call_chain.clone(),
        tool_id: Some(input.tool_id.clone()),
        action: Some(input.action.clone()),
        params_digest: decision_log::params_digest(&params),
        params,
        masked_params: vec![],
        context: Map::new(),
        decision: decision.decision,
        reasons: decision.reasons.clone(),
        policy: decision.policy.clone(),
        rule: decision.rule.clone(),
        policy_version: Some(1),
        bundle_digest: Some(format!("sha256:{}", "a".repeat(64))),
        approval_id: None,
        latency_us: 100,
        rollout_stage: None,
        shadow: None,
        trace_id: None,
        span_id: None,
    }
}

/// The recording policy (finance template, no log masking) and a stricter one (approval
/// above 1000 instead of 5000), as policy trees under `dir`.
fn policies(dir: &Path) -> (Candidate, Candidate) {
    let recorded = unmasked(FINANCE);
    assert!(recorded.contains("lte: 5000\n"));
    let recorder = candidate(&dir.join("recorded"), &recorded);
    let strict = candidate(
        &dir.join("strict"),
        &recorded.replace("lte: 5000\n", "lte: 1000\n"),
    );
    (recorder, strict)
}

/// What the recording policy decided for payments of many amounts, and one call by an agent
/// with no policy.
fn events(recorder: &Candidate) -> Vec<DecisionEvent> {
    let amounts = [
        50, 120, 300, 450, 800, 900, 1200, 1500, 2500, 3000, 4000, 4500, 5000, 7000, 12000, 30000,
    ];
    let mut events = Vec::new();
    for round in 0..4 {
        for (i, a) in amounts.iter().enumerate() {
            events.push(event(recorder, round * 100 + i, "finance-agent", *a));
        }
    }
    events.push(event(recorder, 999, "research-agent", 10));
    events
}

fn report(dir: &Path) -> Report {
    let (recorder, strict) = policies(dir);
    let records: Vec<Record> = events(&recorder)
        .into_iter()
        .enumerate()
        .map(|(i, e)| Record::Decision {
            sequence: i as u64 + 1,
            event: Box::new(e),
        })
        .collect();
    let engine = Engine::new(
        strict.evaluator.clone(),
        EngineOptions {
            workers: 2,
            queue: 4,
            examples: 5,
        },
    );
    let tally = engine.replay_iter(records).unwrap();
    let report = Report::build(
        &SliceSpec::all(tenant()),
        strict.info.clone(),
        SliceStats::default(),
        tally,
    );
    let changes = changed_thresholds(
        &tenant(),
        recorder.data.as_ref().unwrap(),
        strict.data.as_ref().unwrap(),
    );
    assert_eq!(changes.len(), 1, "{changes:?}");
    let report = report.with_thresholds(changes, "compared with version 1".into());
    assert!(
        report.transition(DecisionKind::Allow, DecisionKind::ApprovalNeeded) > 0,
        "{:?}",
        report.transitions
    );
    assert_eq!(report.histograms.len(), 1);
    report
}

/// The browser: `$AEGIS_CHROMIUM`, else `chromium` (Debian), `chromium-browser` or
/// `google-chrome` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("AEGIS_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AEGIS_CHROMIUM={} is not a file: run ./scripts/setup.sh, which installs Debian's \
             `chromium`, or point AEGIS_CHROMIUM at a Chromium binary",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium not found (chromium, chromium-browser or google-chrome on PATH, or \
         AEGIS_CHROMIUM): run ./scripts/setup.sh, which installs Debian's `chromium` (CI does)"
    );
}

/// Takes a screenshot of `page` (width × height) into `png`.
fn screenshot(page: &Path, png: &Path, profile: &Path, width: u32, height: u32) {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--force-color-profile=srgb",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(status.success(), "chromium failed ({status}): {stderr}");
    assert!(png.is_file(), "no screenshot written: {stderr}");
}

/// A decoded 8-bit RGB(A) PNG: width, height and RGB pixels.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

/// Decodes a non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes).
fn decode_png(bytes: &[u8]) -> Image {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let mut at = 8;
    let (mut width, mut height, mut channels) = (0usize, 0usize, 0usize);
    let mut idat = Vec::new();
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("colour type {other} not handled"),
                };
                assert_eq!(data[12], 0, "interlaced PNG not handled");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(idat.as_slice())
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "image data size");
    let mut pixels = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                pixels[y * stride + x - channels]
            } else {
                0
            };
            let b = if y > 0 {
                pixels[(y - 1) * stride + x]
            } else {
                0
            };
            let c = if x >= channels && y > 0 {
                pixels[(y - 1) * stride + x - channels]
            } else {
                0
            };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("PNG filter {other}"),
            };
            pixels[y * stride + x] = line[x].wrapping_add(predicted);
        }
    }
    let rgb = pixels
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image { width, height, rgb }
}

fn hex(colour: &str) -> [u8; 3] {
    let c = colour.trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(&c[i..i + 2], 16).unwrap();
    [byte(0), byte(2), byte(4)]
}

/// Pixels within a small tolerance of `colour`.
fn count_colour(img: &Image, colour: [u8; 3]) -> usize {
    img.rgb
        .iter()
        .filter(|p| (0..3).all(|i| p[i].abs_diff(colour[i]) <= 6))
        .count()
}

/// Not blank, and each chart drew something: the changed transition's bar, the unchanged
/// ones, the histogram's allow and approval_needed bars, and (when thresholds were compared)
/// the new bound.
fn assert_charts(img: &Image, bound_marked: bool) {
    let distinct: std::collections::BTreeSet<[u8; 3]> = img.rgb.iter().copied().collect();
    assert!(
        distinct.len() > 50,
        "the screenshot looks blank: {} distinct colours",
        distinct.len()
    );
    let white = count_colour(img, [255, 255, 255]);
    assert!(
        white < img.rgb.len() * 97 / 100,
        "the screenshot is almost all white ({white} of {} pixels)",
        img.rgb.len()
    );
    let mut expected = vec![
        ("changed transition bar", html::CHANGED_COLOUR, 500),
        ("unchanged transition bar", html::UNCHANGED_COLOUR, 500),
        (
            "histogram bars: allow",
            html::decision_colour(DecisionKind::Allow),
            500,
        ),
        (
            "histogram bars: approval_needed",
            html::decision_colour(DecisionKind::ApprovalNeeded),
            300,
        ),
    ];
    if bound_marked {
        expected.push(("the new bound", html::NEW_BOUND_COLOUR, 200));
    }
    for (what, colour, at_least) in expected {
        let n = count_colour(img, hex(colour));
        assert!(
            n >= at_least,
            "{what} ({colour}): {n} pixels in the screenshot, expected at least {at_least}"
        );
    }
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 2400;

/// Screenshots `page` and decodes the PNG (kept, with the page, in `$AEGIS_SCREENSHOT_DIR`
/// when set: `AEGIS_SCREENSHOT_DIR=/tmp/shots cargo test -p aegis-tests --test replay_html`).
fn render(page: &Path, dir: &Path, name: &str) -> Image {
    let png = dir.join(format!("{name}.png"));
    screenshot(
        page,
        &png,
        &dir.join(format!("profile-{name}")),
        WIDTH,
        HEIGHT,
    );
    if let Some(keep) = std::env::var_os("AEGIS_SCREENSHOT_DIR") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(page, keep.join(format!("{name}.html"))).unwrap();
        std::fs::copy(&png, keep.join(format!("{name}.png"))).unwrap();
    }
    let img = decode_png(&std::fs::read(&png).unwrap());
    assert_eq!((img.width, img.height), (WIDTH as usize, HEIGHT as usize));
    img
}

#[test]
fn the_html_report_renders_its_charts_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let report = report(dir.path());
    let page = dir.path().join("replay.html");
    std::fs::write(&page, html::render(&report)).unwrap();
    assert_charts(&render(&page, dir.path(), "replay"), true);

    // The same checks on a blank page fail: they see the charts, not just any page.
    let blank_page = dir.path().join("blank.html");
    std::fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = render(&blank_page, dir.path(), "blank");
    let colours: std::collections::BTreeSet<[u8; 3]> = blank.rgb.iter().copied().collect();
    assert!(colours.len() <= 2, "{} colours", colours.len());
    assert_eq!(count_colour(&blank, hex(html::CHANGED_COLOUR)), 0);
}

/// `aegisctl replay --format html --output FILE` over decisions stored in AEGIS_DECISIONS of
/// a real nats-server writes the report to FILE (nothing on stdout), the same report goes to
/// stdout without --output, and the file renders with its charts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aegisctl_replay_writes_an_html_file_that_renders() {
    let server = NatsServer::start().expect("start nats-server (run ./scripts/setup.sh)");
    let js = jetstream(connect(&ConnectOptions::new(server.url())).await.unwrap());
    provision(&js, &Topology::single()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (recorder, _) = policies(dir.path());
    let events = events(&recorder);
    for e in &events {
        let subject = topology::decisions_subject(&tenant(), &e.gateway).unwrap();
        publish(
            &js,
            Publish::new(subject, e.to_bytes().unwrap()).msg_id(&e.id),
        )
        .await
        .unwrap();
    }
    let url = server.url();
    let env = [("AEGIS_NATS_URL", url.as_str())];
    let strict = dir.path().join("strict");
    let strict = strict.to_str().unwrap();
    let page = dir.path().join("cli.html");
    let run = aegisctl(
        &[
            "replay",
            "--tenant",
            "acme",
            "--policies",
            strict,
            "--format",
            "html",
            "--output",
            page.to_str().unwrap(),
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "", "the report went to the file");
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(text.starts_with("<!DOCTYPE html>"), "{text}");
    assert!(text.contains(&format!("<td class=\"n\">{}</td>", events.len())));

    let run = aegisctl(
        &[
            "replay",
            "--tenant",
            "acme",
            "--policies",
            strict,
            "--format",
            "html",
        ],
        &env,
        dir.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("<!DOCTYPE html>"), "{run:?}");
    assert!(run.stdout.contains("<svg class=\"chart transitions\""));

    let img = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || render(&page, &dir, "cli")
    })
    .await
    .unwrap();
    assert_charts(&img, false);
}
