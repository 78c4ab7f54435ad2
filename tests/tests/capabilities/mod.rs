//! capability-registry on a real appliance (mutual TLS, accounts, its nats-server child):
//! a second `aicore` process joining the same NATS as the `domains` principal shows up in
//! List and Find with its version and endpoint stats, as does a micro service written with
//! async-nats's own `service` API; a hostile responder on the network
//! (garbage, an oversized reply, a flood of made-up instances) is counted and bounded
//! without hiding the real services; and once the second process is killed its instance
//! turns stale while its service stays healthy on the first.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aicore_e2e::Appliance;
use aicore_proto::CallOptions;
use aicore_proto::aicore::capability_registry::v1 as cr;
use aicore_proto::aicore::settings::v1 as settings;
use futures::StreamExt;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

/// Fast rounds so the test sees several within seconds; few instances, so a flood fills
/// the table.
const CONFIG: &str = "[domains.capability_registry]
discovery_interval_ms = 400
reply_window_ms = 250
stale_after_rounds = 3
max_instances = 12
";

/// Polls `check` on the registry's answers until it yields a value (at most a minute,
/// then fails with what it saw last and the logs).
async fn until<T, F, Fut>(what: &str, logs: &[&Appliance], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() > give_up => {
                let logs: Vec<String> = logs.iter().map(|a| a.log()).collect();
                panic!("{what}: never happened; last saw {last}\n{}", logs.join("\n----\n"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn settings_instances(
    registry: &cr::CapabilityRegistryClient<aicore_sdk::Client>,
    include_stale: bool,
) -> Vec<cr::Instance> {
    registry
        .list(
            cr::ListRequest {
                name: "settings".into(),
                include_stale,
                ..Default::default()
            },
            &opts(),
        )
        .await
        .expect("list")
        .services
        .into_iter()
        .flat_map(|s| s.instances)
        .collect()
}

fn requests(i: &cr::Instance) -> u64 {
    i.endpoints.iter().map(|e| e.requests).sum()
}

/// Answers every `$SRV.PING` with garbage and a flood of made-up instances, and every
/// `$SRV.INFO` with a reply far over the registry's `max_reply_bytes`.
async fn hostile(nats: async_nats::Client) -> tokio::task::JoinHandle<()> {
    let pings = nats.subscribe("$SRV.PING").await.expect("subscribe PING");
    let infos = nats.subscribe("$SRV.INFO").await.expect("subscribe INFO");
    let _ = nats.flush().await;
    let mut both = futures::stream::select(pings, infos);
    tokio::spawn(async move {
        while let Some(m) = both.next().await {
            let Some(reply) = m.reply else { continue };
            if m.subject.as_str() == "$SRV.PING" {
                let _ = nats.publish(reply.clone(), "{not json".into()).await;
                for i in 0..40 {
                    let doc = serde_json::json!({
                        "type": "io.nats.micro.v1.ping_response",
                        "name": "hostile", "id": format!("h{i:03}"), "version": "6.6.6",
                        "metadata": {},
                    });
                    let _ = nats.publish(reply.clone(), doc.to_string().into()).await;
                }
            } else {
                let _ = nats
                    .publish(reply, vec![b' '; 200 * 1024].into())
                    .await;
            }
        }
    })
}

#[tokio::test]
async fn a_second_aicore_on_the_network_is_found_with_its_version_and_stats_and_goes_stale_when_killed()
 {
    let first = Appliance::start_serving_with_config(&["capability_registry", "settings"], CONFIG).await;
    let registry = cr::CapabilityRegistryClient::new(first.client().await);

    // The registry discovers the first process's own services, itself included.
    let first_id = until("the first settings instance listed", &[&first], || async {
        match settings_instances(&registry, false).await.as_slice() {
            [one] => Ok(one.instance_id.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let mut second = Appliance::start_joining_appliance(&first, &["settings"], "").await;
    // Traffic for the settings service, shared by its two instances' queue group.
    let calls = 40u64;
    let s = settings::SettingsClient::new(first.client().await);
    for i in 0..calls {
        s.list(
            settings::ListRequest {
                scope: settings::Scope::Global as i32,
                prefix: format!("absent.key{i}"),
                ..Default::default()
            },
            &opts(),
        )
        .await
        .expect("settings list");
    }
    let both = until("both instances listed with the calls in their stats", &[&first, &second], || async {
        let listed = settings_instances(&registry, false).await;
        let total: u64 = listed.iter().map(requests).sum();
        if listed.len() == 2 && total >= calls {
            Ok(listed)
        } else {
            Err(format!("{} instances, {total} requests", listed.len()))
        }
    })
    .await;
    let second_id = both
        .iter()
        .map(|i| i.instance_id.clone())
        .find(|id| *id != first_id)
        .expect("the second instance");
    for i in &both {
        assert!(!i.version.is_empty(), "{i:?}");
        assert_eq!(i.status, cr::HealthStatus::Healthy as i32);
        assert!(i.last_seen_at.is_some() && i.started_at.is_some() && i.ping_latency.is_some());
        let list = i
            .endpoints
            .iter()
            .find(|e| e.subject == "svc.settings.v1.list")
            .expect("the list endpoint");
        assert_eq!(list.queue_group, "settings");
    }
    assert_eq!(both[0].version, both[1].version, "the same build");

    // Every round hears every instance (all replies gathered, not the first one): over
    // the next rounds neither settings instance ever turns stale.
    let rounds = || async {
        registry
            .health(cr::HealthRequest::default(), &opts())
            .await
            .expect("health")
            .discovery
            .unwrap_or_default()
            .rounds
    };
    let (start, mut seen) = (rounds().await, 0u64);
    while seen < start + 8 {
        let live = settings_instances(&registry, false).await;
        assert_eq!(live.len(), 2, "an instance went missing: {live:?}");
        seen = rounds().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Which service and version handles settings.List: both instances.
    let found = registry
        .find(
            cr::FindRequest {
                target: Some(cr::find_request::Target::Rpc(cr::RpcRef {
                    domain: "settings".into(),
                    rpc: "List".into(),
                })),
                healthy_only: true,
            },
            &opts(),
        )
        .await
        .expect("find");
    assert_eq!(found.subject, "svc.settings.v1.list");
    let ids: BTreeSet<String> = found
        .service
        .expect("a service")
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert_eq!(ids, BTreeSet::from([first_id.clone(), second_id.clone()]));

    // Any micro-protocol service on the network is found too: one written with
    // async-nats's own `service` API, with its version and its endpoint's requests.
    let external = first.nats().await;
    let inventory = {
        use async_nats::service::ServiceExt;
        external
            .service_builder()
            .description("a game server's inventory")
            .start("inventory", "2.1.0")
            .await
            .expect("the inventory service")
    };
    let mut count = inventory
        .endpoint("svc.inventory.v1.count")
        .await
        .expect("its endpoint");
    let answering = tokio::spawn(async move {
        while let Some(r) = count.next().await {
            let _ = r.respond(Ok("3".into())).await;
        }
    });
    for _ in 0..3 {
        external
            .request("svc.inventory.v1.count", "".into())
            .await
            .expect("an inventory count");
    }
    let inventory_found = until("the inventory service found with its stats", &[&first], || async {
        let f = registry
            .find(
                cr::FindRequest {
                    target: Some(cr::find_request::Target::Subject(
                        "svc.inventory.v1.count".into(),
                    )),
                    healthy_only: false,
                },
                &opts(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let s = f.service.ok_or("no service")?;
        match s.instances.as_slice() {
            [i] if requests(i) >= 3 => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(inventory_found.name, "inventory");
    assert_eq!(inventory_found.description, "a game server's inventory");
    assert_eq!(inventory_found.instances[0].version, "2.1.0");
    answering.abort();
    drop(inventory);

    // A hostile responder: counted, bounded, and the real services still listed.
    let bad = hostile(first.nats().await).await;
    let counters = until("the hostile replies counted", &[&first], || async {
        let h = registry
            .health(cr::HealthRequest::default(), &opts())
            .await
            .expect("health");
        let c = h.discovery.unwrap_or_default();
        if c.malformed_replies > 0 && c.oversized_replies > 0 && c.rejected_instances > 0 {
            Ok(h)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    let total: u32 = counters.services.iter().map(|s| s.total_instances).sum();
    assert!(total <= 12, "the table holds at most max_instances: {total}");
    assert_eq!(settings_instances(&registry, false).await.len(), 2);
    bad.abort();

    // The second process dies: its instance turns stale, the service stays healthy on
    // the first, and Find's healthy instances are the first's only.
    second.crash().await;
    until("the killed instance stale", &[&first], || async {
        let all = settings_instances(&registry, true).await;
        let stale = all
            .iter()
            .find(|i| i.instance_id == second_id)
            .map(|i| i.status);
        if stale == Some(cr::HealthStatus::Stale as i32) {
            Ok(())
        } else {
            Err(format!("{stale:?}"))
        }
    })
    .await;
    let live: Vec<String> = settings_instances(&registry, false)
        .await
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert_eq!(live, [first_id]);
    let h = registry
        .health(
            cr::HealthRequest {
                name: "settings".into(),
            },
            &opts(),
        )
        .await
        .expect("health");
    let settings_health = &h.services[0];
    assert_eq!(settings_health.status, cr::HealthStatus::Healthy as i32);
    assert_eq!(
        (settings_health.healthy_instances, settings_health.total_instances),
        (1, 2)
    );
}
