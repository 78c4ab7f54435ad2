//! AI Core's domains and the runtime they share. Each domain is one module implementing
//! its generated handler trait; the runtime ([`runtime`]) serves any of them on NATS, the
//! store ([`store`]) keeps their state. Adding a domain is its `.proto`, its module, its
//! config section below and one line in [`registry::DOMAINS`].

pub mod auth;
pub mod idempotency;
pub mod paging;
pub mod registry;
pub mod runtime;
pub mod settings;
pub mod state_manager;
pub mod store;

pub use runtime::{Clock, Ctx, ManualClock, SystemClock};
pub use store::Store;

/// Configuration of the domains, one section per domain (`[domains.<name>]` in
/// `aicore.toml`). Every field has a default, so an empty file is a valid configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainsConfig {
    /// Requests one domain handles at once; further ones wait (bounded by their deadline).
    pub max_in_flight: usize,
    /// auth: accounts, sessions, access and refresh tokens, roles.
    pub auth: auth::AuthConfig,
    /// settings: typed settings with schemas and defaults.
    pub settings: settings::SettingsConfig,
    /// state-manager: versioned player save data.
    pub state_manager: state_manager::StateManagerConfig,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        DomainsConfig {
            max_in_flight: 256,
            auth: Default::default(),
            settings: Default::default(),
            state_manager: Default::default(),
        }
    }
}
