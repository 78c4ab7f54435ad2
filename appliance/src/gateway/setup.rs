//! Putting the gateway together: its own NATS connection, the exposed routes, the route
//! table, the shared state every handler sees, and the router with CORS.

use super::*;

/// Connects to NATS as the gateway (its own connection: revocation notices arrive on it,
/// and a reconnect drops the Validate cache since notices may have been missed).
async fn connect(
    url: &str,
    tls: Option<&ClientTls>,
    tokens: Arc<Tokens>,
) -> Result<async_nats::Client> {
    crate::security::with_tls(async_nats::ConnectOptions::new(), tls)
        .name("aicore-gateway")
        .custom_inbox_prefix(crate::security::inbox_prefix("gateway"))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let tokens = tokens.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    tokens.clear();
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("gateway connecting to NATS at {url}"))
}

/// The gateway's router (with connect info needed: serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`), and the gateway's revocation
/// listener task, which lives until `stop`.
#[allow(clippy::too_many_arguments)] // the gateway's whole start-up context, from the supervisor
pub async fn build(
    config: &HttpConfig,
    max_body_bytes: u32,
    max_payload: u32,
    nats_url: &str,
    tls: Option<&ClientTls>,
    domains: Vec<&'static str>,
    registry: Arc<aicore_runtime::metrics::Registry>,
    stop: CancellationToken,
) -> Result<(Router, tokio::task::JoinHandle<()>)> {
    if max_body_bytes >= max_payload {
        bail!(
            "the HTTP body limit ({max_body_bytes} bytes: http.max_body_bytes, or when unset \
             the largest object a domain accepts as base64) must be below nats.max_payload \
             ({max_payload})"
        );
    }
    let routes = exposed_routes(&domains)?;
    let metrics = Arc::new(Metrics::new(
        routes.iter().map(|r| canonical_path(r.method)).collect(),
        registry.switch(),
    ));
    registry.register(metrics.clone());
    let tokens = Arc::new(Tokens::new(
        Duration::from_millis(config.validate_cache_ttl_ms),
        config.validate_cache_capacity,
        metrics.clone(),
    ));
    let nats = connect(nats_url, tls, tokens.clone()).await?;
    let listener = tokens
        .clone()
        .listen(nats.clone(), stop.clone())
        .await
        .context("subscribing to revocation notices")?;
    nats.flush()
        .await
        .context("flushing the gateway's subscriptions")?;
    let client = aicore_sdk::Client::new(nats.clone(), Default::default());
    let methods: Vec<&'static MethodInfo> = routes.iter().map(|r| r.method).collect();
    let table = route_table(config, &client, &methods, &stop).await?;
    let openapi = Bytes::from(openapi::document(&methods).to_string());
    let gateway = Arc::new(Gateway {
        auth: AuthClient::new(client.clone()),
        client,
        nats,
        tokens,
        table,
        limiter: RateLimiter::new(
            config.rate_limit_per_sec,
            config.rate_limit_burst,
            config.rate_limit_clients,
        ),
        in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1) as usize)),
        streams: Arc::new(Semaphore::new(config.max_streams.max(1) as usize)),
        metrics,
        registry,
        ready: health::Ready::new(domains, Duration::from_millis(config.ready_cache_ms)),
        openapi,
        config: config.clone(),
        max_body: max_body_bytes as usize,
        stopping: stop,
        routes,
    });

    Ok((router(gateway, config)?, listener))
}

/// The exposed RPCs of `domains`, with their messages' descriptors.
fn exposed_routes(domains: &[&'static str]) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for d in domains {
        let service = aicore_proto::find_service(d)
            .with_context(|| format!("no contract for domain {d:?}"))?;
        for m in service.methods {
            routes.push(Route {
                method: m,
                path: canonical_path(m),
                input: crate::json::descriptor(m.input).map_err(|e| anyhow::anyhow!("{e}"))?,
                output: crate::json::descriptor(m.output).map_err(|e| anyhow::anyhow!("{e}"))?,
            });
        }
    }
    Ok(routes)
}

/// The route table of `methods`, kept current from the router domain until `stop`.
async fn route_table(
    config: &HttpConfig,
    client: &aicore_sdk::Client,
    methods: &[&'static MethodInfo],
    stop: &CancellationToken,
) -> Result<Arc<routes::RouteTable>> {
    let table = Arc::new(routes::RouteTable::new(methods, config.rate_limit_clients));
    table
        .clone()
        .keep_current(
            client.clone(),
            Duration::from_millis(config.route_refresh_ms),
            Duration::from_millis(config.validate_timeout_ms),
            stop.clone(),
        )
        .await
        .context("subscribing to route table changes")?;
    Ok(table)
}

/// The router of the gateway's pages and of every descriptor route (and its kebab-case
/// alias), with CORS as configured.
fn router(gateway: Shared, config: &HttpConfig) -> Result<Router> {
    let mut router: Router<Shared> = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs));
    for (i, r) in gateway.routes.iter().enumerate() {
        let rpc = move |State(gw): State<Shared>,
                        ConnectInfo(peer): ConnectInfo<SocketAddr>,
                        headers: HeaderMap,
                        body: Body| async move {
            let resolved = gw.table.resolve(&gw.routes[i].path);
            handle(gw, Some(i), resolved, peer, headers, body).await
        };
        let canonical = canonical_path(r.method);
        let kebab = canonical.replace('_', "-");
        let method_router = post(rpc).fallback(method_not_allowed);
        if kebab != canonical {
            router = router.route(&kebab, method_router.clone());
        }
        router = router.route(&canonical, method_router);
    }
    let mut router = router.fallback(not_found).with_state(gateway.clone());
    if let Some(cors) = cors(&config.cors_origins)? {
        router = router.layer(cors);
    }
    Ok(router)
}

/// The CORS layer for `origins` (none when empty; `*` allows any).
fn cors(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).with_context(|| format!("http.cors_origins: {o:?}")))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(TIMEOUT_HEADER),
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("traceparent"),
                header::RETRY_AFTER,
            ])
            .max_age(Duration::from_secs(600)),
    ))
}
