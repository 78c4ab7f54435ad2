//! The domain runtime on a real nats-server, with a test service whose handlers panic,
//! stall, stream and count their concurrency — behaviour no correct domain shows on
//! purpose but every domain relies on the runtime to handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aicore_e2e::BareNats;
use aicore_proto::{
    Access, CallOptions, Code, Dispatch, MethodInfo, Policy, Reply, Request, ServiceInfo, Status,
    Transport,
};
use aicore_runtime::serve::{ServeOptions, serve};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

const POLICY: Policy = Policy {
    access: Access::Public,
    roles: &[],
    read_only: false,
    default_deadline_ms: 0,
};

macro_rules! method {
    ($name:literal, $rpc:literal, $stream:literal) => {
        MethodInfo {
            domain: "rt_test",
            service: "aicore.rt_test.v1.RtTest",
            name: $name,
            rpc: $rpc,
            subject: concat!("svc.rt_test.v1.", $rpc),
            input: "",
            output: "",
            server_streaming: $stream,
            idempotency_key: 0,
            policy: POLICY,
        }
    };
}

static METHODS: &[MethodInfo] = &[
    method!("Panic", "panic", false),
    method!("Slow", "slow", false),
    method!("Stream", "stream", true),
    method!("Echo", "echo", false),
];

static SERVICE: ServiceInfo = ServiceInfo {
    domain: "rt_test",
    name: "RtTest",
    full_name: "aicore.rt_test.v1.RtTest",
    description: "runtime test service",
    methods: METHODS,
};

#[derive(Default)]
struct TestService {
    running: AtomicUsize,
    peak: AtomicUsize,
    /// Slow calls whose handler started.
    started: AtomicUsize,
    /// Echo calls handled.
    echoed: AtomicUsize,
}

struct Server(Arc<TestService>);

impl Dispatch for Server {
    fn service(&self) -> &'static ServiceInfo {
        &SERVICE
    }
    fn call(
        &self,
        method: usize,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Reply, Status>> {
        let this = self.0.clone();
        Box::pin(async move {
            match method {
                0 => panic!("handler bug"),
                1 => {
                    this.started.fetch_add(1, Ordering::SeqCst);
                    let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                    this.peak.fetch_max(now, Ordering::SeqCst);
                    let ms: u64 = std::str::from_utf8(&request.body)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(100);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    this.running.fetch_sub(1, Ordering::SeqCst);
                    Ok(Reply::Unary(request.body))
                }
                // "quiet": two items 200 ms apart; else three at once.
                2 if request.body.as_ref() == b"quiet" => Ok(Reply::Stream(
                    futures::stream::iter(0..2)
                        .then(|i| async move {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Ok(Bytes::from(format!("item{i}")))
                        })
                        .boxed(),
                )),
                2 => Ok(Reply::Stream(
                    futures::stream::iter((0..3).map(|i| Ok(Bytes::from(format!("item{i}")))))
                        .boxed(),
                )),
                _ => {
                    this.echoed.fetch_add(1, Ordering::SeqCst);
                    Ok(Reply::Unary(request.body))
                }
            }
        })
    }
}

async fn setup(
    max_in_flight: usize,
) -> (
    BareNats,
    Arc<TestService>,
    aicore_sdk::Client,
    CancellationToken,
) {
    let nats = BareNats::start().await;
    let svc = Arc::new(TestService::default());
    let server = async_nats::connect(&nats.url).await.unwrap();
    let stop = CancellationToken::new();
    serve(
        server.clone(),
        Arc::new(Server(svc.clone())),
        ServeOptions {
            max_in_flight,
            stream_heartbeat: Duration::from_millis(20),
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .unwrap();
    server.flush().await.unwrap();
    let client = aicore_sdk::Client::new(
        async_nats::connect(&nats.url).await.unwrap(),
        Default::default(),
    );
    (nats, svc, client, stop)
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_service_keeps_serving() {
    let (_nats, _svc, client, _stop) = setup(8).await;
    let opts = CallOptions::timeout(Duration::from_secs(5));
    for _ in 0..3 {
        let e = client
            .unary(&METHODS[0], Bytes::new(), &opts)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Internal);
    }
    let echo = client
        .unary(&METHODS[3], Bytes::from_static(b"still here"), &opts)
        .await
        .unwrap();
    assert_eq!(echo.as_ref(), b"still here");
}

#[tokio::test]
async fn the_deadline_header_is_honoured_by_the_server() {
    let (nats, _svc, _client, _stop) = setup(8).await;
    let raw = async_nats::connect(&nats.url).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert(aicore_proto::headers::TIMEOUT_MS, "100");
    // The handler would take 3 s; the caller said 100 ms; the client itself waits 10 s, so
    // an answer at all proves the server cut the work short.
    let reply = raw
        .send_request(
            "svc.rt_test.v1.slow",
            async_nats::Request::new()
                .payload(Bytes::from_static(b"3000"))
                .headers(h)
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("a reply before the client's own timeout");
    let status = aicore_sdk::reply_result(&reply).unwrap_err();
    assert_eq!(status.code, Code::DeadlineExceeded);
}

#[tokio::test]
async fn requests_that_expired_while_queued_are_never_started() {
    // One at a time; the first call holds the only slot for 600 ms.
    let (_nats, svc, client, _stop) = setup(1).await;
    let hold = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .unary(
                    &METHODS[1],
                    Bytes::from_static(b"600"),
                    &CallOptions::timeout(Duration::from_secs(10)),
                )
                .await
        })
    };
    while svc.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Five calls whose callers give up after 100 ms queue behind it; each would take
    // 100 ms of handler time if started.
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .unary(
                        &METHODS[1],
                        Bytes::from_static(b"100"),
                        &CallOptions::timeout(Duration::from_millis(100)),
                    )
                    .await
            })
        })
        .collect();
    for q in queued {
        assert!(q.await.unwrap().is_err());
    }
    hold.await.unwrap().expect("the first call finishes");
    // Behind them in the queue: once this answers, every queued call was picked up.
    client
        .unary(
            &METHODS[3],
            Bytes::from_static(b"after"),
            &CallOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        svc.started.load(Ordering::SeqCst),
        1,
        "work started for callers that had already given up"
    );
}

#[tokio::test]
async fn requests_run_concurrently_up_to_the_bound_and_no_further() {
    let (_nats, svc, client, _stop) = setup(3).await;
    let mut calls = Vec::new();
    for _ in 0..12 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .unary(
                    &METHODS[1],
                    Bytes::from_static(b"150"),
                    &CallOptions::timeout(Duration::from_secs(20)),
                )
                .await
        }));
    }
    for c in calls {
        c.await.unwrap().expect("every request is served");
    }
    let peak = svc.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "more than the bound ran at once: {peak}");
    assert!(peak >= 2, "requests were served one at a time");
}

#[tokio::test]
async fn a_stream_delivers_every_item_then_ends() {
    let (_nats, _svc, client, _stop) = setup(8).await;
    let stream = client
        .server_stream(
            &METHODS[2],
            Bytes::new(),
            &CallOptions::timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let items: Vec<Bytes> = stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(
        items,
        vec![
            Bytes::from("item0"),
            Bytes::from("item1"),
            Bytes::from("item2")
        ]
    );
}

#[tokio::test]
async fn a_quiet_stream_sends_heartbeats_that_clients_skip() {
    let (nats, _svc, client, _stop) = setup(8).await;
    // On the wire: heartbeats (empty, marked) between the two items.
    let raw = async_nats::connect(&nats.url).await.unwrap();
    let inbox = raw.new_inbox();
    let mut sub = raw.subscribe(inbox.clone()).await.unwrap();
    raw.publish_with_reply("svc.rt_test.v1.stream", inbox, Bytes::from_static(b"quiet"))
        .await
        .unwrap();
    let mut marks = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        let mark = m
            .headers
            .as_ref()
            .and_then(|h| h.get(aicore_proto::headers::STREAM))
            .map(|v| v.as_str().to_string());
        let end = mark.as_deref() == Some("end");
        marks.push(mark.unwrap_or_else(|| String::from_utf8_lossy(&m.payload).into_owned()));
        if end {
            break;
        }
    }
    assert_eq!(
        marks.first().map(String::as_str),
        Some("item0"),
        "{marks:?}"
    );
    assert_eq!(marks.last().map(String::as_str), Some("end"), "{marks:?}");
    assert!(marks.iter().any(|m| m == "heartbeat"), "{marks:?}");
    // Through the SDK: only the items.
    let stream = client
        .server_stream(
            &METHODS[2],
            Bytes::from_static(b"quiet"),
            &CallOptions::timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let items: Vec<Bytes> = stream.map(|r| r.unwrap()).collect().await;
    assert_eq!(items, [Bytes::from("item0"), Bytes::from("item1")]);
}

/// A client whose circuits open after two failures that lasted `grace`, for a minute.
async fn touchy_client(nats: &BareNats, grace: Duration) -> aicore_sdk::Client {
    aicore_sdk::Client::new(
        async_nats::connect(&nats.url).await.unwrap(),
        aicore_sdk::ClientConfig {
            breaker_threshold: 2,
            breaker_cooldown: Duration::from_secs(60),
            outage_grace: grace,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn no_responders_is_unavailable_and_the_breaker_opens() {
    let nats = BareNats::start().await;
    let client = touchy_client(&nats, Duration::from_millis(300)).await;
    let opts = CallOptions::timeout(Duration::from_secs(2));
    for _ in 0..2 {
        let e = client
            .unary(&METHODS[3], Bytes::new(), &opts)
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
    }
    let open = client
        .unary(&METHODS[3], Bytes::new(), &opts)
        .await
        .unwrap_err();
    assert_eq!(open.code, Code::Unavailable);
    assert!(open.message.contains("circuit open"), "{}", open.message);
    assert!(open.retry_after_ms > 0);
}

/// One caller's short deadlines are its own outcome: a burst of calls that each give the
/// service 1 ms (so each times out) must not open the circuit every other caller of the
/// subject shares. Then silence for whole attempts does open it: the breaker still
/// protects against a service that does not answer.
#[tokio::test]
async fn a_callers_own_short_deadlines_never_open_the_circuit_for_others() {
    let (nats, _svc, _client, _stop) = setup(64).await;
    let config = aicore_sdk::ClientConfig {
        breaker_threshold: 5,
        breaker_cooldown: Duration::from_secs(60),
        attempt_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let client = aicore_sdk::Client::new(async_nats::connect(&nats.url).await.unwrap(), config);
    // The handler takes 200 ms; these callers wait 1 ms. Four times the threshold.
    let hasty = CallOptions::timeout(Duration::from_millis(1));
    let mut calls = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        let hasty = hasty.clone();
        calls.push(tokio::spawn(async move {
            client
                .unary(&METHODS[1], Bytes::from_static(b"200"), &hasty)
                .await
        }));
    }
    for c in calls {
        let e = c.await.unwrap().unwrap_err();
        assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    }
    // A caller with time is served.
    let patient = CallOptions::timeout(Duration::from_secs(10));
    let ok = client
        .unary(&METHODS[1], Bytes::from_static(b"10"), &patient)
        .await
        .expect("a patient caller is served after others' deadlines ran out");
    assert_eq!(ok.as_ref(), b"10");
    // Silence for whole attempts (the handler takes longer than every attempt a 1 s
    // deadline allows) is the service's failure and counts: the circuit opens.
    let slow = CallOptions::timeout(Duration::from_millis(700));
    let mut open = None;
    for _ in 0..20 {
        let e = client
            .unary(&METHODS[1], Bytes::from_static(b"5000"), &slow)
            .await
            .unwrap_err();
        if e.message.contains("circuit open") {
            open = Some(e);
            break;
        }
    }
    let open = open.expect("silence for whole attempts opens the circuit");
    assert_eq!(open.code, Code::Unavailable);
}

/// A blip with nobody serving (a service restarting, its connection reconnecting) is
/// ridden out: a call that finds no responders reached no one, so even a write without
/// an idempotency key is re-sent, and it is applied once; a stream's start likewise. The
/// failures of many callers inside the blip do not open the circuit.
#[tokio::test]
async fn calls_ride_out_a_blip_with_nobody_serving_and_are_applied_once() {
    let nats = BareNats::start().await;
    let client = touchy_client(&nats, Duration::from_secs(30)).await;
    assert!(!METHODS[3].retry_safe(b"w"), "echo is a write without a key");
    let mut calls = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .unary(
                    &METHODS[3],
                    Bytes::from(format!("w{i}")),
                    &CallOptions::timeout(Duration::from_secs(20)),
                )
                .await
        }));
    }
    let streamer = {
        let client = client.clone();
        tokio::spawn(async move {
            let stream = client
                .server_stream(
                    &METHODS[2],
                    Bytes::new(),
                    &CallOptions::timeout(Duration::from_secs(20)),
                )
                .await?;
            stream.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
        })
    };
    // Nobody serves the subject for a while: the callers (running while this task
    // waits) are sent no-responders, each more than once.
    let probe = async_nats::connect(&nats.url).await.unwrap();
    let unserved = probe
        .request(METHODS[3].subject, Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(
        unserved.kind(),
        async_nats::RequestErrorKind::NoResponders
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let svc = Arc::new(TestService::default());
    let stop = CancellationToken::new();
    serve(
        async_nats::connect(&nats.url).await.unwrap(),
        Arc::new(Server(svc.clone())),
        ServeOptions::default(),
        stop.clone(),
    )
    .await
    .unwrap();
    for (i, c) in calls.into_iter().enumerate() {
        let reply = c.await.unwrap().expect("served once the service is back");
        assert_eq!(reply, Bytes::from(format!("w{i}")));
    }
    assert_eq!(svc.echoed.load(Ordering::SeqCst), 8, "each write applied once");
    let items = streamer.await.unwrap().expect("the stream starts once served");
    assert_eq!(items, ["item0", "item1", "item2"].map(Bytes::from));

    stop.cancel();
}

/// Asks `subject` and parses the one JSON answer.
async fn micro(raw: &async_nats::Client, subject: &str) -> serde_json::Value {
    let reply = raw
        .request(subject.to_string(), Bytes::new())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn discovery_and_stats_follow_the_micro_protocol() {
    let (nats, _svc, client, _stop) = setup(8).await;
    let raw = async_nats::connect(&nats.url).await.unwrap();
    let opts = CallOptions::timeout(Duration::from_secs(5));
    client
        .unary(&METHODS[3], Bytes::from_static(b"x"), &opts)
        .await
        .unwrap();
    client
        .unary(&METHODS[3], Bytes::from_static(b"y"), &opts)
        .await
        .unwrap();
    client
        .unary(&METHODS[0], Bytes::new(), &opts)
        .await
        .unwrap_err();
    let ping = micro(&raw, "$SRV.PING.rt_test").await;
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "rt_test");
    let id = ping["id"].as_str().unwrap().to_string();
    // The instance answers on its own id too.
    let info = micro(&raw, &format!("$SRV.INFO.rt_test.{id}")).await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["description"], "runtime test service");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        METHODS.iter().map(|m| m.subject).collect::<Vec<_>>()
    );
    assert_eq!(info["endpoints"][0]["queue_group"], "rt_test");
    let stats = micro(&raw, "$SRV.STATS").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let endpoint = |rpc: &str| {
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == rpc)
            .cloned()
            .unwrap()
    };
    let echo = endpoint("echo");
    assert_eq!(echo["num_requests"], 2);
    assert_eq!(echo["num_errors"], 0);
    assert!(echo["processing_time"].as_u64().unwrap() > 0);
    let panic = endpoint("panic");
    assert_eq!(
        (panic["num_requests"].as_u64(), panic["num_errors"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(panic["last_error"].as_str().unwrap().contains("internal"));
}

/// A responder for `svc.state_manager.v1.put` in front of a real state-manager domain (on
/// an in-memory store): it applies every request it receives, but drops the reply to
/// the first request for each key — the write happened, its answer was lost. Returns how
/// many requests it received per key.
async fn lossy_put_responder(
    url: &str,
) -> Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> {
    use aicore_proto::aicore::state_manager::v1::PutRequest;
    use prost::Message;
    let (ctx, _clock) = aicore_runtime::Ctx::for_tests();
    let dispatch = (aicore_domains::registry::find("state_manager")
        .expect("state_manager is registered")
        .build)(&ctx, &Default::default())
    .expect("building state_manager");
    let (put, _) = aicore_proto::find_service("state_manager")
        .unwrap()
        .method("put")
        .unwrap();
    let nats = async_nats::connect(url).await.unwrap();
    let mut sub = nats.subscribe("svc.state_manager.v1.put").await.unwrap();
    nats.flush().await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let counts = seen.clone();
    tokio::spawn(async move {
        // Keeps the context (its store) alive as long as the responder.
        let _ctx = ctx;
        while let Some(msg) = sub.next().await {
            let key = PutRequest::decode(msg.payload.clone()).unwrap().key;
            let n = {
                let mut seen = counts.lock().unwrap();
                let n = seen.entry(key).or_insert(0);
                *n += 1;
                *n
            };
            let result = dispatch.call(put, Request::new(msg.payload.clone())).await;
            if n == 1 {
                continue;
            }
            let Some(reply) = msg.reply else { continue };
            let _ = match result {
                Ok(Reply::Unary(b)) => nats.publish(reply, b).await,
                Ok(Reply::Stream(_)) => unreachable!("put is unary"),
                Err(s) => {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(
                        aicore_proto::headers::SERVICE_ERROR_CODE,
                        s.http_status().to_string().as_str(),
                    );
                    h.insert(aicore_proto::headers::SERVICE_ERROR, s.message.as_str());
                    nats.publish_with_headers(reply, h, s.to_proto().encode_to_vec().into())
                        .await
                }
            };
        }
    });
    seen
}

/// Retries do not invent conflicts: a create-only write without an idempotency key whose
/// reply was lost after it applied is not sent again (a retry would answer Conflict to a
/// write that succeeded); with a key, its own or one the SDK adds, it is retried and
/// returns the first result.
#[tokio::test]
async fn a_write_is_retried_only_with_an_idempotency_key() {
    use aicore_proto::aicore::state_manager::v1::{PutRequest, StateManagerClient};
    let nats = BareNats::start().await;
    let seen = lossy_put_responder(&nats.url).await;
    let client = StateManagerClient::new(aicore_sdk::Client::new(
        async_nats::connect(&nats.url).await.unwrap(),
        aicore_sdk::ClientConfig {
            attempt_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    ));
    let create = |key: &str, idempotency_key: &str| PutRequest {
        player_id: "p1".into(),
        key: key.into(),
        data: Bytes::from_static(b"once"),
        expected_version: Some(0),
        idempotency_key: idempotency_key.into(),
        ..Default::default()
    };
    let opts = CallOptions::timeout(Duration::from_secs(3));
    let count = |key: &str| seen.lock().unwrap().get(key).copied().unwrap_or(0);

    let keyless = client.put(create("keyless", ""), &opts).await.unwrap_err();
    assert_ne!(keyless.code, Code::Conflict, "{keyless}");
    assert_eq!(keyless.code, Code::DeadlineExceeded, "{keyless}");
    assert_eq!(count("keyless"), 1, "a keyless write was sent again");

    let keyed = client
        .put(create("keyed", "idk-1"), &opts)
        .await
        .expect("a keyed write is retried and returns the first result");
    assert_eq!(keyed.metadata.unwrap().version, 1);
    assert_eq!(count("keyed"), 2);

    let fresh = client
        .put(
            create("fresh", ""),
            &opts.clone().with_fresh_idempotency_key(),
        )
        .await
        .expect("a write given a key by the SDK is retried and returns the first result");
    assert_eq!(fresh.metadata.unwrap().version, 1);
    assert_eq!(count("fresh"), 2);
}
