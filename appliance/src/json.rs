//! JSON ↔ protobuf by descriptor, following the proto3 JSON mapping (field names in
//! lowerCamelCase or as declared, int64 as strings, bytes as base64, enums by name,
//! well-known types in their JSON forms). The one place where `aicore call` and the HTTP
//! gateway turn a request body into protobuf bytes and a reply back into JSON, so both
//! refuse the same inputs with the same errors. A refusal is InvalidArgument naming the
//! offending field (its path, e.g. `items[2].amount`). It knows nothing of transports.

use aicore_proto::{Status, descriptor_pool};
use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

/// The descriptor of a message named in a `MethodInfo` (always present: build.rs made the
/// tables from the same descriptor set).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, Status> {
    descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| Status::internal(format!("no descriptor for {full_name}")))
}

/// Parses a JSON request into the message `input`. An empty body is the empty message;
/// anything else must be one JSON object (whitespace alone is not). Unknown fields are
/// refused.
pub fn parse(input: &MessageDescriptor, json: &[u8]) -> Result<DynamicMessage, Status> {
    if json.is_empty() {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message = {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        match DynamicMessage::deserialize_with_options(input.clone(), tracked, &options) {
            Ok(m) => m,
            Err(e) => return Err(refusal(&track.path(), &e.to_string())),
        }
    };
    de.end().map_err(|e| {
        Status::invalid(
            "(body)",
            format!("trailing characters after the JSON object: {e}"),
        )
    })?;
    Ok(message)
}

/// Parses a JSON request straight into protobuf bytes.
pub fn to_protobuf(input: &MessageDescriptor, json: &[u8]) -> Result<Bytes, Status> {
    parse(input, json).map(|m| Bytes::from(m.encode_to_vec()))
}

/// Turns protobuf bytes of `output` into JSON (default-valued fields included, so clients
/// can rely on every field being present). A reply that does not decode is Internal.
pub fn from_protobuf(
    output: &MessageDescriptor,
    body: Bytes,
    pretty: bool,
) -> Result<Vec<u8>, Status> {
    let m = DynamicMessage::decode(output.clone(), body).map_err(|e| {
        Status::internal(format!(
            "the reply is not a valid {}: {e}",
            output.full_name()
        ))
    })?;
    write(&m, pretty)
}

/// A message as proto3 JSON, default-valued fields included.
pub fn write(m: &DynamicMessage, pretty: bool) -> Result<Vec<u8>, Status> {
    let opts = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::with_capacity(128);
    let result = if pretty {
        let mut ser = serde_json::Serializer::pretty(&mut out);
        m.serialize_with_options(&mut ser, &opts)
    } else {
        let mut ser = serde_json::Serializer::new(&mut out);
        m.serialize_with_options(&mut ser, &opts)
    };
    result.map_err(|e| Status::internal(format!("the reply cannot be written as JSON: {e}")))?;
    Ok(out)
}

/// InvalidArgument for a JSON body that does not match the message, naming the field.
/// `path` is where the parser was (`.` at the top level); an unknown field is reported
/// under its own name since the parser stops before entering it.
fn refusal(path: &serde_path_to_error::Path, error: &str) -> Status {
    let mut field = path.to_string();
    if field == "." || field == "?" {
        field.clear();
    }
    let unknown = [
        ("unrecognized field name '", '\''),
        ("unknown field `", '`'),
    ]
    .iter()
    .find_map(|(prefix, close)| error.strip_prefix(prefix)?.split_once(*close));
    if let Some((name, _)) = unknown {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    if field.is_empty() {
        field = "(body)".into();
    }
    // serde_json appends " at line L column C"; keep it: it helps with malformed JSON.
    Status::invalid(&field, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> MessageDescriptor {
        descriptor("aicore.auth.v1.LoginRequest").unwrap()
    }

    #[test]
    fn accepts_both_field_spellings_and_empty_bodies() {
        let m = parse(&login(), br#"{"username":"a","userAgent":"x"}"#).unwrap();
        let again = parse(&login(), br#"{"username":"a","user_agent":"x"}"#).unwrap();
        assert_eq!(m, again);
        assert_eq!(parse(&login(), b"").unwrap(), DynamicMessage::new(login()));
        assert_eq!(
            parse(&login(), b" \t").unwrap_err().field_violations[0].field,
            "(body)"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let field = |json: &str, d: &MessageDescriptor| {
            parse(d, json.as_bytes()).unwrap_err().field_violations[0]
                .field
                .clone()
        };
        assert_eq!(field(r#"{"username": 5}"#, &login()), "username");
        assert_eq!(field(r#"{"nope": 1}"#, &login()), "nope");
        assert_eq!(field(r#"{"username": "a""#, &login()), "(body)");
        assert_eq!(field(r#"{} x"#, &login()), "(body)");
        // Nested and repeated paths.
        let put = descriptor("aicore.settings.v1.SetRequest").unwrap();
        let f = field(r#"{"value": {"intValue": "x"}}"#, &put);
        assert_eq!(f, "value.intValue");
        let f = field(r#"{"value": {"bogus": 1}}"#, &put);
        assert_eq!(f, "value.bogus");
    }

    #[test]
    fn round_trips_with_defaults_present() {
        let d = login();
        let bytes = to_protobuf(&d, br#"{"username":"a"}"#).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&from_protobuf(&d, bytes, false).unwrap()).unwrap();
        assert_eq!(json["username"], "a");
        assert_eq!(json["password"], "");
        let bad = from_protobuf(&d, Bytes::from_static(&[0xff, 0xff]), false).unwrap_err();
        assert_eq!(bad.code, aicore_proto::Code::Internal);
    }
}
