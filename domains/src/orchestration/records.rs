//! Stored runs and their keys: the keys of workflow versions and step outputs, reading a
//! run inside a write, the run's states, and a stored run as the contract shows it (times
//! in milliseconds become timestamps, error codes the common error). Free of the executor
//! and of the handlers, which both use it.

use aicore_proto::Status;
use aicore_proto::aicore::orchestration::v1::{Run, RunState, StepRun};
use aicore_proto::internal::orchestration::RunRecord;
use aicore_runtime::store::Tx;
use serde_json::Value;

use super::{RUNS, json};

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp of milliseconds since the epoch; none for 0 (not yet).
pub(super) fn ts(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

/// The key of a workflow's version in `orchestration.versions`.
pub(super) fn version_key(workflow_id: &str, version: u64) -> Vec<u8> {
    let mut k = workflow_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// The key of a run's step output in `orchestration.outputs`.
pub(super) fn output_key(run_id: &str, index: usize) -> Vec<u8> {
    let mut k = run_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&(index as u32).to_be_bytes());
    k
}

/// Whether a run in state `s` is over.
pub(super) fn is_final(s: i32) -> bool {
    matches!(
        RunState::try_from(s),
        Ok(RunState::Succeeded | RunState::Compensated | RunState::Cancelled | RunState::Failed)
    )
}

/// The common error of a stored code and message; none for code 0.
pub(super) fn error_of(
    code: i32,
    message: &str,
) -> Option<aicore_proto::aicore::common::v1::Error> {
    (code != 0).then(|| aicore_proto::aicore::common::v1::Error {
        code,
        message: message.to_string(),
        ..Default::default()
    })
}

/// A stored run as the contract shows it; `outputs` by step index (absent when not read).
pub(super) fn shown(r: &RunRecord, outputs: &[Option<Value>]) -> Run {
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

/// Reads run `run_id` inside a write; NotFound when there is none.
pub(super) fn read_run(tx: &mut Tx<'_>, run_id: &str) -> Result<RunRecord, Status> {
    tx.get_msg::<RunRecord>(RUNS, run_id.as_bytes())?
        .ok_or_else(|| Status::not_found(format!("no run `{run_id}`")))
}
