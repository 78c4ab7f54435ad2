//! Reading a request's headers into the [`Metadata`] its handler sees: the deadline, the
//! caller (bounded by [`Trust`] when the request came from an external principal), its
//! session, the trace context, the request id and the client address. A value that is
//! too long or malformed is ignored, never trusted.

use std::time::{Duration, Instant, SystemTime};

use aicore_proto::{Caller, Metadata, Status};
use aicore_sdk::header_names;
use async_nats::HeaderMap;

use super::trust::{Trust, external_principal};

/// Longest `Aicore-Client-Addr` value read; an IPv6 address with a zone fits.
const MAX_CLIENT_ADDR: usize = 64;
/// Longest `Aicore-Caller-Session` value read (auth's session ids are 36 characters).
const MAX_CALLER_SESSION: usize = 64;

/// The client address header's value as a canonical IP address, or `None` when it is not
/// one (too long, or not an address): a bad value is ignored, never trusted as a name.
fn client_addr(v: Option<String>) -> Option<String> {
    let v = v.filter(|v| v.len() <= MAX_CLIENT_ADDR)?;
    let ip: std::net::IpAddr = v.trim().parse().ok()?;
    Some(ip.to_canonical().to_string())
}

/// Reads deadline, caller, trace, request id and client address from the request
/// headers, and bounds the caller by [`Trust`] when nats-server says the request came
/// from an external principal.
pub(super) fn metadata(
    h: Option<&HeaderMap>,
    received: Instant,
    trust: &Trust,
) -> Result<Metadata, Status> {
    let get =
        |name: async_nats::HeaderName| h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let deadline = deadline(
        get(header_names::TIMEOUT_MS),
        get(header_names::DEADLINE),
        received,
    );
    let caller = get(header_names::CALLER)
        .filter(|c| !c.is_empty())
        .map(|account_id| Caller {
            account_id,
            roles: get(header_names::CALLER_ROLES)
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        });
    let (caller, principal) = match get(header_names::REQUEST_INFO) {
        None => (caller, None),
        Some(info) => {
            let principal = external_principal(&info)?;
            (Some(trust.bound(&principal, caller)?), Some(principal))
        }
    };
    // A session only means something with the caller it belongs to.
    let caller_session = get(header_names::CALLER_SESSION).filter(|s| {
        caller.is_some()
            && !s.is_empty()
            && s.len() <= MAX_CALLER_SESSION
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    Ok(Metadata {
        deadline,
        caller,
        caller_session,
        principal,
        traceparent: get(header_names::TRACEPARENT),
        request_id: get(header_names::REQUEST_ID),
        client_addr: client_addr(get(header_names::CLIENT_ADDR)),
    })
}

/// When the request must be answered, from the caller's remaining time
/// (`timeout_ms`) and its absolute deadline (`deadline_ms`, Unix milliseconds).
fn deadline(
    timeout_ms: Option<String>,
    deadline_ms: Option<String>,
    received: Instant,
) -> Option<Instant> {
    // The caller's remaining time counts from pick-up; its absolute deadline also counts
    // the time the request waited in the queue. The earlier of the two wins.
    let relative = timeout_ms
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| received + Duration::from_millis(ms));
    let absolute = deadline_ms.and_then(|v| v.parse::<u64>().ok()).map(|ms| {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        match at.duration_since(SystemTime::now()) {
            Ok(left) => received + left,
            Err(_) => received,
        }
    });
    match (relative, absolute) {
        (Some(r), Some(a)) => Some(r.min(a)),
        (r, a) => r.or(a),
    }
}
