//! The list of served domains: one line per domain, naming how to build its server from a
//! context. The appliance serves whichever of these `--domains` selects; the contracts of
//! domains not listed here exist in `proto/` but are not served by this build.

use std::sync::Arc;

use aicore_proto::{Dispatch, Status};

use crate::Ctx;

/// How to build one domain's server.
pub struct DomainSpec {
    /// The domain name (`auth`), as in its proto package.
    pub name: &'static str,
    /// Builds the domain's dispatcher on a context.
    pub build: fn(&Ctx) -> Result<Arc<dyn Dispatch>, Status>,
}

/// Every domain this build serves.
pub static DOMAINS: &[DomainSpec] = &[
    DomainSpec {
        name: "auth",
        build: crate::auth::server,
    },
    DomainSpec {
        name: "event_bus",
        build: crate::event_bus::server,
    },
    DomainSpec {
        name: "payment",
        build: crate::payment::server,
    },
    DomainSpec {
        name: "settings",
        build: |ctx| {
            Ok(Arc::new(
                aicore_proto::aicore::settings::v1::SettingsServer(Arc::new(
                    crate::settings::Settings::new(ctx.clone()),
                )),
            ))
        },
    },
    DomainSpec {
        name: "state_manager",
        build: |ctx| {
            Ok(Arc::new(
                aicore_proto::aicore::state_manager::v1::StateManagerServer(Arc::new(
                    crate::state_manager::StateManager::new(ctx.clone()),
                )),
            ))
        },
    },
    DomainSpec {
        name: "quest_system",
        build: crate::quest_system::server,
    },
    DomainSpec {
        name: "world_state",
        build: crate::world_state::server,
    },
    DomainSpec {
        name: "time_manager",
        build: crate::time_manager::server,
    },
    DomainSpec {
        name: "weather_manager",
        build: crate::weather_manager::server,
    },
];

/// Finds a served domain by name (`state-manager` and `state_manager` both work).
pub fn find(name: &str) -> Option<&'static DomainSpec> {
    let name = name.replace('-', "_");
    DOMAINS.iter().find(|d| d.name == name)
}
