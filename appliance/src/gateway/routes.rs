//! The gateway's copy of the router domain's route table, consulted before the descriptor
//! routes on every request. It owns the snapshot (an immutable map swapped whole with
//! `arc-swap`, so a request's lookup is one atomic load and a hash probe, with no lock),
//! keeping it current, and what a route decides about a request: refuse it (disabled:
//! 404, or 410 with the retirement reason), forward it to the route's target, and take a
//! token from the route's own rate limit (429 with Retry-After). It does not forward
//! anything itself; [`super::call`] does, with what [`Routed`] says.
//!
//! Keeping current: router announces every committed change on
//! [`aicore_proto::subjects::ROUTER_CHANGED`] with the table's new revision; the next one
//! expected is applied to a copy of the snapshot and swapped in, one already seen is
//! ignored, and one beyond the next (notices are core NATS and can be lost) makes the
//! gateway reload the whole table with `router.ListRoutes`. It also reloads every
//! `http.route_refresh_ms`, so a lost last notice costs at most that long. A write to the
//! table made through this gateway is answered only once the snapshot has caught up with
//! it (bounded by `http.validate_timeout_ms`), so the writer's next request already sees
//! the change.
//!
//! When the router is down: a gateway that never loaded the table serves its descriptor
//! routes alone (a deployment without routes behaves as before the table existed); one
//! that loaded it keeps its last snapshot, as a stale table beats dropping disabled flags
//! and limits an operator set.
//!
//! Bounds: the snapshot holds at most [`MAX_ROUTES`] routes (the router's own default
//! limit is 10 000); each limited route keeps its buckets in a size-bounded cache (the
//! gateway's `http.rate_limit_clients`), shared across snapshots while the route's limit
//! is unchanged, so a change to one route resets no other route's budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::router::v1::{
    ListRoutesRequest, RateLimitKey, RemoveRouteResponse, Route, RouteChange, RouterClient,
    SetRouteResponse,
};
use aicore_proto::subjects::ROUTER_CHANGED;
use aicore_proto::{CallOptions, Code, MethodInfo, Status};
use arc_swap::ArcSwapOption;
use axum::http::StatusCode;
use futures::StreamExt;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ApiError;
use super::limits::{Client, RateLimiter};

/// Most routes a snapshot holds; a larger table is truncated (in path order) and logged.
pub const MAX_ROUTES: usize = 100_000;
/// Longest path the router stores (its `MAX_PATH`).
const MAX_PATH: usize = 256;
/// Page size of the gateway's ListRoutes calls.
const PAGE: i32 = 1000;

/// A route's rate limit, as stored in a snapshot.
pub struct RouteLimit {
    /// `(requests, period, burst, key)` it was built from: an unchanged limit keeps its
    /// buckets across snapshots.
    spec: (u32, Duration, u32, i32),
    key: RateLimitKey,
    limiter: RateLimiter,
}

impl RouteLimit {
    /// Takes a token for a request from `ip`, by `account` when authenticated; the wait
    /// as a 429 when the bucket is empty.
    pub fn check(&self, ip: IpAddr, account: Option<&str>) -> Result<(), ApiError> {
        let client = match (self.key, account) {
            (RateLimitKey::Global, _) => Client::Everyone,
            (RateLimitKey::Account, Some(a)) => Client::Account(a),
            _ => Client::Ip(ip),
        };
        self.limiter.check(client).map_err(|wait| {
            ApiError::new(
                Status::new(
                    Code::ResourceExhausted,
                    "this route's rate limit is spent; slow down",
                )
                .with_retry_after(wait),
            )
        })
    }
}

/// What a route says about requests to its path.
pub struct Entry {
    /// The gateway route (index) of its target; `None` when this gateway does not expose
    /// the target's domain.
    target: Option<usize>,
    enabled: bool,
    reason: String,
    limit: Option<Arc<RouteLimit>>,
}

/// A request to a path with a route, once the route let it through.
pub struct Routed {
    /// The gateway route (index) to forward to.
    pub target: usize,
    /// The route's own limit, taken after the caller is known.
    pub limit: Option<Arc<RouteLimit>>,
}

/// One version of the table.
struct Snapshot {
    revision: u64,
    routes: HashMap<String, Arc<Entry>>,
}

/// The route table as the gateway sees it.
pub struct RouteTable {
    snapshot: ArcSwapOption<Snapshot>,
    /// Gateway route index by `domain/Rpc/version`.
    targets: HashMap<String, usize>,
    /// Most clients a route's limit remembers.
    max_clients: u64,
    /// The revision of the current snapshot (0 before any), for writers waiting for it.
    applied: watch::Sender<u64>,
}

fn target_key(domain: &str, rpc: &str, version: &str) -> String {
    format!("{domain}/{rpc}/{version}")
}

impl RouteTable {
    /// An empty table (descriptor routes only) for a gateway exposing `methods`, in the
    /// order of its routes.
    pub fn new(methods: &[&'static MethodInfo], max_clients: u64) -> Self {
        let targets = methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let version = m.subject.split('.').nth(2).unwrap_or_default();
                (target_key(m.domain, m.name, version), i)
            })
            .collect();
        RouteTable {
            snapshot: ArcSwapOption::empty(),
            targets,
            max_clients,
            applied: watch::Sender::new(0),
        }
    }

    /// What the route of `path` (any spelling, `-` or `_`) decides: `Ok(None)` when
    /// there is no route (descriptor routes apply), the target when it lets requests
    /// through, the refusal otherwise.
    pub fn resolve(&self, path: &str) -> Result<Option<Routed>, ApiError> {
        let guard = self.snapshot.load();
        let Some(snapshot) = guard.as_ref().filter(|s| !s.routes.is_empty()) else {
            return Ok(None);
        };
        // Longer than any stored path (the router's limit): no route, and no copy of a
        // client's long path made to find that out.
        if path.len() > MAX_PATH {
            return Ok(None);
        }
        let found = if path.contains('-') {
            snapshot.routes.get(&path.replace('-', "_"))
        } else {
            snapshot.routes.get(path)
        };
        let Some(e) = found else {
            return Ok(None);
        };
        if !e.enabled {
            return Err(if e.reason.is_empty() {
                ApiError::new(Status::not_found(format!("no route POST {path}")))
            } else {
                ApiError::with_http(
                    StatusCode::GONE,
                    Status::not_found(format!("{path} is gone: {}", e.reason)),
                )
            });
        }
        let target = e.target.ok_or_else(|| {
            ApiError::new(Status::not_found(format!(
                "the route of {path} targets a domain this gateway does not expose"
            )))
        })?;
        Ok(Some(Routed {
            target,
            limit: e.limit.clone(),
        }))
    }

    /// The entry of `route`, reusing `old`'s limit when it is unchanged.
    fn entry(&self, route: &Route, old: Option<&Entry>) -> Entry {
        let target = self
            .targets
            .get(&target_key(&route.domain, &route.rpc, &route.api_version))
            .copied();
        let limit = route
            .rate_limit
            .as_ref()
            .filter(|l| l.requests > 0)
            .map(|l| {
                let period = l
                    .period
                    .and_then(|p| Duration::try_from(p).ok())
                    .filter(|p| !p.is_zero())
                    .unwrap_or(Duration::from_secs(1));
                let spec = (l.requests, period, l.burst, l.key);
                if let Some(same) = old
                    .and_then(|o| o.limit.as_ref())
                    .filter(|o| o.spec == spec)
                {
                    return same.clone();
                }
                let per_sec = f64::from(l.requests) / period.as_secs_f64();
                Arc::new(RouteLimit {
                    spec,
                    key: RateLimitKey::try_from(l.key).unwrap_or(RateLimitKey::Account),
                    limiter: RateLimiter::new(
                        per_sec,
                        l.requests.saturating_add(l.burst),
                        self.max_clients,
                    ),
                })
            });
        Entry {
            target,
            enabled: route.enabled,
            reason: route.disabled_reason.clone(),
            limit,
        }
    }

    fn store(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        self.snapshot.store(Some(Arc::new(snapshot)));
        self.applied.send_replace(revision);
    }

    /// Applies a change notice; false when it cannot be (a gap: reload).
    fn apply(&self, change: &RouteChange) -> bool {
        let current = self.snapshot.load_full();
        let Some(current) = current else {
            // Never loaded: only a full load gives a table to change.
            return false;
        };
        if change.revision <= current.revision {
            return true;
        }
        if change.revision != current.revision + 1 {
            return false;
        }
        let mut routes = current.routes.clone();
        match &change.route {
            Some(r) => {
                let e = self.entry(r, routes.get(&change.path).map(Arc::as_ref));
                routes.insert(change.path.clone(), Arc::new(e));
            }
            None => {
                routes.remove(&change.path);
            }
        }
        self.store(Snapshot {
            revision: change.revision,
            routes,
        });
        true
    }

    /// Reads the whole table from the router and swaps it in. On failure the snapshot
    /// stays as it is (none: descriptor routes).
    async fn reload(
        &self,
        router: &RouterClient<aicore_sdk::Client>,
        timeout: Duration,
    ) -> Result<(), Status> {
        let options = CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        };
        let old = self.snapshot.load_full();
        let mut routes = HashMap::new();
        let (mut token, mut revision) = (String::new(), None);
        loop {
            let page = router
                .list_routes(
                    ListRoutesRequest {
                        page_size: PAGE,
                        page_token: token,
                        ..Default::default()
                    },
                    &options,
                )
                .await?;
            // A change between pages: the pages disagree; the next notice or reload
            // finishes the job, so keep what we have.
            if *revision.get_or_insert(page.revision) != page.revision {
                return Err(Status::new(
                    Code::Unavailable,
                    "the table changed while loading",
                ));
            }
            for r in &page.routes {
                if routes.len() >= MAX_ROUTES {
                    tracing::warn!(max = MAX_ROUTES, "route table truncated at the gateway");
                    break;
                }
                let prior = old.as_ref().and_then(|o| o.routes.get(&r.path));
                routes.insert(
                    r.path.clone(),
                    Arc::new(self.entry(r, prior.map(Arc::as_ref))),
                );
            }
            if page.next_page_token.is_empty() || routes.len() >= MAX_ROUTES {
                break;
            }
            token = page.next_page_token;
        }
        // Stored even when older than the snapshot: loads and notices are applied by one
        // task in turn, so the pages are the table as of now (a router whose store was
        // replaced counts revisions from 0 again).
        self.store(Snapshot {
            revision: revision.unwrap_or(0),
            routes,
        });
        Ok(())
    }

    /// For a successful call of `m` whose answer is `reply`: when it was a write to the
    /// table, waits (at most `bound`) until the snapshot holds it, so the writer's next
    /// request already sees it.
    pub async fn after_call(&self, m: &MethodInfo, reply: &[u8], bound: Duration) {
        if m.domain != "router" {
            return;
        }
        let revision = match m.rpc {
            "set_route" => SetRouteResponse::decode(reply).map(|r| r.revision),
            "remove_route" => RemoveRouteResponse::decode(reply).map(|r| r.revision),
            _ => return,
        };
        let Ok(revision) = revision else {
            return;
        };
        let mut seen = self.applied.subscribe();
        let _ = tokio::time::timeout(bound, seen.wait_for(|r| *r >= revision)).await;
    }

    /// Loads the table once now (so a gateway starting beside a running router serves
    /// its routes from the first request), then keeps it current until `stop`.
    pub async fn keep_current(
        self: Arc<Self>,
        client: aicore_sdk::Client,
        refresh: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut sub = client.nats().subscribe(ROUTER_CHANGED).await?;
        let router = RouterClient::new(client);
        if let Err(e) = self.reload(&router, timeout).await {
            tracing::info!(error = %e, "route table not loaded at start; descriptor routes only until it is");
        }
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let reload = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => match m {
                        None => break,
                        Some(m) => match RouteChange::decode(m.payload) {
                            Ok(c) => !self.apply(&c),
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable route change notice; reloading");
                                true
                            }
                        },
                    },
                    _ = tick.tick() => true,
                };
                if reload && let Err(e) = self.reload(&router, timeout).await {
                    tracing::debug!(error = %e, "route table not reloaded; keeping the last one");
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicore_proto::aicore::router::v1::RateLimit;

    fn methods() -> Vec<&'static MethodInfo> {
        ["auth", "router"]
            .iter()
            .flat_map(|d| aicore_proto::find_service(d).unwrap().methods.iter())
            .collect()
    }

    fn route(path: &str, enabled: bool, reason: &str) -> Route {
        Route {
            path: path.into(),
            domain: "auth".into(),
            rpc: "Login".into(),
            api_version: "v1".into(),
            enabled,
            disabled_reason: reason.into(),
            ..Default::default()
        }
    }

    fn change(revision: u64, path: &str, route: Option<Route>) -> RouteChange {
        RouteChange {
            revision,
            path: path.into(),
            route,
        }
    }

    fn loaded(t: &RouteTable, revision: u64, routes: &[Route]) {
        let routes = routes
            .iter()
            .map(|r| (r.path.clone(), Arc::new(t.entry(r, None))))
            .collect();
        t.store(Snapshot { revision, routes });
    }

    fn status(r: Result<Option<Routed>, ApiError>) -> u16 {
        match r {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.http.as_u16(),
        }
    }

    #[test]
    fn disabled_routes_are_404_or_410_and_unknown_paths_fall_through() {
        let t = RouteTable::new(&methods(), 100);
        // No snapshot: every path falls through to the descriptor routes.
        assert_eq!(status(t.resolve("/v1/auth/login")), 0);
        loaded(
            &t,
            3,
            &[
                route("/v1/auth/login", false, ""),
                route("/v1/auth/register", false, "use /v2/signup"),
                route("/v2/signin", true, ""),
            ],
        );
        assert_eq!(status(t.resolve("/v1/auth/login")), 404);
        let e = t.resolve("/v1/auth/register").err().unwrap();
        assert_eq!(e.http, StatusCode::GONE);
        assert!(e.status.message.contains("use /v2/signup"));
        let ok = t.resolve("/v2/signin").unwrap().unwrap();
        let login = methods()
            .iter()
            .position(|m| m.subject == "svc.auth.v1.login");
        assert_eq!(Some(ok.target), login);
        assert_eq!(status(t.resolve("/v1/auth/logout")), 0);
        // The kebab spelling is the same path.
        loaded(&t, 4, &[route("/v1/auth/get_account", false, "")]);
        assert_eq!(status(t.resolve("/v1/auth/get-account")), 404);
    }

    #[test]
    fn notices_apply_in_order_and_a_gap_asks_for_a_reload() {
        let t = RouteTable::new(&methods(), 100);
        // Nothing loaded: a notice cannot be applied.
        assert!(!t.apply(&change(1, "/v2/a", Some(route("/v2/a", false, "")))));
        loaded(&t, 1, &[]);
        assert!(t.apply(&change(2, "/v2/a", Some(route("/v2/a", false, "")))));
        assert_eq!(status(t.resolve("/v2/a")), 404);
        // An old notice is ignored.
        assert!(t.apply(&change(2, "/v2/a", Some(route("/v2/a", true, "")))));
        assert_eq!(status(t.resolve("/v2/a")), 404);
        // A gap is refused: the table must be reloaded.
        assert!(!t.apply(&change(4, "/v2/a", None)));
        assert_eq!(status(t.resolve("/v2/a")), 404);
        assert!(t.apply(&change(3, "/v2/a", None)));
        assert_eq!(status(t.resolve("/v2/a")), 0);
        assert_eq!(*t.applied.borrow(), 3);
    }

    #[test]
    fn a_routes_limit_answers_429_and_survives_other_changes() {
        let t = RouteTable::new(&methods(), 100);
        let mut limited = route("/v2/a", true, "");
        let mut limit = RateLimit {
            requests: 2,
            period: Some(Default::default()),
            burst: 0,
            key: RateLimitKey::Global as i32,
        };
        if let Some(p) = limit.period.as_mut() {
            p.seconds = 60;
        }
        limited.rate_limit = Some(limit);
        loaded(&t, 1, &[limited.clone()]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let take = |t: &RouteTable, ip: IpAddr| {
            let l = t.resolve("/v2/a").unwrap().unwrap().limit.unwrap();
            l.check(ip, None)
        };
        assert!(take(&t, ip).is_ok());
        // Another route changes: this route's budget is kept, not refilled.
        assert!(t.apply(&change(2, "/v2/b", Some(route("/v2/b", true, "")))));
        assert!(take(&t, "10.0.0.2".parse().unwrap()).is_ok());
        let e = take(&t, ip).err().unwrap();
        assert_eq!(e.http, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.status.retry_after_ms > 20_000,
            "{}",
            e.status.retry_after_ms
        );
        // A changed limit starts afresh.
        limited.rate_limit.as_mut().unwrap().requests = 3;
        assert!(t.apply(&change(3, "/v2/a", Some(limited))));
        assert!(take(&t, ip).is_ok());
    }

    #[test]
    fn routes_to_domains_not_exposed_here_are_404() {
        let t = RouteTable::new(&methods(), 100);
        let mut elsewhere = route("/v2/w", true, "");
        elsewhere.domain = "weather_manager".into();
        elsewhere.rpc = aicore_proto::find_service("weather_manager")
            .unwrap()
            .methods[0]
            .name
            .into();
        loaded(&t, 1, &[elsewhere]);
        assert_eq!(status(t.resolve("/v2/w")), 404);
    }
}
