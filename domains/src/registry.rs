//! The one list of the domains this build serves. Each line names a domain (its proto
//! package, `svc.<name>.v1.*`), documents its configuration section and names the type
//! implementing [`Domain`]. From the list come [`DomainsConfig`] (one `[domains.<name>]`
//! section per domain, every field defaulted) and [`DOMAINS`], which the appliance serves
//! from; `aicore run --domains` refuses a name with a contract but no line here.

use std::sync::Arc;

use aicore_proto::{Dispatch, Status};
use aicore_runtime::{Ctx, Domain};

/// Builds a domain's dispatcher on a context, with its section of the configuration.
pub type Build = fn(&Ctx, &DomainsConfig) -> Result<Arc<dyn Dispatch>, Status>;

/// How to build one domain's server.
pub struct DomainSpec {
    /// The domain name (`auth`), as in its proto package.
    pub name: &'static str,
    /// Builds the domain's dispatcher on a context, with its section of `config`.
    pub build: Build,
}

/// Declares the domains: the configuration struct and the registry, from one list.
macro_rules! domains {
    ($( $(#[doc = $doc:literal])* $name:ident => $ty:ty ),* $(,)?) => {
        /// Configuration of the domains, one section per domain (`[domains.<name>]` in
        /// `aicore.toml`). Every field has a default, so an empty file is a valid
        /// configuration.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct DomainsConfig {
            /// Requests one domain handles at once; further ones wait (bounded by their
            /// deadline).
            pub max_in_flight: usize,
            /// How long every domain keeps the replies of idempotency keys, in seconds; at
            /// least a day (less is raised).
            pub idempotency_ttl_secs: u64,
            $( $(#[doc = $doc])* pub $name: <$ty as Domain>::Config, )*
        }

        impl Default for DomainsConfig {
            fn default() -> Self {
                DomainsConfig {
                    max_in_flight: 256,
                    idempotency_ttl_secs: 24 * 3600,
                    $( $name: Default::default(), )*
                }
            }
        }

        /// Every domain this build serves.
        pub static DOMAINS: &[DomainSpec] = &[
            $( DomainSpec {
                name: stringify!($name),
                build: |ctx, config| <$ty as Domain>::build(ctx, &config.$name),
            }, )*
        ];
    };
}

domains! {
    /// auth: accounts, sessions, access and refresh tokens, roles.
    auth => crate::auth::Auth,
    /// event-bus: JetStream streams, consumers and dead letters.
    event_bus => crate::event_bus::EventBus,
    /// settings: typed settings with schemas and defaults.
    settings => crate::settings::Settings,
    /// state-manager: versioned player save data.
    state_manager => crate::state_manager::StateManager,
    /// payment: wallets, the item catalog and the append-only ledger.
    payment => crate::payment::Payment,
    /// world-state: shared world facts, snapshots and the change feed.
    world_state => crate::world_state::WorldState,
    /// quest-system: quest definitions and player quest logs.
    quest_system => crate::quest_system::QuestSystem,
    /// time-manager: the game clock, hourly ticks and game-time timers.
    time_manager => crate::time_manager::TimeManager,
    /// weather-manager: regional weather from seeded per-season Markov chains.
    weather_manager => crate::weather_manager::WeatherManager,
    /// ai-integration: completion, chat and embeddings over providers, with an offline one.
    ai_integration => crate::ai_integration::AiIntegration,
    /// model-management: the registry of AI models, their defaults and probes.
    model_management => crate::model_management::ModelManagement,
    /// ai-router: picks a model per request, with circuits and a fallback chain.
    ai_router => crate::ai_router::AiRouter,
    /// knowledge-base: lore documents with ranked full-text and vector search.
    knowledge_base => crate::knowledge_base::KnowledgeBase,
    /// language-system: localised strings with fallback chains, CLDR plurals and typed
    /// placeholders, and machine translations kept for review.
    language_system => crate::language_system::LanguageSystem,
    /// environmental-narrative: lore fragments at locations, found under world, time and
    /// weather conditions, each discovery recorded once.
    environmental_narrative => crate::environmental_narrative::EnvironmentalNarrative,
    /// npc-behavior: NPC traits, needs, schedules, utility-AI decisions and relations.
    npc_behavior => crate::npc_behavior::NpcBehavior,
    /// story-teller: story arcs played per player, narrated from templates, lore and AI.
    story_teller => crate::story_teller::StoryTeller,
    /// performance-mode: quality budgets (profiles) per player and globally.
    performance_mode => crate::performance_mode::PerformanceMode,
    /// body-broker-integration: the game client's facade, a player's session in one call.
    body_broker_integration => crate::body_broker_integration::BodyBrokerIntegration,
    /// capability-registry: what runs where on the NATS network, from micro-protocol
    /// discovery, with versions, endpoint stats and last-seen health.
    capability_registry => crate::capability_registry::CapabilityRegistry,
    /// orchestration: sagas, workflows of domain calls with compensations, resumed after
    /// a crash.
    orchestration => crate::orchestration::Orchestration,
    /// router: the public route table the gateway consults (paths to RPCs, limits, flags).
    router => crate::router::Router,
}

/// Finds a served domain by name (`state-manager` and `state_manager` both work).
pub fn find(name: &str) -> Option<&'static DomainSpec> {
    let name = name.replace('-', "_");
    DOMAINS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_published_where_the_domains_say() {
        use aicore_proto::Event;
        use aicore_proto::aicore::{quest_system, time_manager, weather_manager, world_state};
        let pairs = [
            (
                quest_system::v1::QuestCompleted::default().subject(),
                crate::quest_system::COMPLETED_SUBJECT,
            ),
            (
                aicore_proto::aicore::environmental_narrative::v1::FragmentDiscovered::default()
                    .subject(),
                crate::environmental_narrative::DISCOVERED_SUBJECT,
            ),
            (
                world_state::v1::FactChange::default().subject(),
                crate::world_state::CHANGED_SUBJECT,
            ),
            (
                weather_manager::v1::WeatherChangedEvent::default().subject(),
                crate::weather_manager::CHANGED_SUBJECT,
            ),
            (
                time_manager::v1::TickEvent::default().subject(),
                crate::time_manager::TICK_SUBJECT,
            ),
            (
                time_manager::v1::ScheduledEvent::default().subject(),
                crate::time_manager::SCHEDULED_SUBJECT,
            ),
            (
                time_manager::v1::ClockChangedEvent::default().subject(),
                crate::time_manager::CLOCK_CHANGED_SUBJECT,
            ),
        ];
        for (generated, declared) in pairs {
            assert_eq!(generated, declared);
        }
        let audit = aicore_proto::aicore::auth::v1::AuthAuditEvent {
            kind: "login_failed".into(),
            ..Default::default()
        };
        assert_eq!(audit.subject(), "audit.auth.login_failed");
        for subject in [audit.subject(), crate::payment::PURCHASED_SUBJECT.into()] {
            assert!(
                aicore_runtime::streams::for_subject(&subject).is_some(),
                "{subject} lands in no stream"
            );
        }
    }

    #[test]
    fn every_registered_domain_has_a_contract_and_builds_on_defaults() {
        let (ctx, _) = Ctx::for_tests();
        let config = DomainsConfig::default();
        for d in DOMAINS {
            assert!(
                aicore_proto::find_service(d.name).is_some(),
                "{} has no contract in proto/",
                d.name
            );
            // Domains with background tasks need a runtime; build them in one.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let built = rt.block_on(async { (d.build)(&ctx, &config) });
            let built = built.unwrap_or_else(|e| panic!("{}: {e}", d.name));
            assert_eq!(built.service().domain, d.name);
            ctx.shutdown.cancel();
        }
    }
}
