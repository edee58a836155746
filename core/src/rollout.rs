//! Who gets the candidate version during a partial rollout.
//!
//! An agent is in the cohort when it is named, or when its bucket — a number 0..100 from a
//! SHA-256 of its id — is below the percentage. The bucket depends on the agent id alone, so
//! an agent stays in (or out) as the percentage grows, and every gateway places it the same
//! way without talking to any other.

use crate::ids::AgentId;
use sha2::{Digest as _, Sha256};

/// The agent's bucket, 0..100: the first 8 bytes of SHA-256(`aegis-rollout:` + agent id),
/// big-endian, modulo 100.
pub fn bucket(agent: &AgentId) -> u8 {
    let digest = Sha256::new()
        .chain_update(b"aegis-rollout:")
        .chain_update(agent.as_str().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(digest.iter()) {
        *to = *from;
    }
    (u64::from_be_bytes(first) % 100) as u8
}

/// Whether `agent` gets the candidate: named in `agents`, or its [`bucket`] is below `percent`.
pub fn in_cohort(agent: &AgentId, agents: &[AgentId], percent: Option<u8>) -> bool {
    agents.contains(agent) || percent.is_some_and(|p| bucket(agent) < p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn agent(i: usize) -> AgentId {
        AgentId::new(format!("agent-{i}")).unwrap()
    }

    #[test]
    fn named_agents_are_in_and_zero_percent_takes_no_one_else() {
        let a = agent(1);
        assert!(in_cohort(&a, std::slice::from_ref(&a), None));
        assert!(!in_cohort(&agent(2), std::slice::from_ref(&a), None));
        assert!(!in_cohort(&agent(2), &[], Some(0)));
        assert!(in_cohort(&agent(2), &[], Some(100)));
    }

    #[test]
    fn percent_takes_about_that_share_and_grows_monotonically() {
        let agents: Vec<AgentId> = (0..10_000).map(agent).collect();
        let share = |p| agents.iter().filter(|a| in_cohort(a, &[], Some(p))).count();
        let ten = share(10);
        assert!((800..1200).contains(&ten), "{ten}");
        for a in &agents {
            if in_cohort(a, &[], Some(10)) {
                assert!(
                    in_cohort(a, &[], Some(50)),
                    "{a} left the cohort as it grew"
                );
            }
        }
    }
}
