//! orchestration's bounds: the configuration (`[domains.orchestration]`: retry backoff,
//! ListRuns pages) and the fixed limits of a workflow and a run (sizes, counts, timeouts,
//! retries), which Define enforces and the executor relies on.

use std::time::Duration;

use aicore_proto::aicore::orchestration::v1::Step;

/// Longest workflow id.
pub(super) const MAX_WORKFLOW_ID: usize = 64;
/// Longest step id (the key `orch.<run_id>.<step_id>.undo` stays within 128 characters).
pub(super) const MAX_STEP_ID: usize = 40;
/// Most steps in a workflow.
pub(super) const MAX_STEPS: usize = 50;
/// Most bindings per call.
pub(super) const MAX_BINDINGS: usize = 32;
/// Largest literal request of a call, encoded.
pub(super) const MAX_CALL_INPUT_BYTES: usize = 8 * 1024;
/// Largest workflow, encoded.
pub(super) const MAX_WORKFLOW_BYTES: usize = 256 * 1024;
/// Longest description.
pub(super) const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Largest run input, encoded.
pub(super) const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Largest step output kept, as JSON text; a larger one fails the run (see engine).
pub(super) const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Longest cancel reason.
pub(super) const MAX_REASON_CHARS: usize = 256;
/// Longest run id accepted (server-made ids are 36 characters).
pub(super) const MAX_RUN_ID: usize = 64;
/// Step attempt timeout when the workflow gives none, and the largest allowed.
pub(super) const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Run timeout when the workflow gives none, and the largest allowed (below the domains'
/// shortest idempotency record life, a day).
pub(super) const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
pub(super) const MAX_RUN_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Retries when the step gives none (an unset field reads 0: see `retries`), and the most.
pub(super) const MAX_RETRIES: u32 = 10;

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

/// The retries of a step: its `max_retries`, and 2 when unset (0 means unset in proto3;
/// a step that must not be retried is rare for calls that carry their key).
pub(super) fn retries(step: &Step) -> u32 {
    if step.max_retries == 0 {
        2
    } else {
        step.max_retries
    }
}
