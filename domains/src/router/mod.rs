//! router: the public route table. Each route maps a public path (`/v1/auth/login`, or
//! any `/v<N>/...` path an operator chooses) to one RPC of a domain's contract, with an
//! enabled flag, an optional reason a disabled route is gone for good, and an optional
//! token-bucket rate limit. The gateway keeps the whole table in memory and consults it
//! before its descriptor routes (see `appliance/src/gateway/routes.rs`); this domain only
//! keeps the table and announces changes. It never forwards a request itself.
//!
//! Every committed change moves the table's revision on by one, in the same write, and is
//! announced as a [`RouteChange`] on [`CHANGED_SUBJECT`] after the commit and before the
//! writer is answered (on the same connection, so a subscriber on the gateway's
//! connection sees the notice before the reply). Notices are core NATS: a lost one shows
//! as a revision gap at the subscriber, which then reloads the table with ListRoutes
//! (whose pages carry the revision they were read at).
//!
//! Paths: `-` and `_` are the same character (the gateway serves every path in both
//! spellings), so a path is stored with `_` and two spellings can never name two routes.
//! The router's own paths (`/v1/router/...`) are refused: a route could otherwise disable
//! the very RPCs that repair the table.
//!
//! Tables:
//! - `router.routes`: path (`_` form) → [`RouteRecord`];
//! - `router.meta`: `table` → [`TableRecord`], the revision and the number of routes.
//!
//! SetRoute with a route equal to the stored one writes nothing and keeps the version and
//! revision, so a retried request does not turn into a spurious Conflict or notice.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::router::v1::{
    ListRoutesRequest, ListRoutesResponse, RateLimit, RateLimitKey, RemoveRouteRequest,
    RemoveRouteResponse, ResolveRequest, ResolveResponse, Route, RouteChange, RouterHandler,
    SetRouteRequest, SetRouteResponse,
};
use aicore_proto::internal::router::{RouteRecord, TableRecord};
use aicore_proto::{Code, MethodInfo, Request, Status};
use prost::Message;

use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, millis, paging, timestamp_ms, validate};

/// Where committed route-table changes are announced ([`RouteChange`]).
pub const CHANGED_SUBJECT: &str = aicore_proto::subjects::ROUTER_CHANGED;

const ROUTES: &str = "router.routes";
const META: &str = "router.meta";
const TABLE_KEY: &[u8] = b"table";
const LIST_TOKEN: u8 = b'R';
/// Longest path, in bytes (ASCII only).
pub const MAX_PATH: usize = 256;
/// Longest `disabled_reason`, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Longest domain or RPC name looked up (longer cannot name a contract).
const MAX_NAME: usize = 128;
/// Largest `requests` and `burst` of a rate limit.
pub const MAX_LIMIT_COUNT: u32 = 1_000_000;
/// Longest rate-limit period.
pub const MAX_LIMIT_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Paths under this prefix are the router's own and cannot be routed.
const OWN_PREFIX: &str = "/v1/router/";

/// Configuration of router (`[domains.router]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Most routes the table holds; creating one more is ResourceExhausted. The gateway
    /// keeps the whole table in memory, so this bounds its snapshot too.
    pub max_routes: u64,
    /// Page size of ListRoutes when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListRoutes.
    pub max_page_size: u32,
    /// Most rows one ListRoutes page examines when filtering by domain (then the page
    /// comes back short, with a token to go on).
    pub max_scan: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_routes: 10_000,
            default_page_size: 100,
            max_page_size: 1000,
            max_scan: 10_000,
        }
    }
}

/// Where change notices go instead of NATS (tests).
pub type ChangeHook = Arc<dyn Fn(RouteChange) + Send + Sync>;

/// The router domain.
pub struct Router {
    ctx: Ctx,
    config: RouterConfig,
    on_change: Option<ChangeHook>,
}

/// A path in its stored form: `-` read as `_`. Shared with the gateway, which looks
/// request paths up the same way.
pub fn canonical_path(path: &str) -> String {
    path.replace('-', "_")
}

/// Checks a path (already in `_` form) against the contract's rules.
fn check_path(path: &str, field: &str) -> Result<(), Status> {
    if path.is_empty() {
        return Err(Status::invalid(field, "is required"));
    }
    if path.len() > MAX_PATH {
        return Err(Status::invalid(
            field,
            format!("must be at most {MAX_PATH} characters"),
        ));
    }
    let shape = "must be /v<N>/ then segments of [a-z0-9_-] separated by single slashes, \
                 without a trailing slash";
    let rest = path
        .strip_prefix("/v")
        .ok_or_else(|| Status::invalid(field, shape))?;
    let (version, segments) = rest
        .split_once('/')
        .ok_or_else(|| Status::invalid(field, shape))?;
    let version_ok = !version.is_empty()
        && version.len() <= 3
        && version.bytes().all(|b| b.is_ascii_digit())
        && !version.starts_with('0');
    let segments_ok = segments.split('/').all(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    });
    if !version_ok || !segments_ok {
        return Err(Status::invalid(field, shape));
    }
    if path.starts_with(OWN_PREFIX) {
        return Err(Status::invalid(
            field,
            "the router's own paths cannot be routed (they repair the table)",
        ));
    }
    Ok(())
}

/// The RPC a route targets: `domain`, `rpc` (proto name, or snake name) and
/// `api_version` must name one in this build's contracts.
fn target(domain: &str, rpc: &str, api_version: &str) -> Result<&'static MethodInfo, Status> {
    if domain.is_empty() {
        return Err(Status::invalid("route.domain", "is required"));
    }
    if rpc.is_empty() {
        return Err(Status::invalid("route.rpc", "is required"));
    }
    if api_version.is_empty() {
        return Err(Status::invalid("route.api_version", "is required"));
    }
    let name_ok = |s: &str| s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic());
    let service = (name_ok(domain) && domain == domain.to_ascii_lowercase())
        .then(|| aicore_proto::find_service(domain))
        .flatten()
        .filter(|s| s.domain == domain)
        .ok_or_else(|| Status::invalid("route.domain", "is not a domain of this build"))?;
    let method = service
        .methods
        .iter()
        .find(|m| name_ok(rpc) && (m.name == rpc || m.rpc == rpc))
        .ok_or_else(|| {
            Status::invalid(
                "route.rpc",
                format!("is not an RPC of {}", service.full_name),
            )
        })?;
    if subject_version(method) != api_version {
        return Err(Status::invalid(
            "route.api_version",
            format!(
                "{domain} has no API version {api_version:?} (it serves {})",
                subject_version(method)
            ),
        ));
    }
    Ok(method)
}

/// The API version of an RPC: the third token of `svc.<domain>.<version>.<rpc>`.
fn subject_version(m: &MethodInfo) -> &'static str {
    m.subject.split('.').nth(2).unwrap_or_default()
}

/// A route's limit as stored: `(requests, period_ms, burst, key)`, all zero for none.
fn check_limit(l: Option<&RateLimit>) -> Result<(u32, u64, u32, i32), Status> {
    let Some(l) = l.filter(|l| l.requests > 0) else {
        return Ok((0, 0, 0, 0));
    };
    if l.requests > MAX_LIMIT_COUNT {
        return Err(Status::invalid(
            "route.rate_limit.requests",
            format!("must be at most {MAX_LIMIT_COUNT}"),
        ));
    }
    if l.burst > MAX_LIMIT_COUNT {
        return Err(Status::invalid(
            "route.rate_limit.burst",
            format!("must be at most {MAX_LIMIT_COUNT}"),
        ));
    }
    let period = match l.period {
        None => Duration::from_secs(1),
        Some(p) => Duration::try_from(p)
            .ok()
            .filter(|d| *d >= Duration::from_millis(1) && *d <= MAX_LIMIT_PERIOD)
            .ok_or_else(|| {
                Status::invalid(
                    "route.rate_limit.period",
                    "must be between 1 ms and 1 day, in whole milliseconds",
                )
            })?,
    };
    if period.subsec_nanos() % 1_000_000 != 0 {
        return Err(Status::invalid(
            "route.rate_limit.period",
            "must be between 1 ms and 1 day, in whole milliseconds",
        ));
    }
    let key = match RateLimitKey::try_from(l.key) {
        Ok(RateLimitKey::Unspecified) | Err(_) => {
            return Err(Status::invalid(
                "route.rate_limit.key",
                "must be ACCOUNT, CLIENT_ADDRESS or GLOBAL",
            ));
        }
        Ok(k) => k as i32,
    };
    Ok((l.requests, period.as_millis() as u64, l.burst, key))
}

/// Checks a reason: at most [`MAX_REASON_CHARS`], no control characters.
fn check_reason(reason: &str, enabled: bool) -> Result<(), Status> {
    if reason.is_empty() {
        return Ok(());
    }
    if enabled {
        return Err(Status::invalid(
            "route.disabled_reason",
            "must be empty on an enabled route",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(Status::invalid(
            "route.disabled_reason",
            format!("must be at most {MAX_REASON_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// A stored route as the contract shows it.
pub fn shown(path: &str, r: &RouteRecord) -> Route {
    let streaming = target(&r.domain, &r.rpc, &r.api_version).is_ok_and(|m| m.server_streaming);
    let rate_limit = (r.limit_requests > 0).then(|| RateLimit {
        requests: r.limit_requests,
        period: prost_types::Duration::try_from(Duration::from_millis(r.limit_period_ms)).ok(),
        burst: r.limit_burst,
        key: r.limit_key,
    });
    Route {
        path: path.to_string(),
        domain: r.domain.clone(),
        rpc: r.rpc.clone(),
        api_version: r.api_version.clone(),
        rate_limit,
        enabled: r.enabled,
        streaming,
        version: r.version,
        updated_at: timestamp_ms(r.updated_ms),
        disabled_reason: r.disabled_reason.clone(),
    }
}

/// The stored route at `key`, once its version is the `expected` one (when given).
fn live_route(
    tx: &Tx<'_>,
    key: &str,
    expected: Option<u64>,
) -> Result<Option<RouteRecord>, Status> {
    let live = tx.get_msg::<RouteRecord>(ROUTES, key.as_bytes())?;
    validate::expected_version(expected, live.as_ref().map_or(0, |r| r.version), "route")?;
    Ok(live)
}

fn read_table(tx: &Tx<'_>) -> Result<TableRecord, Status> {
    Ok(tx.get_msg(META, TABLE_KEY)?.unwrap_or_default())
}

impl Router {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: RouterConfig) -> Self {
        Router {
            ctx,
            config,
            on_change: None,
        }
    }

    /// Sends change notices to `hook` instead of NATS.
    pub fn with_change_hook(mut self, hook: ChangeHook) -> Self {
        self.on_change = Some(hook);
        self
    }

    /// Announces a committed change, before the writer is answered. Core NATS, so it may
    /// be lost: the revision lets a subscriber find out.
    async fn announce(&self, change: RouteChange) {
        if let Some(hook) = &self.on_change {
            hook(change);
            return;
        }
        let Some(client) = &self.ctx.client else {
            return;
        };
        if let Err(e) = client
            .nats()
            .publish(CHANGED_SUBJECT, change.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, revision = change.revision, "route change notice not sent");
        }
    }

    /// The table's current revision.
    fn revision(&self) -> Result<u64, Status> {
        Ok(self
            .ctx
            .store
            .get_msg::<TableRecord>(META, TABLE_KEY)?
            .unwrap_or_default()
            .revision)
    }
}

impl RouterHandler for Router {
    async fn set_route(
        &self,
        request: Request<SetRouteRequest>,
    ) -> Result<SetRouteResponse, Status> {
        let req = request.body;
        let route = req
            .route
            .ok_or_else(|| Status::invalid("route", "is required"))?;
        let path = canonical_path(&route.path);
        check_path(&path, "route.path")?;
        let method = target(&route.domain, &route.rpc, &route.api_version)?;
        let (limit_requests, limit_period_ms, limit_burst, limit_key) =
            check_limit(route.rate_limit.as_ref())?;
        check_reason(&route.disabled_reason, route.enabled)?;
        let wanted = RouteRecord {
            domain: route.domain,
            rpc: method.name.to_string(),
            api_version: route.api_version,
            limit_requests,
            limit_period_ms,
            limit_burst,
            limit_key,
            enabled: route.enabled,
            disabled_reason: route.disabled_reason,
            version: 0,
            updated_ms: 0,
        };
        let now_ms = millis(&self.ctx.now_ts());
        let (expected, max_routes) = (req.expected_version, self.config.max_routes);
        let key = path.clone();
        let (stored, revision, changed) = self
            .ctx
            .store
            .write(move |tx| {
                let live = live_route(tx, &key, expected)?;
                let mut table = read_table(tx)?;
                if let Some(old) = &live {
                    let unchanged = RouteRecord {
                        version: old.version,
                        updated_ms: old.updated_ms,
                        ..wanted.clone()
                    };
                    if &unchanged == old {
                        return Ok((unchanged, table.revision, false));
                    }
                } else if table.count >= max_routes {
                    return Err(Status::new(
                        Code::ResourceExhausted,
                        format!("the route table is full ({max_routes} routes)"),
                    ));
                }
                let next = RouteRecord {
                    version: live.as_ref().map_or(0, |r| r.version) + 1,
                    updated_ms: now_ms,
                    ..wanted
                };
                table.revision += 1;
                table.count += u64::from(live.is_none());
                tx.put_msg(ROUTES, key.as_bytes(), &next);
                tx.put_msg(META, TABLE_KEY, &table);
                Ok((next, table.revision, true))
            })
            .await?;
        let route = shown(&path, &stored);
        if changed {
            self.announce(RouteChange {
                revision,
                path,
                route: Some(route.clone()),
            })
            .await;
        }
        Ok(SetRouteResponse {
            route: Some(route),
            revision,
        })
    }

    async fn remove_route(
        &self,
        request: Request<RemoveRouteRequest>,
    ) -> Result<RemoveRouteResponse, Status> {
        let req = request.body;
        let path = canonical_path(&req.path);
        check_path(&path, "path")?;
        let (key, expected) = (path.clone(), req.expected_version);
        let (removed, revision) = self
            .ctx
            .store
            .write(move |tx| {
                let live = live_route(tx, &key, expected)?;
                let mut table = read_table(tx)?;
                if live.is_none() {
                    return Ok((false, table.revision));
                }
                table.revision += 1;
                table.count = table.count.saturating_sub(1);
                tx.delete(ROUTES, key.as_bytes());
                tx.put_msg(META, TABLE_KEY, &table);
                Ok((true, table.revision))
            })
            .await?;
        if removed {
            self.announce(RouteChange {
                revision,
                path,
                route: None,
            })
            .await;
        }
        Ok(RemoveRouteResponse { removed, revision })
    }

    async fn list_routes(
        &self,
        request: Request<ListRoutesRequest>,
    ) -> Result<ListRoutesResponse, Status> {
        let req = request.body;
        let limit = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let prefix = canonical_path(&req.path_prefix);
        if prefix.chars().count() > MAX_PATH {
            return Err(Status::invalid(
                "path_prefix",
                format!("must be at most {MAX_PATH} characters"),
            ));
        }
        if req.domain.chars().count() > MAX_NAME {
            return Err(Status::invalid(
                "domain",
                format!("must be at most {MAX_NAME} characters"),
            ));
        }
        // Read before the rows: a change between the two shows as a revision the reader
        // has not seen yet, never the other way round.
        let revision = self.revision()?;
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: ROUTES,
            prefix: prefix.as_bytes(),
            kind: LIST_TOKEN,
            limit,
            max_scan: self.config.max_scan,
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((key, value)) = page.next_row()? {
            let r: RouteRecord = aicore_runtime::store::decode(ROUTES, value)?;
            if !req.domain.is_empty() && r.domain != req.domain {
                continue;
            }
            let path = String::from_utf8_lossy(&key).into_owned();
            page.keep(shown(&path, &r));
        }
        let (routes, next_page_token) = page.finish();
        Ok(ListRoutesResponse {
            routes,
            next_page_token,
            revision,
        })
    }

    async fn resolve(&self, request: Request<ResolveRequest>) -> Result<ResolveResponse, Status> {
        let path = canonical_path(&request.body.path);
        check_path(&path, "path")?;
        let r = self
            .ctx
            .store
            .get_msg_cached::<RouteRecord>(ROUTES, path.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no route for {path}")))?;
        let subject = target(&r.domain, &r.rpc, &r.api_version)
            .map(|m| m.subject.to_string())
            .map_err(|_| Status::internal("a stored route names an RPC this build lacks"))?;
        Ok(ResolveResponse {
            route: Some(shown(&path, &r)),
            subject,
        })
    }
}

impl aicore_runtime::Domain for Router {
    type Config = RouterConfig;

    fn build(ctx: &Ctx, config: &RouterConfig) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(Arc::new(aicore_proto::aicore::router::v1::RouterServer(
            Arc::new(Router::new(ctx.clone(), config.clone())),
        )))
    }
}

#[cfg(test)]
mod tests;
