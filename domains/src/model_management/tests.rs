//! model-management on an in-memory store: registration (idempotent, Conflict on another
//! spec), versions, defaults guarding removal and capability changes, filtered listing,
//! the built-in offline model registered once, and refusals that name the field and
//! write nothing. Probe calls ai-integration over NATS: the e2e suite `ai` covers it.

use aicore_proto::aicore::model_management::v1::*;
use aicore_proto::{Code, Request};

use super::*;

fn domain() -> ModelManagement {
    let (ctx, _) = Ctx::for_tests();
    ModelManagement::new(ctx, Default::default())
}

fn spec(provider: &str, caps: &[Capability]) -> ModelSpec {
    ModelSpec {
        display_name: "Llama".into(),
        provider_id: provider.into(),
        provider_model: "llama3.1:8b".into(),
        capabilities: caps.iter().map(|c| *c as i32).collect(),
        context_length: 8192,
        tier: ModelTier::Medium as i32,
        ..Default::default()
    }
}

async fn register(d: &ModelManagement, id: &str, s: ModelSpec) -> Result<Model, Status> {
    d.register(Request::new(RegisterRequest {
        model_id: id.into(),
        spec: Some(s),
    }))
    .await
    .map(|r| r.model.unwrap())
}

#[tokio::test]
async fn register_is_idempotent_and_another_spec_under_a_taken_id_is_conflict() {
    let d = domain();
    let m = register(&d, "llama", spec("ollama", &[Capability::Chat]))
        .await
        .unwrap();
    assert_eq!((m.version, m.status), (1, ModelStatus::Unknown as i32));
    let again = register(&d, "llama", spec("ollama", &[Capability::Chat]))
        .await
        .unwrap();
    assert_eq!(again, m);
    let e = register(&d, "llama", spec("vllm", &[Capability::Chat]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    // Update needs the current version when one is given.
    let up = d
        .update(Request::new(UpdateRequest {
            model_id: "llama".into(),
            spec: Some(spec("vllm", &[Capability::Chat])),
            expected_version: Some(1),
        }))
        .await
        .unwrap()
        .model
        .unwrap();
    assert_eq!(up.version, 2);
    let stale = d
        .update(Request::new(UpdateRequest {
            model_id: "llama".into(),
            spec: Some(spec("ollama", &[Capability::Chat])),
            expected_version: Some(1),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code, Code::Conflict);
    assert_eq!(d.read("llama").unwrap().spec.unwrap().provider_id, "vllm");
}

#[tokio::test]
async fn a_default_must_be_replaced_before_its_model_is_removed_or_loses_the_capability() {
    let d = domain();
    register(
        &d,
        "a",
        spec("ollama", &[Capability::Chat, Capability::Embedding]),
    )
    .await
    .unwrap();
    register(&d, "b", spec("ollama", &[Capability::Chat]))
        .await
        .unwrap();
    let e = d
        .set_default(Request::new(SetDefaultRequest {
            capability: Capability::Embedding as i32,
            model_id: "b".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "capability")
    );
    let r = d
        .set_default(Request::new(SetDefaultRequest {
            capability: Capability::Chat as i32,
            model_id: "a".into(),
        }))
        .await
        .unwrap();
    assert_eq!(r.previous_model_id, "");
    assert_eq!(r.model.unwrap().default_for, vec![Capability::Chat as i32]);
    let e = d
        .remove(Request::new(RemoveRequest {
            model_id: "a".into(),
            expected_version: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    let e = d
        .update(Request::new(UpdateRequest {
            model_id: "a".into(),
            spec: Some(spec("ollama", &[Capability::Embedding])),
            expected_version: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "spec.capabilities");
    let r = d
        .set_default(Request::new(SetDefaultRequest {
            capability: Capability::Chat as i32,
            model_id: "b".into(),
        }))
        .await
        .unwrap();
    assert_eq!(r.previous_model_id, "a");
    assert!(d.read("a").unwrap().default_for.is_empty());
    let gone = d
        .remove(Request::new(RemoveRequest {
            model_id: "a".into(),
            expected_version: Some(1),
        }))
        .await
        .unwrap();
    assert!(gone.removed);
    let again = d
        .remove(Request::new(RemoveRequest {
            model_id: "a".into(),
            expected_version: None,
        }))
        .await
        .unwrap();
    assert!(!again.removed);
}

#[tokio::test]
async fn list_filters_by_capability_and_provider_and_pages_in_id_order() {
    let d = domain();
    for (id, p, caps) in [
        ("e1", "ollama", vec![Capability::Embedding]),
        ("c1", "ollama", vec![Capability::Chat]),
        ("c2", "vllm", vec![Capability::Chat, Capability::Completion]),
        ("c3", "vllm", vec![Capability::Chat]),
    ] {
        register(&d, id, spec(p, &caps)).await.unwrap();
    }
    let list = |caps: Vec<Capability>, provider: &str, size: i32, token: String| {
        d.list(Request::new(ListRequest {
            capabilities: caps.into_iter().map(|c| c as i32).collect(),
            provider_id: provider.into(),
            page_size: size,
            page_token: token,
        }))
    };
    let ids = |r: &ListResponse| {
        r.models
            .iter()
            .map(|m| m.model_id.clone())
            .collect::<Vec<_>>()
    };
    let chat = list(vec![Capability::Chat], "", 0, String::new())
        .await
        .unwrap();
    assert_eq!(ids(&chat), ["c1", "c2", "c3"]);
    let vllm = list(vec![], "vllm", 0, String::new()).await.unwrap();
    assert_eq!(ids(&vllm), ["c2", "c3"]);
    let p1 = list(vec![], "", 2, String::new()).await.unwrap();
    assert_eq!(ids(&p1), ["c1", "c2"]);
    let p2 = list(vec![], "", 2, p1.next_page_token).await.unwrap();
    assert_eq!(ids(&p2), ["c3", "e1"]);
    let e = list(vec![Capability::Unspecified], "", 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "capabilities[0]");
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field_and_write_nothing() {
    let d = domain();
    let cases: Vec<(&str, ModelSpec, &str)> = vec![
        ("Bad Id", spec("ollama", &[Capability::Chat]), "model_id"),
        (
            "m",
            spec("Ollama!", &[Capability::Chat]),
            "spec.provider_id",
        ),
        ("m", spec("ollama", &[]), "spec.capabilities"),
        (
            "m",
            spec("ollama", &[Capability::Unspecified]),
            "spec.capabilities[0]",
        ),
        (
            "m",
            ModelSpec {
                tier: 0,
                ..spec("ollama", &[Capability::Chat])
            },
            "spec.tier",
        ),
        (
            "m",
            ModelSpec {
                endpoint: "ftp://x".into(),
                ..spec("ollama", &[Capability::Chat])
            },
            "spec.endpoint",
        ),
        (
            "m",
            ModelSpec {
                cost: Some(TokenCost {
                    currency: "usd".into(),
                    input_micros_per_million_tokens: 5,
                    ..Default::default()
                }),
                ..spec("ollama", &[Capability::Chat])
            },
            "spec.cost.currency",
        ),
    ];
    for (id, s, field) in cases {
        let e = register(&d, id, s).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    let all = d.list(Request::new(ListRequest::default())).await.unwrap();
    assert!(all.models.is_empty());
}

#[tokio::test]
async fn the_offline_model_is_registered_once_and_stays_removed() {
    let d = domain();
    d.seed().await.unwrap();
    let m = d.read(OFFLINE).unwrap();
    assert_eq!(m.spec.unwrap().provider_id, "offline");
    d.remove(Request::new(RemoveRequest {
        model_id: OFFLINE.into(),
        expected_version: None,
    }))
    .await
    .unwrap();
    d.seed().await.unwrap();
    assert_eq!(d.read(OFFLINE).unwrap_err().code, Code::NotFound);
}
