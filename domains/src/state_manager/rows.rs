//! Where an object's rows live in the one table and how its history is pruned: the keys
//! of a head and of each version (`player_id \0 key \0 tag [!version]`, see the module
//! notes), the public metadata of a head, and the pruning of versions past
//! `history_depth` inside the writing transaction.

use super::*;

pub(super) fn object_key(player_id: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(player_id.len() + 1 + key.len() + 10);
    k.extend_from_slice(player_id.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `player_id \0 key \0 tag`.
pub(super) fn tagged(player_id: &str, key: &str, tag: u8) -> Vec<u8> {
    let mut k = object_key(player_id, key);
    k.push(0);
    k.push(tag);
    k
}

/// The key of an object's head row.
pub(super) fn head_key(player_id: &str, key: &str) -> Vec<u8> {
    tagged(player_id, key, TAG_HEAD)
}

/// The prefix of every version row of one object.
pub(super) fn versions_prefix(player_id: &str, key: &str) -> Vec<u8> {
    tagged(player_id, key, TAG_VERSION)
}

pub(super) fn version_key(prefix: &[u8], version: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(u64::MAX - version).to_be_bytes());
    k
}

pub(super) fn version_of(row_key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = row_key
        .get(row_key.len().checked_sub(8)?..)?
        .try_into()
        .ok()?;
    Some(u64::MAX - u64::from_be_bytes(tail))
}

pub(super) fn metadata(player_id: &str, key: &str, h: &Head) -> ObjectMetadata {
    ObjectMetadata {
        player_id: player_id.to_string(),
        key: key.to_string(),
        version: h.version,
        size_bytes: h.size_bytes,
        content_type: h.content_type.clone(),
        updated_at: h.updated_at,
    }
}

/// Deletes the versions of one object that fall out of the `depth` newest once `newest`
/// is written (its row already), and returns the oldest version left, 0 if not known.
///
/// An object's version rows are always one run `oldest..=newest`: versions are written
/// one after another and pruned from the oldest. So with `oldest` known (kept in the
/// head) the rows to delete are known without reading them — a Put writes its rows and
/// reads nothing but the head. When it is not known (an object re-created after a
/// Delete, a head written before heads kept it) the rows are scanned.
pub(super) fn prune(
    tx: &mut Tx<'_>,
    prefix: &[u8],
    oldest: u64,
    newest: u64,
    depth: u64,
) -> Result<u64, Status> {
    let keep_from = newest.saturating_sub(depth - 1).max(1);
    if oldest > 0 {
        let end = keep_from.min(oldest.saturating_add(PRUNE_BATCH as u64));
        for v in oldest..end {
            tx.delete(VERSIONS, &version_key(prefix, v));
        }
        return Ok(oldest.max(end));
    }
    // Rows at or below `keep_from`, newest first.
    let rows = tx.scan(
        VERSIONS,
        prefix,
        &version_key(prefix, keep_from),
        PRUNE_BATCH + 1,
    )?;
    let mut kept = None;
    let mut deleted = 0;
    for (k, _) in &rows {
        match version_of(k) {
            Some(v) if v >= keep_from => kept = Some(v),
            _ if deleted < PRUNE_BATCH => {
                tx.delete(VERSIONS, k);
                deleted += 1;
            }
            _ => return Ok(0),
        }
    }
    // Every older row is gone; `keep_from` itself is the oldest if it exists (else the
    // run starts above it, at a version this scan did not see).
    Ok(kept.unwrap_or(0))
}

/// The newest version ever written of an object (live or tombstone), if any remains.
pub(super) fn newest_version(tx: &Tx<'_>, prefix: &[u8]) -> Result<Option<u64>, Status> {
    Ok(tx
        .scan(VERSIONS, prefix, prefix, 1)?
        .first()
        .and_then(|(k, _)| version_of(k)))
}
