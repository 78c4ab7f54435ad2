//! Tests of the OpenAPI document: every route and referenced schema, and the field rules
//! as JSON Schema keywords.

use super::*;

#[test]
fn every_route_and_referenced_schema_is_present() {
    let methods: Vec<&'static MethodInfo> = aicore_proto::SERVICES
        .iter()
        .flat_map(|s| s.methods.iter())
        .collect();
    let doc = document(&methods);
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    // Every $ref resolves.
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
    let login = &doc["paths"]["/v1/auth/login"]["post"];
    assert_eq!(login["security"], json!([]));
    let gr = &doc["paths"]["/v1/auth/grant_role"]["post"];
    assert_eq!(gr["security"], json!([{"bearer": []}]));
    assert_eq!(gr["x-aicore-roles"], json!(["admin"]));
    assert!(
        schemas["aicore.auth.v1.LoginRequest"]["properties"]["userAgent"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("user agent") || d.contains("client"))
    );
    // Number ranges from the field rules, and a zero they refuse makes the field required.
    let scale = &schemas["aicore.time_manager.v1.SetScaleRequest"];
    assert_eq!(scale["properties"]["scale"]["exclusiveMinimum"], json!(0));
    assert_eq!(scale["properties"]["scale"]["maximum"], json!(100000));
    assert_eq!(scale["required"], json!(["scale"]));
    // proto3 JSON reads null as the default: optional scalars admit it, required don't.
    assert_eq!(scale["properties"]["scale"]["type"], json!("number"));
    // A repeated field's rules: item counts on the array (a least count makes it
    // required), the rest on each item.
    let embed = &schemas["aicore.ai_integration.v1.EmbedRequest"];
    let inputs = &embed["properties"]["inputs"];
    assert_eq!(
        (&inputs["minItems"], &inputs["maxItems"]),
        (&json!(1), &json!(256))
    );
    assert_eq!(inputs["items"]["minLength"], json!(1));
    assert_eq!(embed["required"], json!(["inputs"]));
    // An enum whose zero value is refused: left out, and the field required.
    let message = &schemas["aicore.ai_integration.v1.ChatMessage"];
    assert_eq!(
        message["properties"]["role"]["enum"],
        json!(["ROLE_SYSTEM", "ROLE_USER", "ROLE_ASSISTANT"])
    );
    assert_eq!(message["required"], json!(["role"]));
    let profiles = &schemas["aicore.performance_mode.v1.ProfilesRequest"]["properties"];
    assert_eq!(profiles["pageSize"]["type"], json!(["integer", "null"]));
    assert_eq!(profiles["pageToken"]["type"], json!(["string", "null"]));
    // A list request's page token is opaque: its own format, for generators.
    assert_eq!(
        profiles["pageToken"]["format"],
        json!(super::schema::PAGE_TOKEN_FORMAT)
    );
    assert_eq!(profiles["pageSize"]["format"], json!("int32"));
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        methods.len() + 2,
        "one path per rpc plus /healthz and /readyz"
    );
}
