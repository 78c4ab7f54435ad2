//! The executor's backward path: a compensating run first settles a step whose outcome is
//! unknown (re-sent once with its key, so it is compensated if and only if it took
//! effect), then undoes its completed steps newest first, each compensation a durable
//! transition with its own key (`orch.<run_id>.<step_id>.undo`) and retries, and ends the
//! run (Compensated, Cancelled, or Failed when an undo failed) when none is left.

use aicore_proto::Status;
use aicore_proto::aicore::orchestration::v1::{Call, RunState, Step, StepState, Workflow};
use aicore_proto::internal::orchestration::RunRecord;

use super::config::retries;
use super::engine::{
    COMPENSATING, Next, SUCCEEDED, build, context, keyed, now_ms, step_key, step_timeout,
};
use super::{ACTIVE, Orchestration};

impl Orchestration {
    /// Undoes the newest completed step of a compensating run, or ends the run.
    pub(super) async fn backward(&self, r: RunRecord, w: &Workflow) -> Result<Next, Status> {
        // A step whose outcome is unknown (in flight at a crash, or cancelled between
        // retries after a timeout) is sent once more with its key first: the domain
        // answers with its first reply if it applied it, so it is compensated if and only
        // if it took effect.
        if let Some(i) = r
            .steps
            .iter()
            .position(|s| s.state == StepState::Running as i32)
        {
            return self.settle(&r, &w.steps[i], i).await;
        }
        let Some(j) = r
            .steps
            .iter()
            .rposition(|s| s.state == SUCCEEDED || s.state == COMPENSATING)
        else {
            return self.end_compensation(&r.run_id).await;
        };
        let step = &w.steps[j];
        let Some(undo) = step.compensation.clone() else {
            return self.nothing_to_undo(&r.run_id, j).await;
        };
        self.undo(&r, step, j, &undo).await
    }

    /// Sends step `i`, whose outcome is unknown, once more and records its outcome.
    async fn settle(&self, r: &RunRecord, step: &Step, i: usize) -> Result<Next, Status> {
        let run_id = &r.run_id;
        let attempt = r.steps[i].attempts + 1;
        let marked = self
            .update(run_id, move |r, _| {
                let s = &mut r.steps[i];
                if s.state != StepState::Running as i32 {
                    return false;
                }
                s.attempts = attempt;
                true
            })
            .await?;
        if !marked {
            return Ok(Next::Continue);
        }
        match self.call_step(r, step, i, step_timeout(step)).await? {
            None => return Ok(Next::Done),
            Some(Ok((method, reply))) => {
                self.record_success(run_id, i, step, method, reply).await?
            }
            Some(Err(e)) => self.record_failure(run_id, i, step, e).await?,
        }
        Ok(Next::Continue)
    }

    /// Ends a compensating run with nothing left to undo: steps never run are skipped;
    /// the run failed if an undo failed, else it is cancelled or compensated.
    async fn end_compensation(&self, run_id: &str) -> Result<Next, Status> {
        let now = now_ms(self.ctx());
        self.update(run_id, move |r, tx| {
            if r.state != RunState::Compensating as i32 {
                return false;
            }
            for s in &mut r.steps {
                if s.state == StepState::Pending as i32 {
                    s.state = StepState::Skipped as i32;
                }
            }
            r.state = if r.undo_failed {
                RunState::Failed
            } else if r.cancelled {
                RunState::Cancelled
            } else {
                RunState::Compensated
            } as i32;
            r.finished_ms = now;
            tx.delete(ACTIVE, r.run_id.as_bytes());
            true
        })
        .await?;
        Ok(Next::Continue)
    }

    /// Marks succeeded step `j`, which has no compensation, compensated.
    async fn nothing_to_undo(&self, run_id: &str, j: usize) -> Result<Next, Status> {
        self.update(run_id, move |r, _| {
            let s = &mut r.steps[j];
            if s.state != SUCCEEDED {
                return false;
            }
            s.state = StepState::Compensated as i32;
            true
        })
        .await?;
        Ok(Next::Continue)
    }

    /// One attempt of step `j`'s compensation `undo`, and its outcome recorded.
    async fn undo(
        &self,
        r: &RunRecord,
        step: &Step,
        j: usize,
        undo: &Call,
    ) -> Result<Next, Status> {
        let attempt = r.steps[j].undo_attempts + 1;
        let marked = self
            .update(&r.run_id, move |r, _| {
                let s = &mut r.steps[j];
                if s.state != SUCCEEDED && s.state != COMPENSATING {
                    return false;
                }
                s.state = COMPENSATING;
                s.undo_attempts = attempt;
                true
            })
            .await?;
        if !marked {
            return Ok(Next::Continue);
        }
        let Some(result) = self.call_undo(r, step, j, undo).await? else {
            return Ok(Next::Done);
        };
        self.record_undo(&r.run_id, step, j, attempt, result).await
    }

    /// Sends step `j`'s compensation `undo`, with the run's context up to and including
    /// the step's output; `None` when shutdown came first.
    async fn call_undo(
        &self,
        r: &RunRecord,
        step: &Step,
        j: usize,
        undo: &Call,
    ) -> Result<Option<Result<(), Status>>, Status> {
        let outputs = self.outputs(r)?;
        let field = format!("steps.{}.compensation", step.step_id);
        let (method, body) = match build(undo, &context(r, &outputs, j + 1), &field) {
            Ok(b) => b,
            Err(e) => return Ok(Some(Err(e))),
        };
        let timeout = step_timeout(step);
        let key = (method.idempotency_key != 0).then(|| step_key(&r.run_id, &step.step_id, true));
        let body = keyed(method, body, key.as_deref());
        Ok(self
            .send(method, body, Self::options(r, timeout, key))
            .await
            .map(|result| result.map(|_| ())))
    }

    /// Records the outcome of attempt `attempt` of step `j`'s compensation: compensated,
    /// retried after its backoff, or failed for good (the run then needs an operator).
    async fn record_undo(
        &self,
        run_id: &str,
        step: &Step,
        j: usize,
        attempt: u32,
        result: Result<(), Status>,
    ) -> Result<Next, Status> {
        let now = now_ms(self.ctx());
        let id = step.step_id.clone();
        match result {
            Ok(()) => {
                self.update(run_id, move |r, _| {
                    let s = &mut r.steps[j];
                    s.state = StepState::Compensated as i32;
                    s.finished_ms = now;
                    true
                })
                .await?;
                Ok(Next::Continue)
            }
            Err(e) if e.is_retryable() && attempt <= retries(step) => {
                self.retry_later(run_id, j, attempt, e).await
            }
            Err(e) => {
                tracing::warn!(run_id, step = id, error = %e, "compensation failed; the run needs an operator");
                self.update(run_id, move |r, _| {
                    let s = &mut r.steps[j];
                    s.state = StepState::CompensationFailed as i32;
                    s.finished_ms = now;
                    (s.error_code, s.error_message) = (e.code as i32, e.message);
                    r.undo_failed = true;
                    true
                })
                .await?;
                Ok(Next::Continue)
            }
        }
    }
}
