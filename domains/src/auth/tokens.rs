//! Bearer tokens: how one is made (256 random bits behind `at_`/`rt_`), the key it is
//! stored under (its SHA-256, never the token), and the writes that issue a pair, purge a
//! session's expired tokens and revoke sessions. What a presented token proves is decided by
//! the handlers in [`super::sessions`].

use super::*;

pub(super) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token with `prefix` and the hash it is stored under.
pub(super) fn new_token(prefix: &str) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = sha256(&token);
    (token, hash)
}

/// The storage key of a presented token, or `None` when it cannot be one of ours.
pub(super) fn token_key(token: &str, prefix: &str) -> Option<[u8; 32]> {
    let secret = token.strip_prefix(prefix)?;
    (secret.len() == TOKEN_SECRET_CHARS).then(|| sha256(token))
}

/// A newly issued token pair, as written by [`issue`].
pub(super) struct Issued {
    pub(super) access: String,
    pub(super) refresh: String,
    pub(super) access_expires_ms: i64,
    pub(super) refresh_expires_ms: i64,
}

/// Writes the records of a fresh access/refresh pair for `session` and points the session
/// at the new refresh token.
pub(super) fn issue(
    tx: &mut Tx<'_>,
    session: &mut SessionRecord,
    now: i64,
    config: &AuthConfig,
    access: (String, [u8; 32]),
    refresh: (String, [u8; 32]),
) -> Issued {
    let access_expires_ms = now.saturating_add(secs_ms(config.access_token_ttl_secs));
    let refresh_expires_ms = now.saturating_add(secs_ms(config.refresh_token_ttl_secs));
    for (kind, hash, expires_ms) in [
        (TokenKind::Access, access.1, access_expires_ms),
        (TokenKind::Refresh, refresh.1, refresh_expires_ms),
    ] {
        let rec = TokenRecord {
            kind: kind as i32,
            session_id: session.session_id.clone(),
            account_id: session.account_id.clone(),
            expires_ms,
            used: false,
        };
        tx.put_msg(TOKENS, &hash, &rec);
        tx.put(
            SESSION_TOKENS,
            &session_token_key(&session.session_id, expires_ms, &hash),
            Vec::new(),
        );
    }
    session.refresh_hash = refresh.1.to_vec();
    session.refresh_expires_ms = refresh_expires_ms;
    session.last_used_ms = now;
    tx.put_msg(SESSIONS, session.session_id.as_bytes(), &*session);
    Issued {
        access: access.0,
        refresh: refresh.0,
        access_expires_ms,
        refresh_expires_ms,
    }
}

/// Deletes the expired token rows of a session, oldest first (all of them when `all`).
pub(super) fn purge_tokens(
    tx: &mut Tx<'_>,
    session_id: &str,
    now: i64,
    all: bool,
) -> Result<(), Status> {
    let prefix = session_tokens_prefix(session_id);
    for (key, _) in tx.scan(SESSION_TOKENS, &prefix, &prefix, SCAN_LIMIT)? {
        let Some((expires_ms, hash)) = parse_session_token_key(prefix.len(), &key) else {
            continue;
        };
        if !all && expires_ms > now {
            break;
        }
        tx.delete(TOKENS, hash);
        tx.delete(SESSION_TOKENS, &key);
    }
    Ok(())
}

/// Marks a session revoked; returns whether it was open.
pub(super) fn revoke(tx: &mut Tx<'_>, session: &mut SessionRecord, now: i64) -> bool {
    if session.revoked_ms != 0 {
        return false;
    }
    session.revoked_ms = now.max(1);
    tx.put_msg(SESSIONS, session.session_id.as_bytes(), &*session);
    true
}

/// Revokes every open session of an account but `keep`; returns how many were open.
pub(super) fn revoke_all(
    tx: &mut Tx<'_>,
    account_id: &str,
    now: i64,
    keep: Option<&str>,
) -> Result<u32, Status> {
    let prefix = account_sessions_prefix(account_id);
    let mut n = 0u32;
    for (key, _) in tx.scan(ACCOUNT_SESSIONS, &prefix, &prefix, SCAN_LIMIT)? {
        let Some(sid) = key.get(prefix.len() + 8..) else {
            continue;
        };
        if keep.is_some_and(|k| k.as_bytes() == sid) {
            continue;
        }
        if let Some(mut s) = tx.get_msg::<SessionRecord>(SESSIONS, sid)?
            && s.refresh_expires_ms > now
            && revoke(tx, &mut s, now)
        {
            n += 1;
        }
    }
    Ok(n)
}
