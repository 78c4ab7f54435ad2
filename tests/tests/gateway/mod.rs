//! The HTTP gateway over real HTTP against a real `aicore run`: routes and transcoding,
//! every status of the error mapping, bearer auth and roles from the proto policy,
//! revocation at once, rate limit, in-flight bound, SSE streams (world_state Watch) with
//! client disconnect and shutdown, operations endpoints, the OpenAPI document checked by
//! an independent validator, and the README's curl examples run as written.

pub(crate) mod http;

use std::time::Duration;

use aicore_e2e::{Appliance, workspace};
use aicore_proto::CallOptions;
use aicore_proto::aicore::auth::v1 as auth;

use self::http::{Http, Reply};

pub(crate) const PW: &str = "violet-otter-lantern";

/// Registers and logs in `name` over HTTP; returns the login reply.
pub(crate) async fn player(http: &Http, name: &str) -> serde_json::Value {
    let body = format!(r#"{{"username":"{name}","password":"{PW}"}}"#);
    let r = http.post("/v1/auth/register", &body, &[]).await;
    assert_eq!(r.status, 200, "register {name}: {}", r.json());
    login(http, name, PW).await
}

pub(crate) async fn login(http: &Http, name: &str, password: &str) -> serde_json::Value {
    let body = format!(r#"{{"username":"{name}","password":"{password}"}}"#);
    let r = http.post("/v1/auth/login", &body, &[]).await;
    assert_eq!(r.status, 200, "login {name}: {}", r.json());
    r.json()
}

pub(crate) fn s(v: &serde_json::Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

/// Makes `account_id` an admin through the SDK (a trusted NATS principal).
pub(crate) async fn make_admin(app: &Appliance, account_id: &str) {
    auth::AuthClient::new(app.client().await)
        .grant_role(
            auth::GrantRoleRequest {
                account_id: account_id.into(),
                role: "admin".into(),
                revoke: false,
            },
            &CallOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .expect("granting admin");
}

pub(crate) fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), "application/json");
    let j = r.json();
    assert_eq!(j["code"], code, "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    assert!(j["field_violations"].is_array(), "{j}");
}

/// A metric's value in a `/metrics` page (0 when absent).
/// The gateway's count of revocation notices received.
async fn revocations(http: &Http) -> f64 {
    let page = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
    metric(&page, "aicore_gateway_revocations_total")
}

/// Waits until the gateway has received a revocation notice beyond `before`. A revocation
/// takes effect at the gateway when its notice arrives (one NATS hop after the revoking
/// commit); the assertions that follow check the very next request after that.
async fn revocation_delivered(http: &Http, before: f64) {
    for _ in 0..200 {
        if revocations(http).await > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no revocation notice reached the gateway");
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn gateway_maps_every_status_and_enforces_the_proto_policy() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);

    // Operations.
    assert_eq!(http.get("/healthz").await.status, 200);
    let ready = http.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.json());
    assert_eq!(ready.json()["ready"], true);
    let docs = http.get("/docs").await;
    assert_eq!(docs.status, 200);
    assert!(docs.header("content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&docs.body).contains("openapi.json"));

    // Public routes need no token; proto3 JSON both ways.
    let mira = player(&http, "mira").await;
    let (token, id) = (s(&mira, "accessToken"), s(&mira, "accountId"));
    assert!(token.starts_with("at_") && id.starts_with("acc_"), "{mira}");

    // 409 Conflict, 400 from the domain naming the field.
    let dup = format!(r#"{{"username":"mira","password":"{PW}"}}"#);
    assert_error(
        &http.post("/v1/auth/register", &dup, &[]).await,
        409,
        "CONFLICT",
    );
    let weak = http
        .post(
            "/v1/auth/register",
            r#"{"username":"weakling","password":"short"}"#,
            &[],
        )
        .await;
    assert_error(&weak, 400, "INVALID_ARGUMENT");
    assert_eq!(weak.field(), "password");

    // 400 from the gateway: malformed JSON, unknown field, wrong type — field named.
    let r = http.post("/v1/auth/login", r#"{"username": "#, &[]).await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(r.field(), "username", "where the JSON broke off");
    let r = http
        .post("/v1/auth/login", r#"{"username": "a"} trailing"#, &[])
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(r.field(), "(body)");
    let r = http
        .post("/v1/auth/login", r#"{"username":"a","nope":1}"#, &[])
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(r.field(), "nope");
    let r = http.post("/v1/auth/login", r#"{"username": 5}"#, &[]).await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(r.field(), "username");
    let r = http
        .post(
            "/v1/auth/login",
            "username=a",
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_error(&r, 415, "INVALID_ARGUMENT");
    let r = http
        .post("/v1/auth/login", "{}", &[("x-request-timeout-ms", "soon")])
        .await;
    assert_error(&r, 400, "INVALID_ARGUMENT");
    assert_eq!(r.field(), "X-Request-Timeout-Ms");

    // 404 for unknown domains and RPCs, 405 for other methods.
    assert_error(
        &http.post("/v1/nope/login", "{}", &[]).await,
        404,
        "NOT_FOUND",
    );
    assert_error(
        &http.post("/v1/auth/nope", "{}", &[]).await,
        404,
        "NOT_FOUND",
    );
    assert_error(&http.get("/v1/auth/login").await, 405, "INVALID_ARGUMENT");

    // Kebab-case routes work too; 200 with every field present.
    let me = format!(r#"{{"accountId":"{id}"}}"#);
    let r = http.call("/v1/auth/get-account", &me, &token).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["account"]["username"], "mira");
    assert_eq!(r.json()["account"]["displayName"], "mira");

    // 401 without or with a bad token; WWW-Authenticate says how.
    let r = http.post("/v1/auth/get_account", &me, &[]).await;
    assert_error(&r, 401, "UNAUTHENTICATED");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    let fake = format!("at_{}", "A".repeat(43));
    assert_error(
        &http.call("/v1/auth/get_account", &me, &fake).await,
        401,
        "UNAUTHENTICATED",
    );

    // 403 from the gateway (GrantRole needs the admin role, by its proto policy) and from
    // the domain (another player's data) — and injected caller headers change nothing.
    let grant = format!(r#"{{"accountId":"{id}","role":"admin"}}"#);
    assert_error(
        &http.call("/v1/auth/grant_role", &grant, &token).await,
        403,
        "PERMISSION_DENIED",
    );
    let other = player(&http, "otto").await;
    let theirs = format!(r#"{{"accountId":"{}"}}"#, s(&other, "accountId"));
    assert_error(
        &http.call("/v1/auth/get_account", &theirs, &token).await,
        403,
        "PERMISSION_DENIED",
    );
    let bearer = format!("Bearer {token}");
    let other_id = s(&other, "accountId");
    let r = http
        .post(
            "/v1/auth/get_account",
            &theirs,
            &[
                ("authorization", &bearer),
                ("aicore-caller", &other_id),
                ("aicore-caller-roles", "admin"),
            ],
        )
        .await;
    assert_error(&r, 403, "PERMISSION_DENIED");

    // 404 NotFound from a domain.
    let missing = format!(r#"{{"playerId":"{id}","key":"save/none"}}"#);
    assert_error(
        &http.call("/v1/state_manager/get", &missing, &token).await,
        404,
        "NOT_FOUND",
    );

    // 412 FailedPrecondition: an admin may not change a setting's type.
    let root = player(&http, "root").await;
    make_admin(&app, &s(&root, "accountId")).await;
    let admin = s(&root, "accessToken");
    let int = r#"{"key":"audio.volume","type":"SETTING_TYPE_INT","defaultValue":{"intValue":"5"},"scopes":["SCOPE_PLAYER"]}"#;
    let r = http.call("/v1/settings/define_schema", int, &admin).await;
    assert_eq!(r.status, 200, "{}", r.json());
    let float = r#"{"key":"audio.volume","type":"SETTING_TYPE_FLOAT","defaultValue":{"floatValue":1.5},"scopes":["SCOPE_PLAYER"]}"#;
    assert_error(
        &http.call("/v1/settings/define_schema", float, &admin).await,
        412,
        "FAILED_PRECONDITION",
    );

    // 413 beyond the body limit (357 KiB by default), with a code of its own.
    let big = format!(r#"{{"username":"{}"}}"#, "x".repeat(400 * 1024));
    assert_error(
        &http.post("/v1/auth/login", &big, &[]).await,
        413,
        "PAYLOAD_TOO_LARGE",
    );

    // 504 when the deadline passes (argon2 takes longer than a millisecond).
    let body = format!(r#"{{"username":"mira","password":"{PW}"}}"#);
    let r = http
        .post("/v1/auth/login", &body, &[("x-request-timeout-ms", "1")])
        .await;
    assert_error(&r, 504, "DEADLINE_EXCEEDED");

    // Request id and trace context: taken from the request, echoed, made when absent.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http
        .post(
            "/v1/auth/get_account",
            &me,
            &[
                ("authorization", &bearer),
                ("x-request-id", "e2e-42"),
                ("traceparent", parent),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), "e2e-42");
    assert!(
        r.header("traceparent")
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert_ne!(
        r.header("traceparent"),
        parent,
        "the gateway is a hop of its own"
    );
    let r = http.post("/v1/auth/nope", "{}", &[]).await;
    assert_eq!(r.header("x-request-id").len(), 32);

    // Metrics saw all of it.
    let m = http.get("/metrics").await;
    assert_eq!(m.status, 200);
    let page = String::from_utf8_lossy(&m.body).to_string();
    for line in [
        r#"aicore_gateway_requests_total{route="/v1/auth/register",status="409"} 1"#,
        r#"aicore_gateway_requests_total{route="/v1/auth/login",status="413"} 1"#,
        r#"aicore_gateway_requests_total{route="/v1/auth/login",status="504"} 1"#,
        r#"aicore_gateway_requests_total{route="/v1/settings/define_schema",status="412"} 1"#,
        r#"aicore_gateway_request_duration_seconds_count{route="/v1/auth/get_account"}"#,
    ] {
        assert!(page.contains(line), "{line} missing from\n{page}");
    }
    assert!(
        metric(
            &page,
            r#"aicore_gateway_requests_total{route="unmatched",status="404"}"#
        ) >= 3.0
    );
    assert!(metric(&page, "aicore_gateway_validate_cache_hits_total") >= 1.0);
    assert_eq!(metric(&page, "aicore_gateway_in_flight"), 0.0);
}

#[tokio::test]
async fn gateway_carries_an_object_of_the_state_manager_limit_and_names_each_refusal() {
    use base64::Engine as _;
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let me = player(&http, "saver").await;
    let (token, id) = (s(&me, "accessToken"), s(&me, "accountId"));
    let limit = aicore_domains::DomainsConfig::default()
        .state_manager
        .max_object_bytes;
    let put = |key: &str, len: usize| {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        let body = format!(
            r#"{{"playerId":"{id}","key":"{key}","data":"{data}","contentType":"application/octet-stream"}}"#
        );
        (data, body)
    };

    // Exactly the state-manager's limit: stored, and read back byte for byte.
    let (data, body) = put("save/full", limit);
    let r = http.call("/v1/state_manager/put", &body, &token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let get = format!(r#"{{"playerId":"{id}","key":"save/full"}}"#);
    let r = http.call("/v1/state_manager/get", &get, &token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["data"] == data.as_str(),
        "the object came back changed"
    );

    // One byte more: through the gateway, refused by the state manager naming the field.
    let (_, body) = put("save/over", limit + 1);
    let r = http.call("/v1/state_manager/put", &body, &token).await;
    assert_error(&r, 429, "RESOURCE_EXHAUSTED");
    assert_eq!(r.field(), "data");
    // No Retry-After: waiting does not lift a size limit.
    assert_eq!(r.header("retry-after"), "", "a size limit invites a retry");

    // A body over the HTTP limit: 413 with its own code, before any domain sees it.
    let (_, body) = put("save/huge", 2 * limit);
    let r = http.call("/v1/state_manager/put", &body, &token).await;
    assert_error(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(r.field(), "(body)");
}

#[tokio::test]
async fn gateway_revocation_takes_effect_on_the_very_next_request() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let first = player(&http, "ana").await;
    let id = s(&first, "accountId");
    let me = format!(r#"{{"accountId":"{id}"}}"#);

    // Logout: the cached token is refused at once, the other session lives on.
    let keep = login(&http, "ana", PW).await;
    for _ in 0..3 {
        let l = login(&http, "ana", PW).await;
        let t = s(&l, "accessToken");
        for _ in 0..3 {
            assert_eq!(http.call("/v1/auth/get_account", &me, &t).await.status, 200);
        }
        let before = revocations(&http).await;
        let out = http
            .post(
                "/v1/auth/logout",
                &format!(r#"{{"accessToken":"{t}"}}"#),
                &[],
            )
            .await;
        assert_eq!(out.status, 200, "{}", out.json());
        revocation_delivered(&http, before).await;
        let after = http.call("/v1/auth/get_account", &me, &t).await;
        assert_error(&after, 401, "UNAUTHENTICATED");
    }
    let kept = s(&keep, "accessToken");
    assert_eq!(
        http.call("/v1/auth/get_account", &me, &kept).await.status,
        200
    );

    // A password change ends every other session; the calling one stays valid.
    let other = s(&login(&http, "ana", PW).await, "accessToken");
    assert_eq!(
        http.call("/v1/auth/get_account", &me, &other).await.status,
        200
    );
    let change = format!(
        r#"{{"accountId":"{id}","oldPassword":"{PW}","newPassword":"a-brand-new-passphrase"}}"#
    );
    let before = revocations(&http).await;
    let changed = http.call("/v1/auth/change_password", &change, &kept).await;
    assert_eq!(changed.status, 200, "{}", changed.json());
    assert_eq!(changed.json()["revokedSessions"], 2, "{}", changed.json());
    revocation_delivered(&http, before).await;
    assert_error(
        &http.call("/v1/auth/get_account", &me, &other).await,
        401,
        "UNAUTHENTICATED",
    );
    assert_eq!(
        http.call("/v1/auth/get_account", &me, &kept).await.status,
        200
    );

    // Refresh-token reuse ends the session, including the token the refresh issued.
    let l = login(&http, "ana", "a-brand-new-passphrase").await;
    let old_refresh = s(&l, "refreshToken");
    let refresh = format!(r#"{{"refreshToken":"{old_refresh}"}}"#);
    let rotated = http.post("/v1/auth/refresh", &refresh, &[]).await;
    assert_eq!(rotated.status, 200);
    let t = s(&rotated.json(), "accessToken");
    assert_eq!(http.call("/v1/auth/get_account", &me, &t).await.status, 200);
    let before = revocations(&http).await;
    assert_error(
        &http.post("/v1/auth/refresh", &refresh, &[]).await,
        401,
        "UNAUTHENTICATED",
    );
    revocation_delivered(&http, before).await;
    assert_error(
        &http.call("/v1/auth/get_account", &me, &t).await,
        401,
        "UNAUTHENTICATED",
    );

    // A role change applies at once to a cached token.
    let l = login(&http, "ana", "a-brand-new-passphrase").await;
    let t = s(&l, "accessToken");
    let grant = format!(r#"{{"accountId":"{id}","role":"player"}}"#);
    assert_error(
        &http.call("/v1/auth/grant_role", &grant, &t).await,
        403,
        "PERMISSION_DENIED",
    );
    let before = revocations(&http).await;
    make_admin(&app, &id).await;
    revocation_delivered(&http, before).await;
    let r = http.call("/v1/auth/grant_role", &grant, &t).await;
    assert_eq!(r.status, 200, "{}", r.json());

    let page = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
    assert!(
        metric(&page, "aicore_gateway_revocations_total") >= 6.0,
        "{page}"
    );
}

/// The next revocation message on `sub` that `pick` accepts (within a minute).
async fn next_notice(
    sub: &mut async_nats::Subscriber,
    pick: impl Fn(&auth::RevocationNotice) -> bool,
) -> auth::RevocationNotice {
    use futures::StreamExt;
    use prost::Message;
    let wait = async {
        loop {
            let m = sub.next().await.expect("revocation subscription ended");
            let n = auth::RevocationNotice::decode(m.payload).expect("a protobuf notice");
            if pick(&n) {
                return n;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("no such revocation message")
}

#[tokio::test]
async fn auth_numbers_its_revocation_notices_and_repeats_the_epoch_in_heartbeats() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let nats = app.nats().await;
    let mut sub = nats
        .subscribe(aicore_proto::subjects::AUTH_REVOKED)
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let is_heartbeat =
        |n: &auth::RevocationNotice| n.session_ids.is_empty() && n.account_ids.is_empty();
    let first = next_notice(&mut sub, is_heartbeat).await;
    assert_eq!(first.heartbeat_interval_ms, 500);

    let l = player(&http, "kim").await;
    let (t, session) = (s(&l, "accessToken"), s(&l, "sessionId"));
    let me = format!(r#"{{"accountId":"{}"}}"#, s(&l, "accountId"));
    assert_eq!(http.call("/v1/auth/get_account", &me, &t).await.status, 200);
    let epoch = next_notice(&mut sub, is_heartbeat).await.epoch;
    let before = revocations(&http).await;
    let out = http
        .post(
            "/v1/auth/logout",
            &format!(r#"{{"accessToken":"{t}"}}"#),
            &[],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.json());
    let notice = next_notice(&mut sub, |n| !is_heartbeat(n)).await;
    assert_eq!(notice.session_ids, vec![session]);
    assert_eq!(notice.epoch, epoch + 1);
    assert_eq!(next_notice(&mut sub, is_heartbeat).await.epoch, epoch + 1);
    revocation_delivered(&http, before).await;
    assert_error(
        &http.call("/v1/auth/get_account", &me, &t).await,
        401,
        "UNAUTHENTICATED",
    );
}

#[tokio::test]
async fn logins_through_the_gateway_reach_the_audit_stream_with_their_source() {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    use prost::Message;
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let l = player(&http, "lena").await;
    let failed = http
        .post(
            "/v1/auth/login",
            r#"{"username":"lena","password":"not-her-password"}"#,
            &[],
        )
        .await;
    assert_error(&failed, 401, "UNAUTHENTICATED");

    let js = jetstream::new(app.nats().await);
    let stream = js.get_stream("AUDIT").await.expect("stream AUDIT");
    let audit: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: "audit.auth.>".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = audit.messages().await.expect("messages");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("audit events in time")
            .expect("a message")
            .expect("a readable message");
        let e = auth::AuthAuditEvent::decode(m.payload.clone()).expect("an AuthAuditEvent");
        assert_eq!(m.subject.as_str(), format!("audit.auth.{}", e.kind));
        seen.push(e);
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["login_succeeded", "login_failed"]);
    for e in &seen {
        assert_eq!(e.account_id, s(&l, "accountId"));
        // The gateway passed the TCP peer's address along.
        assert_eq!(e.source, "127.0.0.1");
    }
    assert_eq!(seen[0].session_id, s(&l, "sessionId"));
}

#[tokio::test]
async fn gateway_rate_limits_per_client_with_429_and_retry_after() {
    let app =
        Appliance::start_with_config("[http]\nrate_limit_per_sec = 0.2\nrate_limit_burst = 4\n")
            .await;
    let http = Http::new(&app.http_url);
    // The client address: register and login take two tokens of its four.
    let l = player(&http, "rita").await;
    let (t, id) = (s(&l, "accessToken"), s(&l, "accountId"));
    let me = format!(r#"{{"accountId":"{id}"}}"#);
    // A token the cache has not seen costs the address one more; then the account's own
    // bucket (four) serves authenticated calls.
    for _ in 0..4 {
        assert_eq!(http.call("/v1/auth/get_account", &me, &t).await.status, 200);
    }
    let r = http.call("/v1/auth/get_account", &me, &t).await;
    assert_error(&r, 429, "RESOURCE_EXHAUSTED");
    let wait: u64 = r
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=6).contains(&wait), "{wait}");
    // The address has one token left, then it is refused too.
    let body = format!(r#"{{"username":"rita","password":"{PW}"}}"#);
    assert_eq!(http.post("/v1/auth/login", &body, &[]).await.status, 200);
    assert_error(
        &http.post("/v1/auth/login", &body, &[]).await,
        429,
        "RESOURCE_EXHAUSTED",
    );
    let page = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
    assert_eq!(
        metric(&page, "aicore_gateway_rate_limited_total"),
        2.0,
        "{page}"
    );
}

#[tokio::test]
async fn gateway_answers_503_under_an_in_flight_flood_and_for_an_unserved_domain() {
    // One domain (not auth: the test logs in) is left unserved.
    let unserved = aicore_proto::SERVICES
        .iter()
        .find(|s| {
            s.domain != "auth"
                && s.methods
                    .iter()
                    .any(|m| m.policy.access != aicore_proto::Access::Roles)
        })
        .expect("a contract this build does not serve");
    let method = unserved
        .methods
        .iter()
        .find(|m| m.policy.access != aicore_proto::Access::Roles)
        .unwrap();
    let served = aicore_e2e::domains()
        .into_iter()
        .filter(|d| *d != unserved.domain)
        .collect::<Vec<_>>();
    let app = Appliance::start_serving_with_config(
        &served,
        &format!(
            "[http]\nmax_in_flight = 1\ndomains = [\"served\", \"{}\"]\n",
            unserved.domain
        ),
    )
    .await;
    let http = Http::new(&app.http_url);
    let l = player(&http, "flo").await;
    let t = s(&l, "accessToken");

    // Logins of an unknown user each cost an argon2 verification: with one slot, most of a
    // burst of them are refused at once instead of queueing.
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let http = http.clone();
            tokio::spawn(async move {
                http.post(
                    "/v1/auth/login",
                    r#"{"username":"nobody","password":"wrong-password-1"}"#,
                    &[],
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for b in burst {
        let r = b.await.unwrap();
        if r.status == 503 {
            assert_error(&r, 503, "UNAVAILABLE");
            assert_eq!(r.header("retry-after"), "1");
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&401), "{statuses:?}");
    let page = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
    assert!(
        metric(&page, "aicore_gateway_overloaded_total") >= 1.0,
        "{page}"
    );

    // A domain nobody serves: NATS has no responders, 503.
    let r = http
        .call(&format!("/v1/{}/{}", method.domain, method.rpc), "{}", &t)
        .await;
    assert_error(&r, 503, "UNAVAILABLE");
    // And the gateway is not ready, naming it.
    let ready = http.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["missing"],
        serde_json::json!([unserved.domain])
    );
}

#[tokio::test]
async fn gateway_streams_world_changes_as_sse_cancels_on_disconnect_and_drains_on_sigterm() {
    let mut app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let root = player(&http, "gamemaster").await;
    make_admin(&app, &s(&root, "accountId")).await;
    let admin = s(&root, "accessToken");
    for (key, data) in [("castle.gate", "b3Blbg=="), ("castle.bridge", "dXA=")] {
        let body = format!(r#"{{"key":"{key}","data":"{data}","contentType":"text/plain"}}"#);
        let r = http.call("/v1/world_state/set", &body, &admin).await;
        assert_eq!(r.status, 200, "{}", r.json());
    }
    let p = player(&http, "wanda").await;
    let bearer = format!("Bearer {}", s(&p, "accessToken"));

    // History, the caught-up marker, then `end` when the deadline closes the watch.
    let (status, headers, mut events) = http
        .stream(
            "/v1/world_state/watch",
            r#"{"fromRevision":"1","prefix":"castle."}"#,
            &[("authorization", &bearer), ("x-request-timeout-ms", "1500")],
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut keys = Vec::new();
    let mut caught_up = false;
    loop {
        let e = events
            .next(Duration::from_secs(10))
            .await
            .expect("the stream ends with an `end` event, not a dropped connection");
        match e.event.as_str() {
            "message" => {
                let j = e.json();
                if let Some(k) = j["change"]["key"].as_str() {
                    assert!(!caught_up, "history comes before the marker");
                    keys.push(k.to_string());
                } else {
                    assert!(j.get("caughtUp").is_some(), "{j}");
                    caught_up = true;
                }
            }
            "end" => break,
            other => panic!("unexpected event {other}: {}", e.data),
        }
    }
    assert_eq!(keys, ["castle.gate", "castle.bridge"]);
    assert!(caught_up);
    assert!(events.next(Duration::from_secs(5)).await.is_none());

    // Without a token, no stream: 401 as JSON.
    let (status, _, _) = http.stream("/v1/world_state/watch", "{}", &[]).await;
    assert_eq!(status, 401);

    // A client that goes away takes its upstream stream with it.
    let open_streams = |http: Http| async move {
        let page = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
        metric(&page, "aicore_gateway_open_streams")
    };
    let (status, _, mut events) = http
        .stream(
            "/v1/world_state/watch",
            r#"{"fromRevision":"0"}"#,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200);
    let first = events.next(Duration::from_secs(10)).await.unwrap();
    assert!(first.json().get("caughtUp").is_some(), "{}", first.data);
    assert_eq!(open_streams(http.clone()).await, 1.0);
    drop(events);
    let mut gone = false;
    for _ in 0..50 {
        if open_streams(http.clone()).await == 0.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the stream outlived its client");

    // Shutdown: an open stream gets an `error` event, then the appliance exits cleanly.
    let (_, _, mut events) = http
        .stream(
            "/v1/world_state/watch",
            r#"{"fromRevision":"0"}"#,
            &[("authorization", &bearer)],
        )
        .await;
    events.next(Duration::from_secs(10)).await.unwrap();
    app.signal(libc::SIGTERM);
    let e = events
        .next(Duration::from_secs(10))
        .await
        .expect("an error event");
    assert_eq!(e.event, "error", "{}", e.data);
    assert_eq!(e.json()["code"], "UNAVAILABLE");
    assert!(events.next(Duration::from_secs(10)).await.is_none());
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
}

#[tokio::test]
async fn gateway_openapi_document_passes_an_independent_validator() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let r = http.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for d in aicore_e2e::domains() {
        let svc = aicore_proto::find_service(d).unwrap();
        for m in svc.methods {
            let op = &doc["paths"][format!("/v1/{d}/{}", m.rpc)]["post"];
            assert!(op.is_object(), "no operation for {}", m.subject);
            let public = m.policy.access == aicore_proto::Access::Public;
            assert_eq!(
                op["security"].as_array().unwrap().is_empty(),
                public,
                "{}",
                m.subject
            );
        }
    }
    let file = app.data_dir.join("openapi.json");
    std::fs::write(&file, &r.body).unwrap();
    let checker = workspace().join(".tools/venv/bin/openapi-spec-validator");
    assert!(
        checker.exists(),
        "{} is missing: run `make test` (it installs it)",
        checker.display()
    );
    let out = std::process::Command::new(&checker)
        .arg(&file)
        .output()
        .expect("running openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs schemathesis (pinned, in `.tools/st-venv`) against the live gateway with
/// `scripts/schemathesis.toml`, a bounded number of cases per operation and a fixed
/// seed, sending `token`; only the paths matching `paths` (a regex) when given.
fn schemathesis(app: &Appliance, token: &str, paths: Option<&str>) -> std::process::Output {
    let st = workspace().join(".tools/st-venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run `make test` (it installs it)",
        st.display()
    );
    let mut command = std::process::Command::new(&st);
    command
        .arg("--config-file")
        .arg(workspace().join("scripts/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", app.http_url))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "5", "--seed", "20261205"])
        .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
        // The page-token format (see the hooks module).
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", workspace().join("scripts"))
        .current_dir(&app.data_dir);
    if let Some(p) = paths {
        command.args(["--include-path-regex", p]);
    }
    command.output().expect("running schemathesis")
}

/// The OpenAPI document says what the server enforces: schemathesis, an independent
/// property-based tester, generates requests valid and invalid by the document and
/// checks every answer (no 5xx but the documented 504 of a too-short deadline, statuses
/// and bodies as documented, SSE events as documented, invalid requests refused, and —
/// where the document states every constraint — valid requests accepted). Once as a
/// player on every operation, once as an admin on the role-gated ones.
#[tokio::test]
async fn gateway_agrees_with_its_openapi_document_under_schemathesis() {
    let app = Appliance::start().await;
    let http = Http::new(&app.http_url);
    let p = player(&http, "st-player").await;
    let a = player(&http, "st-admin").await;
    make_admin(&app, &s(&a, "accountId")).await;
    let admin = login(&http, "st-admin", PW).await;
    let mut gated = Vec::new();
    for d in aicore_e2e::domains() {
        for m in aicore_proto::find_service(d).unwrap().methods {
            if m.policy.access == aicore_proto::Access::Roles {
                gated.push(format!("{d}/{}", m.rpc));
            }
        }
    }
    let gated = format!("^/v1/({})$", gated.join("|"));
    // Both runs, then one verdict, so a failure shows every disagreement.
    let mut failed = String::new();
    for (who, token, paths) in [
        ("player", s(&p, "accessToken"), None),
        ("admin", s(&admin, "accessToken"), Some(gated.as_str())),
    ] {
        let out = schemathesis(&app, &token, paths);
        if !out.status.success() {
            failed += &format!(
                "schemathesis ({who}) found disagreements with the document:\n{}\n{}\n",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(failed.is_empty(), "{failed}");
}

#[tokio::test]
async fn gateway_readme_curl_examples_run_as_written() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = readme
        .split("<!-- gateway-examples -->")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README's gateway examples");
    assert!(block.contains("GW=http://localhost:8080"));
    let app = Appliance::start().await;
    let script = block.replace("GW=http://localhost:8080", &format!("GW={}", app.http_url));
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README examples failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""accountId""#), "{stdout}");
    assert!(stdout.contains(r#""data":"aGVsbG8=""#), "{stdout}");
    assert!(
        stdout.contains(r#""field":"password""#) && stdout.contains(" 400"),
        "{stdout}"
    );
    assert!(
        stdout.contains("event: message") && stdout.contains("event: end"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("401"), "{stdout}");
}

#[tokio::test]
async fn gateway_answers_500_when_a_service_fails_internally() {
    // A domain left unserved in this run (the build may serve every contract) is played by
    // the test itself, so it can fail the way a buggy domain would: an Internal error
    // reply, then a reply the gateway cannot decode.
    let (service, method) = aicore_proto::SERVICES
        .iter()
        .filter(|s| s.domain != "auth")
        .find_map(|s| {
            s.methods
                .iter()
                .find(|m| {
                    m.policy.access == aicore_proto::Access::Authenticated && !m.server_streaming
                })
                .map(|m| (s, m))
        })
        .expect("an unserved contract with an authenticated unary rpc");
    let served = aicore_e2e::domains()
        .into_iter()
        .filter(|d| *d != service.domain)
        .collect::<Vec<_>>();
    let app = Appliance::start_serving_with_config(
        &served,
        &format!("[http]\ndomains = [\"served\", \"{}\"]\n", service.domain),
    )
    .await;
    let nats = app.nats().await;
    let mut sub = nats.subscribe(method.subject).await.unwrap();
    nats.flush().await.unwrap();
    let responder = nats.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        use prost::Message;
        let mut n = 0;
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            n += 1;
            if n == 1 {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Service-Error", "internal error");
                h.insert("Nats-Service-Error-Code", "500");
                let body = aicore_proto::Status::internal("internal error").to_proto();
                let _ = responder
                    .publish_with_headers(reply, h, body.encode_to_vec().into())
                    .await;
            } else {
                let _ = responder
                    .publish(reply, bytes::Bytes::from_static(&[0xff, 0xff, 0xff]))
                    .await;
            }
        }
    });
    let http = Http::new(&app.http_url);
    let t = s(&player(&http, "ivy").await, "accessToken");
    let path = format!("/v1/{}/{}", service.domain, method.rpc);
    assert_error(&http.call(&path, "{}", &t).await, 500, "INTERNAL");
    assert_error(&http.call(&path, "{}", &t).await, 500, "INTERNAL");
}
