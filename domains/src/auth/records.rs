//! auth's stored records and the keys of its tables (see the module notes for the
//! tables). The records never leave the domain: [`Account`] is the public view of an
//! [`AccountRecord`], [`Session`] of a [`SessionRecord`].

use super::*;

/// What a stored session says (a trait: the record is generated in `aicore_proto`).
pub(super) trait SessionState {
    /// Neither revoked nor past its refresh token's expiry.
    fn is_open(&self, now: i64) -> bool;
}

impl SessionState for SessionRecord {
    fn is_open(&self, now: i64) -> bool {
        self.revoked_ms == 0 && self.refresh_expires_ms > now
    }
}

pub(super) fn account_sessions_prefix(account_id: &str) -> Vec<u8> {
    format!("{account_id}/").into_bytes()
}

pub(super) fn account_session_key(account_id: &str, created_ms: i64, session_id: &str) -> Vec<u8> {
    let mut k = account_sessions_prefix(account_id);
    k.extend_from_slice(&(u64::MAX - created_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(session_id.as_bytes());
    k
}

pub(super) fn session_tokens_prefix(session_id: &str) -> Vec<u8> {
    format!("{session_id}/").into_bytes()
}

pub(super) fn session_token_key(session_id: &str, expires_ms: i64, hash: &[u8]) -> Vec<u8> {
    let mut k = session_tokens_prefix(session_id);
    k.extend_from_slice(&(expires_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(hash);
    k
}

/// The expiry and token hash encoded in a `session_tokens` key after its prefix.
pub(super) fn parse_session_token_key(prefix_len: usize, key: &[u8]) -> Option<(i64, &[u8])> {
    let rest = key.get(prefix_len..)?;
    let (exp, hash) = rest.split_at_checked(8)?;
    let exp = i64::try_from(u64::from_be_bytes(exp.try_into().ok()?)).ok()?;
    Some((exp, hash))
}

pub(super) fn canonical_roles(roles: &[String]) -> Vec<String> {
    ROLES
        .iter()
        .filter(|r| roles.iter().any(|h| h == *r))
        .map(|r| r.to_string())
        .collect()
}

/// The public view of an account; `locked_until_ms` is its all-sources lock (0 = none).
pub(super) fn public_account(a: &AccountRecord, locked_until_ms: i64) -> Account {
    Account {
        account_id: a.account_id.clone(),
        username: a.username.clone(),
        display_name: a.display_name.clone(),
        roles: a.roles.clone(),
        created_at: Some(ts(a.created_ms)),
        locked_until: (locked_until_ms > 0).then(|| ts(locked_until_ms)),
    }
}
