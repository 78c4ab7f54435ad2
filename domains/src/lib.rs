//! AI Core's domains, one module each, on the runtime crate ([`aicore_runtime`]): each
//! module implements its generated handler trait and [`aicore_runtime::Domain`] (its
//! configuration section and how it is built). The one list in [`registry`] registers
//! them; from it come the registry itself and [`DomainsConfig`]. Domains talk to each other
//! over NATS only, never through each other's code.
//!
//! Adding a domain: its `.proto` in `proto/proto/`, its module here (a `pub mod` line
//! below), and its line in the `domains!` list in `registry.rs`. CONTRIBUTING.md has the
//! whole recipe.

pub mod ai_integration;
pub mod ai_router;
pub mod auth;
pub mod body_broker_integration;
pub mod capability_registry;
pub mod environmental_narrative;
pub mod event_bus;
pub mod knowledge_base;
pub mod language_system;
pub mod model_management;
pub mod npc_behavior;
pub mod orchestration;
pub mod payment;
pub mod performance_mode;
pub mod quest_system;
pub mod registry;
pub mod router;
pub mod settings;
pub mod state_manager;
pub mod story_teller;
pub mod time_manager;
pub mod weather_manager;
pub mod world_state;

pub use registry::DomainsConfig;

impl DomainsConfig {
    /// The largest opaque payload (a `bytes` field) a domain accepts as configured: a
    /// state-manager object or a world-state fact. The HTTP gateway sizes its default
    /// body limit from it, so anything a domain takes also fits through the gateway.
    pub fn max_blob_bytes(&self) -> usize {
        self.state_manager
            .max_object_bytes
            .max(self.world_state.max_fact_bytes)
    }
}
