//! Rate limits and budgets of the deciding rule, enforced by this gateway on calls the policy
//! lets through (`allow`, `sanitize`).
//!
//! The policy's decision carries them as obligations (`decision.schema.json`): at most `calls`
//! per `window_seconds` per agent and tool, and a budget — the sum of a numeric parameter (say
//! `amount`) over `window_seconds` — per agent and tool. Windows are fixed (aligned to unix time
//! divided by the window length). Every limit is checked first, and only a call that passes all
//! of them is counted, so a refused call consumes nothing. Exceeding one turns the decision
//! into a deny with reason `rate_limited` or `budget_exceeded`; a budgeted parameter that is
//! missing or not a number is a deny too (`budget_param_invalid`): fail closed.
//!
//! Counters live in this process (`scope: gateway`). A limit with `scope: global` (counters
//! shared by every gateway through JetStream KV) is enforced here per gateway as well — stricter
//! than nothing, looser than global — until global counters are built.

use aegis_core::decision::Obligations;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Reason code for a rate limit exceeded.
pub const RATE_LIMITED: &str = "rate_limited";
/// Reason code for a budget exceeded.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
/// Reason code for a budgeted parameter that is missing or not a number.
pub const BUDGET_PARAM_INVALID: &str = "budget_param_invalid";

/// Most counters kept; past it, counters of windows that have ended are dropped first.
const MAX_COUNTERS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    agent: String,
    tool: String,
    /// `calls` for a rate limit, the parameter for a budget.
    what: String,
    window_seconds: u64,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// `now / window_seconds` of the window counted.
    index: i64,
    value: f64,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub code: &'static str,
    pub message: String,
}

/// The counters of one gateway.
#[derive(Debug, Default)]
pub struct Limiter {
    counters: Mutex<HashMap<Key, Window>>,
}

/// Who is counted.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub tool: &'a str,
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every rate limit and budget of `obligations` for this call at unix time `now`;
    /// counts the call only if all pass.
    pub fn admit(
        &self,
        who: Subject<'_>,
        obligations: &Obligations,
        params: &Map<String, Value>,
        now: i64,
    ) -> Result<(), Exceeded> {
        if obligations.rate_limits.is_empty() && obligations.budgets.is_empty() {
            return Ok(());
        }
        let key = |what: &str, window_seconds: u64| Key {
            tenant: who.tenant.to_owned(),
            agent: who.agent.to_owned(),
            tool: who.tool.to_owned(),
            what: what.to_owned(),
            window_seconds,
        };
        // (key, window index, amount to add, limit)
        let mut wanted: Vec<(Key, i64, f64)> = Vec::new();
        for r in &obligations.rate_limits {
            let w = r.window_seconds.max(1);
            wanted.push((key("calls", w), window_index(now, w), 1.0));
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
            wanted.push((
                key(&format!("param:{}", b.param), w),
                window_index(now, w),
                amount,
            ));
        }

        let Ok(mut counters) = self.counters.lock() else {
            return Err(Exceeded {
                code: RATE_LIMITED,
                message: "the gateway's limit counters are unavailable".to_owned(),
            });
        };
        let used = |k: &Key, index: i64| {
            counters
                .get(k)
                .filter(|w| w.index == index)
                .map_or(0.0, |w| w.value)
        };
        for (r, (k, index, add)) in obligations.rate_limits.iter().zip(&wanted) {
            if used(k, *index) + add > r.calls as f64 {
                return Err(Exceeded {
                    code: RATE_LIMITED,
                    message: format!(
                        "at most {} calls per {} s by {} to {}; try again in the next window",
                        r.calls, r.window_seconds, who.agent, who.tool
                    ),
                });
            }
        }
        for (b, (k, index, add)) in obligations
            .budgets
            .iter()
            .zip(wanted.iter().skip(obligations.rate_limits.len()))
        {
            let spent = used(k, *index);
            if spent + add > b.max {
                return Err(Exceeded {
                    code: BUDGET_EXCEEDED,
                    message: format!(
                        "the budget of {} `{}` per {} s would be exceeded ({} spent, {} asked)",
                        b.max, b.param, b.window_seconds, spent, add
                    ),
                });
            }
        }
        if counters.len() >= MAX_COUNTERS {
            counters.retain(|k, w| w.index >= window_index(now, k.window_seconds));
        }
        for (k, index, add) in wanted {
            let w = counters.entry(k).or_insert(Window { index, value: 0.0 });
            if w.index != index {
                *w = Window { index, value: 0.0 };
            }
            w.value += add;
        }
        Ok(())
    }
}

fn window_index(now: i64, window_seconds: u64) -> i64 {
    now.div_euclid(i64::try_from(window_seconds).unwrap_or(i64::MAX).max(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use aegis_core::decision::{BudgetObligation, RateLimitObligation};

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

    #[test]
    fn a_rate_limit_refuses_the_call_over_it_and_the_window_rolls_over() {
        let l = Limiter::new();
        let o = Obligations {
            rate_limits: vec![RateLimitObligation {
                calls: 3,
                window_seconds: 60,
                scope: "gateway".into(),
            }],
            ..Obligations::default()
        };
        let t0 = 6_000; // the start of a window
        for _ in 0..3 {
            l.admit(who(), &o, &Map::new(), t0).unwrap();
        }
        assert_eq!(
            l.admit(who(), &o, &Map::new(), t0 + 59).unwrap_err().code,
            RATE_LIMITED
        );
        // Another agent has its own counter; the next window starts from zero.
        let other = Subject {
            agent: "treasury-agent",
            ..who()
        };
        l.admit(other, &o, &Map::new(), t0 + 1).unwrap();
        l.admit(who(), &o, &Map::new(), t0 + 60).unwrap();
    }

    #[test]
    fn a_budget_sums_the_parameter_and_a_refused_call_consumes_nothing() {
        let l = Limiter::new();
        let o = Obligations {
            budgets: vec![BudgetObligation {
                param: "amount".into(),
                max: 10_000.0,
                window_seconds: 86_400,
                scope: "global".into(),
            }],
            rate_limits: vec![RateLimitObligation {
                calls: 100,
                window_seconds: 60,
                scope: "gateway".into(),
            }],
            ..Obligations::default()
        };
        let now = 86_400 * 10;
        l.admit(who(), &o, &params(6_000.0), now).unwrap();
        let e = l.admit(who(), &o, &params(5_000.0), now).unwrap_err();
        assert_eq!(e.code, BUDGET_EXCEEDED, "{}", e.message);
        // The refused 5,000 was not counted: 4,000 still fits exactly.
        l.admit(who(), &o, &params(4_000.0), now).unwrap();
        assert_eq!(
            l.admit(who(), &o, &params(0.5), now).unwrap_err().code,
            BUDGET_EXCEEDED
        );
        assert_eq!(
            l.admit(who(), &o, &Map::new(), now).unwrap_err().code,
            BUDGET_PARAM_INVALID
        );
        assert_eq!(
            l.admit(who(), &o, &params(-1.0), now).unwrap_err().code,
            BUDGET_PARAM_INVALID
        );
    }
}
