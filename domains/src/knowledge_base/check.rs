//! The checks of knowledge-base's input, each refusal naming the field: document ids,
//! tags, and a document's content as AddDocument and Update receive it (title, body,
//! tags, metadata). Nothing here reads or writes the store.

use aicore_proto::Status;

/// Longest title, query and tag, in characters; most tags.
const MAX_TITLE: usize = 512;
pub(super) const MAX_QUERY: usize = 1024;
const MAX_TAG: usize = 64;
const MAX_TAGS: usize = 32;
const MAX_ID: usize = 128;
/// Largest metadata, encoded.
const MAX_METADATA_BYTES: usize = 64 * 1024;

pub(super) fn check_id(id: &str, field: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_ID} characters of [A-Za-z0-9_.:-]"),
        ))
    }
}

pub(super) fn check_tags(tags: &[String], field: &str) -> Result<(), Status> {
    if tags.len() > MAX_TAGS {
        return Err(Status::invalid(field, format!("at most {MAX_TAGS} tags")));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = !t.is_empty()
            && t.chars().count() <= MAX_TAG
            && !t
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c.is_uppercase());
        if !ok {
            return Err(Status::invalid(
                &format!("{field}[{i}]"),
                format!("1 to {MAX_TAG} lowercase characters without spaces"),
            ));
        }
    }
    Ok(())
}

/// Checks a document's content; returns its tags sorted and deduplicated.
pub(super) fn check_content(
    title: &str,
    body: &str,
    tags: &[String],
    metadata: Option<&prost_types::Struct>,
    max_body: usize,
) -> Result<Vec<String>, Status> {
    if title.is_empty() || title.chars().count() > MAX_TITLE || title.chars().any(char::is_control)
    {
        return Err(Status::invalid(
            "title",
            format!("1 to {MAX_TITLE} characters without control characters"),
        ));
    }
    aicore_runtime::validate::max_bytes(body.len(), max_body, "body", "per-document")?;
    check_tags(tags, "tags")?;
    if let Some(m) = metadata {
        aicore_runtime::validate::max_bytes(
            prost::Message::encoded_len(m),
            MAX_METADATA_BYTES,
            "metadata",
            "metadata",
        )?;
    }
    let mut t = tags.to_vec();
    t.sort();
    t.dedup();
    Ok(t)
}
