//! What capability-registry knows of the network: a bounded table of service instances
//! built from discovery replies, and the checks every reply passes before it is believed.
//! Pure and synchronous (time is passed in), so tests feed it raw reply payloads, hostile
//! ones included, on a manual clock. The NATS side (publishing the requests, gathering the
//! replies of one round) lives in `mod.rs`.
//!
//! Every reply is a JSON document of the NATS micro protocol (v1). A reply is believed only
//! when it is at most `max_reply_bytes`, parses into the document of the kind asked for
//! (`io.nats.micro.v1.{ping,info,stats}_response`), and every string in it is within its
//! bound; anything else is counted and ignored whole. A round reads at most
//! `max_replies_per_round` replies and `max_round_bytes` bytes; the table holds at most
//! `max_instances` instances (a new one replaces the longest-unseen stale one, else it is
//! refused; newcomers of one round are admitted one service at a time in turn) and
//! `max_endpoints` endpoints per instance. Each refusal is counted, so an
//! operator sees it in Health.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use aicore_proto::aicore::capability_registry::v1::{
    DiscoveryCounters, Endpoint, HealthStatus, Instance,
};
use serde::Deserialize;

/// Longest service name or instance id, in bytes (`[A-Za-z0-9_-]`).
pub const MAX_NAME: usize = 64;
/// Longest version string, in bytes.
const MAX_VERSION: usize = 64;
/// Longest service description, in bytes.
const MAX_DESCRIPTION: usize = 4096;
/// Most metadata entries per document.
const MAX_METADATA: usize = 32;
/// Longest metadata key, in bytes.
const MAX_METADATA_KEY: usize = 128;
/// Longest metadata value, in bytes.
const MAX_METADATA_VALUE: usize = 1024;
/// Longest endpoint name, in bytes.
const MAX_ENDPOINT_NAME: usize = 128;
/// Longest subject or queue group, in bytes.
pub const MAX_SUBJECT: usize = 256;

/// The bounds of discovery (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most instances in the table.
    pub max_instances: usize,
    /// Most endpoints kept per instance.
    pub max_endpoints: usize,
    /// Largest reply read, in bytes.
    pub max_reply_bytes: usize,
    /// Most replies read per round.
    pub max_replies_per_round: usize,
    /// Most reply bytes read per round.
    pub max_round_bytes: usize,
}

/// When an instance counts as degraded or stale.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    /// Unseen this long: stale.
    pub stale_after: Duration,
    /// Unseen this long: forgotten.
    pub forget_after: Duration,
    /// A ping round trip above this: degraded.
    pub degraded_ping: Duration,
    /// A share of errors (0–1) at or above this in the last stats interval: degraded.
    pub degraded_error_rate: f64,
    /// Fewest requests in the last stats interval for its error share to count.
    pub degraded_min_requests: u64,
}

/// The discovery verb a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `$SRV.PING`: who is there (its round trip is the ping latency).
    Ping,
    /// `$SRV.INFO`: description and endpoints.
    Info,
    /// `$SRV.STATS`: start time and per-endpoint counters.
    Stats,
}

impl Verb {
    /// The three, in the order a round asks them.
    pub const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];

    /// The protocol's name of the verb (`PING`), as in `$SRV.PING`.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }

    /// The verb named `s` (`PING`, `INFO`, `STATS`).
    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.name() == s)
    }

    fn doc_type(self) -> &'static str {
        match self {
            Verb::Ping => "io.nats.micro.v1.ping_response",
            Verb::Info => "io.nats.micro.v1.info_response",
            Verb::Stats => "io.nats.micro.v1.stats_response",
        }
    }
}

/// A micro-protocol document as it arrives; every field optional so a missing one is
/// judged by [`check`], not by serde's message.
#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    started: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<EndpointDoc>>,
}

#[derive(Deserialize)]
struct EndpointDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    queue_group: String,
    #[serde(default)]
    num_requests: u64,
    #[serde(default)]
    num_errors: u64,
    /// Nanoseconds.
    #[serde(default)]
    average_processing_time: u64,
}

/// One endpoint as the table keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRec {
    /// The endpoint's name (`login`).
    pub name: String,
    /// The subject it serves (`svc.auth.v1.login`).
    pub subject: String,
    /// Its queue group.
    pub queue_group: String,
    /// Requests over its lifetime (from STATS; 0 until one came).
    pub requests: u64,
    /// Of those, answered with an error (never more than `requests`).
    pub errors: u64,
    /// Mean processing time.
    pub average: Duration,
}

/// What one round learnt of one instance.
#[derive(Debug, Clone, Default)]
struct Seen {
    version: String,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    started: Option<SystemTime>,
    /// From INFO (no counters).
    info_endpoints: Option<Vec<EndpointRec>>,
    /// From STATS (with counters).
    stats_endpoints: Option<Vec<EndpointRec>>,
    ping: Option<Duration>,
    truncated: u64,
}

/// The replies of one round, checked, by instance (service name, instance id).
#[derive(Debug, Default)]
pub struct Round {
    seen: BTreeMap<(String, String), Seen>,
    replies_read: usize,
    bytes_read: usize,
    counters: DiscoveryCounters,
}

/// A micro-protocol name or id: 1–64 bytes of `[A-Za-z0-9_-]`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// A NATS subject: 1–256 bytes, no whitespace or control characters.
pub fn subject_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

fn endpoint(e: EndpointDoc) -> Option<EndpointRec> {
    let ok = !e.name.is_empty()
        && text_ok(&e.name, MAX_ENDPOINT_NAME)
        && subject_ok(&e.subject)
        && text_ok(&e.queue_group, MAX_SUBJECT);
    ok.then(|| EndpointRec {
        name: e.name,
        subject: e.subject,
        queue_group: e.queue_group,
        requests: e.num_requests,
        errors: e.num_errors.min(e.num_requests),
        average: Duration::from_nanos(e.average_processing_time),
    })
}

impl Round {
    /// Reads one reply to `verb` that arrived `latency` after the request: counts it and,
    /// when it passes every check, keeps what it says.
    pub fn take(&mut self, verb: Verb, payload: &[u8], latency: Duration, limits: &Limits) {
        if self.replies_read >= limits.max_replies_per_round
            || self.bytes_read.saturating_add(payload.len()) > limits.max_round_bytes
        {
            self.counters.dropped_replies += 1;
            return;
        }
        self.replies_read += 1;
        self.counters.replies += 1;
        if payload.len() > limits.max_reply_bytes {
            self.counters.oversized_replies += 1;
            return;
        }
        self.bytes_read += payload.len();
        if !self.check_and_keep(verb, payload, latency, limits) {
            self.counters.malformed_replies += 1;
        }
    }

    /// Whether the reply was a valid document (kept) or not (ignored whole).
    fn check_and_keep(
        &mut self,
        verb: Verb,
        payload: &[u8],
        latency: Duration,
        limits: &Limits,
    ) -> bool {
        let Ok(doc) = serde_json::from_slice::<Doc>(payload) else {
            return false;
        };
        if doc.kind != verb.doc_type()
            || !name_ok(&doc.name)
            || !name_ok(&doc.id)
            || !text_ok(&doc.version, MAX_VERSION)
            || !doc
                .description
                .as_deref()
                .is_none_or(|d| text_ok(d, MAX_DESCRIPTION))
        {
            return false;
        }
        let metadata = match doc.metadata {
            None => None,
            Some(m) if m.len() > MAX_METADATA => return false,
            Some(m) => {
                if !m.iter().all(|(k, v)| {
                    !k.is_empty() && text_ok(k, MAX_METADATA_KEY) && text_ok(v, MAX_METADATA_VALUE)
                }) {
                    return false;
                }
                Some(m.into_iter().collect::<BTreeMap<_, _>>())
            }
        };
        let started = match doc.started.as_deref() {
            None | Some("") => None,
            Some(s) => {
                match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                {
                    Ok(t) => Some(SystemTime::from(t)),
                    Err(_) => return false,
                }
            }
        };
        let mut truncated = 0u64;
        let endpoints = match doc.endpoints {
            None => None,
            Some(list) => {
                truncated = list.len().saturating_sub(limits.max_endpoints) as u64;
                let mut kept = Vec::with_capacity(list.len().min(limits.max_endpoints));
                for e in list.into_iter().take(limits.max_endpoints) {
                    match endpoint(e) {
                        Some(e) => kept.push(e),
                        None => return false,
                    }
                }
                Some(kept)
            }
        };
        let seen = self.seen.entry((doc.name, doc.id)).or_default();
        seen.version = doc.version;
        if doc.description.is_some() {
            seen.description = doc.description;
        }
        if metadata.is_some() {
            seen.metadata = metadata;
        }
        if started.is_some() {
            seen.started = started;
        }
        match verb {
            Verb::Ping => seen.ping = Some(latency),
            Verb::Info => seen.info_endpoints = endpoints.or(seen.info_endpoints.take()),
            Verb::Stats => seen.stats_endpoints = endpoints.or(seen.stats_endpoints.take()),
        }
        seen.truncated = seen.truncated.max(truncated);
        true
    }
}

/// One instance as the table keeps it.
#[derive(Debug, Clone)]
pub struct InstanceRec {
    /// The version it reports.
    pub version: String,
    /// Its service's description (from INFO).
    pub description: String,
    /// Its metadata (host, build, store state, …).
    pub metadata: BTreeMap<String, String>,
    /// When it started (from STATS).
    pub started: Option<SystemTime>,
    /// Its endpoints, at most `max_endpoints`.
    pub endpoints: Vec<EndpointRec>,
    /// When a round last heard it (the registry's clock).
    pub last_seen: SystemTime,
    /// Round trip of the last ping it answered.
    pub ping: Option<Duration>,
    /// Errors / requests between its last two stats, when enough requests came.
    pub recent_error_rate: Option<f64>,
}

impl InstanceRec {
    /// Its health at `now`.
    pub fn status(&self, now: SystemTime, j: &Judgement) -> HealthStatus {
        let age = now.duration_since(self.last_seen).unwrap_or_default();
        if age >= j.stale_after {
            HealthStatus::Stale
        } else if self.ping.is_some_and(|p| p > j.degraded_ping)
            || self
                .recent_error_rate
                .is_some_and(|r| r >= j.degraded_error_rate)
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    /// Requests and errors over its endpoints' lifetimes.
    pub fn totals(&self) -> (u64, u64) {
        self.endpoints.iter().fold((0u64, 0u64), |(r, e), x| {
            (r.saturating_add(x.requests), e.saturating_add(x.errors))
        })
    }

    /// As the contract shows it, with only the endpoints `keep` accepts.
    pub fn shown(
        &self,
        id: &str,
        now: SystemTime,
        j: &Judgement,
        keep: impl Fn(&EndpointRec) -> bool,
    ) -> Instance {
        Instance {
            instance_id: id.to_string(),
            version: self.version.clone(),
            endpoints: self
                .endpoints
                .iter()
                .filter(|e| keep(e))
                .map(|e| Endpoint {
                    name: e.name.clone(),
                    subject: e.subject.clone(),
                    queue_group: e.queue_group.clone(),
                    requests: e.requests,
                    errors: e.errors,
                    average_processing_time: prost_types::Duration::try_from(e.average).ok(),
                })
                .collect(),
            metadata: self.metadata.clone().into_iter().collect(),
            started_at: self.started.map(prost_types::Timestamp::from),
            last_seen_at: Some(prost_types::Timestamp::from(self.last_seen)),
            ping_latency: self
                .ping
                .and_then(|p| prost_types::Duration::try_from(p).ok()),
            status: self.status(now, j) as i32,
        }
    }
}

/// The table: services by name, their instances by id.
#[derive(Debug, Default)]
pub struct Table {
    /// Services by name, each with its instances by id.
    pub services: BTreeMap<String, BTreeMap<String, InstanceRec>>,
    instances: usize,
    /// What discovery saw and refused so far.
    pub counters: DiscoveryCounters,
    /// When the last round was absorbed.
    pub discovered_at: Option<SystemTime>,
}

impl Table {
    /// Takes a finished round seen at `now`: updates the instances it saw, admits new
    /// ones while there is room, and forgets those unseen for `forget_after`.
    pub fn absorb(&mut self, round: Round, now: SystemTime, limits: &Limits, j: &Judgement) {
        let c = &mut self.counters;
        let r = &round.counters;
        c.rounds += 1;
        c.replies += r.replies;
        c.malformed_replies += r.malformed_replies;
        c.oversized_replies += r.oversized_replies;
        c.dropped_replies += r.dropped_replies;
        self.forget(now, j.forget_after);
        for (name, id, seen) in fair_order(round.seen) {
            let known = self
                .services
                .get(&name)
                .is_some_and(|s| s.contains_key(&id));
            if !known && !self.make_room(now, limits, j) {
                self.counters.rejected_instances += 1;
                continue;
            }
            let rec = self
                .services
                .entry(name)
                .or_default()
                .entry(id)
                .or_insert_with(|| InstanceRec {
                    version: String::new(),
                    description: String::new(),
                    metadata: BTreeMap::new(),
                    started: None,
                    endpoints: Vec::new(),
                    last_seen: now,
                    ping: None,
                    recent_error_rate: None,
                });
            if !known {
                self.instances += 1;
            }
            self.counters.truncated_endpoints += seen.truncated;
            update(rec, seen, now, j);
        }
        self.discovered_at = Some(now);
    }

    /// Frees a slot for a new instance if the table is full: the longest-unseen stale
    /// instance goes. False when every held instance is live.
    fn make_room(&mut self, now: SystemTime, limits: &Limits, j: &Judgement) -> bool {
        if self.instances < limits.max_instances {
            return true;
        }
        let oldest = self
            .services
            .iter()
            .flat_map(|(n, s)| s.iter().map(move |(id, r)| (r.last_seen, n, id)))
            .filter(|(seen, _, _)| now.duration_since(*seen).unwrap_or_default() >= j.stale_after)
            .min()
            .map(|(_, n, id)| (n.clone(), id.clone()));
        let Some((name, id)) = oldest else {
            return false;
        };
        self.remove(&name, &id);
        true
    }

    fn remove(&mut self, name: &str, id: &str) {
        if let Some(s) = self.services.get_mut(name) {
            if s.remove(id).is_some() {
                self.instances -= 1;
            }
            if s.is_empty() {
                self.services.remove(name);
            }
        }
    }

    fn forget(&mut self, now: SystemTime, after: Duration) {
        let gone: Vec<(String, String)> = self
            .services
            .iter()
            .flat_map(|(n, s)| s.iter().map(move |(id, r)| (n, id, r.last_seen)))
            .filter(|(_, _, seen)| now.duration_since(*seen).unwrap_or_default() >= after)
            .map(|(n, id, _)| (n.clone(), id.clone()))
            .collect();
        for (n, id) in gone {
            self.remove(&n, &id);
        }
    }
}

/// The instances of a round one service at a time in turn (the first instance of every
/// service, then the second of each, …), so that when room runs out, a flood of instances
/// under one name has not crowded out the other services seen in the same round.
fn fair_order(seen: BTreeMap<(String, String), Seen>) -> Vec<(String, String, Seen)> {
    let mut by_name: BTreeMap<String, std::collections::VecDeque<(String, Seen)>> = BTreeMap::new();
    for ((name, id), s) in seen {
        by_name.entry(name).or_default().push_back((id, s));
    }
    let mut out = Vec::new();
    while !by_name.is_empty() {
        by_name.retain(|name, queue| match queue.pop_front() {
            Some((id, s)) => {
                out.push((name.clone(), id, s));
                true
            }
            None => false,
        });
    }
    out
}

/// Applies what a round saw of an instance to its record.
fn update(rec: &mut InstanceRec, seen: Seen, now: SystemTime, j: &Judgement) {
    let before = rec.totals();
    rec.last_seen = now;
    rec.version = seen.version;
    if let Some(d) = seen.description {
        rec.description = d;
    }
    if let Some(m) = seen.metadata {
        rec.metadata = m;
    }
    if seen.started.is_some() {
        rec.started = seen.started;
    }
    // A round without a ping answer (lost, or over the window) keeps the last figure.
    if seen.ping.is_some() {
        rec.ping = seen.ping;
    }
    match (seen.stats_endpoints, seen.info_endpoints) {
        (Some(stats), _) => {
            rec.endpoints = stats;
            let after = rec.totals();
            let requests = after.0.saturating_sub(before.0);
            let errors = after.1.saturating_sub(before.1);
            rec.recent_error_rate = (requests >= j.degraded_min_requests.max(1))
                .then(|| errors.min(requests) as f64 / requests as f64);
        }
        (None, Some(info)) => {
            // Keep the counters of endpoints still listed.
            rec.endpoints = info
                .into_iter()
                .map(|mut e| {
                    if let Some(old) = rec.endpoints.iter().find(|o| o.name == e.name) {
                        (e.requests, e.errors, e.average) = (old.requests, old.errors, old.average);
                    }
                    e
                })
                .collect();
        }
        (None, None) => {}
    }
}

/// The worse of two health states (healthy < degraded < stale < down; unspecified least).
pub fn worse(a: HealthStatus, b: HealthStatus) -> HealthStatus {
    if (b as i32) > (a as i32) { b } else { a }
}
