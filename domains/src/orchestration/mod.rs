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
//! the calls are permitted by the server's account rules.
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

mod engine;
pub mod json;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aicore_proto::aicore::orchestration::v1::{
    Binding, Call, CancelRequest, CancelResponse, DefineRequest, DefineResponse, ListRunsRequest,
    ListRunsResponse, OrchestrationHandler, Run, RunState, StartRequest, StartResponse,
    StatusRequest, StatusResponse, Step, StepRun, StepState, Workflow,
};
use aicore_proto::internal::orchestration::{RunRecord, StepRecord};
use aicore_proto::{CallOptions, Code, MethodInfo, Request, Status};
use aicore_runtime::idempotency::Idempotency;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};
use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use serde_json::Value;

pub use engine::OverNats;

const WORKFLOWS: &str = "orchestration.workflows";
const VERSIONS: &str = "orchestration.versions";
const RUNS: &str = "orchestration.runs";
const OUTPUTS: &str = "orchestration.outputs";
const ACTIVE: &str = "orchestration.active";
const IDEMPOTENCY: Idempotency = Idempotency::new("orchestration.idempotency");

/// Longest workflow id.
const MAX_WORKFLOW_ID: usize = 64;
/// Longest step id (the key `orch.<run_id>.<step_id>.undo` stays within 128 characters).
const MAX_STEP_ID: usize = 40;
/// Most steps in a workflow.
const MAX_STEPS: usize = 50;
/// Most bindings per call.
const MAX_BINDINGS: usize = 32;
/// Largest literal request of a call, encoded.
const MAX_CALL_INPUT_BYTES: usize = 8 * 1024;
/// Largest workflow, encoded.
const MAX_WORKFLOW_BYTES: usize = 256 * 1024;
/// Longest description.
const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Largest run input, encoded.
const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Largest step output kept, as JSON text; a larger one fails the run (see engine).
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Longest cancel reason.
const MAX_REASON_CHARS: usize = 256;
/// Longest run id accepted (server-made ids are 36 characters).
const MAX_RUN_ID: usize = 64;
/// Step attempt timeout when the workflow gives none, and the largest allowed.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Run timeout when the workflow gives none, and the largest allowed (below the domains'
/// shortest idempotency record life, a day).
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Retries when the step gives none (an unset field reads 0: see `retries`), and the most.
const MAX_RETRIES: u32 = 10;
const LIST_TOKEN: u8 = b'R';

/// Configuration of orchestration (`[domains.orchestration]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestrationConfig {
    /// Pause before the first retry of a step, in milliseconds; doubled per retry.
    pub retry_backoff_ms: u64,
    /// Longest pause between retries, in milliseconds.
    pub max_backoff_ms: u64,
    /// Page size of ListRuns when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListRuns.
    pub max_page_size: u32,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        OrchestrationConfig {
            retry_backoff_ms: 200,
            max_backoff_ms: 5000,
            default_page_size: 50,
            max_page_size: 200,
        }
    }
}

/// Sends one encoded request to a domain RPC: the domains over NATS in production
/// ([`OverNats`]), a stand-in in unit tests.
pub trait Invoker: Send + Sync + 'static {
    /// Calls `method` with `body` and `options` (the run's caller, the attempt's timeout).
    fn call(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Bytes, Status>>;
}

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

fn ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// A protobuf duration as a std one; InvalidArgument naming `field` unless it is positive,
/// well-formed and at most `max`.
fn duration(
    d: &Option<prost_types::Duration>,
    default: Duration,
    max: Duration,
    field: &str,
) -> Result<Duration, Status> {
    let Some(d) = d else { return Ok(default) };
    let ok =
        d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos) && (d.seconds, d.nanos) != (0, 0);
    let value = ok.then(|| Duration::new(d.seconds as u64, d.nanos as u32));
    match value {
        Some(v) if v <= max => Ok(v),
        _ => Err(Status::invalid(
            field,
            format!("must be positive and at most {} s", max.as_secs()),
        )),
    }
}

/// The retries of a step: its `max_retries`, and 2 when unset (0 means unset in proto3;
/// a step that must not be retried is rare for calls that carry their key).
fn retries(step: &Step) -> u32 {
    if step.max_retries == 0 {
        2
    } else {
        step.max_retries
    }
}

/// The RPC a call names; InvalidArgument naming `field` when it is not one a step may call.
fn method_of(call: &Call, field: &str) -> Result<&'static MethodInfo, Status> {
    let domain = call.domain.replace('-', "_");
    if domain == "orchestration" {
        return Err(Status::invalid(
            &format!("{field}.domain"),
            "a workflow may not call orchestration itself",
        ));
    }
    let service = aicore_proto::find_service(&domain).ok_or_else(|| {
        Status::invalid(
            &format!("{field}.domain"),
            format!(
                "`{}` is not a domain",
                call.domain.chars().take(64).collect::<String>()
            ),
        )
    })?;
    let (_, method) = service.method(&call.rpc).ok_or_else(|| {
        Status::invalid(
            &format!("{field}.rpc"),
            format!(
                "`{}` is not an RPC of {}",
                call.rpc.chars().take(64).collect::<String>(),
                service.domain
            ),
        )
    })?;
    if method.server_streaming {
        return Err(Status::invalid(
            &format!("{field}.rpc"),
            "is a streaming RPC; a step calls unary RPCs",
        ));
    }
    if !method.policy.read_only && method.idempotency_key == 0 {
        return Err(Status::invalid(
            &format!("{field}.rpc"),
            "writes without an idempotency_key cannot be made exactly once after a crash; \
             a step calls read-only RPCs or RPCs whose request has an idempotency_key",
        ));
    }
    Ok(method)
}

/// Checks one call of step `index` (`own` for a compensation, which may read its own
/// step's output): its RPC, its literal request and its bindings.
fn check_call(call: &Call, field: &str, earlier: &[&str], own: Option<&str>) -> Result<(), Status> {
    let method = method_of(call, field)?;
    let literal = call.input.clone().unwrap_or_default();
    validate::max_bytes(
        literal.encoded_len(),
        MAX_CALL_INPUT_BYTES,
        &format!("{field}.input"),
        "per-call input",
    )?;
    if let Some(k) = literal
        .fields
        .keys()
        .find(|k| json::is_key_field(method, k))
    {
        return Err(Status::invalid(
            &format!("{field}.input.{k}"),
            "is set by the run (from the run and step ids); a workflow may not set it",
        ));
    }
    json::request(
        method,
        json::from_struct(&literal),
        &format!("{field}.input"),
    )?;
    if call.bindings.len() > MAX_BINDINGS {
        return Err(Status::invalid(
            &format!("{field}.bindings"),
            format!("at most {MAX_BINDINGS} bindings per call"),
        ));
    }
    for (i, b) in call.bindings.iter().enumerate() {
        let f = format!("{field}.bindings[{i}]");
        let to = json::parse_pointer(&b.target, &format!("{f}.target"))?;
        let first = &to[0];
        if json::is_key_field(method, first) {
            return Err(Status::invalid(
                &format!("{f}.target"),
                "the idempotency key is set by the run; a binding may not set it",
            ));
        }
        if !json::has_field(method, first) {
            return Err(Status::invalid(
                &format!("{f}.target"),
                format!("`{first}` is not a field of {}", method.input),
            ));
        }
        let from = json::parse_pointer(&b.source, &format!("{f}.source"))?;
        let ok = match from.as_slice() {
            [input, ..] if input == "input" => true,
            [steps, id, output, ..] if steps == "steps" && output == "output" => {
                earlier.contains(&id.as_str()) || own == Some(id.as_str())
            }
            _ => false,
        };
        if !ok {
            return Err(Status::invalid(
                &format!("{f}.source"),
                "must start with /input or /steps/<an earlier step's id>/output",
            ));
        }
    }
    Ok(())
}

/// Checks a workflow as Define receives it.
fn check_workflow(w: &Workflow) -> Result<(), Status> {
    validate::slug(&w.workflow_id, "workflow.workflow_id", MAX_WORKFLOW_ID)?;
    if w.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Status::invalid(
            "workflow.description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    validate::max_bytes(
        w.encoded_len(),
        MAX_WORKFLOW_BYTES,
        "workflow",
        "per-workflow",
    )?;
    if w.steps.is_empty() || w.steps.len() > MAX_STEPS {
        return Err(Status::invalid(
            "workflow.steps",
            format!("must hold 1 to {MAX_STEPS} steps"),
        ));
    }
    duration(
        &w.run_timeout,
        DEFAULT_RUN_TIMEOUT,
        MAX_RUN_TIMEOUT,
        "workflow.run_timeout",
    )?;
    let mut ids: Vec<&str> = Vec::with_capacity(w.steps.len());
    for (i, s) in w.steps.iter().enumerate() {
        let f = format!("workflow.steps[{i}]");
        let id_ok = !s.step_id.is_empty()
            && s.step_id.len() <= MAX_STEP_ID
            && s.step_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !id_ok {
            return Err(Status::invalid(
                &format!("{f}.step_id"),
                format!("must be 1 to {MAX_STEP_ID} characters of [a-z0-9_]"),
            ));
        }
        if ids.contains(&s.step_id.as_str()) {
            return Err(Status::invalid(
                &format!("{f}.step_id"),
                format!("`{}` names an earlier step too", s.step_id),
            ));
        }
        let call = s
            .call
            .as_ref()
            .ok_or_else(|| Status::invalid(&format!("{f}.call"), "is required"))?;
        check_call(call, &format!("{f}.call"), &ids, None)?;
        if let Some(c) = &s.compensation {
            check_call(c, &format!("{f}.compensation"), &ids, Some(&s.step_id))?;
        }
        duration(
            &s.timeout,
            DEFAULT_STEP_TIMEOUT,
            MAX_STEP_TIMEOUT,
            &format!("{f}.timeout"),
        )?;
        if s.max_retries > MAX_RETRIES {
            return Err(Status::invalid(
                &format!("{f}.max_retries"),
                format!("at most {MAX_RETRIES}"),
            ));
        }
        ids.push(&s.step_id);
    }
    Ok(())
}

fn version_key(workflow_id: &str, version: u64) -> Vec<u8> {
    let mut k = workflow_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn output_key(run_id: &str, index: usize) -> Vec<u8> {
    let mut k = run_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

fn check_run_id(run_id: &str) -> Result<(), Status> {
    if run_id.is_empty()
        || run_id.len() > MAX_RUN_ID
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Status::invalid(
            "run_id",
            format!("must be 1 to {MAX_RUN_ID} characters of [A-Za-z0-9_]"),
        ));
    }
    Ok(())
}

/// Whether a run in state `s` is over.
fn is_final(s: i32) -> bool {
    matches!(
        RunState::try_from(s),
        Ok(RunState::Succeeded | RunState::Compensated | RunState::Cancelled | RunState::Failed)
    )
}

fn error_of(code: i32, message: &str) -> Option<aicore_proto::aicore::common::v1::Error> {
    (code != 0).then(|| aicore_proto::aicore::common::v1::Error {
        code,
        message: message.to_string(),
        ..Default::default()
    })
}

/// A stored run as the contract shows it; `outputs` by step index (absent when not read).
fn shown(r: &RunRecord, outputs: &[Option<Value>]) -> Run {
    Run {
        run_id: r.run_id.clone(),
        workflow_id: r.workflow_id.clone(),
        workflow_version: r.workflow_version,
        state: r.state,
        input: serde_json::from_str::<Value>(&r.input_json)
            .ok()
            .map(|v| json::to_struct(&v)),
        steps: r
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRun {
                step_id: s.step_id.clone(),
                state: s.state,
                attempts: s.attempts,
                output: outputs.get(i).and_then(Option::as_ref).map(json::to_struct),
                error: error_of(s.error_code, &s.error_message),
                started_at: ts(s.started_ms),
                finished_at: ts(s.finished_ms),
            })
            .collect(),
        error: error_of(r.error_code, &r.error_message),
        started_at: ts(r.started_ms),
        finished_at: ts(r.finished_ms),
    }
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

fn read_run(tx: &mut Tx<'_>, run_id: &str) -> Result<RunRecord, Status> {
    tx.get_msg::<RunRecord>(RUNS, run_id.as_bytes())?
        .ok_or_else(|| Status::not_found(format!("no run `{run_id}`")))
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
                if let Some(e) = expected
                    && e != version
                {
                    return Err(Status::conflict(format!(
                        "workflow `{}` is at version {version}, not {e}",
                        w.workflow_id
                    )));
                }
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
        Ok(StatusResponse {
            run: Some(shown(&r, &outputs)),
        })
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<CancelResponse, Status> {
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
