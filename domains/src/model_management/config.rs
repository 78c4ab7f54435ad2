//! model-management's configuration (`[domains.model_management]`): whether the built-in
//! offline model is registered, the probe's timeout and degraded latency, and List's
//! pages.

/// Configuration of model-management (`[domains.model_management]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelManagementConfig {
    /// Register the built-in offline model on first start.
    pub builtin_offline_model: bool,
    /// A probe answered slower than this (in milliseconds) marks the model DEGRADED.
    pub degraded_latency_ms: u64,
    /// Longest a probe waits for the model, in milliseconds (within the caller's deadline).
    pub probe_timeout_ms: u64,
    /// Page size of List when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List.
    pub max_page_size: u32,
}

impl Default for ModelManagementConfig {
    fn default() -> Self {
        ModelManagementConfig {
            builtin_offline_model: true,
            degraded_latency_ms: 5_000,
            probe_timeout_ms: 20_000,
            default_page_size: 50,
            max_page_size: 500,
        }
    }
}
