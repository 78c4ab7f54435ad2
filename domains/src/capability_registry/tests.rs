//! capability-registry on a manual clock, fed the replies a discovery round would gather:
//! valid micro-protocol documents as our runtime writes them, and hostile ones (garbage,
//! wrong types, oversized, floods of instances and endpoints).

use std::time::Duration;

use aicore_proto::aicore::capability_registry::v1::{
    FindRequest, HealthRequest, HealthStatus, ListRequest, RpcRef, find_request,
};
use aicore_proto::{Code, Request};
use aicore_runtime::{Ctx, ManualClock};
use serde_json::{Value, json};

use super::table::{Round, Verb};
use super::{CapabilityRegistry, CapabilityRegistryConfig, CapabilityRegistryHandler};

fn registry(config: CapabilityRegistryConfig) -> (CapabilityRegistry, std::sync::Arc<ManualClock>) {
    let (ctx, clock) = Ctx::for_tests();
    (CapabilityRegistry::new(ctx, config).unwrap(), clock)
}

fn req<T>(body: T) -> Request<T> {
    Request::new(body)
}

/// The three documents an instance answers, as `runtime/src/micro.rs` writes them.
fn docs(name: &str, id: &str, version: &str, rpcs: &[(&str, u64, u64)]) -> [(Verb, Value); 3] {
    let base = |kind: &str| {
        json!({
            "type": format!("io.nats.micro.v1.{kind}"),
            "name": name, "id": id, "version": version, "metadata": {"store": "writable"},
        })
    };
    let mut info = base("info_response");
    info["description"] = json!(format!("the {name} service"));
    info["endpoints"] = rpcs
        .iter()
        .map(|(r, _, _)| json!({"name": r, "subject": format!("svc.{name}.v1.{r}"), "queue_group": name, "metadata": {}}))
        .collect();
    let mut stats = base("stats_response");
    stats["started"] = json!("2027-01-15T08:00:00Z");
    stats["endpoints"] = rpcs
        .iter()
        .map(|(r, n, e)| {
            json!({
                "name": r, "subject": format!("svc.{name}.v1.{r}"), "queue_group": name,
                "num_requests": n, "num_errors": e, "processing_time": n * 2000,
                "average_processing_time": 2000, "last_error": "",
            })
        })
        .collect();
    [
        (Verb::Ping, base("ping_response")),
        (Verb::Info, info),
        (Verb::Stats, stats),
    ]
}

/// One round in which the given instances answer all three requests.
fn round(r: &CapabilityRegistry, instances: &[[(Verb, Value); 3]]) {
    let mut round = Round::default();
    for i in instances {
        for (verb, doc) in i {
            r.take(
                &mut round,
                *verb,
                doc.to_string().as_bytes(),
                Duration::from_millis(2),
            );
        }
    }
    r.absorb(round);
}

fn raw_round(r: &CapabilityRegistry, replies: &[(Verb, Vec<u8>)]) {
    let mut round = Round::default();
    for (verb, body) in replies {
        r.take(&mut round, *verb, body, Duration::from_millis(2));
    }
    r.absorb(round);
}

fn interval(c: &CapabilityRegistryConfig) -> Duration {
    Duration::from_millis(c.discovery_interval_ms)
}

#[tokio::test]
async fn list_shows_every_instance_with_version_endpoints_and_stats_in_name_order() {
    let (r, _) = registry(Default::default());
    round(
        &r,
        &[
            docs("weather_manager", "w1", "0.3.0", &[("current", 4, 0)]),
            docs(
                "auth",
                "a1",
                "0.3.0",
                &[("login", 10, 1), ("validate", 5, 0)],
            ),
            docs("auth", "a2", "0.4.0", &[("login", 1, 0)]),
        ],
    );
    let list = r.list(req(ListRequest::default())).await.unwrap();
    let names: Vec<_> = list.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["auth", "weather_manager"]);
    let auth = &list.services[0];
    assert_eq!(
        (auth.api_version.as_str(), auth.description.as_str()),
        ("v1", "the auth service")
    );
    let versions: Vec<_> = auth
        .instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i.version.as_str()))
        .collect();
    assert_eq!(versions, [("a1", "0.3.0"), ("a2", "0.4.0")]);
    let a1 = &auth.instances[0];
    assert_eq!(a1.status, HealthStatus::Healthy as i32);
    assert_eq!(
        a1.metadata.get("store").map(String::as_str),
        Some("writable")
    );
    assert!(a1.started_at.is_some() && a1.last_seen_at.is_some() && a1.ping_latency.is_some());
    let login = &a1.endpoints[0];
    assert_eq!(
        (
            login.name.as_str(),
            login.subject.as_str(),
            login.queue_group.as_str()
        ),
        ("login", "svc.auth.v1.login", "auth")
    );
    assert_eq!((login.requests, login.errors), (10, 1));
    assert_eq!(
        login.average_processing_time,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 2000
        })
    );
    // A name filter (either spelling), and pages in name order.
    let only = r
        .list(req(ListRequest {
            name: "weather-manager".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(only.services.len(), 1);
    let p1 = r
        .list(req(ListRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(p1.services[0].name, "auth");
    let p2 = r
        .list(req(ListRequest {
            page_size: 1,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(p2.services[0].name, "weather_manager");
    assert!(p2.next_page_token.is_empty());
}

#[tokio::test]
async fn list_refuses_bad_names_page_sizes_and_tokens_naming_the_field() {
    let (r, _) = registry(Default::default());
    for (bad, field) in [
        (
            ListRequest {
                name: "a b".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            ListRequest {
                name: "x".repeat(65),
                ..Default::default()
            },
            "name",
        ),
        (
            ListRequest {
                name: "svc.>".into(),
                ..Default::default()
            },
            "name",
        ),
        (
            ListRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListRequest {
                page_token: "!!".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListRequest {
                page_token: aicore_runtime::paging::encode_token(b'X', b"auth"),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListRequest {
                page_token: aicore_runtime::paging::encode_token(super::LIST_TOKEN, &[0xff, 0xfe]),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let e = r.list(req(bad)).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
}

#[tokio::test]
async fn an_instance_that_stops_answering_turns_stale_then_its_service_down_then_is_forgotten() {
    let config = CapabilityRegistryConfig::default();
    let (r, clock) = registry(config.clone());
    round(
        &r,
        &[
            docs("auth", "a1", "1.0.0", &[("login", 0, 0)]),
            docs("auth", "a2", "1.0.0", &[("login", 0, 0)]),
        ],
    );
    // a2 stops; a1 keeps answering.
    for _ in 0..config.stale_after_rounds {
        clock.advance(interval(&config));
        round(&r, &[docs("auth", "a1", "1.0.0", &[("login", 0, 0)])]);
    }
    let list = r.list(req(ListRequest::default())).await.unwrap();
    let ids: Vec<_> = list.services[0]
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["a1"], "a stale instance is left out unless asked for");
    let all = r
        .list(req(ListRequest {
            include_stale: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let statuses: Vec<_> = all.services[0].instances.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        [HealthStatus::Healthy as i32, HealthStatus::Stale as i32]
    );
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let auth = &h.services[0];
    assert_eq!((auth.healthy_instances, auth.total_instances), (1, 2));
    assert_eq!(auth.status, HealthStatus::Healthy as i32);
    // Then a1 stops too: stale, the service down.
    clock.advance(interval(&config) * config.stale_after_rounds);
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    assert_eq!(h.services[0].status, HealthStatus::Down as i32);
    assert_eq!(h.overall, HealthStatus::Down as i32);
    assert_eq!(h.services[0].healthy_instances, 0);
    // Just before the stale time an instance is still healthy.
    let (r2, clock2) = registry(config.clone());
    round(&r2, &[docs("auth", "a1", "1.0.0", &[])]);
    clock2.advance(interval(&config) * config.stale_after_rounds - Duration::from_millis(1));
    let h = r2.health(req(HealthRequest::default())).await.unwrap();
    assert_eq!(h.services[0].status, HealthStatus::Healthy as i32);
    // Unseen for forget_after_secs: gone at the next round.
    clock.advance(Duration::from_secs(config.forget_after_secs));
    round(&r, &[]);
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    assert!(h.services.is_empty());
    assert_eq!(h.overall, HealthStatus::Down as i32, "nothing answers");
}

#[tokio::test]
async fn find_answers_which_service_and_version_handles_an_rpc() {
    let config = CapabilityRegistryConfig::default();
    let (r, clock) = registry(config.clone());
    round(
        &r,
        &[
            docs(
                "auth",
                "a1",
                "0.3.0",
                &[("login", 3, 0), ("set_default", 0, 0)],
            ),
            docs("auth", "a2", "0.4.0", &[("login", 7, 0)]),
            docs("payment", "p1", "0.3.0", &[("purchase", 1, 0)]),
        ],
    );
    let by_subject = r
        .find(req(FindRequest {
            target: Some(find_request::Target::Subject("svc.auth.v1.login".into())),
            healthy_only: false,
        }))
        .await
        .unwrap();
    assert_eq!(by_subject.subject, "svc.auth.v1.login");
    let s = by_subject.service.unwrap();
    assert_eq!(s.name, "auth");
    let found: Vec<_> = s
        .instances
        .iter()
        .map(|i| {
            (
                i.version.as_str(),
                i.endpoints.len(),
                i.endpoints[0].requests,
            )
        })
        .collect();
    assert_eq!(
        found,
        [("0.3.0", 1, 3), ("0.4.0", 1, 7)],
        "only the matching endpoint"
    );
    // By domain and RPC, PascalCase or snake, `-` or `_`; only instances that serve it.
    for (domain, rpc) in [("auth", "SetDefault"), ("auth", "set_default")] {
        let f = r
            .find(req(FindRequest {
                target: Some(find_request::Target::Rpc(RpcRef {
                    domain: domain.into(),
                    rpc: rpc.into(),
                })),
                healthy_only: false,
            }))
            .await
            .unwrap();
        assert_eq!(f.subject, "svc.auth.v1.set_default");
        let ids: Vec<_> = f
            .service
            .unwrap()
            .instances
            .into_iter()
            .map(|i| i.instance_id)
            .collect();
        assert_eq!(ids, ["a1"]);
    }
    // Nothing handles it: NotFound.
    let e = r
        .find(req(FindRequest {
            target: Some(find_request::Target::Subject("svc.auth.v1.nope".into())),
            healthy_only: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    // A stale handler is still found (with its last-seen status) unless healthy_only.
    clock.advance(interval(&config) * config.stale_after_rounds);
    round(&r, &[docs("auth", "a2", "0.4.0", &[("login", 7, 0)])]);
    let payment = |healthy_only| FindRequest {
        target: Some(find_request::Target::Rpc(RpcRef {
            domain: "payment".into(),
            rpc: "Purchase".into(),
        })),
        healthy_only,
    };
    let stale = r.find(req(payment(false))).await.unwrap().service.unwrap();
    assert_eq!(stale.instances[0].status, HealthStatus::Stale as i32);
    let e = r.find(req(payment(true))).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let healthy = r
        .find(req(FindRequest {
            target: Some(find_request::Target::Subject("svc.auth.v1.login".into())),
            healthy_only: true,
        }))
        .await
        .unwrap();
    let ids: Vec<_> = healthy
        .service
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert_eq!(ids, ["a2"]);
}

#[tokio::test]
async fn find_refuses_a_missing_target_and_bad_subjects_and_rpcs_naming_the_field() {
    let (r, _) = registry(Default::default());
    let sub = |s: String| Some(find_request::Target::Subject(s));
    let rpc = |d: &str, n: String| {
        Some(find_request::Target::Rpc(RpcRef {
            domain: d.into(),
            rpc: n,
        }))
    };
    for (target, field) in [
        (None, "target"),
        (sub(String::new()), "subject"),
        (sub("svc.auth v1".into()), "subject"),
        (sub(format!("svc.{}", "a".repeat(300))), "subject"),
        (sub("svc.\u{0}".into()), "subject"),
        (sub("svc.wetter.ä".into()), "subject"),
        (rpc("", "login".into()), "rpc.domain"),
        (rpc("au th", "login".into()), "rpc.domain"),
        (rpc("auth", String::new()), "rpc.rpc"),
        (rpc("auth", "log.in".into()), "rpc.rpc"),
        (rpc("auth", "l".repeat(1000)), "rpc.rpc"),
    ] {
        let e = r
            .find(req(FindRequest {
                target,
                healthy_only: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
}

#[tokio::test]
async fn health_counts_error_rates_and_marks_errors_or_slow_pings_degraded() {
    let config = CapabilityRegistryConfig::default();
    let (r, clock) = registry(config.clone());
    round(
        &r,
        &[
            docs("auth", "a1", "1", &[("login", 100, 0)]),
            docs("payment", "p1", "1", &[("purchase", 10, 0)]),
        ],
    );
    clock.advance(interval(&config));
    // Since the last round auth took 40 requests, 30 failed: degraded. payment took 10
    // more with 9 errors, under degraded_min_requests: not judged.
    round(
        &r,
        &[
            docs("auth", "a1", "1", &[("login", 140, 30)]),
            docs("payment", "p1", "1", &[("purchase", 20, 9)]),
        ],
    );
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let by: std::collections::HashMap<_, _> =
        h.services.iter().map(|s| (s.name.as_str(), s)).collect();
    assert_eq!(by["auth"].status, HealthStatus::Degraded as i32);
    assert!((by["auth"].error_rate - 30.0 / 140.0).abs() < 1e-9);
    assert_eq!(by["auth"].healthy_instances, 0);
    assert_eq!(by["payment"].status, HealthStatus::Healthy as i32);
    assert_eq!(h.overall, HealthStatus::Degraded as i32);
    assert!(h.discovered_at.is_some());
    // A quiet round clears the error judgement; a slow ping is degraded.
    clock.advance(interval(&config));
    let mut slow = Round::default();
    for (verb, doc) in docs("auth", "a1", "1", &[("login", 140, 30)]) {
        let latency = if verb == Verb::Ping {
            Duration::from_millis(config.degraded_ping_ms + 1)
        } else {
            Duration::ZERO
        };
        r.take(&mut slow, verb, doc.to_string().as_bytes(), latency);
    }
    r.absorb(slow);
    let h = r
        .health(req(HealthRequest {
            name: "auth".into(),
        }))
        .await
        .unwrap();
    assert_eq!(h.services.len(), 1);
    assert_eq!(h.services[0].status, HealthStatus::Degraded as i32);
    clock.advance(interval(&config));
    round(&r, &[docs("auth", "a1", "1", &[("login", 140, 30)])]);
    let h = r
        .health(req(HealthRequest {
            name: "auth".into(),
        }))
        .await
        .unwrap();
    assert_eq!(h.services[0].status, HealthStatus::Healthy as i32);
    // Unknown or bad names.
    let e = r
        .health(req(HealthRequest {
            name: "nobody".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let e = r
        .health(req(HealthRequest { name: "*".into() }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "name")
    );
}

#[tokio::test]
async fn garbage_wrong_kinds_and_oversized_replies_are_counted_and_change_nothing() {
    let config = CapabilityRegistryConfig::default();
    let (r, _) = registry(config.clone());
    round(&r, &[docs("auth", "a1", "1.0.0", &[("login", 1, 0)])]);
    let [ping, info, stats] = docs("auth", "a1", "6.6.6", &[("login", 1, 0)]);
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v.to_string().into_bytes()
    };
    let mut endpoint_bad_subject = stats.1.clone();
    endpoint_bad_subject["endpoints"][0]["subject"] = json!("svc auth");
    let replies: Vec<(Verb, Vec<u8>)> = vec![
        (Verb::Ping, b"not json".to_vec()),
        (Verb::Ping, b"[1,2,3]".to_vec()),
        (Verb::Ping, vec![0xff; 100]),
        (Verb::Ping, "[".repeat(10_000).into_bytes()),
        // The document of another verb.
        (Verb::Ping, info.1.to_string().into_bytes()),
        (Verb::Info, with(info.1.clone(), "name", json!(""))),
        (Verb::Info, with(info.1.clone(), "name", json!("svc.>"))),
        (Verb::Info, with(info.1.clone(), "id", json!(7))),
        (
            Verb::Info,
            with(info.1.clone(), "version", json!("v".repeat(65))),
        ),
        (
            Verb::Info,
            with(info.1.clone(), "description", json!("d".repeat(5000))),
        ),
        (
            Verb::Info,
            with(info.1.clone(), "metadata", json!({"k": 1})),
        ),
        (
            Verb::Info,
            with(
                info.1.clone(),
                "metadata",
                Value::Object((0..33).map(|i| (format!("k{i}"), json!("v"))).collect()),
            ),
        ),
        (
            Verb::Stats,
            with(stats.1.clone(), "started", json!("yesterday")),
        ),
        (
            Verb::Stats,
            with(
                stats.1.clone(),
                "endpoints",
                json!([{"name": "x", "subject": "s", "num_requests": -1}]),
            ),
        ),
        (Verb::Stats, endpoint_bad_subject.to_string().into_bytes()),
        (
            Verb::Ping,
            with(
                ping.1.clone(),
                "type",
                json!("io.nats.micro.v1.stats_response"),
            ),
        ),
        // Over max_reply_bytes, valid or not.
        (
            Verb::Info,
            with(
                info.1.clone(),
                "padding",
                json!("x".repeat(config.max_reply_bytes)),
            ),
        ),
    ];
    raw_round(&r, &replies);
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let c = h.discovery.unwrap();
    assert_eq!((c.rounds, c.replies), (2, 3 + replies.len() as u64));
    assert_eq!(c.oversized_replies, 1);
    assert_eq!(c.malformed_replies, replies.len() as u64 - 1);
    // The table is as the valid round left it (the stale round changed nothing).
    let list = r
        .list(req(ListRequest {
            include_stale: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(list.services.len(), 1);
    assert_eq!(list.services[0].instances[0].version, "1.0.0");
}

#[tokio::test]
async fn a_flood_of_instances_and_endpoints_is_capped_and_counted() {
    let config = CapabilityRegistryConfig {
        max_instances: 4,
        max_endpoints: 3,
        ..Default::default()
    };
    let (r, clock) = registry(config.clone());
    let rpcs: Vec<(String, u64, u64)> = (0..10).map(|i| (format!("rpc{i}"), 1, 0)).collect();
    let rpcs: Vec<(&str, u64, u64)> = rpcs.iter().map(|(n, a, b)| (n.as_str(), *a, *b)).collect();
    let flood: Vec<_> = (0..8)
        .map(|i| docs("hostile", &format!("h{i}"), "1", &rpcs))
        .collect();
    round(&r, &flood);
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let c = h.discovery.unwrap();
    assert_eq!(c.rejected_instances, 4);
    assert_eq!(
        c.truncated_endpoints,
        4 * 7,
        "7 left out of each admitted instance"
    );
    assert_eq!(h.services[0].total_instances, 4);
    let list = r.list(req(ListRequest::default())).await.unwrap();
    assert!(
        list.services[0]
            .instances
            .iter()
            .all(|i| i.endpoints.len() == 3)
    );
    // While the flood is live a newcomer is refused; once it is stale, the newcomer
    // takes a stale one's place.
    round(&r, &[docs("auth", "a1", "1", &[])]);
    assert!(
        r.list(req(ListRequest {
            name: "auth".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .services
        .is_empty()
    );
    clock.advance(interval(&config) * config.stale_after_rounds);
    round(&r, &[docs("auth", "a1", "1", &[])]);
    let auth = r
        .list(req(ListRequest {
            name: "auth".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(auth.services[0].instances[0].instance_id, "a1");
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let total: u32 = h.services.iter().map(|s| s.total_instances).sum();
    assert_eq!(total, 4);
    // A round reads a bounded number of replies and bytes; the rest is dropped.
    let mut round = Round::default();
    let body = docs("x", "x1", "1", &[]).map(|(_, d)| d.to_string());
    let n = 3 * config.max_instances + 16;
    for _ in 0..n + 5 {
        r.take(&mut round, Verb::Ping, body[0].as_bytes(), Duration::ZERO);
    }
    r.absorb(round);
    let c = r
        .health(req(HealthRequest::default()))
        .await
        .unwrap()
        .discovery
        .unwrap();
    assert_eq!(c.dropped_replies, 5);
}

#[tokio::test]
async fn a_flood_under_one_name_does_not_crowd_out_a_service_seen_in_the_same_round() {
    let config = CapabilityRegistryConfig {
        max_instances: 4,
        ..Default::default()
    };
    let (r, _) = registry(config);
    let mut seen: Vec<_> = (0..8)
        .map(|i| docs("aaa_flood", &format!("f{i}"), "1", &[]))
        .collect();
    seen.push(docs("zeta", "z1", "1", &[("get", 0, 0)]));
    round(&r, &seen);
    let h = r.health(req(HealthRequest::default())).await.unwrap();
    let totals: Vec<_> = h
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.total_instances))
        .collect();
    assert_eq!(totals, [("aaa_flood", 3), ("zeta", 1)]);
    assert_eq!(h.discovery.unwrap().rejected_instances, 5);
}

#[test]
fn an_inconsistent_configuration_is_refused_naming_the_field() {
    let (ctx, _) = Ctx::for_tests();
    for (bad, field) in [
        (
            CapabilityRegistryConfig {
                discovery_interval_ms: 10,
                ..Default::default()
            },
            "discovery_interval_ms",
        ),
        (
            CapabilityRegistryConfig {
                reply_window_ms: 5000,
                ..Default::default()
            },
            "reply_window_ms",
        ),
        (
            CapabilityRegistryConfig {
                stale_after_rounds: 0,
                ..Default::default()
            },
            "stale_after_rounds",
        ),
        (
            CapabilityRegistryConfig {
                forget_after_secs: 1,
                ..Default::default()
            },
            "forget_after_secs",
        ),
        (
            CapabilityRegistryConfig {
                degraded_error_rate: f64::NAN,
                ..Default::default()
            },
            "degraded_error_rate",
        ),
        (
            CapabilityRegistryConfig {
                max_reply_bytes: 10,
                ..Default::default()
            },
            "max_reply_bytes",
        ),
    ] {
        let e = CapabilityRegistry::new(ctx.clone(), bad).err().unwrap();
        assert_eq!(e.field_violations[0].field, field);
    }
}
