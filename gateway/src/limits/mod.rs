//! Rate limits and budgets of the deciding rule, enforced by the gateway on calls the policy
//! lets through (`allow`, `sanitize`).
//!
//! The policy's decision carries them as obligations (`decision.schema.json`): at most `calls`
//! per `window_seconds` per agent and tool, and a budget — the sum of a numeric parameter (say
//! `amount`) over `window_seconds` — per agent and tool. Windows are fixed (aligned to unix time
//! divided by the window length). Exceeding one turns the decision into a deny with reason
//! `rate_limited` or `budget_exceeded`; a budgeted parameter that is missing or not a number is
//! a deny too (`budget_param_invalid`): fail closed.
//!
//! Each limit has a scope:
//!
//! - `gateway` (the default): counted in this process ([`local`]), no I/O.
//! - `global`: counted in JetStream KV bucket `aegis-limits`, shared by every gateway, updated
//!   with compare-and-set ([`global`]). This is the only part of the decision path that waits on
//!   NATS, and only for a rule with a global limit. When the counters cannot be reached in time
//!   (NATS down, a timeout, too many concurrent updates) the call is denied with
//!   `limit_unavailable`: fail closed.
//!
//! Every limit is checked before the call is counted, and only a call that passes all of them
//! counts, so a refused call consumes nothing: the gateway's own counters are checked and
//! counted first (atomically), then the global ones; when a global one refuses (or cannot be
//! reached), what was counted is taken back. While a call is in flight, others may see its
//! counts — they can be refused for a count later taken back (stricter, never looser). With
//! several global counters in one rule they are updated one after the other: a gateway that
//! dies between two updates, or a take-back that fails, leaves one counter over-counted until
//! its window ends.

pub mod global;
pub mod local;

use aegis_core::decision::Obligations;
use serde_json::{Map, Value};

pub use global::GlobalCounters;
pub use local::LocalCounters;

/// Reason code for a rate limit exceeded.
pub const RATE_LIMITED: &str = "rate_limited";
/// Reason code for a budget exceeded.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
/// Reason code for a budgeted parameter that is missing or not a number.
pub const BUDGET_PARAM_INVALID: &str = "budget_param_invalid";
/// Reason code for a global limit whose shared counters cannot be reached (or a limit this
/// gateway cannot enforce): the call is denied rather than let through uncounted.
pub const LIMIT_UNAVAILABLE: &str = "limit_unavailable";

/// The scope of a limit counted by every gateway together.
pub const SCOPE_GLOBAL: &str = "global";
/// The scope of a limit each gateway counts on its own (the default).
pub const SCOPE_GATEWAY: &str = "gateway";

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub code: &'static str,
    pub message: String,
}

impl Exceeded {
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: LIMIT_UNAVAILABLE,
            message: message.into(),
        }
    }
}

/// Who is counted.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub tool: &'a str,
}

/// What one counter limits.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// At most `calls` calls.
    Calls(u64),
    /// The sum of `param` at most `max`.
    Budget { param: String, max: f64 },
}

/// One counter a call must fit in: what it counts, its window, how much the call adds.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    kind: Kind,
    window_seconds: u64,
    /// `now / window_seconds`: the window counted.
    index: i64,
    /// 1 for a call, the parameter's value for a budget.
    add: f64,
    global: bool,
}

impl Want {
    /// What is counted: `calls`, or `param:<name>` for a budget.
    fn what(&self) -> String {
        match &self.kind {
            Kind::Calls(_) => "calls".to_owned(),
            Kind::Budget { param, .. } => format!("param:{param}"),
        }
    }

    fn max(&self) -> f64 {
        match &self.kind {
            Kind::Calls(calls) => *calls as f64,
            Kind::Budget { max, .. } => *max,
        }
    }

    fn same_counter(&self, other: &Want) -> bool {
        self.global == other.global
            && self.window_seconds == other.window_seconds
            && match (&self.kind, &other.kind) {
                (Kind::Calls(_), Kind::Calls(_)) => true,
                (Kind::Budget { param: a, .. }, Kind::Budget { param: b, .. }) => a == b,
                _ => false,
            }
    }

    /// The refusal when `used` already counted plus this call would exceed the limit.
    fn exceeded(&self, who: Subject<'_>, used: f64) -> Exceeded {
        let across = if self.global {
            " across all gateways (global limit)"
        } else {
            ""
        };
        match &self.kind {
            Kind::Calls(calls) => Exceeded {
                code: RATE_LIMITED,
                message: format!(
                    "at most {calls} calls per {} s by {} to {}{across}; try again in the next window",
                    self.window_seconds, who.agent, who.tool
                ),
            },
            Kind::Budget { param, max } => Exceeded {
                code: BUDGET_EXCEEDED,
                message: format!(
                    "the budget of {max} `{param}` per {} s{across} would be exceeded ({used} spent, {} asked)",
                    self.window_seconds, self.add
                ),
            },
        }
    }
}

/// Every counter of `obligations` for a call with `params` at unix time `now`: rate limits
/// first, then budgets. Two limits on the same counter (same scope, window and parameter) are
/// one counter held to the stricter bound.
fn wants(
    obligations: &Obligations,
    params: &Map<String, Value>,
    now: i64,
) -> Result<Vec<Want>, Exceeded> {
    let mut out: Vec<Want> = Vec::new();
    let mut push = |want: Want| {
        if let Some(same) = out.iter_mut().find(|w| w.same_counter(&want)) {
            if want.max() < same.max() {
                *same = want;
            }
        } else {
            out.push(want);
        }
    };
    for r in &obligations.rate_limits {
        let w = r.window_seconds.max(1);
        push(Want {
            kind: Kind::Calls(r.calls),
            window_seconds: w,
            index: window_index(now, w),
            add: 1.0,
            global: is_global(&r.scope)?,
        });
    }
    for b in &obligations.budgets {
        let amount = params
            .get(&b.param)
            .and_then(Value::as_f64)
            .ok_or_else(|| Exceeded {
                code: BUDGET_PARAM_INVALID,
                message: format!(
                    "the budget on `{}` needs it as a number in the call's parameters",
                    b.param
                ),
            })?;
        if !amount.is_finite() || amount < 0.0 {
            return Err(Exceeded {
                code: BUDGET_PARAM_INVALID,
                message: format!("`{}` must be a non-negative number for its budget", b.param),
            });
        }
        let w = b.window_seconds.max(1);
        push(Want {
            kind: Kind::Budget {
                param: b.param.clone(),
                max: b.max,
            },
            window_seconds: w,
            index: window_index(now, w),
            add: amount,
            global: is_global(&b.scope)?,
        });
    }
    Ok(out)
}

fn is_global(scope: &str) -> Result<bool, Exceeded> {
    match scope {
        SCOPE_GLOBAL => Ok(true),
        SCOPE_GATEWAY | "" => Ok(false),
        other => Err(Exceeded::unavailable(format!(
            "a limit with scope `{other}` cannot be enforced by this gateway"
        ))),
    }
}

fn window_index(now: i64, window_seconds: u64) -> i64 {
    now.div_euclid(i64::try_from(window_seconds).unwrap_or(i64::MAX).max(1))
}

/// The rate-limit and budget counters of one gateway: its own, and (when connected to NATS)
/// the global ones it shares with every other gateway.
#[derive(Debug, Default)]
pub struct Limiter {
    local: LocalCounters,
    global: Option<GlobalCounters>,
}

impl Limiter {
    /// Local counters only: a call under a global limit is denied (`limit_unavailable`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Local counters, and global ones in JetStream KV.
    pub fn with_global(global: GlobalCounters) -> Self {
        Self {
            local: LocalCounters::default(),
            global: Some(global),
        }
    }

    /// Checks every rate limit and budget of `obligations` for this call at unix time `now`;
    /// counts the call only if all pass. Awaits NATS only when a limit is global.
    pub async fn admit(
        &self,
        who: Subject<'_>,
        obligations: &Obligations,
        params: &Map<String, Value>,
        now: i64,
    ) -> Result<(), Exceeded> {
        if obligations.rate_limits.is_empty() && obligations.budgets.is_empty() {
            return Ok(());
        }
        let wants = wants(obligations, params, now)?;
        let (global, local): (Vec<Want>, Vec<Want>) = wants.into_iter().partition(|w| w.global);
        self.local.admit(who, &local, now)?;
        if global.is_empty() {
            return Ok(());
        }
        let result = match &self.global {
            Some(counters) => counters.admit(who, &global).await,
            None => Err(Exceeded::unavailable(
                "this gateway has no global limit counters (no NATS): a call under a global limit is denied",
            )),
        };
        if result.is_err() {
            self.local.release(who, &local);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::decision::{BudgetObligation, RateLimitObligation};
    use futures::executor::block_on;

    fn who() -> Subject<'static> {
        Subject {
            tenant: "acme",
            agent: "finance-agent",
            tool: "payments",
        }
    }

    fn params(amount: f64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("amount".into(), amount.into());
        m
    }

    fn rate(calls: u64, window_seconds: u64, scope: &str) -> RateLimitObligation {
        RateLimitObligation {
            calls,
            window_seconds,
            scope: scope.into(),
        }
    }

    fn budget(max: f64, window_seconds: u64, scope: &str) -> BudgetObligation {
        BudgetObligation {
            param: "amount".into(),
            max,
            window_seconds,
            scope: scope.into(),
        }
    }

    #[test]
    fn a_rate_limit_refuses_the_call_over_it_and_the_window_rolls_over() {
        let l = Limiter::new();
        let o = Obligations {
            rate_limits: vec![rate(3, 60, "gateway")],
            ..Obligations::default()
        };
        let t0 = 6_000; // the start of a window
        for _ in 0..3 {
            block_on(l.admit(who(), &o, &Map::new(), t0)).unwrap();
        }
        let e = block_on(l.admit(who(), &o, &Map::new(), t0 + 59)).unwrap_err();
        assert_eq!(e.code, RATE_LIMITED);
        assert!(!e.message.contains("global"), "{}", e.message);
        // Another agent has its own counter; the next window starts from zero.
        let other = Subject {
            agent: "treasury-agent",
            ..who()
        };
        block_on(l.admit(other, &o, &Map::new(), t0 + 1)).unwrap();
        block_on(l.admit(who(), &o, &Map::new(), t0 + 60)).unwrap();
    }

    #[test]
    fn a_budget_sums_the_parameter_and_a_refused_call_consumes_nothing() {
        let l = Limiter::new();
        let o = Obligations {
            budgets: vec![budget(10_000.0, 86_400, "gateway")],
            rate_limits: vec![rate(100, 60, "gateway")],
            ..Obligations::default()
        };
        let now = 86_400 * 10;
        let admit = |amount: Option<f64>| {
            let p = amount.map(params).unwrap_or_default();
            block_on(l.admit(who(), &o, &p, now))
        };
        admit(Some(6_000.0)).unwrap();
        let e = admit(Some(5_000.0)).unwrap_err();
        assert_eq!(e.code, BUDGET_EXCEEDED, "{}", e.message);
        // The refused 5,000 was not counted: 4,000 still fits exactly.
        admit(Some(4_000.0)).unwrap();
        assert_eq!(admit(Some(0.5)).unwrap_err().code, BUDGET_EXCEEDED);
        assert_eq!(admit(None).unwrap_err().code, BUDGET_PARAM_INVALID);
        assert_eq!(admit(Some(-1.0)).unwrap_err().code, BUDGET_PARAM_INVALID);
    }

    #[test]
    fn without_global_counters_a_global_limit_fails_closed_and_counts_nothing_locally() {
        let l = Limiter::new();
        let local_only = Obligations {
            rate_limits: vec![rate(1, 60, "gateway")],
            ..Obligations::default()
        };
        let mixed = Obligations {
            rate_limits: vec![rate(1, 60, "gateway")],
            budgets: vec![budget(10_000.0, 60, "global")],
            ..Obligations::default()
        };
        let e = block_on(l.admit(who(), &mixed, &params(1.0), 600)).unwrap_err();
        assert_eq!(e.code, LIMIT_UNAVAILABLE, "{}", e.message);
        // The local rate limit (1 call) was taken back: the next call still fits it.
        block_on(l.admit(who(), &local_only, &Map::new(), 600)).unwrap();
        let unknown = Obligations {
            rate_limits: vec![rate(1, 60, "galactic")],
            ..Obligations::default()
        };
        let e = block_on(l.admit(who(), &unknown, &Map::new(), 600)).unwrap_err();
        assert_eq!(e.code, LIMIT_UNAVAILABLE);
    }

    #[test]
    fn two_limits_on_one_counter_count_once_against_the_stricter() {
        let o = Obligations {
            budgets: vec![
                budget(100.0, 60, "gateway"),
                budget(50.0, 60, "gateway"),
                budget(70.0, 60, "global"),
            ],
            ..Obligations::default()
        };
        let w = wants(&o, &params(10.0), 0).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].max(), w[0].global), (50.0, false));
        assert_eq!((w[1].max(), w[1].global), (70.0, true));
        let l = Limiter::new();
        let local = Obligations {
            budgets: o.budgets[..2].to_vec(),
            ..Obligations::default()
        };
        for _ in 0..5 {
            block_on(l.admit(who(), &local, &params(10.0), 0)).unwrap();
        }
        assert_eq!(
            block_on(l.admit(who(), &local, &params(10.0), 0))
                .unwrap_err()
                .code,
            BUDGET_EXCEEDED
        );
    }
}
