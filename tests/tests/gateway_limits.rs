//! Rate limits and budgets at the gateway, with real gateways, the real control plane and a real
//! nats-server: per gateway (`scope: gateway`) each gateway grants the full allowance; global
//! (`scope: global`) two gateways hammered at once share exactly one allowance through KV
//! `aegis-limits`; windows roll over; and with NATS gone a call under a global limit is denied
//! (`limit_unavailable`) while calls under local limits are still decided from the bundle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use aegis_gateway::limits::Subject;
use aegis_gateway::limits::global::counter_key;
use aegis_tests::flow::FINANCE_POLICY;
use aegis_tests::gateway::Gateway;
use aegis_tests::stack::{ACME, Stack, WAIT, balance, code, pay, wait_until};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

/// A decision and its first reason code.
type Outcome = (String, String);
/// A decision, its first reason code and message.
type Answer = (String, String, String);

/// One limit of the test policy.
#[derive(Debug, Clone, Copy)]
struct Limit {
    /// Calls, or the budget's maximum.
    n: u64,
    window_seconds: u64,
    scope: &'static str,
}

const fn limit(n: u64, window_seconds: u64, scope: &'static str) -> Limit {
    Limit {
        n,
        window_seconds,
        scope,
    }
}

/// The finance template with the payment rule's rate limit and budget and the balance rule's
/// rate limit replaced.
fn policy(pay_calls: Limit, budget: Limit, balance_calls: Limit) -> String {
    let replace = |p: String, from: &str, to: String| {
        assert_eq!(p.matches(from).count(), 1, "the template changed: {from:?}");
        p.replace(from, &to)
    };
    let rate = |l: Limit| {
        format!(
            "        - calls: {}\n          window_seconds: {}\n          scope: {}\n",
            l.n, l.window_seconds, l.scope
        )
    };
    let p = replace(
        FINANCE_POLICY.to_owned(),
        "        - calls: 20\n          window_seconds: 60\n",
        rate(pay_calls),
    );
    let p = replace(
        p,
        "        - calls: 120\n          window_seconds: 60\n",
        rate(balance_calls),
    );
    replace(
        p,
        "          max: 100000\n          window_seconds: 86400\n          scope: global\n",
        format!(
            "          max: {}\n          window_seconds: {}\n          scope: {}\n",
            budget.n, budget.window_seconds, budget.scope
        ),
    )
}

/// A gateway of `acme` enforcing the version last published, whose global-limit calls may take
/// up to `timeout_ms` (generous in tests on a busy machine, so that only NATS being gone makes
/// a call `limit_unavailable`).
fn gateway(stack: &Stack, id: &str, timeout_ms: u64) -> Gateway {
    let options = stack
        .gateway_options(id)
        .arg("--global-limit-timeout-ms")
        .arg(&timeout_ms.to_string());
    let gw = Gateway::start(&options).unwrap();
    gw.wait_ready(WAIT).unwrap();
    gw.wait_version(ACME, stack.version(), WAIT).unwrap();
    gw
}

/// The decision and first reason code of an answer, asserting it was a 200.
fn outcome(status: u16, answer: &Value) -> Outcome {
    assert_eq!(status, 200, "{answer:#}");
    (
        answer["decision"].as_str().unwrap().to_owned(),
        code(answer).to_owned(),
    )
}

fn decide(gw: &Gateway, token: &str, body: &Value) -> Outcome {
    let (status, answer) = gw.decide(token, body).unwrap();
    outcome(status, &answer)
}

fn allow() -> Outcome {
    ("allow".into(), "allowed".into())
}

fn deny(code: &str) -> Outcome {
    ("deny".into(), code.into())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn window_of(t: f64, window_seconds: u64) -> u64 {
    (t as u64) / window_seconds
}

/// `acme`'s finance agent on the payments tool.
fn finance_agent() -> Subject<'static> {
    Subject {
        tenant: ACME,
        agent: "finance-agent",
        tool: "payments",
    }
}

/// The value of a global counter in KV `aegis-limits`, if any.
fn counter(stack: &Stack, key: &str) -> Option<String> {
    stack.block_on(async {
        let kv = stack
            .js
            .get_key_value(aegis_nats::topology::LIMITS_KV)
            .await
            .unwrap();
        kv.get(key)
            .await
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    })
}

#[test]
fn per_gateway_limits_give_each_gateway_the_full_allowance() {
    let mut stack = Stack::start();
    stack.publish_change(&policy(
        limit(1_000, DAY, "gateway"),
        limit(10_000, DAY, "gateway"),
        limit(5, DAY, "gateway"),
    ));
    let token = stack.token("finance-agent", &["planner"]);
    let gateways = [gateway(&stack, "gw-a", 250), gateway(&stack, "gw-b", 250)];
    let start = unix_now();
    for gw in &gateways {
        for i in 0..5 {
            assert_eq!(
                decide(gw, &token, &balance()),
                allow(),
                "{} call {i}",
                gw.id
            );
        }
        let (status, answer) = gw.decide(&token, &balance()).unwrap();
        assert_eq!(outcome(status, &answer), deny("rate_limited"), "{}", gw.id);
        assert_eq!(answer["reasons"][0]["rule"], "balance");
        let message = answer["reasons"][0]["message"].as_str().unwrap();
        assert!(!message.contains("global"), "{message}");

        for _ in 0..3 {
            assert_eq!(decide(gw, &token, &pay(3_000)), allow(), "{}", gw.id);
        }
        let (status, answer) = gw.decide(&token, &pay(3_000)).unwrap();
        assert_eq!(
            outcome(status, &answer),
            deny("budget_exceeded"),
            "{}",
            gw.id
        );
        assert_eq!(answer["reasons"][0]["rule"], "pay");
        // The refused 3,000 consumed nothing: 1,000 still fits exactly, then nothing does.
        assert_eq!(decide(gw, &token, &pay(1_000)), allow());
        assert_eq!(decide(gw, &token, &pay(1)), deny("budget_exceeded"));
    }
    // Per-gateway counters never touch KV.
    let key = counter_key(finance_agent(), "calls", DAY, start as i64);
    assert_eq!(counter(&stack, &key), None);
    assert_eq!(
        window_of(start, DAY),
        window_of(unix_now(), DAY),
        "the test ran across midnight UTC: run it again"
    );
}

#[test]
fn a_global_allowance_is_shared_exactly_by_two_gateways_hammered_at_once() {
    const CALLS: u64 = 100;
    const BUDGET: u64 = 100_000;
    let mut stack = Stack::start();
    stack.publish_change(&policy(
        limit(100_000, DAY, "gateway"),
        limit(BUDGET, DAY, "global"),
        limit(CALLS, DAY, "global"),
    ));
    let token = stack.token("finance-agent", &["planner"]);
    let gateways = [
        gateway(&stack, "gw-a", 10_000),
        gateway(&stack, "gw-b", 10_000),
    ];
    let start = unix_now();

    // Per gateway: two threads of balance look-ups and two of 1,000 payments, all at once.
    let results: Vec<(bool, Vec<Answer>)> = std::thread::scope(|s| {
        let mut threads = Vec::new();
        for gw in &gateways {
            for balance_thread in [true, true, false, false] {
                let token = &token;
                threads.push(s.spawn(move || {
                    let mut client = gw.client().unwrap();
                    let body = if balance_thread {
                        balance()
                    } else {
                        pay(1_000)
                    };
                    let answers = (0..30)
                        .map(|_| {
                            let (status, answer) = client.decide(token, &body).unwrap();
                            let (decision, code) = outcome(status, &answer);
                            let message =
                                answer["reasons"][0]["message"].as_str().unwrap().to_owned();
                            (decision, code, message)
                        })
                        .collect::<Vec<_>>();
                    (balance_thread, answers)
                }));
            }
        }
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });

    for (balance_calls, expected_allows, refusal) in [
        (true, CALLS, "rate_limited"),
        (false, BUDGET / 1_000, "budget_exceeded"),
    ] {
        let answers: Vec<&Answer> = results
            .iter()
            .filter(|(b, _)| *b == balance_calls)
            .flat_map(|(_, a)| a)
            .collect();
        let allowed = answers.iter().filter(|(d, _, _)| d == "allow").count() as u64;
        assert_eq!(
            allowed,
            expected_allows,
            "{refusal}: the two gateways together allowed {allowed} of {} calls",
            answers.len()
        );
        for (decision, code, message) in answers.iter().filter(|(d, _, _)| d != "allow") {
            assert_eq!(
                (decision.as_str(), code.as_str()),
                ("deny", refusal),
                "{message}"
            );
            assert!(message.contains("global"), "{message}");
        }
    }

    // The counters in KV hold exactly the allowance.
    let calls = counter_key(finance_agent(), "calls", DAY, start as i64);
    let spent = counter_key(finance_agent(), "param:amount", DAY, start as i64);
    assert_eq!(counter(&stack, &calls).as_deref(), Some("100"), "{calls}");
    assert_eq!(
        counter(&stack, &spent).as_deref(),
        Some("100000"),
        "{spent}"
    );
    assert!(calls.starts_with("acme."), "{calls}");
    assert_eq!(
        window_of(start, DAY),
        window_of(unix_now(), DAY),
        "the test ran across midnight UTC: run it again"
    );
    for gw in &gateways {
        assert!(
            !gw.log().contains("over-counted"),
            "{}: a take-back failed:\n{}",
            gw.id,
            gw.log()
        );
    }
}

#[test]
fn a_call_refused_by_one_global_counter_is_taken_back_from_the_others() {
    let mut stack = Stack::start();
    stack.publish_change(&policy(
        limit(100, DAY, "global"),
        limit(5_000, DAY, "global"),
        limit(1_000, DAY, "gateway"),
    ));
    let token = stack.token("finance-agent", &["planner"]);
    let gw = gateway(&stack, "gw-a", 10_000);
    let start = unix_now() as i64;
    let calls = counter_key(finance_agent(), "calls", DAY, start);
    let spent = counter_key(finance_agent(), "param:amount", DAY, start);

    assert_eq!(decide(&gw, &token, &pay(3_000)), allow());
    // The rate limit (checked first) counts the call, then the budget refuses it: the call
    // is taken back from the rate limit's counter.
    assert_eq!(decide(&gw, &token, &pay(3_000)), deny("budget_exceeded"));
    assert_eq!(counter(&stack, &calls).as_deref(), Some("1"));
    assert_eq!(counter(&stack, &spent).as_deref(), Some("3000"));
    assert_eq!(decide(&gw, &token, &pay(2_000)), allow());
    assert_eq!(counter(&stack, &calls).as_deref(), Some("2"));
    assert_eq!(counter(&stack, &spent).as_deref(), Some("5000"));
}

#[test]
fn windows_roll_over_for_global_and_per_gateway_limits() {
    const WINDOW: u64 = 2;
    let mut stack = Stack::start();
    stack.publish_change(&policy(
        limit(2, WINDOW, "gateway"),
        limit(1_000_000, DAY, "gateway"),
        limit(3, WINDOW, "global"),
    ));
    let token = stack.token("finance-agent", &["planner"]);
    let a = gateway(&stack, "gw-a", 10_000);
    let b = gateway(&stack, "gw-b", 10_000);

    // One window's worth: the global look-ups alternate between the gateways and share 3; the
    // payments on gw-a have its own 2. A run that strays into the next window is run again.
    let run_in_one_window = || -> (Vec<Outcome>, Vec<Outcome>) {
        for _ in 0..5 {
            // Start just after a window begins.
            let now = unix_now();
            let next = ((now as u64) / WINDOW + 1) * WINDOW;
            std::thread::sleep(Duration::from_secs_f64(next as f64 - now + 0.05));
            let started = unix_now();
            let looked_up: Vec<_> = (0..4)
                .map(|i| decide(if i % 2 == 0 { &a } else { &b }, &token, &balance()))
                .collect();
            let paid: Vec<_> = (0..3).map(|_| decide(&a, &token, &pay(10))).collect();
            if window_of(started, WINDOW) == window_of(unix_now(), WINDOW) {
                return (looked_up, paid);
            }
            eprintln!("the calls spanned two windows: again");
        }
        panic!("the calls never fit in one {WINDOW}-second window");
    };
    for round in 0..2 {
        let (looked_up, paid) = run_in_one_window();
        assert_eq!(
            looked_up,
            [allow(), allow(), allow(), deny("rate_limited")],
            "round {round}"
        );
        assert_eq!(
            paid,
            [allow(), allow(), deny("rate_limited")],
            "round {round}"
        );
    }
}

#[test]
fn with_nats_gone_global_limits_deny_limit_unavailable_and_local_ones_still_decide() {
    let mut stack = Stack::start();
    stack.publish_change(&policy(
        limit(1_000, DAY, "gateway"),
        limit(1_000_000, DAY, "gateway"),
        limit(1_000, DAY, "global"),
    ));
    let token = stack.token("finance-agent", &["planner"]);
    let gw = gateway(&stack, "gw-a", 250);
    assert_eq!(decide(&gw, &token, &balance()), allow());

    stack.server.kill().unwrap();
    for _ in 0..3 {
        let (status, answer) = gw.decide(&token, &balance()).unwrap();
        assert_eq!(outcome(status, &answer), deny("limit_unavailable"));
        assert_eq!(answer["reasons"][0]["rule"], "balance");
        let message = answer["reasons"][0]["message"].as_str().unwrap();
        assert!(message.contains("global"), "{message}");
        // The payment rule's limits are this gateway's own: decided from the bundle as usual.
        assert_eq!(decide(&gw, &token, &pay(3_000)), allow());
    }

    // NATS back: global limits work again once the gateway has reconnected.
    stack.server.restart().unwrap();
    wait_until(WAIT, "a global-limit call to be allowed again", || {
        decide(&gw, &token, &balance()) == allow()
    });
    // The two allowed calls are counted (a refused one whose write was already on its way when
    // NATS went could be too: counters err on the strict side).
    let key = counter_key(finance_agent(), "calls", DAY, unix_now() as i64);
    let counted: u64 = counter(&stack, &key).unwrap().parse().unwrap();
    assert!(counted >= 2, "{key}: {counted}");
}
