//! orchestration: sagas across domains. A workflow is an ordered list of steps, each a call
//! to a domain RPC plus the call that undoes it; a run executes the steps in order and,
//! when one fails (or the run is cancelled, or passes its deadline), runs the
//! compensations of the steps that completed, newest first.
//!
//! Step inputs: a literal JSON request plus bindings, each copying the value at a JSON
//! pointer of the run's context (`/input/…`, `/steps/<id>/output/…`) to a JSON pointer of
//! the request ([`json`] holds the whole language). Define checks every step against the
//! contract in the descriptor pool: the RPC exists and is unary, the literal request fits
//! its message, the bindings' targets are fields of it and their sources name earlier
//! steps.
//!
//! Exactly-once steps: a run is persisted step by step (`Running` before the call, the
//! outcome after it, each a durable write) and every call carries an idempotency key made
//! of the run and the step (`orch.<run_id>.<step_id>`, `….undo` for the compensation).
//! After a crash the executor re-sends a step that was in flight with the same key, so
//! the domain answers with its first reply if it had applied it, and applies it now if it
//! had not: either way once. That holds only for calls whose domain honours a key, so
//! Define accepts read-only RPCs and RPCs whose request has an `idempotency_key`, nothing
//! else.
//!
//! Identity: steps run on the identity of the caller of Start (account and roles, kept in
//! the run record so a resumed run keeps it), the way body-broker-integration calls its
//! peers: each domain applies its own access rules, and a workflow can do nothing its
//! starter could not do directly. A trusted principal of the appliance (no caller) runs
//! steps as a trusted principal. The `domains` NATS principal may publish to `svc.>`, so
//! the calls are permitted by the server's account rules. A run is its starter's too:
//! Status, Cancel and ListRuns show a service only the runs it started; an admin or a
//! trusted principal sees every run.
//!
//! Deadlines: each attempt of a call is bounded by its step's `timeout`; the run by the
//! workflow's `run_timeout`, checked before each step starts and cutting each attempt to
//! the time left. A step in flight at a crash (or between retries) is re-sent once even
//! past the run's deadline, without further retries, so its outcome is known before
//! compensating. Compensations are bounded by their step's
//! timeout only. Unavailable and DeadlineExceeded are retried `max_retries` times with
//! exponential backoff (same key); any other error fails the step at once.
//!
//! Known limit: a step whose last attempt timed out (DeadlineExceeded after its retries)
//! may have been applied by its domain; it counts as failed and is not compensated. Its
//! key is `orch.<run_id>.<step_id>`, so an operator can find and settle it.
//!
//! Tables:
//! - `orchestration.workflows`: workflow id → latest [`Workflow`];
//! - `orchestration.versions`: workflow id, NUL, version (big endian) → that [`Workflow`]
//!   (runs read the version they started with);
//! - `orchestration.runs`: run id → [`RunRecord`];
//! - `orchestration.outputs`: run id, NUL, step index (big endian) → the step's response
//!   as JSON text, written with the step's success;
//! - `orchestration.active`: run id → empty, for runs not yet final; the executor resumes
//!   these when the domain starts;
//! - `orchestration.idempotency`: Start's idempotency records.
//!
//! This file holds the domain type and its handlers; beside it are `config` (the bounds),
//! `check` (Define's and the run RPCs' input checks), `records` (stored runs and keys),
//! `invoker` (how a step reaches its domain), `engine` and `compensate` (the executor)
//! and [`json`] (bindings and the JSON form of requests).

mod check;
mod compensate;
mod config;
mod engine;
mod invoker;
pub mod json;
mod records;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use aicore_proto::aicore::orchestration::v1::{
    CancelRequest, CancelResponse, DefineRequest, DefineResponse, ListRunsRequest,
    ListRunsResponse, OrchestrationHandler, RunState, StartRequest, StartResponse, StatusRequest,
    StatusResponse, StepState, Workflow,
};
use aicore_proto::internal::orchestration::{RunRecord, StepRecord};
use aicore_proto::{Code, Request, Status};
use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::{Ctx, paging, validate};
use prost::Message;
use serde_json::Value;

pub use config::OrchestrationConfig;
pub use invoker::{Invoker, OverNats};

use check::{check_run_id, check_workflow, duration};
use config::{
    DEFAULT_RUN_TIMEOUT, MAX_INPUT_BYTES, MAX_REASON_CHARS, MAX_RUN_TIMEOUT, MAX_WORKFLOW_ID,
};
use records::{is_final, ms, output_key, read_run, shown, version_key};

const WORKFLOWS: &str = "orchestration.workflows";
const VERSIONS: &str = "orchestration.versions";
const RUNS: &str = "orchestration.runs";
const OUTPUTS: &str = "orchestration.outputs";
const ACTIVE: &str = "orchestration.active";
const IDEMPOTENCY: Idempotency = Idempotency::new("orchestration.idempotency");
const LIST_TOKEN: u8 = b'R';

/// The domain. Cheap to clone: the executors hold it.
#[derive(Clone)]
pub struct Orchestration {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Ctx,
    config: OrchestrationConfig,
    invoker: Arc<dyn Invoker>,
    /// Runs with an executor now, so a run never has two.
    executing: Mutex<HashSet<String>>,
}

impl Orchestration {
    /// The domain over `invoker`; refuses an inconsistent configuration. Resume of
    /// unfinished runs is [`Orchestration::resume`].
    pub fn new(
        ctx: Ctx,
        config: OrchestrationConfig,
        invoker: Arc<dyn Invoker>,
    ) -> Result<Self, Status> {
        if config.retry_backoff_ms == 0 || config.max_backoff_ms < config.retry_backoff_ms {
            return Err(Status::new(
                Code::InvalidArgument,
                "[domains.orchestration] retry_backoff_ms must be positive and at most max_backoff_ms",
            ));
        }
        Ok(Orchestration {
            inner: Arc::new(Inner {
                ctx,
                config,
                invoker,
                executing: Mutex::new(HashSet::new()),
            }),
        })
    }

    fn ctx(&self) -> &Ctx {
        &self.inner.ctx
    }

    /// Starts an executor for every run that is not final (after a crash or a stop).
    pub fn resume(&self) -> Result<usize, Status> {
        let mut n = 0;
        let mut from = Vec::new();
        loop {
            let rows = self.ctx().store.scan(ACTIVE, b"", &from, 256)?;
            let Some((last, _)) = rows.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, _) in &rows {
                let run_id = String::from_utf8_lossy(k).into_owned();
                tracing::info!(run_id, "resuming an unfinished run");
                self.execute(run_id);
                n += 1;
            }
        }
        Ok(n)
    }

    /// A run and the outputs of its steps.
    fn load(&self, run_id: &str) -> Result<(RunRecord, Vec<Option<Value>>), Status> {
        let r = self
            .ctx()
            .store
            .get_msg::<RunRecord>(RUNS, run_id.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no run `{run_id}`")))?;
        let outputs = self.outputs(&r)?;
        Ok((r, outputs))
    }

    fn outputs(&self, r: &RunRecord) -> Result<Vec<Option<Value>>, Status> {
        (0..r.steps.len())
            .map(|i| {
                Ok(self
                    .ctx()
                    .store
                    .get(OUTPUTS, &output_key(&r.run_id, i))?
                    .and_then(|b| serde_json::from_slice(&b).ok()))
            })
            .collect()
    }
}

impl OrchestrationHandler for Orchestration {
    async fn define(&self, request: Request<DefineRequest>) -> Result<DefineResponse, Status> {
        let req = request.body;
        let mut w = req
            .workflow
            .ok_or_else(|| Status::invalid("workflow", "is required"))?;
        check_workflow(&w)?;
        w.updated_at = Some(self.ctx().now_ts());
        let expected = req.expected_version;
        let workflow = self
            .ctx()
            .store
            .write(move |tx| {
                let live = tx.get_msg::<Workflow>(WORKFLOWS, w.workflow_id.as_bytes())?;
                let version = live.as_ref().map_or(0, |l| l.version);
                let what = format!("workflow `{}`", w.workflow_id);
                validate::expected_version(expected, version, &what)?;
                w.version = version + 1;
                tx.put_msg(WORKFLOWS, w.workflow_id.as_bytes(), &w);
                tx.put_msg(VERSIONS, &version_key(&w.workflow_id, w.version), &w);
                Ok(w)
            })
            .await?;
        Ok(DefineResponse {
            workflow: Some(workflow),
        })
    }

    async fn start(&self, request: Request<StartRequest>) -> Result<StartResponse, Status> {
        let Request { body: req, meta } = request;
        validate::slug(&req.workflow_id, "workflow_id", MAX_WORKFLOW_ID)?;
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid("idempotency_key", "is required"));
        }
        let input = req.input.clone().unwrap_or_default();
        validate::max_bytes(input.encoded_len(), MAX_INPUT_BYTES, "input", "run input")?;
        let scope = meta
            .caller
            .as_ref()
            .map(|c| c.account_id.clone())
            .unwrap_or_default();
        let keyed = IDEMPOTENCY.prepare(self.ctx(), "start", &scope, &req)?;
        let run_id = aicore_runtime::new_id("run");
        let now = ms(self.ctx().clock.now());
        let caller = meta.caller.clone();
        let input_json = json::from_struct(&input).to_string();
        let workflow_id = req.workflow_id.clone();
        let response = keyed
            .write(move |tx| {
                let w = tx
                    .get_msg::<Workflow>(WORKFLOWS, workflow_id.as_bytes())?
                    .ok_or_else(|| {
                        Status::with_field(
                            Code::NotFound,
                            "workflow_id",
                            format!("no workflow `{workflow_id}`"),
                        )
                    })?;
                let run_timeout = duration(
                    &w.run_timeout,
                    DEFAULT_RUN_TIMEOUT,
                    MAX_RUN_TIMEOUT,
                    "run_timeout",
                )?;
                let record = RunRecord {
                    run_id: run_id.clone(),
                    workflow_id: w.workflow_id.clone(),
                    workflow_version: w.version,
                    state: RunState::Running as i32,
                    input_json,
                    steps: w
                        .steps
                        .iter()
                        .map(|s| StepRecord {
                            state: StepState::Pending as i32,
                            step_id: s.step_id.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    started_ms: now,
                    deadline_ms: now.saturating_add(run_timeout.as_millis() as i64),
                    has_caller: caller.is_some(),
                    caller_account: caller
                        .as_ref()
                        .map(|c| c.account_id.clone())
                        .unwrap_or_default(),
                    caller_roles: caller.map(|c| c.roles).unwrap_or_default(),
                    ..Default::default()
                };
                tx.put_msg(RUNS, run_id.as_bytes(), &record);
                tx.put(ACTIVE, run_id.as_bytes(), Vec::new());
                Ok(StartResponse {
                    run: Some(shown(&record, &[])),
                })
            })
            .await?;
        if let Some(run) = &response.run {
            // A replay of a finished run starts nothing: the executor sees it final.
            self.execute(run.run_id.clone());
        }
        Ok(response)
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<StatusResponse, Status> {
        check_run_id(&request.body.run_id)?;
        let (r, outputs) = self.load(&request.body.run_id)?;
        authorize_run(&request.meta, &r)?;
        Ok(StatusResponse {
            run: Some(shown(&r, &outputs)),
        })
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<CancelResponse, Status> {
        let meta = request.meta;
        let req = request.body;
        check_run_id(&req.run_id)?;
        if req.reason.chars().count() > MAX_REASON_CHARS || req.reason.chars().any(char::is_control)
        {
            return Err(Status::invalid(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters without control characters"),
            ));
        }
        let run_id = req.run_id.clone();
        let record = self
            .ctx()
            .store
            .write(move |tx| {
                let mut r = read_run(tx, &run_id)?;
                authorize_run(&meta, &r)?;
                if r.state == RunState::Running as i32 {
                    r.cancelled = true;
                    r.state = RunState::Compensating as i32;
                    r.error_code = Code::FailedPrecondition as i32;
                    r.error_message = if req.reason.is_empty() {
                        "cancelled".into()
                    } else {
                        format!("cancelled: {}", req.reason)
                    };
                    tx.put_msg(RUNS, run_id.as_bytes(), &r);
                }
                Ok(r)
            })
            .await?;
        if !is_final(record.state) {
            self.execute(record.run_id.clone());
        }
        let outputs = self.outputs(&record)?;
        Ok(CancelResponse {
            run: Some(shown(&record, &outputs)),
        })
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<ListRunsResponse, Status> {
        let owner = run_owner_filter(&request.meta);
        let req = request.body;
        if !req.workflow_id.is_empty() {
            validate::slug(&req.workflow_id, "workflow_id", MAX_WORKFLOW_ID)?;
        }
        let state = RunState::try_from(req.state)
            .map_err(|_| Status::invalid("state", format!("{} is not a run state", req.state)))?;
        let limit = paging::page_size(
            req.page_size,
            self.inner.config.default_page_size,
            self.inner.config.max_page_size,
        )?;
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx().store,
                table: RUNS,
                prefix: b"",
                kind: LIST_TOKEN,
                limit,
                max_scan: 10_000,
            },
            &req.page_token,
        )?;
        while let Some((_, value)) = page.next_row()? {
            let r: RunRecord = aicore_runtime::store::decode(RUNS, value)?;
            if (!req.workflow_id.is_empty() && r.workflow_id != req.workflow_id)
                || (state != RunState::Unspecified && r.state != state as i32)
                || owner.is_some_and(|o| !r.has_caller || r.caller_account != o)
            {
                continue;
            }
            page.keep(shown(&r, &[]));
        }
        let (runs, next_page_token) = page.finish();
        Ok(ListRunsResponse {
            runs,
            next_page_token,
        })
    }
}

/// A run is its starter's: a caller sees and cancels only the runs it started, unless it
/// is an admin or a trusted principal of the appliance (no caller). Refused runs answer
/// PermissionDenied, as every owner check does.
fn authorize_run(meta: &aicore_proto::Metadata, r: &RunRecord) -> Result<(), Status> {
    if meta.caller.is_some() && !r.has_caller {
        // Started by a trusted principal: only admins and trusted callers may see it.
        return meta.authorize_roles(&["admin"]);
    }
    meta.authorize_owner(&r.caller_account, &["admin"])
}

/// The account whose runs ListRuns may show (`None`: every run, for an admin or a trusted
/// principal).
fn run_owner_filter(meta: &aicore_proto::Metadata) -> Option<&str> {
    match &meta.caller {
        Some(c) if !c.has_role("admin") => Some(c.account_id.as_str()),
        _ => None,
    }
}

impl aicore_runtime::Domain for Orchestration {
    type Config = OrchestrationConfig;

    fn build(
        ctx: &Ctx,
        config: &OrchestrationConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let invoker = Arc::new(OverNats { ctx: ctx.clone() });
        let domain = Orchestration::new(ctx.clone(), config.clone(), invoker)?;
        domain.resume()?;
        Ok(Arc::new(
            aicore_proto::aicore::orchestration::v1::OrchestrationServer(Arc::new(domain)),
        ))
    }
}

#[cfg(test)]
mod tests;
