//! The AI Core client. [`Client`] implements the generated clients' [`Transport`] over
//! NATS request/reply: it puts the deadline, trace context, request id and caller in
//! headers, turns micro-protocol error replies back into [`Status`], retries calls that
//! are safe to repeat with jittered backoff inside the deadline, and keeps a
//! circuit breaker per subject so a dead service fails fast instead of eating every
//! caller's deadline. Domains use the same client for cross-domain calls, so placement
//! stays free. It does not connect or authenticate by itself: it wraps a connected
//! `async_nats::Client`.
//!
//! # What is retried
//!
//! A call that finds nobody serving its subject (no responders) reached no one: any call,
//! a write without a key too, is sent again until it has waited
//! [`ClientConfig::outage_grace`] (or its deadline comes first). That rides out a
//! service restarting or its connection reconnecting — nats-server closes connections
//! whose certificate a rotation retired, and their subscriptions are gone until the
//! client has reconnected — instead of failing every call in that blip.
//!
//! A call whose attempt may have been delivered (a timeout, Unavailable from the service)
//! is sent again only when that is provably safe ([`MethodInfo::retry_safe`]): the RPC is
//! a read (`read_only` in its proto policy), or the request carries an idempotency key,
//! so a replay returns the first reply. A write without a key is sent once: its first
//! attempt may have been applied with the reply lost, and a blind retry would apply it
//! twice or answer Conflict to a create-only write that succeeded. A caller that wants
//! such a write retried asks for a key with [`CallOptions::idempotency_key`]
//! ([`IdempotencyKey::Fresh`]): the SDK then puts one key in every attempt.
//!
//! # What counts against a breaker
//!
//! A breaker is shared by every caller of a subject, so only what proves the *service*
//! unhealthy may count toward opening it, never what one caller asked for: otherwise a
//! single client sending requests with 1 ms deadlines (or hopeless inputs) would open the
//! circuit for everyone. Per attempt:
//! - **counts**: no responders (nobody serves the subject), and an attempt that timed out
//!   although it had at least [`ClientConfig::attempt_timeout`] to get an answer — the
//!   service had a reasonable time and said nothing. A DeadlineExceeded *reply* is
//!   judged the same way: the service saying it did not finish within the attempt's
//!   deadline is silence with a receipt, and whether that reply or the caller's own
//!   timer comes first is a race of microseconds;
//! - **resets**: any other reply from the service, success or error (it is alive and
//!   answering; a refusal such as Unavailable comes back fast and eats no deadline,
//!   which is what the breaker protects);
//! - **neither**: an attempt cut short by the caller's own deadline (it had less than
//!   `attempt_timeout`), whether it timed out or the service answered DeadlineExceeded,
//!   and failures of the caller's own connection or request (max payload, a connection
//!   that is down): the caller's outcome, not the service's.
//!
//! The circuit opens after `breaker_threshold` failures in a row that have lasted at least
//! [`ClientConfig::outage_grace`]: a burst of failures inside a reconnect blip, however
//! many callers see it, does not turn the blip into a `breaker_cooldown` of refusals.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aicore_proto::{CallOptions, Code, MethodInfo, Status, Transport};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::stream::BoxStream;
use rand::Rng;

pub use aicore_proto as proto;

/// The protocol's headers ([`aicore_proto::headers`]) as async-nats names, built once: a
/// name given as `&str` is validated and copied at every insert and every lookup.
pub mod header_names {
    use aicore_proto::headers as h;
    use async_nats::HeaderName;

    /// [`h::TIMEOUT_MS`].
    pub const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);
    /// [`h::DEADLINE`].
    pub const DEADLINE: HeaderName = HeaderName::from_static(h::DEADLINE);
    /// [`h::TRACEPARENT`].
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(h::TRACEPARENT);
    /// [`h::REQUEST_ID`].
    pub const REQUEST_ID: HeaderName = HeaderName::from_static(h::REQUEST_ID);
    /// [`h::CALLER`].
    pub const CALLER: HeaderName = HeaderName::from_static(h::CALLER);
    /// [`h::CALLER_ROLES`].
    pub const CALLER_ROLES: HeaderName = HeaderName::from_static(h::CALLER_ROLES);
    /// [`h::CALLER_SESSION`].
    pub const CALLER_SESSION: HeaderName = HeaderName::from_static(h::CALLER_SESSION);
    /// [`h::CLIENT_ADDR`].
    pub const CLIENT_ADDR: HeaderName = HeaderName::from_static(h::CLIENT_ADDR);
    /// [`h::STREAM`].
    pub const STREAM: HeaderName = HeaderName::from_static(h::STREAM);
    /// [`h::STREAM_ID`].
    pub const STREAM_ID: HeaderName = HeaderName::from_static(h::STREAM_ID);
    /// [`h::REQUEST_INFO`].
    pub const REQUEST_INFO: HeaderName = HeaderName::from_static(h::REQUEST_INFO);
    /// [`h::SERVICE_ERROR`].
    pub const SERVICE_ERROR: HeaderName = HeaderName::from_static(h::SERVICE_ERROR);
    /// [`h::SERVICE_ERROR_CODE`].
    pub const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(h::SERVICE_ERROR_CODE);
}

/// Tunables of a [`Client`]; the defaults suit a LAN appliance.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline when neither the call nor the RPC's policy sets one.
    pub default_timeout: Duration,
    /// Longest single attempt of an idempotent call, so a lost request leaves time to retry;
    /// also the least time a service must have had before its silence counts against its
    /// circuit breaker.
    pub attempt_timeout: Duration,
    /// Attempts of an idempotent call, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubles each retry, with full jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Consecutive failures of a service (no responders, or silence for a whole
    /// `attempt_timeout`; see the module documentation) that open its subject's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit refuses calls before letting a trial through.
    pub breaker_cooldown: Duration,
    /// How long an outage must last before it is one: a call finding no responders is
    /// re-sent for up to this long, and failures in a row open the circuit only once
    /// they have lasted this long.
    pub outage_grace: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            default_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 4,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(1000),
            breaker_threshold: 20,
            breaker_cooldown: Duration::from_secs(2),
            outage_grace: Duration::from_secs(2),
        }
    }
}

/// A NATS-backed transport for every generated client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    config: Arc<ClientConfig>,
    breakers: Arc<RwLock<HashMap<&'static str, Breaker>>>,
}

mod breaker;
mod call;
mod stream;

use breaker::Breaker;

impl Client {
    /// Wraps a connected NATS client.
    pub fn new(nats: async_nats::Client, config: ClientConfig) -> Self {
        Client {
            nats,
            config: Arc::new(config),
            breakers: Arc::default(),
        }
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    fn deadline(&self, method: &MethodInfo, options: &CallOptions) -> Instant {
        let t = options.timeout.unwrap_or_else(|| {
            if method.policy.default_deadline_ms > 0 {
                Duration::from_millis(method.policy.default_deadline_ms.into())
            } else {
                self.config.default_timeout
            }
        });
        Instant::now() + t
    }

    fn backoff(&self, retry: u32) -> Duration {
        let ms = backoff_cap(&self.config, retry).as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

/// The longest pause before retry number `retry` (0-based): exponential, capped.
fn backoff_cap(config: &ClientConfig, retry: u32) -> Duration {
    config
        .backoff_base
        .saturating_mul(1u32 << retry.min(16))
        .min(config.backoff_max)
}

/// Builds the request headers: remaining time, trace, request id, caller, client address.
fn request_headers(options: &CallOptions, remaining: Duration) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header_names::TIMEOUT_MS, remaining.as_millis().to_string());
    let deadline = std::time::SystemTime::now() + remaining;
    if let Ok(d) = deadline.duration_since(std::time::UNIX_EPOCH) {
        h.insert(header_names::DEADLINE, d.as_millis().to_string());
    }
    // Traces start at the edge (the gateway, or a caller that sets one); the SDK carries
    // an existing context onward rather than inventing one per call.
    if let Some(tp) = &options.traceparent {
        h.insert(header_names::TRACEPARENT, tp.as_str());
    }
    if let Some(id) = &options.request_id {
        h.insert(header_names::REQUEST_ID, id.as_str());
    }
    if let Some(c) = &options.caller {
        h.insert(header_names::CALLER, c.account_id.as_str());
        h.insert(header_names::CALLER_ROLES, c.roles.join(",").as_str());
        if let Some(s) = &options.caller_session {
            h.insert(header_names::CALLER_SESSION, s.as_str());
        }
    }
    if let Some(a) = &options.client_addr {
        h.insert(header_names::CLIENT_ADDR, a.as_str());
    }
    h
}

/// A fresh W3C trace context (`00-<trace id>-<span id>-01`), for the edge that starts a
/// trace.
pub fn new_traceparent() -> String {
    let mut r = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        r.random::<u128>().max(1),
        r.random::<u64>().max(1)
    )
}

/// A fresh idempotency key (`idk_` and 128 random bits in hex), for a caller that wants a
/// write retried safely (or see [`IdempotencyKey::Fresh`]).
pub fn new_idempotency_key() -> String {
    format!("idk_{:032x}", rand::rng().random::<u128>())
}

/// Turns a reply message into its body or the error it carries.
pub fn reply_result(msg: &Message) -> Result<Bytes, Status> {
    if let Some(status) = msg.status
        && status == async_nats::StatusCode::NO_RESPONDERS
    {
        return Err(Status::new(Code::Unavailable, "no service is answering"));
    }
    let hdr = msg.headers.as_ref();
    let err_code = hdr
        .and_then(|h| h.get(header_names::SERVICE_ERROR_CODE))
        .and_then(|v| v.as_str().parse::<u16>().ok());
    if let Some(code) = err_code {
        let message = hdr
            .and_then(|h| h.get(header_names::SERVICE_ERROR))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        return Err(Status::from_reply(Some(code), &message, &msg.payload));
    }
    Ok(msg.payload.clone())
}

fn map_request_error(subject: &str, e: async_nats::RequestError) -> Status {
    use async_nats::RequestErrorKind;
    match e.kind() {
        RequestErrorKind::TimedOut => Status::new(
            Code::DeadlineExceeded,
            format!("{subject} did not answer in time"),
        ),
        RequestErrorKind::NoResponders => Status::new(
            Code::Unavailable,
            format!("no service is answering {subject}"),
        ),
        RequestErrorKind::MaxPayloadExceeded => Status::new(
            Code::InvalidArgument,
            format!("the request to {subject} exceeds the server's max_payload"),
        ),
        RequestErrorKind::InvalidSubject | RequestErrorKind::Other => Status::new(
            Code::Unavailable,
            format!("request to {subject} failed: {e}"),
        ),
    }
}

impl Transport for Client {
    async fn unary(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<Bytes, Status> {
        self.call_unary(method, body, options).await
    }

    async fn server_stream(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: &CallOptions,
    ) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
        self.open_stream(method, body, options).await
    }
}

#[cfg(test)]
mod tests;
