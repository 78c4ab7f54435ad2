//! The executor: one task per unfinished run, moving it one durable transition at a time.
//! Every transition re-reads the run inside its write, so Cancel (which only ever moves a
//! running run to compensating) and the executor never overwrite each other, and a crash
//! between any two writes leaves a record the next executor continues from:
//! - a step `Running` is (re-)sent with its key; `Succeeded`/`Failed` record the outcome;
//! - compensating, the newest step `Succeeded` or `Compensating` is undone next;
//! - the run ends when no step is left to run or to undo.
//!
//! The executor stops at shutdown without writing: the run stays active and resumes when
//! the domain starts again.
//!
//! This file holds the loop and the forward path (running steps); undoing them is
//! `compensate.rs`.

use std::time::Duration;

use aicore_proto::aicore::orchestration::v1::{Binding, Call, RunState, Step, StepState, Workflow};
use aicore_proto::internal::orchestration::RunRecord;
use aicore_proto::{CallOptions, Caller, Code, IdempotencyKey, MethodInfo, Status};
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, validate};
use bytes::Bytes;
use serde_json::Value;

use super::check::{duration, method_of};
use super::config::{DEFAULT_STEP_TIMEOUT, MAX_OUTPUT_BYTES, MAX_STEP_TIMEOUT, retries};
use super::records::{is_final, ms, output_key, read_run, version_key};
use super::{ACTIVE, OUTPUTS, Orchestration, RUNS, VERSIONS, json};

/// What the executor does after one transition.
pub(super) enum Next {
    /// Take the next transition now.
    Continue,
    /// Pause (a retry's backoff), then continue.
    Wait(Duration),
    /// The run is final (or gone).
    Done,
}

pub(super) const SUCCEEDED: i32 = StepState::Succeeded as i32;
pub(super) const COMPENSATING: i32 = StepState::Compensating as i32;

/// The run's context for bindings: its input and the outputs of steps `0..upto`.
pub(super) fn context(r: &RunRecord, outputs: &[Option<Value>], upto: usize) -> Value {
    let input = serde_json::from_str::<Value>(&r.input_json)
        .unwrap_or_else(|_| Value::Object(Default::default()));
    let steps: serde_json::Map<String, Value> = r
        .steps
        .iter()
        .zip(outputs)
        .take(upto)
        .filter_map(|(s, o)| {
            let o = o.as_ref()?;
            Some((s.step_id.clone(), serde_json::json!({ "output": o })))
        })
        .collect();
    serde_json::json!({ "input": input, "steps": steps })
}

/// The encoded request of `call` with its bindings applied from `context`.
pub(super) fn build(
    call: &Call,
    context: &Value,
    field: &str,
) -> Result<(&'static MethodInfo, Bytes), Status> {
    let method = method_of(call, field)?;
    let mut request = json::from_struct(&call.input.clone().unwrap_or_default());
    for (i, Binding { target, source }) in call.bindings.iter().enumerate() {
        let f = format!("{field}.bindings[{i}]");
        let from_tokens = json::parse_pointer(source, &format!("{f}.source"))?;
        let to_tokens = json::parse_pointer(target, &format!("{f}.target"))?;
        let value = json::get(context, &from_tokens).ok_or_else(|| {
            Status::invalid(
                &format!("{f}.source"),
                format!("`{source}` finds nothing in the run's context"),
            )
        })?;
        json::set(&mut request, &to_tokens, value.clone())
            .map_err(|m| Status::invalid(&format!("{f}.target"), m))?;
    }
    Ok((method, json::request(method, request, field)?))
}

/// The idempotency key of step `step_id`'s call (`undo`: of its compensation).
pub(super) fn step_key(run_id: &str, step_id: &str, undo: bool) -> String {
    if undo {
        format!("orch.{run_id}.{step_id}.undo")
    } else {
        format!("orch.{run_id}.{step_id}")
    }
}

/// Records `e` on step `i` (`id`) and, if the run is still running, starts compensating
/// with it as the run's error.
fn blame(r: &mut RunRecord, i: usize, id: &str, e: &Status) {
    let s = &mut r.steps[i];
    (s.error_code, s.error_message) = (e.code as i32, e.message.clone());
    if r.state == RunState::Running as i32 {
        r.state = RunState::Compensating as i32;
        (r.error_code, r.error_message) = (e.code as i32, format!("step `{id}`: {}", e.message));
    }
}

/// `body` carrying `key` as its idempotency key (Define refused requests setting one).
pub(super) fn keyed(method: &MethodInfo, body: Bytes, key: Option<&str>) -> Bytes {
    match key {
        Some(k) => method.with_idempotency_key(body, k),
        None => body,
    }
}

pub(super) fn now_ms(ctx: &Ctx) -> i64 {
    ms(ctx.clock.now())
}

/// A step's attempt timeout as its workflow gives it (Define checked it).
pub(super) fn step_timeout(step: &Step) -> Duration {
    duration(
        &step.timeout,
        DEFAULT_STEP_TIMEOUT,
        MAX_STEP_TIMEOUT,
        "timeout",
    )
    .unwrap_or(DEFAULT_STEP_TIMEOUT)
}

/// The timeout of an attempt at `now`: the step's, cut to the time left before the run's
/// deadline (`deadline_ms`); the step's own once past it.
fn attempt_timeout(step: &Step, deadline_ms: i64, now: i64) -> Duration {
    let t = step_timeout(step);
    let left = deadline_ms.saturating_sub(now);
    if left > 0 {
        t.min(Duration::from_millis(left as u64))
    } else {
        t
    }
}
impl Orchestration {
    /// Makes sure run `run_id` has an executor (one at most).
    pub(super) fn execute(&self, run_id: String) {
        {
            let mut executing = self
                .inner
                .executing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !executing.insert(run_id.clone()) {
                return;
            }
        }
        let this = self.clone();
        self.ctx().spawn(async move {
            this.drive(&run_id).await;
            this.inner
                .executing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
        });
    }

    /// Runs `run_id` to a final state, or until shutdown.
    async fn drive(&self, run_id: &str) {
        let mut workflow: Option<Workflow> = None;
        loop {
            if self.ctx().shutdown.is_cancelled() {
                return;
            }
            let pause = match self.advance(run_id, &mut workflow).await {
                Ok(Next::Continue) => continue,
                Ok(Next::Done) => return,
                Ok(Next::Wait(d)) => d,
                Err(e) => {
                    // A store that refuses writes (disk full) or a record that does not
                    // decode: try again later rather than lose the run.
                    tracing::warn!(run_id, error = %e, "orchestration run cannot advance; retrying");
                    Duration::from_millis(self.inner.config.max_backoff_ms)
                }
            };
            if !self.pause(pause).await {
                return;
            }
        }
    }

    /// Sleeps `d`; false when shutdown came first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.ctx().shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let c = &self.inner.config;
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            c.retry_backoff_ms
                .saturating_mul(factor)
                .min(c.max_backoff_ms),
        )
    }

    /// Applies `f` to the stored run inside one write (nothing is written when `f` says
    /// false: the run moved on meanwhile). True when written.
    pub(super) async fn update<F>(&self, run_id: &str, f: F) -> Result<bool, Status>
    where
        F: FnOnce(&mut RunRecord, &mut Tx<'_>) -> bool + Send + 'static,
    {
        let id = run_id.to_string();
        self.ctx()
            .store
            .write(move |tx| {
                let mut r = read_run(tx, &id)?;
                if !f(&mut r, tx) {
                    return Ok(false);
                }
                tx.put_msg(RUNS, id.as_bytes(), &r);
                Ok(true)
            })
            .await
    }

    /// One transition of the run.
    async fn advance(&self, run_id: &str, cache: &mut Option<Workflow>) -> Result<Next, Status> {
        let Some(r) = self
            .ctx()
            .store
            .get_msg::<RunRecord>(RUNS, run_id.as_bytes())?
        else {
            tracing::warn!(run_id, "an active run has no record");
            return Ok(Next::Done);
        };
        if is_final(r.state) {
            return Ok(Next::Done);
        }
        if cache.is_none() {
            let key = version_key(&r.workflow_id, r.workflow_version);
            *cache = Some(
                self.ctx()
                    .store
                    .get_msg::<Workflow>(VERSIONS, &key)?
                    .ok_or_else(|| {
                        Status::internal(format!("run {run_id}: its workflow version is gone"))
                    })?,
            );
        }
        let w = cache
            .as_ref()
            .ok_or_else(|| Status::internal("no workflow"))?;
        if w.steps.len() != r.steps.len() {
            return Err(Status::internal(format!(
                "run {run_id} has {} steps, its workflow {}",
                r.steps.len(),
                w.steps.len()
            )));
        }
        match RunState::try_from(r.state) {
            Ok(RunState::Running) => self.forward(r, w).await,
            Ok(RunState::Compensating) => self.backward(r, w).await,
            _ => Err(Status::internal(format!(
                "run {run_id} is in state {}",
                r.state
            ))),
        }
    }

    /// The identity and bounds of one call of the run.
    pub(super) fn options(r: &RunRecord, timeout: Duration, key: Option<String>) -> CallOptions {
        CallOptions {
            timeout: Some(timeout),
            caller: r.has_caller.then(|| Caller {
                account_id: r.caller_account.clone(),
                roles: r.caller_roles.clone(),
            }),
            request_id: Some(r.run_id.clone()),
            idempotency_key: key.map_or(IdempotencyKey::AsIs, IdempotencyKey::Use),
            ..Default::default()
        }
    }

    /// Sends one call; `None` when shutdown came first (nothing is recorded then).
    pub(super) async fn send(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: CallOptions,
    ) -> Option<Result<Bytes, Status>> {
        let limit = options.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT);
        let call = self.inner.invoker.call(method, body, options);
        tokio::select! {
            _ = self.ctx().shutdown.cancelled() => None,
            // Bounded here too, so an invoker that ignores its timeout cannot hold the run.
            r = tokio::time::timeout(limit + Duration::from_secs(1), call) => Some(r.unwrap_or_else(|_| {
                Err(Status::new(Code::DeadlineExceeded, format!("no answer within {} ms", limit.as_millis())))
            })),
        }
    }

    /// Runs the next step of a running run.
    async fn forward(&self, r: RunRecord, w: &Workflow) -> Result<Next, Status> {
        let run_id = r.run_id.clone();
        let Some(i) = r.steps.iter().position(|s| s.state != SUCCEEDED) else {
            return self.succeed(&run_id).await;
        };
        let step = &w.steps[i];
        let now = now_ms(self.ctx());
        let in_flight = r.steps[i].state == StepState::Running as i32;
        if !in_flight && now >= r.deadline_ms {
            return self.pass_deadline(&run_id, step.step_id.clone()).await;
        }
        let attempt = r.steps[i].attempts + 1;
        if !self.mark_running(&run_id, i, attempt, now).await? {
            return Ok(Next::Continue);
        }
        let timeout = attempt_timeout(step, r.deadline_ms, now);
        // Past the run's deadline a step is only re-sent to learn its outcome: no retries.
        let past = now >= r.deadline_ms;
        let Some(result) = self.call_step(&r, step, i, timeout).await? else {
            return Ok(Next::Done);
        };
        match result {
            Ok((method, reply)) => self.record_success(&run_id, i, step, method, reply).await?,
            Err(e) if e.is_retryable() && attempt <= retries(step) && !past => {
                tracing::debug!(run_id, step = step.step_id, attempt, error = %e, "step attempt failed; retrying");
                return self.retry_later(&run_id, i, attempt, e).await;
            }
            Err(e) => self.record_failure(&run_id, i, step, e).await?,
        }
        Ok(Next::Continue)
    }

    /// Ends a running run whose steps all succeeded.
    async fn succeed(&self, run_id: &str) -> Result<Next, Status> {
        let now = now_ms(self.ctx());
        self.update(run_id, move |r, tx| {
            if r.state != RunState::Running as i32 {
                return false;
            }
            r.state = RunState::Succeeded as i32;
            r.finished_ms = now;
            tx.delete(ACTIVE, r.run_id.as_bytes());
            true
        })
        .await?;
        Ok(Next::Continue)
    }

    /// Starts compensating a running run that passed its deadline before step `id`.
    async fn pass_deadline(&self, run_id: &str, id: String) -> Result<Next, Status> {
        self.update(run_id, move |r, _| {
            if r.state != RunState::Running as i32 {
                return false;
            }
            r.state = RunState::Compensating as i32;
            r.error_code = Code::DeadlineExceeded as i32;
            r.error_message = format!("the run passed its deadline before step `{id}`");
            true
        })
        .await?;
        Ok(Next::Continue)
    }

    /// Marks step `i` running for attempt `attempt` (started at `now` if it had not
    /// started); false when the run or the step moved on meanwhile.
    async fn mark_running(
        &self,
        run_id: &str,
        i: usize,
        attempt: u32,
        now: i64,
    ) -> Result<bool, Status> {
        self.update(run_id, move |r, _| {
            let s = &mut r.steps[i];
            if r.state != RunState::Running as i32
                || !(s.state == StepState::Pending as i32 || s.state == StepState::Running as i32)
            {
                return false;
            }
            s.state = StepState::Running as i32;
            s.attempts = attempt;
            if s.started_ms == 0 {
                s.started_ms = now;
            }
            true
        })
        .await
    }

    /// Records the retryable error `e` of attempt `attempt` on step `i` (its call, or its
    /// compensation's) and waits the attempt's backoff before the next.
    pub(super) async fn retry_later(
        &self,
        run_id: &str,
        i: usize,
        attempt: u32,
        e: Status,
    ) -> Result<Next, Status> {
        self.update(run_id, move |r, _| {
            let s = &mut r.steps[i];
            (s.error_code, s.error_message) = (e.code as i32, e.message);
            true
        })
        .await?;
        Ok(Next::Wait(self.backoff(attempt)))
    }

    /// One attempt of step `i`'s call, with the run's context up to it; `None` when
    /// shutdown came first.
    pub(super) async fn call_step(
        &self,
        r: &RunRecord,
        step: &Step,
        i: usize,
        timeout: Duration,
    ) -> Result<Option<Result<(&'static MethodInfo, Bytes), Status>>, Status> {
        let outputs = self.outputs(r)?;
        let field = format!("steps.{}.call", step.step_id);
        let call = step.call.clone().unwrap_or_default();
        let (method, body) = match build(&call, &context(r, &outputs, i), &field) {
            Ok(b) => b,
            Err(e) => return Ok(Some(Err(e))),
        };
        let key = (method.idempotency_key != 0).then(|| step_key(&r.run_id, &step.step_id, false));
        let body = keyed(method, body, key.as_deref());
        let options = Self::options(r, timeout, key);
        Ok(self
            .send(method, body, options)
            .await
            .map(|result| result.map(|reply| (method, reply))))
    }

    /// Records that step `i`'s call took effect. The step succeeded whatever happens to its
    /// output, so a reply that cannot be kept (undecodable, too large) still has the step
    /// compensated, with the run compensating.
    pub(super) async fn record_success(
        &self,
        run_id: &str,
        i: usize,
        step: &Step,
        method: &'static MethodInfo,
        reply: Bytes,
    ) -> Result<(), Status> {
        let id = step.step_id.clone();
        let kept = json::response(method, reply).and_then(|v| {
            let text = v.to_string();
            validate::max_bytes(
                text.len(),
                MAX_OUTPUT_BYTES,
                &format!("steps.{id}.output"),
                "step output",
            )?;
            Ok(text)
        });
        tracing::debug!(run_id, step = id, "step succeeded");
        let now = now_ms(self.ctx());
        self.update(run_id, move |r, tx| {
            let s = &mut r.steps[i];
            if s.state != StepState::Running as i32 {
                return false;
            }
            s.state = SUCCEEDED;
            s.finished_ms = now;
            match kept {
                Ok(text) => {
                    (s.error_code, s.error_message) = (0, String::new());
                    tx.put(OUTPUTS, &output_key(&r.run_id, i), text.into_bytes());
                }
                Err(e) => blame(r, i, &id, &e),
            }
            true
        })
        .await?;
        Ok(())
    }

    /// Records that step `i` failed for good; a running run starts compensating.
    pub(super) async fn record_failure(
        &self,
        run_id: &str,
        i: usize,
        step: &Step,
        e: Status,
    ) -> Result<(), Status> {
        let id = step.step_id.clone();
        tracing::info!(run_id, step = id, error = %e, "step failed; compensating");
        let now = now_ms(self.ctx());
        self.update(run_id, move |r, _| {
            let s = &mut r.steps[i];
            if s.state != StepState::Running as i32 {
                return false;
            }
            s.state = StepState::Failed as i32;
            s.finished_ms = now;
            blame(r, i, &id, &e);
            true
        })
        .await?;
        Ok(())
    }
}
