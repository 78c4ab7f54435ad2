//! quest-system's stored entries and the keys of its tables: a player's entry on a quest,
//! the keys of the log, versions and players, the deterministic key of a reward credit, and
//! the write that saves an entry with its indexes.

use super::*;

pub(super) fn log_key(player: &str, quest: &str) -> Vec<u8> {
    [player.as_bytes(), b"\0", quest.as_bytes()].concat()
}

pub(super) fn version_key(quest: &str, version: u64) -> Vec<u8> {
    [quest.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

pub(super) fn player_prefix(player: &str) -> Vec<u8> {
    [player.as_bytes(), b"\0"].concat()
}

pub(super) fn millis(ts: &prost_types::Timestamp) -> u64 {
    std::time::SystemTime::try_from(*ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The payment idempotency key of one reward of the `n`-th completion.
pub fn reward_key(player: &str, quest: &str, currency: &str, n: u32) -> String {
    let mut key = format!("quest:{player}:{quest}:{currency}");
    if n >= 2 {
        key.push_str(&format!(":{n}"));
    }
    if key.chars().count() > MAX_CREDIT_KEY_CHARS {
        let digest = Sha256::digest(key.as_bytes());
        key = format!(
            "quest:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    key
}

/// Writes `entry` under its log key and moves its row in the recency index.
pub(super) fn save_entry(tx: &mut Tx<'_>, entry: &mut Entry) -> Result<(), Status> {
    let pq = entry
        .quest
        .as_ref()
        .ok_or_else(|| Status::internal("quest log entry without its quest"))?;
    let updated = pq.updated_at.as_ref().map_or(0, millis);
    let recent = [
        player_prefix(&pq.player_id).as_slice(),
        &(u64::MAX - updated).to_be_bytes(),
        b"\0",
        pq.quest_id.as_bytes(),
    ]
    .concat();
    let key = log_key(&pq.player_id, &pq.quest_id);
    if !entry.recent_key.is_empty() && entry.recent_key != recent {
        tx.delete(RECENT, &entry.recent_key);
    }
    tx.put(RECENT, &recent, Vec::new());
    entry.recent_key = recent;
    tx.put_msg(LOG, &key, entry);
    Ok(())
}

/// Bumps the entry's version and update time.
pub(super) fn touch(pq: &mut PlayerQuest, now: prost_types::Timestamp) {
    pq.version += 1;
    pq.updated_at = Some(now);
}

pub(super) fn all_done(pq: &PlayerQuest) -> bool {
    pq.objectives.iter().all(|o| o.done)
}
