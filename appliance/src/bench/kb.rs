//! The knowledge-base rows (`--only kb`): indexing rate, search latency and index size
//! at 10,000 and 100,000 documents. The domain runs in-process on its own store and index
//! in a temporary directory and is called through its handler (no NATS: this measures
//! the store, the index and the ranking, not the transport, which the other rows
//! measure). The corpus is synthetic and seeded: titles of 5 and bodies of 120 words
//! drawn from a 5,000-word vocabulary with a Zipf-like distribution (as natural text
//! has), 2 of 20 tags per document. Documents are added 64 at a time (each AddDocument
//! waits until search sees it, so group commits of the store and the index both form).
//! Searches run one at a time, 5 kinds in turn: a word, two words, a two-word phrase
//! taken from a document, a three-letter prefix, and a word with a tag filter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use aicore_domains::knowledge_base::{KnowledgeBase, KnowledgeBaseConfig};
use aicore_proto::Request;
use aicore_proto::aicore::knowledge_base::v1::{
    AddDocumentRequest, KnowledgeBaseHandler, SearchRequest,
};
use aicore_runtime::store::{Store, StoreOptions};
use aicore_runtime::{Ctx, SystemClock};

const VOCABULARY: usize = 5_000;
const SEARCHES: usize = 500;
const IN_FLIGHT: usize = 64;

fn vocabulary(rng: &mut StdRng) -> Vec<String> {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mir", "tha", "en", "dor", "is", "val", "ur", "sel", "an", "gor", "ith", "ra",
        "bel", "om", "fen", "dra", "ul", "wyn", "ae", "nor", "ves", "tor",
    ];
    let mut words = std::collections::BTreeSet::new();
    while words.len() < VOCABULARY {
        let n = rng.random_range(2..=4);
        let w: String = (0..n)
            .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
            .collect();
        words.insert(w);
    }
    let mut v: Vec<String> = words.into_iter().collect();
    // A fixed shuffle, so frequency does not follow alphabetical order.
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    v
}

/// A word index with a Zipf-like distribution (rank r drawn with weight about 1/r).
fn zipf(rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    ((VOCABULARY as f64).powf(u) as usize)
        .saturating_sub(1)
        .min(VOCABULARY - 1)
}

fn text(rng: &mut StdRng, words: &[String], n: usize) -> String {
    (0..n)
        .map(|_| words[zipf(rng)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Runs the knowledge-base measurements and prints them.
pub(super) async fn measure_kb(dir: &std::path::Path, stop: CancellationToken) -> Result<()> {
    for (n, label) in [(10_000usize, "10K"), (100_000, "100K")] {
        let dir = dir.join(format!("kb-{label}"));
        std::fs::create_dir_all(&dir)?;
        let (store, kb) = open_kb(&dir, &stop)?;
        let mut rng = StdRng::seed_from_u64(7);
        let words = Arc::new(vocabulary(&mut rng));
        let tags: Vec<String> = (0..20).map(|i| format!("tag:{i}")).collect();
        let docs = documents(&mut rng, &words, &tags, n);
        let phrases = phrases(&docs);
        let took = add_all(&kb, docs).await?;
        let (mut lat, hits) = search_all(&kb, &mut rng, &words, &tags, &phrases).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "knowledge-base {label} documents: indexed at {:.0} docs/s ({:.1} s, {IN_FLIGHT} in flight); search p50 {:.3} ms, p99 {:.3} ms ({SEARCHES} searches, {:.1} hits each); index {:.1} MiB, store {:.1} MiB",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            ms(percentile(&mut lat, 0.5)),
            ms(percentile(&mut lat, 0.99)),
            hits as f64 / SEARCHES as f64,
            kb.index_bytes() as f64 / (1 << 20) as f64,
            dir_bytes(&dir) as f64 / (1 << 20) as f64 - kb.index_bytes() as f64 / (1 << 20) as f64,
        );
        drop(kb);
        store.close().await;
    }
    Ok(())
}

/// Opens a store in `dir` and the knowledge base over it (its index in `dir` too).
fn open_kb(dir: &std::path::Path, stop: &CancellationToken) -> Result<(Store, Arc<KnowledgeBase>)> {
    let store = Store::open(&dir.join("kb.redb"), StoreOptions::default())?;
    let ctx = Ctx {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        client: None,
        idempotency_ttl: aicore_runtime::idempotency::MIN_TTL,
        tasks: Default::default(),
        shutdown: stop.child_token(),
        data_dir: Some(dir.to_path_buf()),
    };
    let kb = Arc::new(
        KnowledgeBase::new(ctx, KnowledgeBaseConfig::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    Ok((store, kb))
}

/// `n` documents of the synthetic corpus, each with one tag of the first ten and one of
/// the last ten.
fn documents(
    rng: &mut StdRng,
    words: &[String],
    tags: &[String],
    n: usize,
) -> Vec<AddDocumentRequest> {
    (0..n)
        .map(|i| AddDocumentRequest {
            document_id: format!("d{i}"),
            title: text(rng, words, 5),
            body: text(rng, words, 120),
            tags: vec![
                tags[rng.random_range(0..10)].clone(),
                tags[rng.random_range(10..20)].clone(),
            ],
            metadata: None,
            idempotency_key: format!("k{i}"),
        })
        .collect()
}

/// A two-word phrase from each of the first [`SEARCHES`] documents.
fn phrases(docs: &[AddDocumentRequest]) -> Vec<String> {
    docs.iter()
        .take(SEARCHES)
        .map(|d| {
            d.body
                .split(' ')
                .skip(10)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Adds `docs`, [`IN_FLIGHT`] at a time; returns how long it took.
async fn add_all(kb: &Arc<KnowledgeBase>, docs: Vec<AddDocumentRequest>) -> Result<Duration> {
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut docs = docs.into_iter();
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(d) = docs.next() else { break };
            let kb = kb.clone();
            pending.push(async move { kb.add_document(Request::new(d)).await });
        }
        use futures::StreamExt;
        match pending.next().await {
            Some(r) => {
                r.map_err(|e| anyhow::anyhow!("adding a document: {e}"))?;
            }
            None => break,
        }
    }
    Ok(started.elapsed())
}

/// Runs the searches, one at a time, the 5 kinds in turn; returns each one's latency and
/// the hits of all.
async fn search_all(
    kb: &KnowledgeBase,
    rng: &mut StdRng,
    words: &[String],
    tags: &[String],
    phrases: &[String],
) -> Result<(Vec<Duration>, usize)> {
    let mut lat = Vec::with_capacity(SEARCHES);
    let mut hits = 0usize;
    for (i, phrase) in phrases.iter().enumerate() {
        let w = |rng: &mut StdRng| words[zipf(rng).max(20)].clone();
        let (query, all_tags) = match i % 5 {
            0 => (w(rng), vec![]),
            1 => (format!("{} {}", w(rng), w(rng)), vec![]),
            2 => (format!("\"{phrase}\""), vec![]),
            3 => (format!("{}*", &w(rng)[..3]), vec![]),
            _ => (w(rng), vec![tags[rng.random_range(0..10)].clone()]),
        };
        let t0 = Instant::now();
        let r = kb
            .search(Request::new(SearchRequest {
                query,
                all_tags,
                ..Default::default()
            }))
            .await
            .map_err(|e| anyhow::anyhow!("searching: {e}"))?;
        lat.push(t0.elapsed());
        hits += r.hits.len();
    }
    Ok((lat, hits))
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |d| {
        d.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}
