//! knowledge-base on an in-memory store (the index in memory, or in a temporary folder
//! for the rebuild tests): ranking on a small corpus with known relevant documents per
//! query (stemming, phrases, prefixes, exclusions, tag filters, snippets), paging, and
//! the index rebuilt from the store — the same results — when it is missing or stale.
//! Vector and hybrid search need ai-integration over NATS: the e2e suite `ai` covers them.

use aicore_proto::aicore::knowledge_base::v1::*;
use aicore_proto::{Code, Request};

use super::*;

const CORPUS: &[(&str, &str, &str, &[&str])] = &[
    (
        "red-dragon",
        "The Red Dragon of Emberfall",
        "A red dragon sleeps beneath the Emberfall mountain, guarding the old king's gold.",
        &["region:north", "creature:dragon"],
    ),
    (
        "sea-dragons",
        "Dragons of the Southern Isles",
        "Small sea dragons nest on the southern isles; sailors fear their songs.",
        &["region:south", "creature:dragon"],
    ),
    (
        "witch",
        "The Salt Marsh Witch",
        "A witch lives in the salt marshes and trades potions for stories.",
        &["region:south", "npc:witch"],
    ),
    (
        "emberfall",
        "History of Emberfall",
        "Emberfall was founded by the old king after the war of ash. The mountain above the town smokes.",
        &["region:north", "place:emberfall"],
    ),
    (
        "harbour",
        "Fishing in the harbour",
        "Boats leave the harbour at dawn; the fishers sing to keep the sea calm.",
        &["region:south"],
    ),
];

async fn filled(ctx: &Ctx) -> KnowledgeBase {
    let kb = KnowledgeBase::new(ctx.clone(), Default::default()).unwrap();
    for (id, title, body, tags) in CORPUS {
        kb.add_document(Request::new(AddDocumentRequest {
            document_id: id.to_string(),
            title: title.to_string(),
            body: body.to_string(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: None,
            idempotency_key: format!("add-{id}"),
        }))
        .await
        .unwrap();
    }
    kb
}

async fn ids(kb: &KnowledgeBase, query: &str, all: &[&str], any: &[&str]) -> Vec<String> {
    kb.search(Request::new(SearchRequest {
        query: query.into(),
        all_tags: all.iter().map(|t| t.to_string()).collect(),
        any_tags: any.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }))
    .await
    .unwrap()
    .hits
    .into_iter()
    .map(|h| h.document_id)
    .collect()
}

/// The expected rankings of the corpus.
async fn check_rankings(kb: &KnowledgeBase) {
    assert_eq!(
        ids(kb, "red dragon", &[], &[]).await,
        ["red-dragon", "sea-dragons"]
    );
    // Stemming: `dragons` finds `dragon`, `songs` finds `sing`? no: different stems.
    let mut d = ids(kb, "dragons", &[], &[]).await;
    d.sort();
    assert_eq!(d, ["red-dragon", "sea-dragons"]);
    let mut p = ids(kb, "\"old king\"", &[], &[]).await;
    p.sort();
    assert_eq!(p, ["emberfall", "red-dragon"]);
    assert!(ids(kb, "\"king old\"", &[], &[]).await.is_empty());
    let mut pre = ids(kb, "ember*", &[], &[]).await;
    pre.sort();
    assert_eq!(pre, ["emberfall", "red-dragon"]);
    assert_eq!(ids(kb, "dragon -sea", &[], &[]).await, ["red-dragon"]);
    assert_eq!(
        ids(kb, "dragon", &["region:north"], &[]).await,
        ["red-dragon"]
    );
    let mut any = ids(kb, "sea", &[], &["region:south", "npc:witch"]).await;
    any.sort();
    assert_eq!(any, ["harbour", "sea-dragons"]);
    // The title weighs more: "emberfall" is in both titles' docs, but only one title
    // is about its history.
    assert_eq!(ids(kb, "history", &[], &[]).await, ["emberfall"]);
}

#[tokio::test]
async fn ranking_stemming_phrases_prefixes_and_tag_filters_on_a_known_corpus() {
    let (ctx, _) = Ctx::for_tests();
    let kb = filled(&ctx).await;
    check_rankings(&kb).await;
    // Highlighted snippets and the signal that ranked each hit.
    let r = kb
        .search(Request::new(SearchRequest {
            query: "witch".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(
        r.hits[0].snippet.contains("<b>witch</b>"),
        "{}",
        r.hits[0].snippet
    );
    assert_eq!(r.hits[0].signals[0].name, "text");
    assert_eq!(r.hits[0].signals[0].rank, 1);
    assert_eq!(r.mode, SearchMode::FullText as i32);
    // HYBRID without an embedding model is full text; VECTOR is refused.
    let h = kb
        .search(Request::new(SearchRequest {
            query: "witch".into(),
            mode: Some(SearchMode::Hybrid as i32),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(h.mode, SearchMode::FullText as i32);
    let e = kb
        .search(Request::new(SearchRequest {
            query: "witch".into(),
            mode: Some(SearchMode::Vector as i32),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    // Paging: one hit a page, in the same order.
    let all = ids(&kb, "the", &[], &[]).await;
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let r = kb
            .search(Request::new(SearchRequest {
                query: "the".into(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap();
        paged.extend(r.hits.into_iter().map(|h| h.document_id));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, all);
}

#[tokio::test]
async fn updates_and_removals_reach_search_at_once() {
    let (ctx, _) = Ctx::for_tests();
    let kb = filled(&ctx).await;
    kb.update(Request::new(UpdateRequest {
        document_id: "witch".into(),
        title: "The Salt Marsh Oracle".into(),
        body: "An oracle reads the tides in the salt marshes.".into(),
        tags: vec!["region:south".into()],
        metadata: None,
        expected_version: Some(1),
    }))
    .await
    .unwrap();
    assert!(ids(&kb, "witch", &[], &[]).await.is_empty());
    assert_eq!(ids(&kb, "oracle", &[], &[]).await, ["witch"]);
    let stale = kb
        .update(Request::new(UpdateRequest {
            document_id: "witch".into(),
            title: "x".into(),
            expected_version: Some(1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code, Code::Conflict);
    assert!(
        kb.remove(Request::new(RemoveRequest {
            document_id: "harbour".into(),
            expected_version: None
        }))
        .await
        .unwrap()
        .removed
    );
    assert!(ids(&kb, "harbour", &[], &[]).await.is_empty());
    assert!(
        !kb.remove(Request::new(RemoveRequest {
            document_id: "harbour".into(),
            expected_version: None
        }))
        .await
        .unwrap()
        .removed
    );
    // List: most recently updated first, without bodies.
    let l = kb.list(Request::new(ListRequest::default())).await.unwrap();
    assert_eq!(l.documents.len(), 4);
    assert!(l.documents.iter().all(|d| d.body.is_empty()));
    let north = kb
        .list(Request::new(ListRequest {
            all_tags: vec!["region:north".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(north.documents.len(), 2);
}

#[tokio::test]
async fn adds_are_idempotent_and_bad_documents_are_refused_naming_the_field() {
    let (ctx, _) = Ctx::for_tests();
    let kb = KnowledgeBase::new(ctx.clone(), Default::default()).unwrap();
    let add = |id: &str, title: &str, tags: Vec<String>, key: &str| AddDocumentRequest {
        document_id: id.into(),
        title: title.into(),
        body: "body".into(),
        tags,
        metadata: None,
        idempotency_key: key.into(),
    };
    let a = kb
        .add_document(Request::new(add("", "A", vec![], "k1")))
        .await
        .unwrap();
    let b = kb
        .add_document(Request::new(add("", "A", vec![], "k1")))
        .await
        .unwrap();
    assert_eq!(a, b, "a replay returns the first document");
    let e = kb
        .add_document(Request::new(add("", "B", vec![], "k1")))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    for (req, field) in [
        (add("", "A", vec![], ""), "idempotency_key"),
        (add("bad id", "A", vec![], "k2"), "document_id"),
        (add("", "", vec![], "k3"), "title"),
        (add("", "A", vec!["Region:North".into()], "k4"), "tags[0]"),
    ] {
        let e = kb.add_document(Request::new(req)).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    let big = AddDocumentRequest {
        body: "x".repeat(2 << 20),
        ..add("", "A", vec![], "k5")
    };
    assert_eq!(
        kb.add_document(Request::new(big)).await.unwrap_err().code,
        Code::ResourceExhausted
    );
    let l = kb.list(Request::new(ListRequest::default())).await.unwrap();
    assert_eq!(l.documents.len(), 1, "refusals wrote nothing");
}

#[tokio::test]
async fn a_missing_or_stale_index_is_rebuilt_from_the_store_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ctx, _) = Ctx::for_tests();
    ctx.data_dir = Some(dir.path().to_path_buf());
    let kb = filled(&ctx).await;
    check_rankings(&kb).await;
    let index_dir = dir.path().join("knowledge_base").join("index");
    assert!(kb.index_bytes() > 0);
    drop(kb);

    // Reopened as it is: current, used as it is.
    let kb = KnowledgeBase::new(ctx.clone(), Default::default()).unwrap();
    check_rankings(&kb).await;
    drop(kb);

    // Deleted: rebuilt from the store.
    std::fs::remove_dir_all(&index_dir).unwrap();
    let kb = KnowledgeBase::new(ctx.clone(), Default::default()).unwrap();
    check_rankings(&kb).await;
    drop(kb);

    // Stale: a write the index never saw (as after a crash between the two commits).
    ctx.store
        .write(|tx| {
            let doc = Document {
                document_id: "late".into(),
                title: "The Late Addition".into(),
                body: "A griffin was seen over Emberfall.".into(),
                version: 1,
                ..Default::default()
            };
            tx.put_msg(DOCS, b"late", &doc);
            bump(tx)?;
            Ok(())
        })
        .await
        .unwrap();
    let kb = KnowledgeBase::new(ctx.clone(), Default::default()).unwrap();
    assert_eq!(ids(&kb, "griffin", &[], &[]).await, ["late"]);
}
