//! The gateway's error responses: the common error model ([`Status`]) as an HTTP status
//! (through [`aicore_proto::http_status`], the one mapping) and a JSON body
//! `{"code", "message", "details": [{"field", "description"}]}`, with `Retry-After` when a
//! retry may succeed. Gateway-only refusals that have no code of their own (413, 405, 415)
//! are built here too, in the same body shape.

use aicore_proto::{Code, Status, code_name};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A refusal on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub http: StatusCode,
    /// What went wrong, in the common error model.
    pub status: Status,
}

impl ApiError {
    /// A refusal with the HTTP status of its code.
    pub fn new(status: Status) -> Self {
        let http =
            StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { http, status }
    }

    /// A refusal whose HTTP status is more precise than its code's (413 for a body too
    /// large, which is InvalidArgument in the common model).
    pub fn with_http(http: StatusCode, status: Status) -> Self {
        ApiError { http, status }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        body(&self.status)
    }
}

/// The JSON body of an error.
pub fn body(s: &Status) -> String {
    serde_json::json!({
        "code": code_name(s.code),
        "message": s.message,
        "details": s.field_violations.iter().map(|v| serde_json::json!({
            "field": v.field, "description": v.description
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError::new(s)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match (self.status.retry_after_ms, self.status.code) {
            (ms, _) if ms > 0 => Some(ms.div_ceil(1000).max(1)),
            (_, Code::ResourceExhausted | Code::Unavailable) => Some(1),
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
        assert_eq!(b["details"][0]["field"], "a.b");
    }
}
