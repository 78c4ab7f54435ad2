//! AI Core's domains and the runtime they share. Each domain is one module implementing
//! its generated handler trait; the runtime ([`runtime`]) serves any of them on NATS, the
//! store ([`store`]) keeps their state. Adding a domain is its `.proto`, its module, its
//! config section below and one line in [`registry::DOMAINS`].

pub mod auth;
mod durable;
pub mod event_bus;
pub mod idempotency;
mod micro;
pub mod outbox;
pub mod paging;
pub mod payment;
pub mod quest_system;
pub mod registry;
pub mod runtime;
mod sched;
pub mod settings;
pub mod state_manager;
pub mod store;
pub mod streams;
pub mod time_manager;
pub mod validate;
mod wal;
pub mod weather_manager;
pub mod world_state;
mod writes;

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
    /// event-bus: JetStream streams, consumers and dead letters.
    pub event_bus: event_bus::EventBusConfig,
    /// settings: typed settings with schemas and defaults.
    pub settings: settings::SettingsConfig,
    /// state-manager: versioned player save data.
    pub state_manager: state_manager::StateManagerConfig,
    /// payment: wallets, the item catalog and the append-only ledger.
    pub payment: payment::PaymentConfig,
    /// world-state: shared world facts, snapshots and the change feed.
    pub world_state: world_state::WorldStateConfig,
    /// quest-system: quest definitions and player quest logs.
    pub quest_system: quest_system::QuestSystemConfig,
    /// time-manager: the game clock, hourly ticks and game-time timers.
    pub time_manager: time_manager::TimeManagerConfig,
    /// weather-manager: regional weather from seeded per-season Markov chains.
    pub weather_manager: weather_manager::WeatherManagerConfig,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        DomainsConfig {
            max_in_flight: 256,
            auth: Default::default(),
            event_bus: Default::default(),
            settings: Default::default(),
            state_manager: Default::default(),
            payment: Default::default(),
            world_state: Default::default(),
            quest_system: Default::default(),
            time_manager: Default::default(),
            weather_manager: Default::default(),
        }
    }
}

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
