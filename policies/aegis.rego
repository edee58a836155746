# Aegis shared decision logic.
#
# Evaluated as `data.aegis.decide` against the compiled policy index in data.json
# (data.aegis.policies[tenant][agent_id]), which `aegisctl bundle build` produces from the
# policy documents. Every path that is not explicitly allowed ends in deny: a call no rule
# covers yields reason `no_policy`.
#
# Input:  {tenant, agent_id, call_chain: [origin, ..., direct caller], tool_id, action,
#          params: {...}, context: {...}}
# Output: {decision, reasons: [{code, message, policy, rule}], policy, rule, params?,
#          obligations: {approval?, budgets?, rate_limits?, log_mask?}}
#
# Written for Rego v1 (OPA >= 1.0 and regorus). No time, randomness or network builtins:
# a decision depends only on input and data, so the replayer can reproduce it.
package aegis

import rego.v1

agent := data.aegis.policies[input.tenant][input.agent_id]

tool := agent.tools[input.tool_id]

# Specific actions win over the tool's "*" rule.
rule_id := tool[input.action]

rule_id := tool["*"] if not tool[input.action]

rule := agent.rules[rule_id]

policy_name := agent.policy

decide := covered if {
	rule
} else := {
	"decision": "deny",
	"reasons": [{
		"code": "no_policy",
		"message": sprintf(
			"no policy covers agent %v calling tool %v with action %v in tenant %v (default deny)",
			[input.agent_id, input.tool_id, input.action, input.tenant],
		),
		"policy": null,
		"rule": null,
	}],
	"policy": null,
	"rule": null,
	"obligations": {"log_mask": known_log_mask},
}

# An uncovered call of a known agent still honours the agent's decision-log masking.
default known_log_mask := []

known_log_mask := agent.log_mask

reason(code, message) := {"code": code, "message": message, "policy": policy_name, "rule": rule_id}

# ---- caller constraints over the chain --------------------------------------------------------
# rule.callers is the policy-level and rule-level constraints merged at compile time; it is
# absent when there are none.

chain := object.get(input, "call_chain", [])

caller_violation contains reason("forbidden_caller", sprintf("%v appears in the call chain and is never allowed to drive this call", [name])) if {
	some name in chain
	name in rule.callers.never
}

caller_violation contains reason("caller_not_allowed", sprintf("direct caller %v is not among the allowed callers %v", [direct, allowed])) if {
	allowed := rule.callers.allowed_direct
	count(chain) > 0
	direct := chain[count(chain) - 1]
	not direct in allowed
}

caller_violation contains reason("chain_too_deep", sprintf("call chain has %v callers, at most %v allowed", [count(chain), rule.callers.max_depth])) if {
	count(chain) > rule.callers.max_depth
}

caller_violation contains reason("chain_too_shallow", sprintf("call chain has %v callers, at least %v required", [count(chain), rule.callers.min_depth])) if {
	count(chain) < rule.callers.min_depth
}

# ---- conditions on params and context ---------------------------------------------------------
# Each check is one operator on one value; c.path starts with "params" or "context".

violation contains {"effect": c.effect, "reason": reason(c.code, msg)} if {
	some c in rule.checks
	val := object.get(input, c.path, null)
	not holds(c, val)
	msg := violation_message(c, val)
}

violation_message(c, null) := c.missing

violation_message(c, v) := c.message if v != null

holds(c, v) if {
	c.op == "lte"
	is_number(v)
	v <= c.value
}

holds(c, v) if {
	c.op == "lt"
	is_number(v)
	v < c.value
}

holds(c, v) if {
	c.op == "gte"
	is_number(v)
	v >= c.value
}

holds(c, v) if {
	c.op == "gt"
	is_number(v)
	v > c.value
}

holds(c, v) if {
	c.op == "eq"
	v == c.value
}

holds(c, v) if {
	c.op == "one_of"
	not is_array(v)
	v in c.value
}

holds(c, v) if {
	c.op == "one_of"
	is_array(v)
	every e in v {
		e in c.value
	}
}

holds(c, v) if {
	c.op == "none_of"
	v != null
	not is_array(v)
	not v in c.value
}

holds(c, v) if {
	c.op == "none_of"
	is_array(v)
	every e in v {
		not e in c.value
	}
}

holds(c, v) if {
	c.op == "regex"
	is_string(v)
	regex.match(c.value, v)
}

holds(c, v) if {
	c.op == "prefix"
	is_string(v)
	startswith(v, c.value)
}

# ---- custom Rego escape hatch -----------------------------------------------------------------
# A policy's custom module lives in package aegis.custom.<name> and may define the sets
# `deny` and `approval_needed` of reason objects {code, message} or plain strings.

custom_reason(r) := reason(r.code, r.message) if is_object(r)

custom_reason(r) := reason("custom_policy", r) if is_string(r)

violation contains {"effect": "deny", "reason": custom_reason(r)} if {
	some r in data.aegis.custom[agent.custom].deny
}

violation contains {"effect": "approval_needed", "reason": custom_reason(r)} if {
	some r in data.aegis.custom[agent.custom].approval_needed
}

deny_reasons := array.concat(
	[r | some r in caller_violation],
	[v.reason | some v in violation; v.effect == "deny"],
)

approval_reasons := [v.reason | some v in violation; v.effect == "approval_needed"]

# ---- sanitize ---------------------------------------------------------------------------------
# Drops, then redactions, then masks in order, on top-level parameters.

kept_params := object.remove(input.params, array.concat(rule.sanitize.drop, rule.sanitize.redact))

# Key membership, not `input.params[k]`: a parameter whose value is false is present too.
redacted_params := object.union(kept_params, {k: "[REDACTED]" | some k in rule.sanitize.redact; k in object.keys(input.params)})

sanitized := {k: mask_value(k, v) | some k, v in redacted_params}

mask_value(k, v) := v if not is_string(v)

mask_value(k, v) := v if k in rule.sanitize.redact

mask_value(k, v) := apply_masks(v, [m | some m in rule.sanitize.mask; mask_applies(m, k)]) if {
	is_string(v)
	not k in rule.sanitize.redact
}

mask_applies(m, _) if count(m.params) == 0

mask_applies(m, k) if k in m.params

# Rego has no fold: masks are applied in order by an unrolled chain. Validation caps a rule
# at 8 mask steps, matching the depth here.
apply_masks(s, ms) := s8 if {
	s1 := mask_at(s, ms, 0)
	s2 := mask_at(s1, ms, 1)
	s3 := mask_at(s2, ms, 2)
	s4 := mask_at(s3, ms, 3)
	s5 := mask_at(s4, ms, 4)
	s6 := mask_at(s5, ms, 5)
	s7 := mask_at(s6, ms, 6)
	s8 := mask_at(s7, ms, 7)
}

mask_at(s, ms, i) := regex.replace(s, ms[i].pattern, ms[i].replacement) if {
	i < count(ms)
} else := s

# ---- the decision -----------------------------------------------------------------------------
# rule.allowed is the precomputed allow answer (reasons, obligations: budgets, rate limits,
# log mask); only what depends on the input is computed here.

covered := {
	"decision": "deny",
	"reasons": deny_reasons,
	"policy": policy_name,
	"rule": rule_id,
	"obligations": {"log_mask": rule.allowed.obligations.log_mask},
} if {
	count(deny_reasons) > 0
} else := {
	"decision": "approval_needed",
	"reasons": approval_reasons,
	"policy": policy_name,
	"rule": rule_id,
	"obligations": {
		"log_mask": rule.allowed.obligations.log_mask,
		"approval": {"codes": [r.code | some r in approval_reasons]},
	},
} if {
	count(approval_reasons) > 0
} else := object.union(rule.sanitized, {"params": sanitized}) if {
	rule.sanitize
	sanitized != input.params
} else := rule.allowed
