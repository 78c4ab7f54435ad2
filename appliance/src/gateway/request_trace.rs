//! Each request's id and trace context: the client's `X-Request-Id` when sane, and this
//! hop's span continuing the client's `traceparent` (recorded when traces are exported).

use super::*;

/// The request id and trace context of one request.
pub(super) struct Trace {
    pub(super) request_id: String,
    pub(super) traceparent: String,
    /// This hop's span (its id is what `traceparent` names) and the client's, if any.
    pub(super) context: TraceParent,
    pub(super) parent: Option<u64>,
}

/// The longest `X-Request-Id` accepted (also in the OpenAPI document).
pub const MAX_REQUEST_ID: usize = 128;

/// Whether `id` is a request id the gateway carries: 1 to [`MAX_REQUEST_ID`] characters
/// of `[A-Za-z0-9._:-]` (what the OpenAPI document says).
pub(super) fn request_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Refuses a request whose `X-Request-Id` is present but not one the gateway carries
/// (400 naming the header), rather than silently replacing it.
pub(super) fn check_request_id(h: &HeaderMap) -> Result<(), ApiError> {
    match h.get(REQUEST_ID_HEADER) {
        Some(v) if !v.to_str().is_ok_and(request_id_ok) => Err(Status::invalid(
            "X-Request-Id",
            format!("must be 1 to {MAX_REQUEST_ID} characters of A-Z a-z 0-9 . _ : -"),
        )
        .into()),
        _ => Ok(()),
    }
}

impl Trace {
    /// Takes the client's request id when sane and continues its trace (same trace id,
    /// this hop's own span id) when its `traceparent` is valid; otherwise starts fresh
    /// (an RPC with an unusable id is refused by [`check_request_id`]; this is what the
    /// refusal carries).
    pub(super) fn from_headers(h: &HeaderMap) -> Trace {
        let request_id = h
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| request_id_ok(s))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let (context, parent) =
            TraceParent::continuing(h.get("traceparent").and_then(|v| v.to_str().ok()));
        Trace {
            request_id,
            traceparent: context.to_string(),
            context,
            parent,
        }
    }

    /// Records this hop's span (when traces are exported), named `http <subject>` after
    /// the route's RPC.
    pub(super) fn record(&self, subject: &str, start: SystemTime, status: StatusCode) {
        if !self.context.recorded() {
            return;
        }
        let error = (status.is_server_error() || status.is_client_error())
            .then(|| ("HTTP_ERROR", format!("HTTP {}", status.as_u16())));
        trace::record(trace::Span {
            context: self.context,
            parent: self.parent,
            name: format!("http {subject}").into(),
            kind: trace::Kind::Server,
            start,
            end: SystemTime::now(),
            error,
            attributes: vec![
                ("http.request.method", "POST".into()),
                (
                    "http.response.status_code",
                    status.as_str().to_string().into(),
                ),
                ("http.request.id", self.request_id.clone().into()),
            ],
        });
    }

    pub(super) fn stamp(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert(REQUEST_ID_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.traceparent) {
            h.insert("traceparent", v);
        }
    }
}
