//! knowledge-base's full-text index: tantivy (BM25 over title and body with English
//! stemming and positions, so phrases work; tags as exact terms for filters), derived
//! from the store and never the source of truth.
//!
//! Every write to the documents bumps a revision in the same store transaction and sends
//! its index operation, in commit order, to one indexer thread (from inside the
//! transaction's closure, which the store's writer runs in commit order). The thread
//! applies whatever has queued up, commits once with the latest revision as the commit's
//! payload (group commit, like the store's), reloads the searcher and then answers the
//! waiting writers, so a search after a write returns sees it. At start the index is
//! opened and its payload compared with the store's revision: a missing, unreadable or
//! stale index (a crash between the store's commit and the index's, a deleted folder, an
//! older schema) is rebuilt from the documents before the first search is answered.
//!
//! Queries: tantivy's query parser (terms, `"phrases"`, `-excluded`, `title:word`,
//! boolean operators), plus `word*` prefixes, which the parser takes only at the end of a
//! phrase of two words or more: such words are taken out and matched as term prefixes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use aicore_proto::{Code, Status};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, FuzzyTermQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::watch;

/// The index's layout version, in the commit payload: a change rebuilds old indexes.
const SCHEMA_VERSION: &str = "kb1";
/// The analyzer of title and body.
const ANALYZER: &str = "kb_en";
/// Memory the index writer may buffer before it writes a segment.
const WRITER_MEMORY: usize = 64 << 20;
/// Snippet length, in characters.
pub const SNIPPET_CHARS: usize = 300;

/// What the index holds of one document.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
}

/// One change, in store commit order.
pub enum Op {
    Upsert(Entry),
    Delete(String),
}

struct Job {
    op: Op,
    revision: u64,
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    body: Field,
    tags: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        title: b.add_text_field("title", text.clone()),
        body: b.add_text_field("body", text),
        tags: b.add_text_field("tags", STRING),
    };
    (b.build(), fields)
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "knowledge-base index: {what}");
    Status::internal(format!("the search index failed: {what}"))
}

/// The search index and its indexer thread.
pub struct TextIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// `None` only while dropping (closing it ends the indexer thread).
    jobs: Option<mpsc::Sender<Job>>,
    /// The indexer thread, joined on drop so its writer's lock is released before
    /// anyone opens the index again.
    thread: Option<std::thread::JoinHandle<()>>,
    ready: watch::Receiver<bool>,
    /// The latest revision a search sees.
    applied: watch::Receiver<u64>,
    dir: Option<PathBuf>,
}

/// Reads every document of the store for a rebuild, in pages.
pub type Source =
    Box<dyn FnMut(Option<String>) -> Result<(Vec<Entry>, Option<String>), Status> + Send>;

impl TextIndex {
    /// Opens the index in `dir` (memory when `None`) and starts the indexer, which first
    /// rebuilds the index from `source` unless its payload says it reflects `revision`.
    pub fn open(dir: Option<&Path>, revision: u64, source: Source) -> Result<TextIndex, Status> {
        let (schema, fields) = schema();
        let wanted = payload(revision);
        let (index, fresh) = match dir {
            None => (Index::create_in_ram(schema.clone()), false),
            Some(d) => {
                let existing = Index::open_in_dir(d)
                    .ok()
                    .filter(|i| i.schema() == schema)
                    .filter(|i| {
                        i.load_metas().ok().and_then(|m| m.payload) == Some(wanted.clone())
                    });
                match existing {
                    Some(i) => (i, true),
                    None => {
                        if d.exists() {
                            tracing::info!(dir = %d.display(), "knowledge-base index missing or stale; rebuilding");
                            std::fs::remove_dir_all(d)
                                .map_err(|e| internal("removing the stale index", e))?;
                        }
                        private_dirs(d).map_err(|e| internal("creating the index folder", e))?;
                        let i = Index::create_in_dir(d, schema.clone())
                            .map_err(|e| internal("creating the index", e))?;
                        (i, false)
                    }
                }
            }
        };
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| internal("opening a reader", e))?;
        let writer: IndexWriter = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|e| internal("opening the writer", e))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = watch::channel(fresh);
        let (applied_tx, applied) = watch::channel(if fresh { revision } else { 0 });
        let thread_reader = reader.clone();
        let channels = (ready_tx, applied_tx);
        let files = dir.map(Path::to_path_buf);
        private_files(files.as_deref());
        let thread = std::thread::Builder::new()
            .name("aicore-kb-indexer".into())
            .spawn(move || {
                let commit = |w: &mut IndexWriter, r: &IndexReader, rev: u64| {
                    let outcome = commit(w, r, rev);
                    private_files(files.as_deref());
                    outcome
                };
                let channels = (queue, channels.0, channels.1);
                indexer(
                    writer,
                    thread_reader,
                    fields,
                    channels,
                    fresh,
                    revision,
                    source,
                    commit,
                )
            })
            .map_err(|e| internal("starting the indexer", e))?;
        Ok(TextIndex {
            index,
            reader,
            fields,
            jobs: Some(jobs),
            thread: Some(thread),
            ready,
            applied,
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// Queues `op`, the change of store revision `revision` (call from inside the store
    /// write that makes the change, so the order is the commit order).
    pub fn send(&self, op: Op, revision: u64) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { op, revision });
        }
    }

    /// Waits until searches see revision `revision` (bounded by `deadline`; past it the
    /// write stands and the index catches up on its own).
    pub async fn wait_applied(&self, revision: u64, deadline: Option<std::time::Instant>) {
        let mut applied = self.applied.clone();
        let wait = applied.wait_for(|r| *r >= revision);
        match deadline {
            Some(d) => {
                let _ = tokio::time::timeout_at(d.into(), wait).await;
            }
            None => {
                let _ = wait.await;
            }
        }
    }

    /// Waits until the start-up rebuild is over (Unavailable if it does not end by
    /// `deadline`).
    pub async fn wait_ready(&self, deadline: Option<std::time::Instant>) -> Result<(), Status> {
        let mut ready = self.ready.clone();
        let wait = ready.wait_for(|r| *r);
        let outcome = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), wait).await.ok(),
            None => Some(wait.await),
        };
        match outcome {
            Some(Ok(_)) => Ok(()),
            _ => Err(Status::new(
                Code::Unavailable,
                "the search index is being rebuilt; try again shortly",
            )
            .with_retry_after(std::time::Duration::from_secs(1))),
        }
    }

    /// Bytes the index takes on disk (0 in memory).
    pub fn size_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        self.dir.as_deref().map_or(0, walk)
    }

    /// The query for `text` with the tag filters.
    pub fn query(
        &self,
        text: &str,
        all_tags: &[String],
        any_tags: &[String],
    ) -> Result<Box<dyn Query>, Status> {
        let f = self.fields;
        let mut parser = QueryParser::for_index(&self.index, vec![f.title, f.body]);
        parser.set_field_boost(f.title, 2.0);
        let (rest, prefixes) = split_prefixes(text);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut text_clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if !rest.trim().is_empty() {
            let (q, errors) = parser.parse_query_lenient(&rest);
            if !errors.is_empty() {
                tracing::debug!(?errors, "query parsed leniently");
            }
            text_clauses.push((Occur::Should, q));
        }
        for (occur, word) in prefixes {
            let per_field: Vec<(Occur, Box<dyn Query>)> = [f.title, f.body]
                .into_iter()
                .map(|field| {
                    let q: Box<dyn Query> = Box::new(FuzzyTermQuery::new_prefix(
                        Term::from_field_text(field, &word),
                        0,
                        true,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            text_clauses.push((occur, Box::new(BooleanQuery::new(per_field))));
        }
        if text_clauses.is_empty() {
            return Err(Status::invalid("query", "has no word to search for"));
        }
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(text_clauses))));
        for t in all_tags {
            clauses.push((Occur::Must, tag_query(f.tags, t)));
        }
        if !any_tags.is_empty() {
            let any: Vec<(Occur, Box<dyn Query>)> = any_tags
                .iter()
                .map(|t| (Occur::Should, tag_query(f.tags, t)))
                .collect();
            clauses.push((Occur::Must, Box::new(BooleanQuery::new(any))));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    /// The best `limit` documents for `query`: ids and BM25 scores, best first.
    pub fn search(&self, query: &dyn Query, limit: usize) -> Result<Vec<(String, f32)>, Status> {
        let searcher = self.reader.searcher();
        let top = searcher
            .search(query, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(|e| internal("searching", e))?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| internal("reading a hit", e))?;
            if let Some(id) = doc.get_first(self.fields.id).and_then(|v| v.as_str()) {
                out.push((id.to_string(), score));
            }
        }
        // Equal scores come in index order, which segment merges change: order them by
        // id, so the same query gives the same ranking before and after a rebuild.
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    /// A snippet maker for `query` over bodies.
    pub fn snippets(&self, query: &dyn Query) -> Result<SnippetGenerator, Status> {
        let mut g = SnippetGenerator::create(&self.reader.searcher(), query, self.fields.body)
            .map_err(|e| internal("preparing snippets", e))?;
        g.set_max_num_chars(SNIPPET_CHARS);
        Ok(g)
    }
}

impl Drop for TextIndex {
    fn drop(&mut self) {
        // The queued operations are applied and committed, then the thread ends.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tag_query(field: Field, tag: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, tag),
        IndexRecordOption::Basic,
    ))
}

/// Takes the `word*` prefixes (outside quotes) out of a query: what is left for the
/// parser, and each prefix (lowercased) with how it must occur (`-word*` excludes,
/// `+word*` requires).
fn split_prefixes(text: &str) -> (String, Vec<(Occur, String)>) {
    let mut rest = String::new();
    let mut prefixes = Vec::new();
    let mut quoted = false;
    for (i, part) in text.split('"').enumerate() {
        if i > 0 {
            rest.push('"');
        }
        if quoted {
            rest.push_str(part);
        } else {
            let mut kept = Vec::new();
            for word in part.split_whitespace() {
                let (occur, bare) = match word.as_bytes().first() {
                    Some(b'-') => (Occur::MustNot, &word[1..]),
                    Some(b'+') => (Occur::Must, &word[1..]),
                    _ => (Occur::Should, word),
                };
                match bare.strip_suffix('*') {
                    Some(stem) if !stem.is_empty() && stem.chars().all(char::is_alphanumeric) => {
                        prefixes.push((occur, stem.to_lowercase()))
                    }
                    _ => kept.push(word),
                }
            }
            // Keep the spacing around quotes.
            let lead = if part.starts_with(char::is_whitespace) {
                " "
            } else {
                ""
            };
            let trail = if part.ends_with(char::is_whitespace) {
                " "
            } else {
                ""
            };
            rest.push_str(lead);
            rest.push_str(&kept.join(" "));
            rest.push_str(trail);
        }
        quoted = !quoted;
    }
    (rest, prefixes)
}

/// Creates `dir` and its missing parents mode 0700 (the index holds the documents'
/// words: private like the store), and narrows its parent (the domain's folder) to 0700.
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Narrows the files tantivy wrote in `dir` to 0600 (it creates them with the process
/// umask; the 0700 folder keeps others out in between).
fn private_files(dir: Option<&Path>) {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = dir else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if let Ok(m) = e.metadata()
            && m.is_file()
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
}

fn payload(revision: u64) -> String {
    format!("{SCHEMA_VERSION}:{revision}")
}

fn document(f: Fields, e: &Entry) -> TantivyDocument {
    let mut d = TantivyDocument::default();
    d.add_text(f.id, &e.id);
    d.add_text(f.title, &e.title);
    d.add_text(f.body, &e.body);
    for t in &e.tags {
        d.add_text(f.tags, t);
    }
    d
}

fn commit(writer: &mut IndexWriter, reader: &IndexReader, revision: u64) -> tantivy::Result<()> {
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload(revision));
    prepared.commit()?;
    reader.reload()
}

/// The indexer thread: a rebuild when needed, then batches of operations, one commit per
/// batch. It ends when the domain (every sender) is gone.
#[allow(clippy::too_many_arguments)] // what the thread owns, handed over once
fn indexer(
    mut writer: IndexWriter,
    reader: IndexReader,
    f: Fields,
    (queue, ready, applied): (mpsc::Receiver<Job>, watch::Sender<bool>, watch::Sender<u64>),
    fresh: bool,
    revision: u64,
    mut source: Source,
    commit: impl Fn(&mut IndexWriter, &IndexReader, u64) -> tantivy::Result<()>,
) {
    if !fresh {
        let started = std::time::Instant::now();
        match rebuild(&mut writer, &reader, f, revision, &mut source, &commit) {
            Ok(n) => {
                tracing::info!(
                    documents = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "knowledge-base index rebuilt"
                );
                applied.send_replace(revision);
                ready.send_replace(true);
            }
            // Searches stay Unavailable; writes are still applied below, and the next
            // start tries again (the payload is not current).
            Err(e) => tracing::error!(error = %e, "knowledge-base index rebuild failed"),
        }
    }
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        let latest = apply(&mut writer, &reader, f, batch, &commit);
        applied.send_modify(|r| *r = (*r).max(latest));
    }
}

/// Empties the index and adds every document of `source`, then commits at `revision`:
/// the number of documents added.
fn rebuild(
    writer: &mut IndexWriter,
    reader: &IndexReader,
    f: Fields,
    revision: u64,
    source: &mut Source,
    commit: &impl Fn(&mut IndexWriter, &IndexReader, u64) -> tantivy::Result<()>,
) -> Result<usize, String> {
    writer.delete_all_documents().map_err(|e| e.to_string())?;
    let mut n = 0;
    let mut after = None;
    loop {
        let (page, next) = source(after).map_err(|e| e.to_string())?;
        for e in &page {
            writer
                .add_document(document(f, e))
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    commit(writer, reader, revision).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Applies one batch of operations and commits it: the latest revision in the batch.
fn apply(
    writer: &mut IndexWriter,
    reader: &IndexReader,
    f: Fields,
    batch: Vec<Job>,
    commit: &impl Fn(&mut IndexWriter, &IndexReader, u64) -> tantivy::Result<()>,
) -> u64 {
    let mut latest = 0;
    let mut ok = true;
    for job in batch {
        latest = latest.max(job.revision);
        let id_term = |id: &str| Term::from_field_text(f.id, id);
        match job.op {
            Op::Upsert(e) => {
                writer.delete_term(id_term(&e.id));
                if let Err(err) = writer.add_document(document(f, &e)) {
                    tracing::error!(error = %err, "indexing a document failed");
                    ok = false;
                }
            }
            Op::Delete(id) => {
                writer.delete_term(id_term(&id));
            }
        }
    }
    if let Err(e) = commit(writer, reader, latest) {
        tracing::error!(error = %e, "knowledge-base index commit failed; it is rebuilt at the next start");
        ok = false;
    }
    if !ok {
        tracing::warn!("the search index may miss changes until the next start rebuilds it");
    }
    latest
}

/// An `Arc` handle, for the domain.
pub type Shared = Arc<TextIndex>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_outside_quotes_are_taken_out() {
        let (rest, p) = split_prefixes(r#"drag* "old king*" -ember* +sea* castle"#);
        assert_eq!(rest.trim(), r#""old king*" castle"#);
        assert_eq!(
            p.iter().map(|(o, w)| (*o, w.as_str())).collect::<Vec<_>>(),
            vec![
                (Occur::Should, "drag"),
                (Occur::MustNot, "ember"),
                (Occur::Must, "sea")
            ]
        );
    }
}
