//! capability-registry: what runs where. Every `discovery_interval_ms` it asks the whole
//! NATS network `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (the micro protocol every AI
//! Core domain, every other `aicore` process and any micro-aware service answers) and
//! gathers every reply that arrives within `reply_window_ms` — one request, many answers,
//! one per running instance. From them it keeps a table of services, their instances'
//! versions, endpoints with request and error counts, ping round trips and when each was
//! last seen; List, Find ("which service and version handles `svc.auth.v1.login`") and
//! Health read that table.
//!
//! Health of an instance: stale when unseen for `stale_after_rounds` rounds; degraded when
//! its last ping took over `degraded_ping_ms` or, between its last two stats, at least
//! `degraded_min_requests` requests came and a share of `degraded_error_rate` or more
//! failed; healthy otherwise. A service is down when none of its instances is live, else
//! as bad as its worst live instance. Instances unseen for `forget_after_secs` leave the
//! table.
//!
//! The table is live evidence, kept in memory (each registry instance discovers on its
//! own; a restart fills it again within a round), so it has no tables in the store. What
//! a reply may contain and how big the table may grow is bounded (see [`table`]); the
//! NATS permissions of the `domains` principal allow publishing the three discovery
//! requests and reading replies in its own inbox, nothing more for this purpose.
//!
//! It deliberately does not call services or probe their RPCs: health is what the micro
//! protocol says and whether an instance still answers.

pub mod table;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aicore_proto::aicore::capability_registry::v1::{
    CapabilityRegistryHandler, CapabilityRegistryServer, FindRequest, FindResponse, HealthRequest,
    HealthResponse, HealthStatus, ListRequest, ListResponse, ServiceHealth, ServiceInfo,
    find_request,
};
use aicore_proto::{Request, Status};
use aicore_runtime::{Ctx, paging};
use futures::StreamExt;

use self::table::{EndpointRec, InstanceRec, Judgement, Limits, Round, Table, Verb};

const LIST_TOKEN: u8 = b'C';

/// Configuration of capability-registry (`[domains.capability_registry]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilityRegistryConfig {
    /// How often discovery asks the network, in milliseconds (at least 100).
    pub discovery_interval_ms: u64,
    /// How long a round gathers replies, in milliseconds; less than the interval.
    pub reply_window_ms: u64,
    /// Rounds an instance may miss before it is stale.
    pub stale_after_rounds: u32,
    /// An instance unseen this long (seconds) leaves the table; at least the stale time.
    pub forget_after_secs: u64,
    /// A ping round trip above this (milliseconds) makes an instance degraded.
    pub degraded_ping_ms: u64,
    /// A share of failed requests (0–1) between two stats rounds at or above which an
    /// instance is degraded.
    pub degraded_error_rate: f64,
    /// Fewest requests between two stats rounds for their error share to count.
    pub degraded_min_requests: u64,
    /// Most instances the table holds; new ones beyond it are refused (and counted)
    /// unless a stale one can make room.
    pub max_instances: usize,
    /// Most endpoints kept per instance; more are left out (and counted).
    pub max_endpoints: usize,
    /// Largest discovery reply read, in bytes; larger ones are ignored (and counted).
    pub max_reply_bytes: usize,
    /// Most reply bytes one round reads; the rest is ignored (and counted).
    pub max_round_bytes: usize,
    /// Page size of List when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List.
    pub max_page_size: u32,
}

impl Default for CapabilityRegistryConfig {
    fn default() -> Self {
        CapabilityRegistryConfig {
            discovery_interval_ms: 5000,
            reply_window_ms: 500,
            stale_after_rounds: 3,
            forget_after_secs: 600,
            degraded_ping_ms: 1000,
            degraded_error_rate: 0.5,
            degraded_min_requests: 20,
            max_instances: 512,
            max_endpoints: 128,
            max_reply_bytes: 64 * 1024,
            max_round_bytes: 16 * 1024 * 1024,
            default_page_size: 50,
            max_page_size: 200,
        }
    }
}

impl CapabilityRegistryConfig {
    fn check(&self) -> Result<(Limits, Judgement), Status> {
        let bad = |field: &str, m: &str| {
            Err(Status::invalid(
                field,
                format!("[domains.capability_registry] {field} {m}"),
            ))
        };
        if self.discovery_interval_ms < 100 {
            return bad("discovery_interval_ms", "must be at least 100");
        }
        if self.reply_window_ms == 0 || self.reply_window_ms >= self.discovery_interval_ms {
            return bad(
                "reply_window_ms",
                "must be positive and less than discovery_interval_ms",
            );
        }
        if self.stale_after_rounds == 0 {
            return bad("stale_after_rounds", "must be at least 1");
        }
        let interval = Duration::from_millis(self.discovery_interval_ms);
        let stale_after = interval.saturating_mul(self.stale_after_rounds);
        let forget_after = Duration::from_secs(self.forget_after_secs);
        if forget_after < stale_after {
            return bad(
                "forget_after_secs",
                "must be at least stale_after_rounds × discovery_interval_ms",
            );
        }
        if !(self.degraded_error_rate > 0.0 && self.degraded_error_rate <= 1.0) {
            return bad("degraded_error_rate", "must be in (0, 1]");
        }
        if self.max_instances == 0 || self.max_endpoints == 0 {
            return bad("max_instances", "and max_endpoints must be at least 1");
        }
        if self.max_reply_bytes < 1024 || self.max_round_bytes < self.max_reply_bytes {
            return bad(
                "max_reply_bytes",
                "must be at least 1024 and at most max_round_bytes",
            );
        }
        Ok((
            Limits {
                max_instances: self.max_instances,
                max_endpoints: self.max_endpoints,
                max_reply_bytes: self.max_reply_bytes,
                // A ping, an info and a stats per admitted instance, and a few more.
                max_replies_per_round: self.max_instances.saturating_mul(3).saturating_add(16),
                max_round_bytes: self.max_round_bytes,
            },
            Judgement {
                stale_after,
                forget_after,
                degraded_ping: Duration::from_millis(self.degraded_ping_ms),
                degraded_error_rate: self.degraded_error_rate,
                degraded_min_requests: self.degraded_min_requests,
            },
        ))
    }
}

/// The domain.
pub struct CapabilityRegistry {
    ctx: Ctx,
    config: CapabilityRegistryConfig,
    limits: Limits,
    judgement: Judgement,
    table: Mutex<Table>,
}

/// A service name from a request (`auth`; `state-manager` for `state_manager` too).
fn requested_name(name: &str, field: &str) -> Result<String, Status> {
    if !name.is_empty() && !table::name_ok(name) {
        return Err(Status::invalid(
            field,
            format!(
                "must be a service name: at most {} characters of [A-Za-z0-9_-]",
                table::MAX_NAME
            ),
        ));
    }
    Ok(name.to_string())
}

/// Whether service `name` is the one `wanted` names (`-` and `_` alike).
fn same_name(name: &str, wanted: &str) -> bool {
    name == wanted || name.replace('-', "_") == wanted.replace('-', "_")
}

/// `SetDefault` / `set_default` → `set_default`, as endpoint names are.
fn snake(rpc: &str) -> String {
    let mut out = String::with_capacity(rpc.len() + 4);
    for (i, c) in rpc.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The API version in a `svc.<domain>.<version>.<rpc>` subject, if it has that shape.
fn api_version(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("svc"), Some(_), Some(v)) => Some(v),
        _ => None,
    }
}

impl CapabilityRegistry {
    /// The domain on a context; refuses an inconsistent configuration.
    pub fn new(ctx: Ctx, config: CapabilityRegistryConfig) -> Result<Self, Status> {
        let (limits, judgement) = config.check()?;
        Ok(CapabilityRegistry {
            ctx,
            config,
            limits,
            judgement,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds one reply to `verb`, arrived `latency` after the request, into `round`
    /// under this registry's limits.
    pub fn take(&self, round: &mut Round, verb: Verb, payload: &[u8], latency: Duration) {
        round.take(verb, payload, latency, &self.limits);
    }

    /// Ends a round: what it gathered goes into the table, stamped with the clock's now.
    pub fn absorb(&self, round: Round) {
        let now = self.ctx.clock.now();
        self.table()
            .absorb(round, now, &self.limits, &self.judgement);
    }

    /// One discovery round on `nats`: the three requests, every reply within the window.
    pub async fn discover(&self, nats: &async_nats::Client) {
        let inbox = nats.new_inbox();
        let mut replies = match nats.subscribe(format!("{inbox}.*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "capability-registry could not subscribe for discovery replies");
                return;
            }
        };
        let sent = tokio::time::Instant::now();
        for verb in Verb::ALL {
            let reply = format!("{inbox}.{}", verb.name());
            if let Err(e) = nats
                .publish_with_reply(format!("$SRV.{}", verb.name()), reply, bytes::Bytes::new())
                .await
            {
                tracing::warn!(error = %e, verb = verb.name(), "capability-registry could not publish a discovery request");
            }
        }
        let _ = nats.flush().await;
        let deadline = sent + Duration::from_millis(self.config.reply_window_ms);
        let mut round = Round::default();
        let stop = self.ctx.shutdown.clone();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = tokio::time::timeout_at(deadline, replies.next()) => match m {
                    Ok(Some(m)) => m,
                    _ => break,
                },
            };
            let verb = msg.subject.rsplit('.').next().and_then(Verb::parse);
            if let Some(verb) = verb {
                self.take(&mut round, verb, &msg.payload, sent.elapsed());
            }
        }
        let _ = replies.unsubscribe().await;
        self.absorb(round);
    }

    /// Discovery every `discovery_interval_ms` until shutdown.
    pub async fn run(self: Arc<Self>, nats: async_nats::Client) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.discovery_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.discover(&nats).await,
            }
        }
    }

    /// A service as the contract shows it, with the instances and endpoints the filters
    /// keep; None when no instance is kept.
    fn shown_service(
        &self,
        name: &str,
        instances: &std::collections::BTreeMap<String, InstanceRec>,
        keep_instance: impl Fn(&InstanceRec, HealthStatus) -> bool,
        keep_endpoint: impl Fn(&EndpointRec) -> bool + Copy,
    ) -> Option<ServiceInfo> {
        let now = self.ctx.clock.now();
        let shown: Vec<_> = instances
            .iter()
            .filter(|(_, r)| keep_instance(r, r.status(now, &self.judgement)))
            .map(|(id, r)| r.shown(id, now, &self.judgement, keep_endpoint))
            .collect();
        if shown.is_empty() {
            return None;
        }
        // The newest-seen instance speaks for the service's description.
        let newest = instances.values().max_by_key(|r| r.last_seen)?;
        let api = newest
            .endpoints
            .iter()
            .find_map(|e| api_version(&e.subject))
            .unwrap_or_default();
        Some(ServiceInfo {
            name: name.to_string(),
            description: newest.description.clone(),
            api_version: api.to_string(),
            instances: shown,
        })
    }

    fn health_of(
        &self,
        name: &str,
        instances: &std::collections::BTreeMap<String, InstanceRec>,
    ) -> ServiceHealth {
        let now = self.ctx.clock.now();
        let (mut status, mut healthy, mut requests, mut errors) =
            (HealthStatus::Unspecified, 0u32, 0u64, 0u64);
        for r in instances.values() {
            let s = r.status(now, &self.judgement);
            if s == HealthStatus::Healthy {
                healthy += 1;
            }
            if s != HealthStatus::Stale {
                status = table::worse(status, s);
            }
            let (req, err) = r.totals();
            requests = requests.saturating_add(req);
            errors = errors.saturating_add(err);
        }
        if status == HealthStatus::Unspecified {
            status = HealthStatus::Down;
        }
        ServiceHealth {
            name: name.to_string(),
            status: status as i32,
            healthy_instances: healthy,
            total_instances: instances.len() as u32,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            last_seen_at: instances
                .values()
                .map(|r| r.last_seen)
                .max()
                .map(prost_types::Timestamp::from),
        }
    }
}

impl CapabilityRegistryHandler for CapabilityRegistry {
    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let req = request.body;
        let name = requested_name(&req.name, "name")?;
        let size = paging::page_size(
            req.page_size,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            let raw = paging::decode_token(LIST_TOKEN, &req.page_token)?;
            Some(String::from_utf8(raw).map_err(|_| paging::bad_token())?)
        };
        let table = self.table();
        let include_stale = req.include_stale;
        let mut services = Vec::new();
        let mut more = false;
        for (n, instances) in &table.services {
            if (!name.is_empty() && !same_name(n, &name))
                || after.as_ref().is_some_and(|a| n.as_str() <= a.as_str())
            {
                continue;
            }
            let keep = |_: &InstanceRec, s: HealthStatus| include_stale || s != HealthStatus::Stale;
            let Some(s) = self.shown_service(n, instances, keep, |_| true) else {
                continue;
            };
            if services.len() == size {
                more = true;
                break;
            }
            services.push(s);
        }
        let next_page_token = match services.last() {
            Some(last) if more => paging::encode_token(LIST_TOKEN, last.name.as_bytes()),
            _ => String::new(),
        };
        Ok(ListResponse {
            services,
            next_page_token,
        })
    }

    async fn find(&self, request: Request<FindRequest>) -> Result<FindResponse, Status> {
        let req = request.body;
        // What to match: a subject, or a service name and an endpoint name.
        enum Target {
            Subject(String),
            Rpc(String, String),
        }
        let target = match req.target {
            None => return Err(Status::invalid("target", "a subject or an rpc is required")),
            Some(find_request::Target::Subject(s)) => {
                if !table::subject_ok(&s) || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Status::invalid(
                        "subject",
                        format!(
                            "must be a NATS subject of 1 to {} printable ASCII characters without spaces",
                            table::MAX_SUBJECT
                        ),
                    ));
                }
                Target::Subject(s)
            }
            Some(find_request::Target::Rpc(r)) => {
                if r.domain.is_empty() {
                    return Err(Status::invalid("rpc.domain", "is required"));
                }
                let domain = requested_name(&r.domain, "rpc.domain")?;
                if r.rpc.is_empty()
                    || r.rpc.len() > table::MAX_NAME
                    || !r
                        .rpc
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(Status::invalid(
                        "rpc.rpc",
                        format!(
                            "must be an RPC name (`Login` or `login`) of 1 to {} characters",
                            table::MAX_NAME
                        ),
                    ));
                }
                Target::Rpc(domain, snake(&r.rpc))
            }
        };
        let matches = |service: &str, e: &EndpointRec| match &target {
            Target::Subject(s) => e.subject == *s,
            Target::Rpc(d, rpc) => same_name(service, d) && e.name == *rpc,
        };
        let healthy_only = req.healthy_only;
        let table = self.table();
        for (n, instances) in &table.services {
            let handles = |r: &InstanceRec| r.endpoints.iter().any(|e| matches(n, e));
            let keep = |r: &InstanceRec, s: HealthStatus| {
                handles(r) && (!healthy_only || s == HealthStatus::Healthy)
            };
            if let Some(service) = self.shown_service(n, instances, keep, |e| matches(n, e)) {
                let subject = service
                    .instances
                    .iter()
                    .flat_map(|i| i.endpoints.iter())
                    .map(|e| e.subject.clone())
                    .next()
                    .unwrap_or_default();
                return Ok(FindResponse {
                    service: Some(service),
                    subject,
                });
            }
        }
        let what = match &target {
            Target::Subject(s) => format!("subject {s}"),
            Target::Rpc(d, r) => format!("rpc {r} of {d}"),
        };
        Err(Status::not_found(format!(
            "no {}instance handling {what} has been discovered",
            if healthy_only { "healthy " } else { "" }
        )))
    }

    async fn health(&self, request: Request<HealthRequest>) -> Result<HealthResponse, Status> {
        let name = requested_name(&request.body.name, "name")?;
        let table = self.table();
        let services: Vec<ServiceHealth> = table
            .services
            .iter()
            .filter(|(n, _)| name.is_empty() || same_name(n, &name))
            .map(|(n, i)| self.health_of(n, i))
            .collect();
        if !name.is_empty() && services.is_empty() {
            return Err(Status::not_found(format!(
                "no service named {name} has been discovered"
            )));
        }
        // Nothing discovered at all: nothing answers.
        let overall = services
            .iter()
            .map(|s| HealthStatus::try_from(s.status).unwrap_or(HealthStatus::Down))
            .fold(HealthStatus::Unspecified, table::worse);
        let overall = if overall == HealthStatus::Unspecified {
            HealthStatus::Down
        } else {
            overall
        };
        Ok(HealthResponse {
            overall: overall as i32,
            services,
            discovered_at: table.discovered_at.map(prost_types::Timestamp::from),
            discovery: Some(table.counters),
        })
    }
}

impl aicore_runtime::Domain for CapabilityRegistry {
    type Config = CapabilityRegistryConfig;

    /// The server, with discovery running until `ctx.shutdown` when there is a NATS
    /// client to discover with.
    fn build(
        ctx: &Ctx,
        config: &CapabilityRegistryConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let registry = Arc::new(CapabilityRegistry::new(ctx.clone(), config.clone())?);
        if let Some(client) = &ctx.client {
            tokio::runtime::Handle::try_current().map_err(|_| {
                Status::internal("capability-registry needs a tokio runtime for discovery")
            })?;
            ctx.spawn(registry.clone().run(client.nats().clone()));
        }
        Ok(Arc::new(CapabilityRegistryServer(registry)))
    }
}

#[cfg(test)]
mod tests;
