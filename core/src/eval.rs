//! The evaluator: compiled policies (regorus RVM bytecode) behind a fail-closed `decide`.
//!
//! One VM per thread and evaluator, created on first use and kept in a thread-local slot:
//! no lock on the decision path. Every failure (error, instruction or time limit, undefined or
//! malformed result) is a deny with reason `evaluation_error`.

use crate::decision::{
    ApprovalObligation, BudgetObligation, DecideInput, Decision, DecisionKind, EVALUATION_ERROR,
    Obligations, RateLimitObligation, Reason,
};
use crate::policy::CompiledPolicies;
use regorus::Value;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The rule every bundle is evaluated at.
pub const ENTRYPOINT: &str = "data.aegis.decide";

/// Builtins whose result depends on the evaluating machine (clock, randomness, host), not on the
/// input and data: a decision that calls one cannot be reproduced by a replay. Of these only
/// `rand.intn` is compiled into this build of regorus (features `time`, `uuid`, `http` and
/// `opa-runtime` are off, so the others do not even compile); the rest are listed so that
/// turning a feature on does not silently break replay.
pub const NONDETERMINISTIC_BUILTINS: &[&str] = &[
    "rand.intn",
    "time.now_ns",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
];

/// Why an evaluator could not be built. (Deciding never fails: it denies.)
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("data.json is not valid JSON: {0}")]
    Data(String),
    #[error("policy module {module} does not compile: {message}")]
    Module { module: String, message: String },
    #[error("policies do not compile to {ENTRYPOINT}: {0}")]
    Compile(String),
    #[error("bundle has no {0}")]
    MissingFile(&'static str),
}

/// Bounds on one evaluation, so no policy can loop or grind forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalLimits {
    /// Most VM instructions one decision may execute.
    pub max_instructions: usize,
    /// Wall-clock ceiling for one decision.
    pub time_limit: Duration,
}

impl Default for EvalLimits {
    fn default() -> Self {
        EvalLimits {
            max_instructions: 200_000,
            time_limit: Duration::from_millis(50),
        }
    }
}

/// Where the policies came from, stamped on every decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub policy_version: Option<u64>,
    pub bundle_digest: Option<String>,
}

struct Inner {
    id: u64,
    compiled: regorus::CompiledPolicy,
    program: Arc<Program>,
    data: Value,
    limits: EvalLimits,
    provenance: Provenance,
    nondeterministic: Vec<String>,
}

/// A compiled policy set, ready to decide. Cheap to clone and share across threads.
#[derive(Clone)]
pub struct Evaluator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("id", &self.inner.id)
            .field("provenance", &self.inner.provenance)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Slot {
    id: u64,
    owner: Weak<Inner>,
    vm: RegoVM,
}

thread_local! {
    static VMS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// At most this many evaluators keep a VM on one thread (enforced + candidate + spares).
const SLOTS_PER_THREAD: usize = 4;

impl Evaluator {
    /// Compiles in-memory policies (a policy tree).
    pub fn new(
        policies: &CompiledPolicies,
        provenance: Provenance,
        limits: EvalLimits,
    ) -> Result<Evaluator, EvalError> {
        let data = to_rego(&policies.data.to_value());
        let modules: Vec<(String, String)> = policies
            .modules
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self::build(data, &modules, provenance, limits)
    }

    /// Compiles a bundle's payload files: `data.json` and every `.rego` file.
    pub fn from_files(
        files: &BTreeMap<String, Vec<u8>>,
        provenance: Provenance,
        limits: EvalLimits,
    ) -> Result<Evaluator, EvalError> {
        let data_bytes = files
            .get("data.json")
            .ok_or(EvalError::MissingFile("data.json"))?;
        let data_text =
            std::str::from_utf8(data_bytes).map_err(|e| EvalError::Data(e.to_string()))?;
        let data = Value::from_json_str(data_text).map_err(|e| EvalError::Data(e.to_string()))?;
        if !files.contains_key("policy.rego") {
            return Err(EvalError::MissingFile("policy.rego"));
        }
        let mut modules = Vec::new();
        for (path, bytes) in files.iter().filter(|(p, _)| p.ends_with(".rego")) {
            let text = std::str::from_utf8(bytes).map_err(|e| EvalError::Module {
                module: path.clone(),
                message: e.to_string(),
            })?;
            modules.push((path.clone(), text.to_owned()));
        }
        Self::build(data, &modules, provenance, limits)
    }

    fn build(
        data: Value,
        modules: &[(String, String)],
        provenance: Provenance,
        limits: EvalLimits,
    ) -> Result<Evaluator, EvalError> {
        let mut engine = regorus::Engine::new();
        for (path, text) in modules {
            engine
                .add_policy(path.clone(), text.clone())
                .map_err(|e| EvalError::Module {
                    module: path.clone(),
                    message: e.to_string(),
                })?;
        }
        engine
            .add_data(data.clone())
            .map_err(|e| EvalError::Data(e.to_string()))?;
        let compiled = engine
            .compile_with_entrypoint(&ENTRYPOINT.into())
            .map_err(|e| EvalError::Compile(e.to_string()))?;
        let program = Compiler::compile_from_policy(&compiled, &[ENTRYPOINT])
            .map_err(|e| EvalError::Compile(e.to_string()))?;
        let mut nondeterministic: Vec<String> = program
            .builtin_info_table
            .iter()
            .map(|b| b.name.clone())
            .filter(|name| NONDETERMINISTIC_BUILTINS.contains(&name.as_str()))
            .collect();
        nondeterministic.sort();
        nondeterministic.dedup();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(Evaluator {
            inner: Arc::new(Inner {
                id,
                compiled,
                program,
                data,
                limits,
                provenance,
                nondeterministic,
            }),
        })
    }

    pub fn provenance(&self) -> &Provenance {
        &self.inner.provenance
    }

    /// The builtins of [`NONDETERMINISTIC_BUILTINS`] the compiled policies call (sorted): when
    /// not empty, a decision may depend on the machine that made it, and replaying it proves
    /// nothing.
    pub fn nondeterministic_builtins(&self) -> &[String] {
        &self.inner.nondeterministic
    }

    /// Decides. Never fails and never panics: anything that goes wrong is a deny with reason
    /// `evaluation_error`.
    pub fn decide(&self, input: &DecideInput) -> Decision {
        let mut decision = match self.eval_value(input_to_rego(input)) {
            Ok(v) => parse_decision(&v).unwrap_or_else(|e| {
                Decision::deny(
                    EVALUATION_ERROR,
                    format!("policy returned a malformed decision: {e}"),
                )
            }),
            Err(e) => Decision::deny(EVALUATION_ERROR, format!("policy evaluation failed: {e}")),
        };
        decision.policy_version = self.inner.provenance.policy_version;
        decision
            .bundle_digest
            .clone_from(&self.inner.provenance.bundle_digest);
        decision
    }

    /// Evaluates the entrypoint for a raw regorus input on this thread's VM.
    pub fn eval_value(&self, input: Value) -> Result<Value, String> {
        VMS.with(|cell| {
            let Ok(mut slots) = cell.try_borrow_mut() else {
                return Err("re-entrant evaluation on one thread".to_owned());
            };
            let pos = match slots.iter().position(|s| s.id == self.inner.id) {
                Some(p) => p,
                None => {
                    slots.retain(|s| s.owner.strong_count() > 0);
                    if slots.len() >= SLOTS_PER_THREAD {
                        slots.remove(0);
                    }
                    slots.push(self.new_slot()?);
                    slots.len() - 1
                }
            };
            let slot = slots
                .get_mut(pos)
                .ok_or_else(|| "VM slot vanished".to_owned())?;
            slot.vm.set_input(input);
            let out = slot.vm.execute().map_err(|e| e.to_string())?;
            if matches!(out, Value::Undefined) {
                return Err("policy result is undefined".to_owned());
            }
            Ok(out)
        })
    }

    fn new_slot(&self) -> Result<Slot, String> {
        let inner = &self.inner;
        let mut vm = RegoVM::new_with_policy(inner.compiled.clone());
        vm.load_program(inner.program.clone());
        vm.set_data(inner.data.clone()).map_err(|e| e.to_string())?;
        vm.set_max_instructions(inner.limits.max_instructions);
        vm.set_execution_timer_config(Some(regorus::utils::limits::ExecutionTimerConfig {
            limit: inner.limits.time_limit,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        }));
        Ok(Slot {
            id: inner.id,
            owner: Arc::downgrade(inner),
            vm,
        })
    }
}

/// Checks that a custom module compiles next to the shared logic.
pub fn check_custom_module(rego: &str) -> Result<(), String> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("policy.rego".into(), crate::policy::set::SHARED_REGO.into())
        .map_err(|e| e.to_string())?;
    engine
        .add_policy("custom.rego".into(), rego.into())
        .map_err(|e| e.to_string())?;
    engine
        .compile_with_entrypoint(&ENTRYPOINT.into())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

// ---- conversions ------------------------------------------------------------------------------

/// serde_json → regorus, without a text round trip.
pub fn to_rego(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(to_rego).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => map_to_rego(o),
    }
}

fn map_to_rego(o: &serde_json::Map<String, serde_json::Value>) -> Value {
    Value::from(
        o.iter()
            .map(|(k, v)| (Value::from(k.as_str()), to_rego(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn input_to_rego(i: &DecideInput) -> Value {
    let mut m = BTreeMap::new();
    m.insert(Value::from("tenant"), Value::from(i.tenant.as_str()));
    m.insert(Value::from("agent_id"), Value::from(i.agent_id.as_str()));
    m.insert(
        Value::from("call_chain"),
        Value::from(
            i.call_chain
                .iter()
                .map(|a| Value::from(a.as_str()))
                .collect::<Vec<_>>(),
        ),
    );
    m.insert(Value::from("tool_id"), Value::from(i.tool_id.as_str()));
    m.insert(Value::from("action"), Value::from(i.action.as_str()));
    m.insert(Value::from("params"), map_to_rego(&i.params));
    m.insert(Value::from("context"), map_to_rego(&i.context));
    Value::from(m)
}

/// regorus → serde_json (sanitized params).
fn from_rego(v: &Value) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

fn string(v: &Value, what: &str) -> Result<String, String> {
    v.as_string()
        .map(|s| s.to_string())
        .map_err(|_| format!("`{what}` is not a string"))
}

fn opt_string(v: &Value, what: &str) -> Result<Option<String>, String> {
    match v {
        Value::Null | Value::Undefined => Ok(None),
        _ => string(v, what).map(Some),
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Undefined => Ok(Vec::new()),
        _ => v
            .as_array()
            .map_err(|_| format!("`{what}` is not an array"))?
            .iter()
            .map(|x| string(x, what))
            .collect(),
    }
}

fn parse_decision(v: &Value) -> Result<Decision, String> {
    let kind_s = string(&v["decision"], "decision")?;
    let decision =
        DecisionKind::parse(&kind_s).ok_or_else(|| format!("unknown decision `{kind_s}`"))?;
    let mut reasons = Vec::new();
    for r in v["reasons"]
        .as_array()
        .map_err(|_| "`reasons` is not an array".to_owned())?
        .iter()
    {
        reasons.push(Reason {
            code: string(&r["code"], "reasons[].code")?,
            message: string(&r["message"], "reasons[].message")?,
            policy: opt_string(&r["policy"], "reasons[].policy")?,
            rule: opt_string(&r["rule"], "reasons[].rule")?,
        });
    }
    if reasons.is_empty() {
        return Err("no reasons".to_owned());
    }
    let params = if decision == DecisionKind::Sanitize {
        match from_rego(&v["params"])? {
            serde_json::Value::Object(m) => Some(m),
            _ => return Err("sanitize without object `params`".to_owned()),
        }
    } else {
        None
    };
    let o = &v["obligations"];
    let mut obligations = Obligations {
        log_mask: strings(&o["log_mask"], "obligations.log_mask")?,
        ..Obligations::default()
    };
    if !matches!(o["approval"], Value::Undefined) {
        obligations.approval = Some(ApprovalObligation {
            codes: strings(&o["approval"]["codes"], "obligations.approval.codes")?,
        });
    }
    // Matched, not `as_array()`: on an absent value that builds an error (and, with
    // RUST_BACKTRACE set, captures a backtrace) on every decision.
    if let Value::Array(budgets) = &o["budgets"] {
        for b in budgets.iter() {
            obligations.budgets.push(BudgetObligation {
                param: string(&b["param"], "budgets[].param")?,
                max: b["max"]
                    .as_f64()
                    .map_err(|_| "budgets[].max is not a number".to_owned())?,
                window_seconds: b["window_seconds"]
                    .as_u64()
                    .map_err(|_| "budgets[].window_seconds".to_owned())?,
                scope: string(&b["scope"], "budgets[].scope")?,
            });
        }
    }
    if let Value::Array(limits) = &o["rate_limits"] {
        for l in limits.iter() {
            obligations.rate_limits.push(RateLimitObligation {
                calls: l["calls"]
                    .as_u64()
                    .map_err(|_| "rate_limits[].calls".to_owned())?,
                window_seconds: l["window_seconds"]
                    .as_u64()
                    .map_err(|_| "rate_limits[].window_seconds".to_owned())?,
                scope: string(&l["scope"], "rate_limits[].scope")?,
            });
        }
    }
    Ok(Decision {
        decision,
        reasons,
        policy: opt_string(&v["policy"], "policy")?,
        rule: opt_string(&v["rule"], "rule")?,
        params,
        obligations,
        policy_version: None,
        bundle_digest: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    fn _assert_send_sync() {
        fn is<T: Send + Sync>() {}
        is::<Evaluator>();
    }

    fn evaluator(custom: Option<&str>) -> Evaluator {
        let mut files = BTreeMap::new();
        files.insert(
            "data.json".to_owned(),
            br#"{"aegis":{"policies":{}}}"#.to_vec(),
        );
        files.insert(
            "policy.rego".to_owned(),
            crate::policy::set::SHARED_REGO.as_bytes().to_vec(),
        );
        if let Some(rego) = custom {
            files.insert("custom/t/c.rego".to_owned(), rego.as_bytes().to_vec());
        }
        match Evaluator::from_files(&files, Provenance::default(), EvalLimits::default()) {
            Ok(e) => e,
            Err(e) => panic!("does not compile: {e}"),
        }
    }

    #[test]
    fn the_shared_logic_calls_no_machine_dependent_builtin() {
        assert!(evaluator(None).nondeterministic_builtins().is_empty());
    }

    #[test]
    fn a_custom_module_calling_rand_is_marked_nondeterministic() {
        let e = evaluator(Some(
            "package aegis.custom.c\nimport rego.v1\ndeny contains \"coin\" if rand.intn(\"x\", 2) == 1\n",
        ));
        assert_eq!(e.nondeterministic_builtins(), ["rand.intn".to_owned()]);
    }
}
