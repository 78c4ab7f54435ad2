//! The common error model as JSON: the one encoding the HTTP gateway answers and
//! `aicore call` prints, so a client reads the same fields either way. Field names are
//! those of `common.Error` in `common.proto` (`code` by name, `message`,
//! `field_violations` of `field` and `description`).

use crate::{Status, code_name};

/// `{"code", "message", "field_violations": [{"field", "description"}]}` of `s`.
pub fn error_json(s: &Status) -> String {
    error_json_as(code_name(s.code), s)
}

/// [`error_json`] with another `code`: a refusal the gateway names itself (a body over
/// its limit) in the same shape.
pub fn error_json_as(code: &str, s: &Status) -> String {
    serde_json::json!({
        "code": code,
        "message": s.message,
        "field_violations": s.field_violations.iter().map(|v| serde_json::json!({
            "field": v.field, "description": v.description
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn names_the_code_message_and_fields() {
        let s = Status::invalid("items[2].amount", "must be positive");
        let j: serde_json::Value = serde_json::from_str(&error_json(&s)).unwrap();
        assert_eq!(j["code"], "INVALID_ARGUMENT");
        assert_eq!(j["message"], s.message);
        assert_eq!(j["field_violations"][0]["field"], "items[2].amount");
        assert_eq!(j["field_violations"][0]["description"], "must be positive");
        let j: serde_json::Value = serde_json::from_str(&error_json_as(
            "PAYLOAD_TOO_LARGE",
            &Status::new(Code::InvalidArgument, "big"),
        ))
        .unwrap();
        assert_eq!(j["code"], "PAYLOAD_TOO_LARGE");
        assert_eq!(j["field_violations"], serde_json::json!([]));
    }
}
