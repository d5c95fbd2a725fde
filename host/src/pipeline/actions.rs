//! Deciding a WorkOS Actions request: the handler's verdict when it gives one in
//! time, the operator's fallback otherwise, and the no-handler verdict when no
//! handler decides actions. Every decision is recorded.
//!
//! Owns: the deadline race, the rule that a handler's writes commit only with
//! the verdict that was sent, and the decision record. Must not: sign or
//! serialize the response (see [`crate::workos::action`]), or parse HTTP.
//!
//! Decisions are recorded by one background task in batches, one transaction
//! per batch, gathered over [`RECORD_LINGER`]: a recorder that committed each
//! decision on its own needed one fsync per action, and on SQLite its queue at
//! the write gate starved webhook acknowledgements and the worker when the
//! disk was slow. A decision is listed at most about that long after it was
//! sent; one that was sent but not yet recorded when the process dies is lost
//! from the list (the verdict itself was already answered).
//!
//! After answering, the blocking thread that ran a handler makes the next
//! call's store and instance ([`crate::runtime::Runtime::ready_next_action`]),
//! so a request does not wait for that.
//!
//! The handler runs on a blocking thread inside a transaction. The request waits
//! for it at most the actions deadline; past it, the fallback is sent at once and
//! the call (which its own epoch deadline stops soon after) is rolled back. One
//! atomic claim settles the race: either the handler's verdict is committed and
//! sent, or the fallback is sent and the handler's writes are rolled back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::clock;
use crate::deploy::{Deployment, Live};
use crate::runtime::{
    GuestAction, GuestAuthentication, GuestClient, GuestMembership, GuestOrganization, GuestRegistration,
    GuestUserData, GuestVerdict, InvocationLimits, Spent,
};
use crate::settings::ConfiguredVerdict;
use crate::store::actions::NewDecision;
use crate::store::exec::{SyncDb, SyncTx};
use crate::store::{Store, tenants as stored_tenants};
use crate::tenants::{Tenant, Tenants};
use crate::workos::action::{ActionRequest, Client, Verdict};

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Handler,
    Fallback,
    NoHandler,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Handler => "handler",
            Source::Fallback => "fallback",
            Source::NoHandler => "no_handler",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    pub source: Source,
    /// Why the fallback was used.
    pub error: Option<String>,
    /// The handler's log lines (JSON array), when it ran.
    pub logs: Option<String>,
    pub latency: Duration,
}

const PENDING: u8 = 0;
const HANDLER_WON: u8 = 1;
const ABANDONED: u8 = 2;

/// The recorder waits this long after a decision for others to share its
/// commit. Each commit changes the database, so it also makes every reading
/// connection's page cache stale: at a steady rate of Actions, a commit per
/// decision had every handler read its pages again, and cost a sync each.
const RECORD_LINGER: Duration = Duration::from_millis(200);
/// At most this many decisions are recorded in one transaction.
const RECORD_BATCH: usize = 256;
/// A batch the database refused is tried this many times in all.
const RECORD_ATTEMPTS: u32 = 3;

pub struct Decider {
    db: Arc<SyncDb>,
    tenants: Arc<Tenants>,
    /// To the recorder. Unbounded so a decision never waits for the disk; the
    /// recorder drains it a batch per commit, far faster than requests fill it.
    records: mpsc::UnboundedSender<NewDecision>,
}

impl Decider {
    /// Also starts the recorder, which ends (after writing what is queued) once
    /// the decider is dropped.
    pub fn new(store: Store, db: Arc<SyncDb>, tenants: Arc<Tenants>) -> (Decider, JoinHandle<()>) {
        let (records, queue) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_batches(store, queue));
        (Decider { db, tenants, records }, recorder)
    }

    /// Decides `request` for `tenant` under its settings, and records the
    /// decision (in the background).
    pub async fn decide(&self, tenant: &Arc<Tenant>, request: &ActionRequest) -> Decision {
        let started = Instant::now();
        let decision = match self.tenants.deployment_within(tenant, tenant.actions.deadline).await {
            Err(reason) => self.fallback(tenant, reason, None),
            Ok(deployment) => match deployment.current().filter(|live| live.module.handles_actions()) {
                None => Decision {
                    verdict: configured(&tenant.actions.no_handler),
                    source: Source::NoHandler,
                    error: None,
                    logs: None,
                    latency: Duration::ZERO,
                },
                Some(live) => match self.tenants.action_permit(tenant) {
                    Some(permit) => self.run_handler(deployment, live, tenant, request, started, permit).await,
                    None => self.fallback(
                        tenant,
                        format!(
                            "the tenant already has {} Actions handler calls running (its max_concurrent_actions)",
                            tenant.actions.max_concurrent
                        ),
                        None,
                    ),
                },
            },
        };
        let decision = Decision { latency: started.elapsed(), ..decision };
        self.record(tenant, request, &decision);
        decision
    }

    /// Runs `live` (the version live when the request arrived) to its end, even
    /// if another version goes live meanwhile.
    async fn run_handler(
        &self,
        deployment: Arc<Deployment>,
        live: Live,
        tenant: &Arc<Tenant>,
        request: &ActionRequest,
        started: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Decision {
        let claim = Arc::new(AtomicU8::new(PENDING));
        let (db, task_tenant, guest, task_claim) =
            (self.db.clone(), tenant.clone(), guest_action(request), claim.clone());
        // The version's own limits over the tenant's; its Actions deadline bounds the race below too.
        let limits = live.limits_over(&tenant.limits);
        let deadline = limits.action_deadline;
        // The result comes back on its own channel, so the blocking thread can
        // make the next call's instance after answering (see below).
        let (done, mut result) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let (outcome, spent) = call_handler(&deployment, &db, &live, &task_tenant, &limits, &guest, &task_claim);
            // The verdict goes out first; the rest is off the request's path.
            let _ = done.send(outcome);
            drop(permit);
            drop(spent);
            deployment.runtime().ready_next_action(&live.module, &task_tenant.slug, &limits);
        });
        // The deadline counts from the request's arrival (opening the tenant's versions included).
        let joined = match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), &mut result).await {
            Ok(joined) => joined,
            Err(_) => {
                if claim.compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return self.fallback(tenant, format!("no verdict within {} ms", deadline.as_millis()), None);
                }
                // The handler claimed the decision a moment ago; its commit is under way.
                result.await
            }
        };
        match joined {
            Ok(Ok((verdict, logs))) => Decision {
                verdict: match verdict {
                    GuestVerdict::Allow => Verdict::Allow,
                    GuestVerdict::Deny(message) => Verdict::Deny(message),
                },
                source: Source::Handler,
                error: None,
                logs: Some(logs),
                latency: Duration::ZERO,
            },
            Ok(Err((reason, logs))) => self.fallback(tenant, reason, logs),
            Err(_) => self.fallback(tenant, "the handler's thread ended without an answer".into(), None),
        }
    }

    fn fallback(&self, tenant: &Tenant, reason: String, logs: Option<String>) -> Decision {
        warn!(tenant = %tenant.slug, reason = %reason, "action decided by the fallback verdict");
        Decision {
            verdict: configured(&tenant.actions.fallback),
            source: Source::Fallback,
            error: Some(reason),
            logs,
            latency: Duration::ZERO,
        }
    }

    fn record(&self, tenant: &Tenant, request: &ActionRequest, d: &Decision) {
        let record = NewDecision {
            tenant_id: tenant.slug.clone(),
            tenant_created_at: tenant.created_at,
            action_id: request.id().to_string(),
            kind: request.kind().as_str(),
            verdict: d.verdict.as_str(),
            message: d.verdict.message().map(str::to_string),
            source: d.source.as_str(),
            latency_us: i64::try_from(d.latency.as_micros()).unwrap_or(i64::MAX),
            error: d.error.clone(),
            logs: d.logs.clone(),
            decided_at: clock::now_ms(),
        };
        if let Err(lost) = self.records.send(record) {
            error!(action_id = %lost.0.action_id, "could not record an action decision: the recorder has stopped");
        }
    }
}

/// The recorder: writes queued decisions a batch per transaction until the
/// decider is gone and the queue is empty.
async fn record_batches(store: Store, mut queue: mpsc::UnboundedReceiver<NewDecision>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while queue.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        // Gather what comes in the next moment into the same commit.
        tokio::time::sleep(RECORD_LINGER).await;
        while batch.len() < RECORD_BATCH
            && let Ok(decision) = queue.try_recv()
        {
            batch.push(decision);
        }
        let mut attempt = 1;
        loop {
            match store.record_decisions(&batch).await {
                Ok(()) => break,
                Err(e) if attempt < RECORD_ATTEMPTS => {
                    warn!(error = %e, decisions = batch.len(), attempt, "could not record action decisions; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let ids: Vec<&str> = batch.iter().map(|d| d.action_id.as_str()).collect();
                    error!(error = %e, action_ids = ?ids, "could not record action decisions; giving up on them");
                    break;
                }
            }
        }
        batch.clear();
    }
}

/// A handler's verdict and log lines (JSON), or why there is none and the log
/// lines if it ran.
type Called = Result<(GuestVerdict, String), (String, Option<String>)>;

/// One handler call in its own transaction. Only the side that claims the
/// decision first acts: the handler's writes commit only if its verdict is
/// the one sent. Also gives back the spent store, for the caller to drop when
/// the verdict is on its way.
fn call_handler(
    deployment: &Deployment,
    db: &SyncDb,
    live: &Live,
    tenant: &Tenant,
    limits: &InvocationLimits,
    guest: &GuestAction,
    claim: &AtomicU8,
) -> (Called, Option<Spent>) {
    // Held until the commit, taken before the write gate (see `deploy`).
    let maintained = deployment.writing();
    let tx = match db.begin_read_mostly() {
        Ok(tx) => tx,
        Err(e) => return (Err((format!("the host could not open a transaction: {e}"), None)), None),
    };
    let mut invoked = deployment.runtime().handle_action(&live.module, tx, &tenant.slug, limits, &maintained, guest);
    let spent = invoked.spent.take();
    let logs = serde_json::to_string(&invoked.logs).unwrap_or_else(|_| "[]".into());
    let verdict = match invoked.result {
        Ok(verdict) => verdict,
        Err(e) => return (Err((e.to_string(), Some(logs))), spent),
    };
    if claim.compare_exchange(PENDING, HANDLER_WON, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return (Err(("the verdict came after the deadline".into(), Some(logs))), spent);
    }
    if let Some(tx) = invoked.tx
        && invoked.wrote
        && let Err(e) = commit_if_tenant_exists(tx, tenant)
    {
        return (Err((format!("the handler's writes could not be committed: {e}"), Some(logs))), spent);
    }
    (Ok((verdict, logs)), spent)
}

/// Commits a handler's writes, unless its tenant was deleted while it ran:
/// they would outlive the tenant, or go to a new tenant of the same slug
/// (told apart by its `created_at`). The check holds the tenant until the
/// commit, so a deletion under way waits for it and then removes these writes
/// with the rest (Postgres; on SQLite this transaction holds the write gate,
/// which deletions take too).
fn commit_if_tenant_exists(mut tx: SyncTx, tenant: &Tenant) -> Result<(), String> {
    match stored_tenants::hold(&mut tx, &tenant.slug) {
        Ok(Some(created_at)) if created_at == tenant.created_at => tx.commit().map_err(|e| e.to_string()),
        Ok(_) => Err("the tenant was deleted while its handler ran".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn configured(v: &ConfiguredVerdict) -> Verdict {
    match v {
        ConfiguredVerdict::Allow => Verdict::Allow,
        ConfiguredVerdict::Deny(message) => Verdict::Deny(message.clone()),
    }
}

fn guest_client(c: &Client) -> GuestClient {
    GuestClient {
        ip_address: c.ip_address.clone(),
        user_agent: c.user_agent.clone(),
        device_fingerprint: c.device_fingerprint.clone(),
        authentication_method: c.authentication_method.clone(),
    }
}

/// The request as the WIT `actions` records.
fn guest_action(request: &ActionRequest) -> GuestAction {
    match request {
        ActionRequest::Authentication(ctx, raw) => GuestAction::Authenticate(Box::new(GuestAuthentication {
            id: ctx.id.clone(),
            user: super::guest_user(ctx.user.clone()),
            organization: ctx
                .organization
                .as_ref()
                .map(|o| GuestOrganization { id: o.id.clone(), name: o.name.clone() }),
            membership: ctx.organization_membership.as_ref().map(|m| GuestMembership {
                id: m.id.clone(),
                organization_id: m.organization_id.clone(),
                role: m.role.as_ref().map(|r| r.slug.clone()),
                status: m.status.clone(),
            }),
            client: guest_client(&ctx.client),
            raw: raw.clone(),
        })),
        ActionRequest::UserRegistration(ctx, raw) => GuestAction::Register(Box::new(GuestRegistration {
            id: ctx.id.clone(),
            user_data: GuestUserData {
                email: ctx.user_data.email.clone(),
                first_name: ctx.user_data.first_name.clone(),
                last_name: ctx.user_data.last_name.clone(),
                name: ctx.user_data.name.clone(),
            },
            invitation_id: ctx.invitation.as_ref().map(|i| i.id.clone()),
            client: guest_client(&ctx.client),
            raw: raw.clone(),
        })),
    }
}
