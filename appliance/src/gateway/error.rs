//! The gateway's error responses: the common error model ([`Status`]) as an HTTP status
//! (through [`aicore_proto::http_status`], the one mapping) and a JSON body
//! `{"code", "message", "field_violations": [{"field", "description"}]}` (the encoding
//! `aicore call` prints too: [`aicore_proto::error_json`]), with `Retry-After` when a
//! retry may succeed. Gateway-only refusals (413, 405, 415) are built here too, in the
//! same body shape; a body over the limit has its own JSON code, [`PAYLOAD_TOO_LARGE`].

use aicore_proto::{Code, Status, code_name};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The JSON `code` of a request body over the gateway's limit (HTTP 413). Not a code of
/// the common error model: the request never reached a domain, and what it is there
/// (INVALID_ARGUMENT) would tell a client to fix a field rather than to send less.
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";

/// A refusal on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub http: StatusCode,
    /// What went wrong, in the common error model.
    pub status: Status,
    /// The JSON `code`: the name of the status's code, or [`PAYLOAD_TOO_LARGE`].
    code: &'static str,
}

impl ApiError {
    /// A refusal with the HTTP status of its code.
    pub fn new(status: Status) -> Self {
        let http =
            StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::with_http(http, status)
    }

    /// A refusal whose HTTP status is more precise than its code's (405, 415: both
    /// InvalidArgument in the common model).
    pub fn with_http(http: StatusCode, status: Status) -> Self {
        let code = code_name(status.code);
        ApiError { http, status, code }
    }

    /// A request body over the limit: 413 with the JSON code [`PAYLOAD_TOO_LARGE`].
    pub fn too_large(status: Status) -> Self {
        ApiError {
            http: StatusCode::PAYLOAD_TOO_LARGE,
            status,
            code: PAYLOAD_TOO_LARGE,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        aicore_proto::error_json_as(self.code, &self.status)
    }
}

/// The JSON body of an error (the one encoding of the error model, shared with the CLI).
pub fn body(s: &Status) -> String {
    aicore_proto::error_json(s)
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError::new(s)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Retry-After only where waiting helps: when the refusal says how long (rate
        // limits, lockouts, overload), or the service is unavailable. A size limit is
        // ResourceExhausted too, and no wait lifts it.
        let retry_after = match (self.status.retry_after_ms, self.status.code) {
            (ms, _) if ms > 0 => Some(ms.div_ceil(1000).max(1)),
            (_, Code::Unavailable) => Some(1),
            _ => None,
        };
        let mut r = (
            self.http,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            // A final newline keeps terminals (curl) tidy.
            self.body() + "\n",
        )
            .into_response();
        if let Some(secs) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.http == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_once_and_retry_after_rounds_up() {
        let r = ApiError::new(
            Status::new(Code::ResourceExhausted, "slow down")
                .with_retry_after(std::time::Duration::from_millis(1500)),
        )
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::new(Status::unauthenticated("no")).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let b: serde_json::Value =
            serde_json::from_str(&ApiError::new(Status::invalid("a.b", "bad")).body()).unwrap();
        assert_eq!(b["code"], "INVALID_ARGUMENT");
        assert_eq!(b["field_violations"][0]["field"], "a.b");
        let r = ApiError::too_large(Status::invalid("(body)", "too big"));
        assert_eq!(r.http, StatusCode::PAYLOAD_TOO_LARGE);
        let b: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(b["code"], PAYLOAD_TOO_LARGE);
        assert_eq!(b["field_violations"][0]["field"], "(body)");
    }
}
