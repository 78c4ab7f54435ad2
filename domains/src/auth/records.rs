//! auth's stored records and the keys of its tables (see the module notes for the
//! tables). The records never leave the domain: [`Account`] is the public view of an
//! [`AccountRecord`], [`Session`] of a [`SessionRecord`].

use super::*;

/// An account as stored (never leaves the domain: [`Account`] is its public view).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AccountRecord {
    #[prost(string, tag = "1")]
    pub account_id: String,
    #[prost(string, tag = "2")]
    pub username: String,
    #[prost(string, tag = "3")]
    pub display_name: String,
    #[prost(string, repeated, tag = "4")]
    pub roles: Vec<String>,
    #[prost(int64, tag = "5")]
    pub created_ms: i64,
    /// argon2id PHC string (`$argon2id$v=19$m=…`).
    #[prost(string, tag = "6")]
    pub password_hash: String,
    // Tags 7 and 8 held a failure counter and lock; the login throttle keeps them now
    // (`auth.login_throttle`). Old rows still carry them; they are ignored.
}

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub(super) enum TokenKind {
    Unspecified = 0,
    Access = 1,
    Refresh = 2,
}

/// One issued token, stored under the SHA-256 of the token.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TokenRecord {
    #[prost(enumeration = "TokenKind", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub session_id: String,
    #[prost(string, tag = "3")]
    pub account_id: String,
    #[prost(int64, tag = "4")]
    pub expires_ms: i64,
    /// A refresh token already exchanged; presenting it again is reuse.
    #[prost(bool, tag = "5")]
    pub used: bool,
}

/// One session: a refresh-token family.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SessionRecord {
    #[prost(string, tag = "1")]
    pub session_id: String,
    #[prost(string, tag = "2")]
    pub account_id: String,
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
    #[prost(int64, tag = "4")]
    pub last_used_ms: i64,
    /// Expiry of the current refresh token (the latest expiry of any token of the family).
    #[prost(int64, tag = "5")]
    pub refresh_expires_ms: i64,
    #[prost(string, tag = "6")]
    pub user_agent: String,
    /// When the session was revoked (0 = open).
    #[prost(int64, tag = "7")]
    pub revoked_ms: i64,
    /// SHA-256 of the one refresh token that may still be exchanged.
    #[prost(bytes = "vec", tag = "8")]
    pub refresh_hash: Vec<u8>,
}

impl SessionRecord {
    pub(super) fn is_open(&self, now: i64) -> bool {
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
