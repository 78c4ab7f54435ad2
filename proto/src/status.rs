//! The common error model as a Rust error ([`Status`]) and its mapping to and from HTTP
//! statuses.

use std::time::Duration;

use prost::Message;

use crate::{Code, ErrorProto, FieldViolation};

/// The common error model as a Rust error: a [`Code`], a message and field violations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code_name(*code))]
pub struct Status {
    /// The category.
    pub code: Code,
    /// For developers; never secrets.
    pub message: String,
    /// Which fields were wrong.
    pub field_violations: Vec<FieldViolation>,
    /// When a retry may succeed (ResourceExhausted, Unavailable).
    pub retry_after_ms: u64,
}

/// The stable text name of a code (`INVALID_ARGUMENT`), as the CLI and gateway print it.
pub fn code_name(code: Code) -> &'static str {
    code.as_str_name().trim_start_matches("CODE_")
}

impl Status {
    /// A status with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
            field_violations: Vec::new(),
            retry_after_ms: 0,
        }
    }

    /// InvalidArgument naming the wrong field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Status::with_field(Code::InvalidArgument, field, description)
    }

    /// A status of any code naming the field at fault (e.g. FailedPrecondition on
    /// `amount` for insufficient funds).
    pub fn with_field(code: Code, field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        Status {
            code,
            message: format!("{field}: {description}"),
            field_violations: vec![FieldViolation {
                field: field.to_string(),
                description,
            }],
            retry_after_ms: 0,
        }
    }

    /// NotFound.
    pub fn not_found(message: impl Into<String>) -> Self {
        Status::new(Code::NotFound, message)
    }

    /// Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Status::new(Code::Conflict, message)
    }

    /// Internal (the message must not leak internals a player should not see).
    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(Code::Internal, message)
    }

    /// Unauthenticated.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Status::new(Code::Unauthenticated, message)
    }

    /// Sets when a retry may succeed.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after_ms = after.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// The HTTP-like status number carried in `Nats-Service-Error-Code` and used by the
    /// gateway.
    pub fn http_status(&self) -> u16 {
        http_status(self.code)
    }

    /// Whether a retry of an idempotent call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, Code::Unavailable | Code::DeadlineExceeded)
    }

    /// The protobuf form, for reply bodies.
    pub fn to_proto(&self) -> ErrorProto {
        ErrorProto {
            code: self.code as i32,
            message: self.message.clone(),
            field_violations: self.field_violations.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }

    /// From the protobuf form; an unknown code number becomes Internal.
    pub fn from_proto(e: ErrorProto) -> Self {
        Status {
            code: Code::try_from(e.code).unwrap_or(Code::Internal),
            message: e.message,
            field_violations: e.field_violations,
            retry_after_ms: e.retry_after_ms,
        }
    }

    /// From an error reply of any micro-protocol service: our body if it decodes, else
    /// the status number in `Nats-Service-Error-Code` and the header message.
    pub fn from_reply(http_code: Option<u16>, header_message: &str, body: &[u8]) -> Self {
        if !body.is_empty()
            && let Ok(e) = ErrorProto::decode(body)
            && e.code != 0
        {
            return Status::from_proto(e);
        }
        let code = http_code.map(code_from_http).unwrap_or(Code::Internal);
        Status::new(code, header_message.to_string())
    }
}

/// The one mapping from [`Code`] to HTTP status.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::InvalidArgument => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::Conflict => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Internal | Code::Unspecified => 500,
    }
}

/// The inverse of [`http_status`], for errors from services that send no body.
pub fn code_from_http(status: u16) -> Code {
    match status {
        400 | 413 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Conflict,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 | 408 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}
