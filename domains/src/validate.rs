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
