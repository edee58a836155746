//! Answers to [`QueryRequest`]s, read from the store. Pure reads: the query service calls these
//! from any thread while the fold writes.

use crate::checks;
use crate::records::{ActorRecord, DraftRecord, LiveSet, TenantRecord, keys};
use crate::store::{Family, Store, StoreError};
use aegis_core::events::Role;
use aegis_core::ids::{ActorId, ChangeId, TenantId};
use aegis_core::keys::PublicKey;
use aegis_core::query::{
    ActorView, ChangeCandidate, ChangeState, ChangeView, EventOutcome, EventRecord, IssuerView,
    KeyView, LiveDocument, LivePolicyView, LiveView, QueryAnswer, QueryError, QueryReply,
    QueryRequest, ReadinessView, TenantStatus, VersionView,
};
use aegis_core::readiness::verdict;
use std::collections::BTreeMap;

/// The store plus what the queries need from the configuration.
#[derive(Debug)]
pub struct Queries<'a> {
    pub store: &'a Store,
    pub root_admins: &'a BTreeMap<ActorId, Vec<PublicKey>>,
}

impl Queries<'_> {
    /// Answers one request; never panics, every failure is a [`QueryError`].
    pub fn answer(&self, tenant: &TenantId, request: &QueryRequest) -> QueryReply {
        match self.try_answer(tenant, request) {
            Ok(a) => QueryReply::Ok(a),
            Err(e) => QueryReply::Error(e),
        }
    }

    fn try_answer(
        &self,
        tenant: &TenantId,
        request: &QueryRequest,
    ) -> Result<QueryAnswer, QueryError> {
        let internal = |e: StoreError| QueryError::internal(e.to_string());
        Ok(match request {
            QueryRequest::Status => QueryAnswer::Status(self.status(tenant).map_err(internal)?),
            QueryRequest::Changes { state } => {
                let mut changes = self.changes(tenant).map_err(internal)?;
                if let Some(s) = state {
                    changes.retain(|c| c.state == *s);
                }
                changes.sort_by(|a, b| b.proposed.at.cmp(&a.proposed.at));
                QueryAnswer::Changes(changes)
            }
            QueryRequest::Change { change_id } => {
                let c: Option<ChangeView> = self
                    .store
                    .get(Family::State, &keys::change(tenant, change_id))
                    .map_err(internal)?;
                let tr = self.tenant(tenant).map_err(internal)?;
                match c {
                    Some(c) => QueryAnswer::Change(Box::new(derive_state(c, &tr))),
                    None => {
                        return Err(QueryError::not_found(format!(
                            "no change {change_id} in tenant `{tenant}`"
                        )));
                    }
                }
            }
            QueryRequest::History => QueryAnswer::History(self.history(tenant).map_err(internal)?),
            QueryRequest::Events {
                from_position,
                limit,
            } => {
                let from = from_position.unwrap_or(1).max(1);
                let limit = limit.unwrap_or(1000).clamp(1, 1000) as usize;
                let mut out = Vec::new();
                let start = keys::event(tenant, from);
                let prefix = keys::events(tenant);
                self.store
                    .scan_from(
                        Family::State,
                        start.as_bytes(),
                        prefix.as_bytes(),
                        |k, v| {
                            if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
                                return Ok(false);
                            }
                            let r: EventRecord =
                                serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                                    key: String::from_utf8_lossy(k).into_owned(),
                                    reason: e.to_string(),
                                })?;
                            out.push(r);
                            Ok(true)
                        },
                    )
                    .map_err(internal)?;
                QueryAnswer::Events(out)
            }
            QueryRequest::Outcome { event_id } => {
                let position: Option<u64> = self
                    .store
                    .get(Family::State, &keys::event_id(tenant, event_id.as_str()))
                    .map_err(internal)?;
                let record: Option<EventRecord> = match position {
                    Some(p) => self
                        .store
                        .get(Family::State, &keys::event(tenant, p))
                        .map_err(internal)?,
                    None => None,
                };
                QueryAnswer::Outcome(match record {
                    Some(record) => EventOutcome::Applied {
                        record: Box::new(record),
                    },
                    None => EventOutcome::Pending {
                        applied_seq: self.store.applied_seq().map_err(internal)?,
                    },
                })
            }
            QueryRequest::Actors => QueryAnswer::Actors(self.actors(tenant).map_err(internal)?),
            QueryRequest::Drafts => {
                let drafts: Vec<(String, DraftRecord)> = self
                    .store
                    .scan(Family::State, &keys::drafts(tenant))
                    .map_err(internal)?;
                // The revision an edit must be based on is the subject's last sequence, which
                // also moves on rejected edits (that is what the fold and NATS compare).
                let mut views = Vec::with_capacity(drafts.len());
                for (_, d) in drafts {
                    let mut view = d.view;
                    if let Some(seq) = self
                        .store
                        .get::<u64>(Family::State, &keys::subject_seq(tenant, &view.name))
                        .map_err(internal)?
                    {
                        view.revision = seq;
                    }
                    views.push(view);
                }
                QueryAnswer::Drafts(views)
            }
            QueryRequest::Live => QueryAnswer::Live(self.live(tenant).map_err(internal)?),
            QueryRequest::Issuers => QueryAnswer::Issuers(self.issuers(tenant).map_err(internal)?),
            QueryRequest::Candidate { change_id } => {
                QueryAnswer::Candidate(Box::new(self.candidate(tenant, change_id)?))
            }
        })
    }

    fn tenant(&self, tenant: &TenantId) -> Result<TenantRecord, StoreError> {
        Ok(self
            .store
            .get(Family::State, &keys::tenant(tenant))?
            .unwrap_or_else(|| TenantRecord::new(tenant.clone())))
    }

    pub fn status(&self, tenant: &TenantId) -> Result<TenantStatus, StoreError> {
        let t = self.tenant(tenant)?;
        let history = self.history(tenant)?;
        let changes = self.changes(tenant)?;
        let live = self.live(tenant)?;
        let readiness = self.readiness(&t)?;
        Ok(TenantStatus {
            tenant: tenant.clone(),
            frozen: t.frozen.clone(),
            latest: history.last().cloned(),
            open_changes: changes
                .iter()
                .filter(|c| matches!(c.state, ChangeState::Open | ChangeState::Approved))
                .count() as u64,
            required_approvals: t.required_approvals,
            bundle_expiry_days: t.bundle_expiry_days,
            shadow_report_required: t.shadow_report_required,
            live_policies: live
                .policies
                .iter()
                .map(|p| LivePolicyView {
                    name: p.name.clone(),
                    revision: p.revision,
                    risk_tier: p.risk_tier,
                })
                .collect(),
            chain_position: t.chain_position,
            chain_head: t.chain_head.clone(),
            applied_seq: self.store.applied_seq()?,
            stable: t.stable(),
            candidate: t.candidate,
            blocked_agents: t.blocked_agents,
            blocked_tools: t.blocked_tools,
            data_plane_frozen: t.data_plane_frozen,
            rollout_readiness: t.rollout_readiness,
            readiness,
        })
    }

    /// The candidate's readiness, judged as of now.
    fn readiness(&self, t: &TenantRecord) -> Result<Option<ReadinessView>, StoreError> {
        let Some(candidate) = &t.candidate else {
            return Ok(None);
        };
        let Some(version) = self
            .store
            .get::<VersionView>(Family::State, &keys::version(&t.tenant, candidate.version))?
        else {
            return Ok(None);
        };
        let record = t
            .readiness
            .clone()
            .filter(|r| r.version == candidate.version)
            .unwrap_or_default();
        let now = time::OffsetDateTime::now_utc();
        let since = aegis_core::events::envelope::parse_time(&version.created_at).unwrap_or(now);
        let counts = record
            .measurement
            .as_ref()
            .map(|m| m.counts())
            .unwrap_or_default();
        Ok(Some(ReadinessView {
            version: candidate.version,
            since: version.created_at,
            thresholds: t.rollout_readiness,
            verdict: verdict(&t.rollout_readiness, since, now, &counts),
            measurement: record.measurement,
            approvals: record.approvals,
            as_of: aegis_core::events::envelope::format_time(now).unwrap_or_default(),
        }))
    }

    pub fn changes(&self, tenant: &TenantId) -> Result<Vec<ChangeView>, StoreError> {
        let t = self.tenant(tenant)?;
        Ok(self
            .store
            .scan::<ChangeView>(Family::State, &keys::changes(tenant))?
            .into_iter()
            .map(|(_, c)| derive_state(c, &t))
            .collect())
    }

    pub fn history(&self, tenant: &TenantId) -> Result<Vec<VersionView>, StoreError> {
        let mut versions: Vec<VersionView> = self
            .store
            .scan::<VersionView>(Family::State, &keys::versions(tenant))?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        for v in &mut versions {
            v.announced = self
                .store
                .get_raw(Family::Local, keys::announced(tenant, v.version).as_bytes())?
                .is_some();
        }
        Ok(versions)
    }

    pub fn live(&self, tenant: &TenantId) -> Result<LiveView, StoreError> {
        Ok(LiveView {
            policies: self
                .store
                .scan::<LiveDocument>(Family::State, &keys::live_policies(tenant))?
                .into_iter()
                .map(|(_, p)| p)
                .collect(),
            vectors: self
                .store
                .scan(Family::State, &keys::live_vectors_all(tenant))?
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
        })
    }

    /// The candidate policy set of an open change: today's live set with the change applied,
    /// exactly as the checks apply it.
    pub fn candidate(
        &self,
        tenant: &TenantId,
        change_id: &ChangeId,
    ) -> Result<ChangeCandidate, QueryError> {
        let internal = |e: StoreError| QueryError::internal(e.to_string());
        let change: ChangeView = self
            .store
            .get(Family::State, &keys::change(tenant, change_id))
            .map_err(internal)?
            .ok_or_else(|| {
                QueryError::not_found(format!("no change {change_id} in tenant `{tenant}`"))
            })?;
        if matches!(change.state, ChangeState::Rejected | ChangeState::Published) {
            return Err(QueryError::bad_request(format!(
                "change {change_id} is {}: only an open change has a candidate to replay",
                change.state
            )));
        }
        let live = LiveSet::from_view(self.live(tenant).map_err(internal)?);
        let candidate = checks::apply_change(&live, &change.proposal(), 0).to_view();
        Ok(ChangeCandidate {
            change_id: change.change_id,
            policies: candidate.policies,
            vectors: candidate.vectors,
            checked_digest: change.checks.and_then(|c| c.candidate_digest),
        })
    }

    /// The tenant's token issuer keys (revoked ones too), by key id.
    pub fn issuers(&self, tenant: &TenantId) -> Result<Vec<IssuerView>, StoreError> {
        Ok(self
            .store
            .scan::<IssuerView>(Family::State, &keys::issuers(tenant))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn actors(&self, tenant: &TenantId) -> Result<Vec<ActorView>, StoreError> {
        let mut out: Vec<ActorView> = self
            .root_admins
            .iter()
            .map(|(actor, keys)| ActorView {
                actor: actor.clone(),
                display_name: Some("root admin".into()),
                roles: vec![Role::Admin],
                keys: keys
                    .iter()
                    .map(|k| KeyView {
                        key_id: k.key_id().clone(),
                        public_key: k.to_base64(),
                        revoked: false,
                    })
                    .collect(),
                root: true,
            })
            .collect();
        for (_, a) in self
            .store
            .scan::<ActorRecord>(Family::State, &keys::actors(tenant))?
        {
            out.push(ActorView {
                actor: a.actor,
                display_name: a.display_name,
                roles: a.roles.into_iter().collect(),
                keys: a.keys,
                root: false,
            });
        }
        Ok(out)
    }
}

/// Fills in what depends on the tenant's current settings: required approvals and whether an
/// open change is approved (checks passed, enough approvals).
pub fn derive_state(mut c: ChangeView, t: &TenantRecord) -> ChangeView {
    c.required_approvals = t.required_approvals.for_tier(c.risk_tier);
    c.shadow_report_required = t
        .shadow_report_required
        .is_some_and(|tier| c.risk_tier >= tier);
    if c.state == ChangeState::Open
        && c.checks.as_ref().is_some_and(|k| k.passed)
        && c.approvals.len() as u32 >= c.required_approvals
    {
        c.state = ChangeState::Approved;
    }
    c
}
