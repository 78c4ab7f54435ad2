//! router's unit tests, on an in-memory store and a manual clock.

use std::sync::Mutex;

use super::*;

/// A router whose change notices land in the returned list.
fn domain() -> (Router, Arc<Mutex<Vec<RouteChange>>>) {
    domain_with(RouterConfig::default())
}

fn domain_with(config: RouterConfig) -> (Router, Arc<Mutex<Vec<RouteChange>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let r = Router::new(Ctx::for_tests().0, config)
        .with_change_hook(Arc::new(move |c| sink.lock().unwrap().push(c)));
    (r, seen)
}

fn route(path: &str) -> Route {
    Route {
        path: path.into(),
        domain: "auth".into(),
        rpc: "Login".into(),
        api_version: "v1".into(),
        enabled: true,
        ..Default::default()
    }
}

async fn set(r: &Router, route: Route) -> Result<SetRouteResponse, Status> {
    r.set_route(Request::new(SetRouteRequest {
        route: Some(route),
        expected_version: None,
    }))
    .await
}

async fn set_expecting(r: &Router, route: Route, v: u64) -> Result<SetRouteResponse, Status> {
    r.set_route(Request::new(SetRouteRequest {
        route: Some(route),
        expected_version: Some(v),
    }))
    .await
}

async fn remove(r: &Router, path: &str, v: Option<u64>) -> Result<RemoveRouteResponse, Status> {
    r.remove_route(Request::new(RemoveRouteRequest {
        path: path.into(),
        expected_version: v,
    }))
    .await
}

async fn list(
    r: &Router,
    prefix: &str,
    domain: &str,
    size: i32,
    token: &str,
) -> ListRoutesResponse {
    r.list_routes(Request::new(ListRoutesRequest {
        path_prefix: prefix.into(),
        domain: domain.into(),
        page_size: size,
        page_token: token.into(),
    }))
    .await
    .unwrap()
}

async fn resolve(r: &Router, path: &str) -> Result<ResolveResponse, Status> {
    r.resolve(Request::new(ResolveRequest { path: path.into() }))
        .await
}

fn field(e: &Status) -> &str {
    &e.field_violations[0].field
}

fn limit(requests: u32, period_ms: u64, burst: u32, key: RateLimitKey) -> Option<RateLimit> {
    Some(RateLimit {
        requests,
        period: prost_types::Duration::try_from(Duration::from_millis(period_ms)).ok(),
        burst,
        key: key as i32,
    })
}

#[tokio::test]
async fn set_route_creates_replaces_and_announces_each_change_once() {
    let (r, seen) = domain();
    let first = set(&r, route("/v2/login")).await.unwrap();
    let shown = first.route.unwrap();
    assert_eq!((shown.version, first.revision), (1, 1));
    assert_eq!(shown.rpc, "Login");
    assert!(shown.updated_at.is_some());
    // The same route again changes nothing: no write, no notice, same version.
    let again = set(&r, route("/v2/login")).await.unwrap();
    assert_eq!((again.route.unwrap().version, again.revision), (1, 1));
    assert_eq!(seen.lock().unwrap().len(), 1);
    // A change bumps both and is announced with the route as it stands.
    let mut off = route("/v2/login");
    off.enabled = false;
    off.disabled_reason = "use /v3/login".into();
    let second = set(&r, off).await.unwrap();
    assert_eq!((second.route.unwrap().version, second.revision), (2, 2));
    let notices = seen.lock().unwrap().clone();
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[1].revision, 2);
    assert_eq!(notices[1].path, "/v2/login");
    let n = notices[1].route.clone().unwrap();
    assert!(!n.enabled);
    assert_eq!(n.disabled_reason, "use /v3/login");
}

#[tokio::test]
async fn set_route_accepts_snake_rpc_names_and_fills_streaming() {
    let (r, _) = domain();
    let mut rt = route("/v1/auth/login");
    rt.rpc = "login".into();
    let shown = set(&r, rt).await.unwrap().route.unwrap();
    assert_eq!(shown.rpc, "Login");
    assert!(!shown.streaming);
    let streaming = aicore_proto::SERVICES
        .iter()
        .flat_map(|s| s.methods.iter())
        .find(|m| m.server_streaming)
        .unwrap();
    let rt = Route {
        path: "/v1/feed".into(),
        domain: streaming.domain.into(),
        rpc: streaming.name.into(),
        api_version: "v1".into(),
        streaming: false,
        enabled: true,
        ..Default::default()
    };
    assert!(set(&r, rt).await.unwrap().route.unwrap().streaming);
}

#[tokio::test]
async fn kebab_and_snake_spellings_are_one_route() {
    let (r, _) = domain();
    set(&r, route("/v1/state-manager/list-sessions"))
        .await
        .unwrap();
    let got = resolve(&r, "/v1/state_manager/list_sessions")
        .await
        .unwrap();
    assert_eq!(got.route.unwrap().path, "/v1/state_manager/list_sessions");
    assert_eq!(got.subject, "svc.auth.v1.login");
    let again = set(&r, route("/v1/state_manager/list_sessions"))
        .await
        .unwrap();
    assert_eq!(again.route.unwrap().version, 1);
    assert_eq!(list(&r, "", "", 0, "").await.routes.len(), 1);
}

#[tokio::test]
async fn hostile_and_malformed_routes_are_refused_naming_the_field() {
    let (r, seen) = domain();
    let long = format!("/v1/{}", "a".repeat(MAX_PATH));
    let bad_paths = [
        "",
        "/",
        "v1/auth/login",
        "/v1",
        "/v1/",
        "/v/auth",
        "/v01/auth",
        "/v1234/auth",
        "/vx/auth",
        "/v1/auth/",
        "/v1//login",
        "/v1/Auth/login",
        "/v1/auth/../admin",
        "/v1/auth/login?x=1",
        "/v1/auth/lo gin",
        "/v1/auth/\u{0}",
        "/v1/ａuth",
        "/v1/router/set_route",
        "/v1/router/set-route",
        long.as_str(),
    ];
    for p in bad_paths {
        let e = set(&r, route(p)).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{p:?}");
        assert_eq!(field(&e), "route.path", "{p:?}");
    }
    let mut cases: Vec<(Route, &str)> = Vec::new();
    let mut rt = route("/v2/x");
    rt.domain = "nope".into();
    cases.push((rt, "route.domain"));
    let mut rt = route("/v2/x");
    rt.domain = "AUTH".into();
    cases.push((rt, "route.domain"));
    let mut rt = route("/v2/x");
    rt.domain = "x".repeat(100_000);
    cases.push((rt, "route.domain"));
    let mut rt = route("/v2/x");
    rt.domain = String::new();
    cases.push((rt, "route.domain"));
    let mut rt = route("/v2/x");
    rt.rpc = "DropTables".into();
    cases.push((rt, "route.rpc"));
    let mut rt = route("/v2/x");
    rt.rpc = String::new();
    cases.push((rt, "route.rpc"));
    let mut rt = route("/v2/x");
    rt.api_version = "v2".into();
    cases.push((rt, "route.api_version"));
    let mut rt = route("/v2/x");
    rt.api_version = String::new();
    cases.push((rt, "route.api_version"));
    let mut rt = route("/v2/x");
    rt.disabled_reason = "gone".into();
    cases.push((rt, "route.disabled_reason"));
    let mut rt = route("/v2/x");
    rt.enabled = false;
    rt.disabled_reason = "r".repeat(MAX_REASON_CHARS + 1);
    cases.push((rt, "route.disabled_reason"));
    let mut rt = route("/v2/x");
    rt.enabled = false;
    rt.disabled_reason = "line\nbreak".into();
    cases.push((rt, "route.disabled_reason"));
    let mut rt = route("/v2/x");
    rt.rate_limit = limit(10, 1000, 0, RateLimitKey::Unspecified);
    cases.push((rt, "route.rate_limit.key"));
    let mut rt = route("/v2/x");
    rt.rate_limit = Some(RateLimit {
        key: 99,
        ..limit(10, 1000, 0, RateLimitKey::Global).unwrap()
    });
    cases.push((rt, "route.rate_limit.key"));
    let mut rt = route("/v2/x");
    rt.rate_limit = limit(MAX_LIMIT_COUNT + 1, 1000, 0, RateLimitKey::Global);
    cases.push((rt, "route.rate_limit.requests"));
    let mut rt = route("/v2/x");
    rt.rate_limit = limit(1, 1000, u32::MAX, RateLimitKey::Global);
    cases.push((rt, "route.rate_limit.burst"));
    let mut rt = route("/v2/x");
    rt.rate_limit = limit(1, 0, 0, RateLimitKey::Global);
    cases.push((rt, "route.rate_limit.period"));
    let mut rt = route("/v2/x");
    rt.rate_limit = limit(
        1,
        MAX_LIMIT_PERIOD.as_millis() as u64 + 1,
        0,
        RateLimitKey::Global,
    );
    cases.push((rt, "route.rate_limit.period"));
    let mut rt = route("/v2/x");
    rt.rate_limit = Some(RateLimit {
        period: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..limit(1, 1000, 0, RateLimitKey::Global).unwrap()
    });
    cases.push((rt, "route.rate_limit.period"));
    let mut rt = route("/v2/x");
    rt.rate_limit = Some(RateLimit {
        period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 1,
        }),
        ..limit(1, 1000, 0, RateLimitKey::Global).unwrap()
    });
    cases.push((rt, "route.rate_limit.period"));
    for (rt, want) in cases {
        let e = set(&r, rt.clone()).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{rt:?}");
        assert_eq!(field(&e), want, "{rt:?}");
    }
    let e = r
        .set_route(Request::new(SetRouteRequest {
            route: None,
            expected_version: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "route");
    // Nothing was written or announced.
    assert!(list(&r, "", "", 0, "").await.routes.is_empty());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn rate_limits_are_stored_with_defaults_and_zero_drops_them() {
    let (r, _) = domain();
    let mut rt = route("/v2/login");
    rt.rate_limit = Some(RateLimit {
        requests: 5,
        period: None,
        burst: 2,
        key: RateLimitKey::ClientAddress as i32,
    });
    let shown = set(&r, rt).await.unwrap().route.unwrap();
    let l = shown.rate_limit.unwrap();
    assert_eq!((l.requests, l.burst), (5, 2));
    assert_eq!(l.period.unwrap().seconds, 1);
    assert_eq!(l.key, RateLimitKey::ClientAddress as i32);
    // requests 0 means no limit, whatever else the message says.
    let mut rt = route("/v2/login");
    rt.rate_limit = Some(RateLimit {
        requests: 0,
        key: 77,
        ..Default::default()
    });
    assert!(
        set(&r, rt)
            .await
            .unwrap()
            .route
            .unwrap()
            .rate_limit
            .is_none()
    );
}

#[tokio::test]
async fn expected_versions_guard_set_and_remove() {
    let (r, seen) = domain();
    let e = set_expecting(&r, route("/v2/a"), 3).await.unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::Conflict, "expected_version"));
    set_expecting(&r, route("/v2/a"), 0).await.unwrap();
    let e = set_expecting(&r, route("/v2/a"), 0).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    let mut off = route("/v2/a");
    off.enabled = false;
    set_expecting(&r, off, 1).await.unwrap();
    let e = remove(&r, "/v2/a", Some(1)).await.unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    let out = remove(&r, "/v2/a", Some(2)).await.unwrap();
    assert!(out.removed);
    assert_eq!(out.revision, 3);
    // Removing a missing route is not an error and announces nothing.
    let out = remove(&r, "/v2/a", None).await.unwrap();
    assert!(!out.removed);
    assert_eq!(out.revision, 3);
    let notices = seen.lock().unwrap().clone();
    assert_eq!(notices.len(), 3);
    assert!(notices[2].route.is_none());
    assert_eq!(notices[2].path, "/v2/a");
    assert_eq!(resolve(&r, "/v2/a").await.unwrap_err().code, Code::NotFound);
}

#[tokio::test]
async fn remove_and_resolve_refuse_bad_paths() {
    let (r, _) = domain();
    for p in ["", "nope", "/v1/router/list_routes", &"/v1/x".repeat(100)] {
        let e = remove(&r, p, None).await.unwrap_err();
        assert_eq!(field(&e), "path", "{p:?}");
        let e = resolve(&r, p).await.unwrap_err();
        assert_eq!(field(&e), "path", "{p:?}");
    }
}

#[tokio::test]
async fn the_table_is_bounded() {
    let (r, _) = domain_with(RouterConfig {
        max_routes: 2,
        ..Default::default()
    });
    set(&r, route("/v2/a")).await.unwrap();
    set(&r, route("/v2/b")).await.unwrap();
    let e = set(&r, route("/v2/c")).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    // Replacing an existing route still works; removing one makes room.
    let mut off = route("/v2/a");
    off.enabled = false;
    set(&r, off).await.unwrap();
    remove(&r, "/v2/b", None).await.unwrap();
    set(&r, route("/v2/c")).await.unwrap();
}

#[tokio::test]
async fn list_routes_pages_filters_and_carries_the_revision() {
    let (r, _) = domain();
    for i in 0..7 {
        set(&r, route(&format!("/v2/a/{i}"))).await.unwrap();
    }
    let mut other = route("/v3/w");
    other.domain = "weather_manager".into();
    other.rpc = aicore_proto::find_service("weather_manager")
        .unwrap()
        .methods[0]
        .name
        .into();
    set(&r, other).await.unwrap();
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let page = list(&r, "/v2/", "", 3, &token).await;
        assert!(page.routes.len() <= 3);
        assert_eq!(page.revision, 8);
        all.extend(page.routes.into_iter().map(|r| r.path));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..7).map(|i| format!("/v2/a/{i}")).collect();
    assert_eq!(all, want);
    let by_domain = list(&r, "", "weather_manager", 0, "").await;
    assert_eq!(by_domain.routes.len(), 1);
    assert_eq!(by_domain.routes[0].path, "/v3/w");
    // Kebab prefixes match the stored `_` form.
    assert_eq!(list(&r, "/v2/a", "", 0, "").await.routes.len(), 7);
    for (req, want) in [
        (
            ListRoutesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListRoutesRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            ListRoutesRequest {
                path_prefix: "/".repeat(MAX_PATH + 1),
                ..Default::default()
            },
            "path_prefix",
        ),
        (
            ListRoutesRequest {
                domain: "d".repeat(1000),
                ..Default::default()
            },
            "domain",
        ),
    ] {
        let e = r.list_routes(Request::new(req)).await.unwrap_err();
        assert_eq!(field(&e), want);
    }
}

#[tokio::test]
async fn resolve_answers_disabled_routes_and_the_subject() {
    let (r, _) = domain();
    let mut off = route("/v2/login");
    off.enabled = false;
    set(&r, off).await.unwrap();
    let got = resolve(&r, "/v2/login").await.unwrap();
    assert!(!got.route.unwrap().enabled);
    assert_eq!(got.subject, "svc.auth.v1.login");
    assert_eq!(
        resolve(&r, "/v2/other").await.unwrap_err().code,
        Code::NotFound
    );
}
