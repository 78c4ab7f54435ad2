//! The HTTP rows: the gateway against a bare axum→NATS forwarder, same JSON in and out.
//! The gateway runs with a route table of [`BENCH_ROUTES`] routes held by a real router
//! domain, so its rows pay the table lookup every request makes; the routed row goes
//! through an alias path whose route has its own (never biting) rate limit.

use std::sync::Arc;

use anyhow::Result;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use aicore_proto::CallOptions;
use aicore_runtime::store::{Store, StoreOptions};

use crate::config::Config;

use super::env::*;
use super::load::*;
use super::*;

/// Row names of the HTTP paths.
pub(super) const HTTP_BARE: &str = "http bare axum->nats forwarder";
pub(super) const HTTP_GATEWAY: &str = "http gateway (auth+json+limits+metrics)";
pub(super) const HTTP_ROUTED: &str = "http gateway, routed alias with a route limit";
/// Routes in the gateway's table during the HTTP rows.
const BENCH_ROUTES: usize = 1000;
/// The bare forwarder's echo subject.
pub(super) const HTTP_ECHO: &str = "svc.bench.v1.http_echo";

/// An HTTP/1.1 load client with a connection pool (keep-alive), in-process like the other
/// load generators.
pub(super) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// Serves `router` on a free loopback port (with connect info, as the gateway needs)
/// until `stop`; returns its address.
pub(super) async fn serve_http(
    router: axum::Router,
    stop: CancellationToken,
) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // As the gateway serves (TCP_NODELAY, see gateway::start).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    });
    Ok(addr)
}

/// One POST; true on 200 with the whole body read.
pub(super) async fn post(client: &HttpClient, uri: &str, token: Option<&str>, body: Bytes) -> bool {
    use http_body_util::BodyExt;
    let mut req = axum::http::Request::post(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let Ok(req) = req.body(http_body_util::Full::new(body)) else {
        return false;
    };
    match client.request(req).await {
        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

/// The gateway rows: a real auth domain (in-process, its own store) checks the bearer
/// token (cached after the first call); state_manager.get is answered by a stub responder
/// on its subject with a fixed reply, so the row measures the gateway's own work (auth
/// cache, rate limit, in-flight bound, JSON ↔ protobuf, metrics, SDK call) rather than a
/// domain's. The bare forwarder posts the same JSON body to an echo responder and returns
/// its bytes; both bodies are `--payload` bytes of JSON in, about as many out.
pub(super) async fn measure_gateway(
    env: &Env,
    config: &Config,
    base: &Baseline,
    args: &BenchArgs,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> Result<Vec<Cell>> {
    let load = &base.nats;

    // The JSON request, padded to the payload size.
    let head = r#"{"playerId":"bench","key":""#;
    let pad = args.payload.saturating_sub(head.len() + 2).max(1);
    let json = Bytes::from(format!("{head}{}\"}}", "k".repeat(pad)));

    let responders = start_responders(env, args, pad).await?;

    // auth, for real, and one player's token.
    let auth_store = Store::open(&dir.join("bench-auth.redb"), StoreOptions::default())?;
    let auth_serving =
        serve_domain(env, "auth", auth_store.clone(), config, stop.child_token()).await?;
    let bearer: Arc<str> = login(
        &aicore_sdk::Client::new(load.clone(), Default::default()),
        "bench",
    )
    .await?
    .into();

    // router, for real, with a table the gateway loads at start.
    let router_store = Store::open(&dir.join("bench-router.redb"), StoreOptions::default())?;
    let router_serving = serve_domain(
        env,
        "router",
        router_store.clone(),
        config,
        stop.child_token(),
    )
    .await?;
    seed_routes(load).await?;

    // The two servers.
    let forwarder = forwarder(env).await?;
    let gateway = gateway(env, config, &stop, &["auth", "state_manager"]).await?;
    let bare_addr = serve_http(forwarder, stop.child_token()).await?;
    let gw_addr = serve_http(gateway, stop.child_token()).await?;

    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http();
    let uris = Uris {
        bare: format!("http://{bare_addr}/echo").into(),
        gateway: format!("http://{gw_addr}/v1/state_manager/get").into(),
        routed: format!("http://{gw_addr}{ROUTED_PATH}").into(),
    };
    for uri in [&uris.gateway, &uris.routed] {
        if !post(&client, uri, Some(&bearer), json.clone()).await {
            anyhow::bail!("the gateway did not answer the bench request on {uri}");
        }
    }
    let mut cells = Vec::new();
    for &c in &args.concurrency {
        let rows = gateway_rows(env, args, &client, &uris, &json, &bearer);
        cells.extend(measure_rows(base, None, c, args.seconds, rows).await);
    }
    env.metrics.switch().set(config.metrics.enabled);
    stop.cancel();
    for r in responders {
        r.abort();
    }
    auth_serving.stop().await;
    auth_store.close().await;
    router_serving.stop().await;
    router_store.close().await;
    Ok(cells)
}

/// Starts the responders on their own connection: an echo for the forwarder, a fixed
/// GetResponse (sized from `pad` and the payload) for the gateway.
async fn start_responders(
    env: &Env,
    args: &BenchArgs,
    pad: usize,
) -> Result<[tokio::task::JoinHandle<()>; 2]> {
    use aicore_proto::aicore::state_manager::v1::{GetResponse, ObjectMetadata};
    use prost::Message;
    let responder = env.connect("domains", "bench-http-responders").await?;
    let reply = Bytes::from(
        GetResponse {
            metadata: Some(ObjectMetadata {
                player_id: "bench".into(),
                key: "k".repeat(pad.min(64)),
                version: 1,
                ..Default::default()
            }),
            data: Bytes::from(vec![b'x'; args.payload / 4]),
        }
        .encode_to_vec(),
    );
    let mut echo_sub = responder.subscribe(HTTP_ECHO).await?;
    let mut get_sub = responder.subscribe("svc.state_manager.v1.get").await?;
    let (n1, n2) = (responder.clone(), responder.clone());
    let responders = [
        tokio::spawn(async move {
            while let Some(m) = echo_sub.next().await {
                if let Some(r) = m.reply {
                    let _ = n1.publish(r, m.payload).await;
                }
            }
        }),
        tokio::spawn(async move {
            while let Some(m) = get_sub.next().await {
                if let Some(r) = m.reply {
                    let _ = n2.publish(r, reply.clone()).await;
                }
            }
        }),
    ];
    responder.flush().await?;
    Ok(responders)
}

/// Registers bench player `username` with auth and logs it in; returns its `Bearer`
/// header value.
pub(super) async fn login(sdk: &aicore_sdk::Client, username: &str) -> Result<String> {
    use aicore_proto::aicore::auth::v1 as auth;
    let a = auth::AuthClient::new(sdk.clone());
    let password = "bench-violet-otter-lantern";
    let options = CallOptions::default();
    ready(&format!("registering the bench player {username}"), || {
        a.register(
            auth::RegisterRequest {
                username: username.into(),
                password: password.into(),
                display_name: String::new(),
            },
            &options,
        )
    })
    .await?;
    let login = a
        .login(
            auth::LoginRequest {
                username: username.into(),
                password: password.into(),
                user_agent: "aicore bench".into(),
            },
            &CallOptions::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("logging in the bench player {username}: {e}"))?;
    Ok(format!("Bearer {}", login.access_token))
}

/// The bare forwarder: `POST /echo` sends the body to [`HTTP_ECHO`] and answers the reply.
async fn forwarder(env: &Env) -> Result<axum::Router> {
    let forwarder_nats = env.connect("gateway", "bench-forwarder").await?;
    Ok(axum::Router::new().route(
        "/echo",
        axum::routing::post(move |body: Bytes| {
            let nats = forwarder_nats.clone();
            async move {
                match nats.request(HTTP_ECHO, body).await {
                    Ok(m) => (axum::http::StatusCode::OK, m.payload).into_response(),
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        }),
    ))
}

/// The real gateway exposing `domains`, its limits out of the way.
pub(super) async fn gateway(
    env: &Env,
    config: &Config,
    stop: &CancellationToken,
    domains: &[&'static str],
) -> Result<axum::Router> {
    let http_config = crate::config::HttpConfig {
        // Limits are checked on every request but never bite: one account at full speed.
        rate_limit_per_sec: 1e9,
        rate_limit_burst: 1_000_000,
        ..config.http.clone()
    };
    let (gateway, _listener) = crate::gateway::build(
        &http_config,
        config.http_max_body_bytes(),
        config.nats.max_payload,
        &env.url,
        env.tls("gateway").as_ref(),
        domains.to_vec(),
        env.metrics.clone(),
        stop.child_token(),
    )
    .await?;
    Ok(gateway)
}

/// The URIs the HTTP rows post to.
struct Uris {
    /// The bare forwarder's echo.
    bare: Arc<str>,
    /// The gateway's descriptor route of state_manager.get.
    gateway: Arc<str>,
    /// The gateway's alias route ([`ROUTED_PATH`]).
    routed: Arc<str>,
}

/// The rows of one concurrency level that `--only` asks for.
fn gateway_rows(
    env: &Env,
    args: &BenchArgs,
    client: &HttpClient,
    uris: &Uris,
    json: &Bytes,
    bearer: &Arc<str>,
) -> Vec<(&'static str, Op)> {
    // Both HTTP paths and the raw baseline take turns, so the gateway's share of the
    // forwarder compares slices of the same seconds.
    let (bare, uri, body) = (client.clone(), uris.bare.clone(), json.clone());
    let bare = op(move |_, _| {
        let (client, uri, body) = (bare.clone(), uri.clone(), body.clone());
        async move { post(&client, &uri, None, body).await }
    });
    let through = |uri: &Arc<str>| {
        let (client, uri, body, bearer) =
            (client.clone(), uri.clone(), json.clone(), bearer.clone());
        op(move |_, _| {
            let (client, uri, body, bearer) =
                (client.clone(), uri.clone(), body.clone(), bearer.clone());
            async move { post(&client, &uri, Some(&bearer), body).await }
        })
    };
    let (gateway, routed) = (through(&uris.gateway), through(&uris.routed));
    let mut rows = Vec::new();
    if args.wants("http") {
        rows.push((HTTP_BARE, bare));
        rows.push((HTTP_GATEWAY, gateway.clone()));
        rows.push((HTTP_ROUTED, routed));
    }
    if args.wants("metrics") {
        let switch = env.metrics.switch();
        rows.push((
            super::metrics::GATEWAY_OFF,
            super::metrics::switched(&switch, false, gateway.clone()),
        ));
        rows.push((
            super::metrics::GATEWAY_ON,
            super::metrics::switched(&switch, true, gateway),
        ));
    }
    rows
}

/// The alias path of the routed row.
const ROUTED_PATH: &str = "/v2/bench/get";

/// Fills the route table: [`BENCH_ROUTES`] − 1 routes the bench never calls, and the
/// routed row's alias of `state_manager.Get` with a per-account limit that never bites.
async fn seed_routes(load: &async_nats::Client) -> Result<()> {
    use aicore_proto::aicore::router::v1 as router;
    let r = router::RouterClient::new(aicore_sdk::Client::new(load.clone(), Default::default()));
    let route = |path: String, limit: Option<router::RateLimit>| router::SetRouteRequest {
        route: Some(router::Route {
            path,
            domain: "state_manager".into(),
            rpc: "Get".into(),
            api_version: "v1".into(),
            enabled: true,
            rate_limit: limit,
            ..Default::default()
        }),
        expected_version: None,
    };
    let options = CallOptions::default();
    ready("seeding the route table", || {
        r.set_route(
            route(
                ROUTED_PATH.into(),
                Some(router::RateLimit {
                    requests: 1_000_000,
                    period: None,
                    burst: 1_000_000,
                    key: router::RateLimitKey::Account as i32,
                }),
            ),
            &options,
        )
    })
    .await?;
    for i in 1..BENCH_ROUTES {
        r.set_route(route(format!("/v9/bench/other_{i}"), None), &options)
            .await
            .map_err(|e| anyhow::anyhow!("seeding route {i}: {e}"))?;
    }
    Ok(())
}

/// The gateway's throughput as a share of the bare forwarder's, per concurrency.
pub(super) fn print_gateway_ratios(cells: &[Cell], args: &BenchArgs) {
    let rps = |name: &str, c: usize| {
        cells
            .iter()
            .find(|x| x.name == name && x.concurrency == c)
            .map(|x| x.rps)
    };
    for &c in &args.concurrency {
        if let (Some(g), Some(b)) = (rps(HTTP_GATEWAY, c), rps(HTTP_BARE, c))
            && b > 0.0
        {
            println!("gateway vs bare forwarder at C={c}: {:.0}%", 100.0 * g / b);
        }
        if let (Some(r), Some(g)) = (rps(HTTP_ROUTED, c), rps(HTTP_GATEWAY, c))
            && g > 0.0
        {
            println!(
                "routed alias vs descriptor route at C={c}: {:.0}%",
                100.0 * r / g
            );
        }
    }
}
