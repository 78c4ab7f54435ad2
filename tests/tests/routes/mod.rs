//! The router's route table at the gateway, over real HTTP against a real `aicore run`:
//! a disabled route is refused at once (404, or 410 with its reason) without reaching its
//! domain, and re-enabling it restores it; a path only the table knows reaches its target;
//! a route's own rate limit answers 429 with Retry-After; a change made over NATS (not
//! through the gateway) reaches the gateway without a restart; the router's own paths
//! cannot be routed.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::CallOptions;
use aicore_proto::aicore::router::v1 as router;

use crate::gateway::http::Http;
use crate::gateway::{PW, assert_error, login, make_admin, player, s};

/// An appliance serving auth and router, and an admin's access token. The gateway's
/// periodic reload is pushed out of the tests' reach, so a change arrives through its
/// notice or not at all.
async fn setup() -> (Appliance, Http, String) {
    let app =
        Appliance::start_serving_with_config(&["auth", "router"], "[http]\nroute_refresh_ms = 600000\n")
            .await;
    let http = Http::new(&app.http_url);
    let a = player(&http, "route-admin").await;
    make_admin(&app, &s(&a, "accountId")).await;
    let token = s(&login(&http, "route-admin", PW).await, "accessToken");
    (app, http, token)
}

/// Sets a route through the gateway (as the admin); `extra` is more JSON fields of the
/// route.
async fn set_route(http: &Http, token: &str, path: &str, rpc: &str, enabled: bool, extra: &str) {
    let body = format!(
        r#"{{"route":{{"path":"{path}","domain":"auth","rpc":"{rpc}","apiVersion":"v1","enabled":{enabled}{extra}}}}}"#
    );
    let r = http.call("/v1/router/set_route", &body, token).await;
    assert_eq!(r.status, 200, "{}", r.json());
}

fn register_body(name: &str) -> String {
    format!(r#"{{"username":"{name}","password":"{PW}"}}"#)
}

#[tokio::test]
async fn a_disabled_route_is_refused_at_once_without_reaching_its_domain() {
    let (_app, http, admin) = setup().await;
    set_route(&http, &admin, "/v1/auth/register", "Register", false, "").await;
    // Switched off: 404, as if the path did not exist.
    let r = http
        .post("/v1/auth/register", &register_body("ghost"), &[])
        .await;
    assert_error(&r, 404, "NOT_FOUND");
    // Retired with a reason: 410 Gone, saying why.
    set_route(
        &http,
        &admin,
        "/v1/auth/register",
        "Register",
        false,
        r#","disabledReason":"sign up in the launcher""#,
    )
    .await;
    let r = http
        .post("/v1/auth/register", &register_body("ghost"), &[])
        .await;
    assert_error(&r, 410, "NOT_FOUND");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("sign up in the launcher"),
        "{}",
        r.json()
    );
    // Back on: the same registration succeeds, so the refused ones never reached auth
    // (it would now be a taken username).
    set_route(&http, &admin, "/v1/auth/register", "Register", true, "").await;
    let r = http
        .post("/v1/auth/register", &register_body("ghost"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    // The table lists the route as it stands.
    let list = http.call("/v1/router/list_routes", "{}", &admin).await;
    assert_eq!(list.status, 200, "{}", list.json());
    let routes = list.json()["routes"].as_array().unwrap().clone();
    assert_eq!(routes.len(), 1, "{}", list.json());
    assert_eq!(routes[0]["enabled"], true);
    assert_eq!(routes[0]["version"], "3");
}

#[tokio::test]
async fn a_routes_own_limit_answers_429_with_retry_after_on_a_path_only_the_table_knows() {
    let (_app, http, admin) = setup().await;
    // Before the route, the path is unknown.
    let body = format!(r#"{{"username":"route-admin","password":"{PW}"}}"#);
    assert_error(&http.post("/v2/signin", &body, &[]).await, 404, "NOT_FOUND");
    set_route(
        &http,
        &admin,
        "/v2/signin",
        "Login",
        true,
        r#","rateLimit":{"requests":2,"period":"60s","key":"RATE_LIMIT_KEY_GLOBAL"}"#,
    )
    .await;
    for _ in 0..2 {
        let r = http.post("/v2/signin", &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.json());
        assert!(r.json()["accessToken"].as_str().is_some());
    }
    let r = http.post("/v2/signin", &body, &[]).await;
    assert_error(&r, 429, "RESOURCE_EXHAUSTED");
    let wait: u64 = r.header("retry-after").parse().expect("a Retry-After");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // The limit is the route's own: the descriptor path of the same RPC is not limited.
    let r = http.post("/v1/auth/login", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.json());
}

#[tokio::test]
async fn a_change_made_over_nats_reaches_the_gateway_without_a_restart() {
    let (app, http, _admin) = setup().await;
    let r = http.post("/v1/auth/login", "{}", &[]).await;
    assert_eq!(r.status, 400, "{}", r.json());
    // Straight to the router over NATS, not through the gateway: the gateway learns of
    // it from the change notice.
    router::RouterClient::new(app.client().await)
        .set_route(
            router::SetRouteRequest {
                route: Some(router::Route {
                    path: "/v1/auth/login".into(),
                    domain: "auth".into(),
                    rpc: "Login".into(),
                    api_version: "v1".into(),
                    enabled: false,
                    ..Default::default()
                }),
                expected_version: Some(0),
            },
            &CallOptions::timeout(Duration::from_secs(10)),
        )
        .await
        .expect("setting the route over NATS");
    let mut status = 0;
    for _ in 0..200 {
        status = http.post("/v1/auth/login", "{}", &[]).await.status;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 404, "the gateway never saw the disabled route");
}

#[tokio::test]
async fn the_routers_own_paths_and_bad_routes_are_refused_naming_the_field() {
    let (_app, http, admin) = setup().await;
    for (body, field) in [
        (
            r#"{"route":{"path":"/v1/router/set_route","domain":"auth","rpc":"Login","apiVersion":"v1"}}"#,
            "route.path",
        ),
        (
            r#"{"route":{"path":"/v2/x","domain":"auth","rpc":"DropAll","apiVersion":"v1"}}"#,
            "route.rpc",
        ),
        (
            r#"{"route":{"path":"/v2/x","domain":"auth","rpc":"Login","apiVersion":"v1","enabled":true,"rateLimit":{"requests":5}}}"#,
            "route.rate_limit.key",
        ),
    ] {
        let r = http.call("/v1/router/set_route", body, &admin).await;
        assert_error(&r, 400, "INVALID_ARGUMENT");
        assert_eq!(r.field(), field, "{}", r.json());
    }
    // A player may not change the table.
    let p = player(&http, "route-player").await;
    let r = http
        .call(
            "/v1/router/set_route",
            r#"{"route":{"path":"/v2/x","domain":"auth","rpc":"Login","apiVersion":"v1"}}"#,
            &s(&p, "accessToken"),
        )
        .await;
    assert_error(&r, 403, "PERMISSION_DENIED");
}
