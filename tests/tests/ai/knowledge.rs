//! knowledge-base on a real appliance: hybrid search with the offline provider's
//! embeddings (each hit says which rankings found it), and the same results after a
//! restart and after the index folder is deleted while the appliance is down.

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::knowledge_base::v1 as kb;

use super::opts;

const DOCS: &[(&str, &str, &str, &[&str])] = &[
    ("ember", "The Red Dragon of Emberfall", "A red dragon sleeps beneath the Emberfall mountain.", &["region:north"]),
    ("isles", "Dragons of the Southern Isles", "Small sea dragons nest on the southern isles.", &["region:south"]),
    ("witch", "The Salt Marsh Witch", "A witch trades potions for stories in the salt marshes.", &["region:south"]),
    ("harbour", "Fishing in the harbour", "Boats leave the harbour at dawn to fish the calm sea.", &["region:south"]),
];

async fn search(c: &kb::KnowledgeBaseClient<aicore_sdk::Client>, q: &str, mode: kb::SearchMode) -> kb::SearchResponse {
    c.search(
        kb::SearchRequest { query: q.into(), mode: Some(mode as i32), ..Default::default() },
        &opts(),
    )
    .await
    .unwrap()
}

fn ids(r: &kb::SearchResponse) -> Vec<&str> {
    r.hits.iter().map(|h| h.document_id.as_str()).collect()
}

#[tokio::test]
async fn hybrid_search_with_offline_embeddings_survives_a_restart_and_a_deleted_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aicore.toml"),
        "[domains.knowledge_base]\nembedding_model_id = \"offline\"\n",
    )
    .unwrap();
    let mut app = Appliance::start_in(dir.path()).await;
    let c = kb::KnowledgeBaseClient::new(app.client().await);
    for (id, title, body, tags) in DOCS {
        let d = c
            .add_document(
                kb::AddDocumentRequest {
                    document_id: id.to_string(),
                    title: title.to_string(),
                    body: body.to_string(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    metadata: None,
                    idempotency_key: format!("k-{id}"),
                },
                &opts(),
            )
            .await
            .unwrap();
        assert!(d.document.unwrap().embedded, "{id} was embedded");
    }
    let hybrid = search(&c, "red dragon", kb::SearchMode::Hybrid).await;
    assert_eq!(hybrid.mode, kb::SearchMode::Hybrid as i32);
    assert_eq!(hybrid.hits[0].document_id, "ember");
    let names: Vec<&str> = hybrid.hits[0].signals.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["text", "vector"], "both rankings found the best hit");
    let vector = search(&c, "sea harbour boats", kb::SearchMode::Vector).await;
    assert_eq!(vector.hits[0].document_id, "harbour");
    let text = search(&c, "dragons", kb::SearchMode::FullText).await;
    let before = (ids(&text).join(","), ids(&hybrid).join(","));

    // Restart: the same answers.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    let mut app = Appliance::start_in(dir.path()).await;
    let c = kb::KnowledgeBaseClient::new(app.client().await);
    let after = (
        ids(&search(&c, "dragons", kb::SearchMode::FullText).await).join(","),
        ids(&search(&c, "red dragon", kb::SearchMode::Hybrid).await).join(","),
    );
    assert_eq!(after, before);

    // The index deleted while down: rebuilt from the store, the same answers.
    app.signal(libc::SIGTERM);
    assert_eq!(app.wait_exit(Duration::from_secs(30)).await, Some(0));
    let index = dir.path().join("knowledge_base").join("index");
    assert!(index.is_dir(), "the index lives in the data dir");
    std::fs::remove_dir_all(&index).unwrap();
    let app = Appliance::start_in(dir.path()).await;
    let c = kb::KnowledgeBaseClient::new(app.client().await);
    let rebuilt = (
        ids(&search(&c, "dragons", kb::SearchMode::FullText).await).join(","),
        ids(&search(&c, "red dragon", kb::SearchMode::Hybrid).await).join(","),
    );
    assert_eq!(rebuilt, before);
    assert!(app.log().contains("knowledge-base index rebuilt"));
}

/// A model that never answers costs a document its vector, not the write its reply: the
/// write is answered within the caller's deadline, unembedded, and is found by text.
#[tokio::test]
async fn a_stalled_embedding_model_costs_the_vector_not_the_write() {
    use aicore_proto::aicore::model_management::v1 as mm;
    let fake = aicore_e2e::openai::FakeOpenAi::start().await;
    let (app, _keys) = super::with_provider(
        &fake.base_url,
        "",
        "[domains.knowledge_base]\nembedding_model_id = \"e-stall\"\n",
    )
    .await;
    super::register(&app, "e-stall", "stall", &[mm::Capability::Embedding]).await;
    let c = kb::KnowledgeBaseClient::new(app.client().await);
    let d = c
        .add_document(
            kb::AddDocumentRequest {
                document_id: "slow".into(),
                title: "The Slow Model".into(),
                body: "Nobody embeds this dragon.".into(),
                idempotency_key: "k-slow".into(),
                ..Default::default()
            },
            &aicore_proto::CallOptions::timeout(Duration::from_secs(4)),
        )
        .await
        .expect("the write is answered within its deadline");
    assert!(!d.document.unwrap().embedded, "no vector from a stalled model");
    assert_eq!(fake.seen.requests("stall"), 1, "the model was asked");
    let text = search(&c, "dragon", kb::SearchMode::FullText).await;
    assert_eq!(ids(&text), ["slow"]);
}
