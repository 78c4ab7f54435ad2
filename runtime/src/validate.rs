//! Input checks shared by several domains, each answering InvalidArgument naming the
//! field. Domain-specific rules stay in their domain.

use aicore_proto::Status;

/// Longest accepted player id, in characters (what the protos' field rules and so the
/// OpenAPI document say: JSON Schema counts characters, not bytes).
pub const MAX_PLAYER_ID_CHARS: usize = 128;

/// A player (account) id: 1–128 characters, no control characters (so `\0` can separate
/// key parts in tables).
pub fn player_id(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() || value.chars().count() > MAX_PLAYER_ID_CHARS {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_PLAYER_ID_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Status::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An id chosen by an operator (item, quest, region…): 1–`max` characters of
/// `[a-z0-9_.-]`.
pub fn slug(value: &str, field: &str, max: usize) -> Result<(), Status> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            field,
            format!("must be 1 to {max} characters of [a-z0-9_.-]"),
        ))
    }
}

/// Refuses a value of `len` bytes over `max` as ResourceExhausted naming `field`;
/// `what` names the limit ("per-object", "per-fact").
pub fn max_bytes(len: usize, max: usize, field: &str, what: &str) -> Result<(), Status> {
    if len > max {
        return Err(Status::with_field(
            aicore_proto::Code::ResourceExhausted,
            field,
            format!("is {len} bytes; the {what} limit is {max} bytes"),
        ));
    }
    Ok(())
}

/// Optimistic concurrency of every versioned write: checks its `expected_version`
/// against the `version` of the live `what` (0: none yet, so `Some(0)` means "create
/// only"). Absent passes; a mismatch is Conflict naming `expected_version`.
pub fn expected_version(expected: Option<u64>, version: u64, what: &str) -> Result<(), Status> {
    let message = match expected {
        None => return Ok(()),
        Some(want) if want == version => return Ok(()),
        Some(0) => {
            format!("the {what} exists at version {version}; expected_version 0 only creates")
        }
        Some(want) if version == 0 => {
            format!("the {what} does not exist (expected version {want})")
        }
        Some(want) => format!("the {what} is at version {version}, not the expected {want}"),
    };
    Err(Status::with_field(
        aicore_proto::Code::Conflict,
        "expected_version",
        message,
    ))
}

/// Longest accepted `content_type`, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// A stored object's content type: `application/octet-stream` when empty, else a
/// `type/subtype` MIME type (RFC 9110 token characters) with optional `;` parameters, at
/// most 255 bytes; InvalidArgument naming `content_type` otherwise.
pub fn content_type(ct: &str) -> Result<String, Status> {
    if ct.is_empty() {
        return Ok("application/octet-stream".to_string());
    }
    let bad = || {
        Status::invalid(
            "content_type",
            "must be a MIME type such as `application/json`",
        )
    };
    if ct.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(Status::invalid(
            "content_type",
            format!("must be at most {MAX_CONTENT_TYPE_BYTES} bytes"),
        ));
    }
    let (essence, params) = match ct.split_once(';') {
        Some((e, p)) => (e, Some(p)),
        None => (ct, None),
    };
    let (ty, sub) = essence.trim_end().split_once('/').ok_or_else(bad)?;
    // RFC 9110 `token` characters.
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(ty) || !token(sub) {
        return Err(bad());
    }
    if let Some(p) = params
        && !p.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(ct.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_ids_and_slugs() {
        assert!(player_id("p1", "player_id").is_ok());
        assert_eq!(
            player_id("", "from").unwrap_err().field_violations[0].field,
            "from"
        );
        assert!(player_id("a\0b", "player_id").is_err());
        assert!(player_id(&"x".repeat(129), "player_id").is_err());
        assert!(slug("gold.pack-1", "item_id", 64).is_ok());
        assert!(slug("Gold", "item_id", 64).is_err());
        assert!(slug(&"a".repeat(65), "item_id", 64).is_err());
        assert!(max_bytes(10, 10, "data", "per-object").is_ok());
        let e = max_bytes(11, 10, "data", "per-object").unwrap_err();
        assert_eq!(e.code, aicore_proto::Code::ResourceExhausted);
        assert_eq!(e.field_violations[0].field, "data");
    }
}
