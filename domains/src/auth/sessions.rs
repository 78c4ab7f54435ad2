//! The session handlers: Login opens a session, Refresh rotates its tokens, Logout ends it
//! (or all of an account's), Validate answers the gateway's hot path, ListSessions lists an
//! account's open sessions.

use super::*;

impl Auth {
    /// Sessions of an account whose refresh token has expired (candidates to purge).
    pub(super) fn expired_sessions(
        &self,
        account_id: &str,
        now: i64,
    ) -> Result<Vec<String>, Status> {
        let prefix = account_sessions_prefix(account_id);
        let rows = self
            .ctx
            .store
            .scan(ACCOUNT_SESSIONS, &prefix, &prefix, SCAN_LIMIT)?;
        let mut out = Vec::new();
        // Newest first: the expired ones are at the end.
        for (key, _) in rows.iter().rev() {
            if out.len() >= PURGE_PER_LOGIN {
                break;
            }
            let Some(sid) = key.get(prefix.len() + 8..) else {
                continue;
            };
            match self.ctx.store.get_msg::<SessionRecord>(SESSIONS, sid)? {
                Some(s) if s.refresh_expires_ms <= now => out.push(s.session_id),
                Some(_) => {}
                None => out.push(String::from_utf8_lossy(sid).into_owned()),
            }
        }
        Ok(out)
    }
}

pub(super) async fn login(
    auth: &Auth,
    request: Request<LoginRequest>,
) -> Result<LoginResponse, Status> {
    check_login(&request.body)?;
    let LoginRequest {
        username,
        password,
        user_agent,
    } = request.body;
    let now = auth.now();
    // Known and unknown usernames take the same path: counted and locked alike by
    // the throttle, and one hash each (the dummy one for an unknown name).
    let attempt = Attempt::new(&username, request.meta.client_addr.as_deref());
    let account = auth.account_by_username(&username)?;
    let trail = Audit::new(&request.meta, ts(now));
    let known = account.as_ref().map(|a| a.account_id.clone());
    let known = known.as_deref();
    let (slot, started) = auth
        .admit(&attempt, now, request.meta.deadline, false)
        .await?;
    let hash = account
        .as_ref()
        .map_or_else(|| auth.dummy_hash.clone(), |a| a.password_hash.clone());
    auth.password_checks.fetch_add(1, Ordering::Relaxed);
    let ok = slot.verify(password, hash).await?;
    let Some(account) = account.filter(|_| ok) else {
        // The attempt was counted when it was admitted.
        let failed = trail.event_for_name("login_failed", known, &username);
        auth.record_failure(failed, started, &attempt, now).await?;
        return Err(bad_credentials());
    };
    let opening = Opening {
        account_id: account.account_id.clone(),
        verified_hash: account.password_hash,
        user_agent,
        purge: auth.expired_sessions(&account.account_id, now)?,
        access: new_token(ACCESS_PREFIX),
        refresh: new_token(REFRESH_PREFIX),
        attempt,
        now,
        config: auth.config.clone(),
        policy: auth.throttle.clone(),
        trail,
    };
    let (issued, session_id, roles) = auth
        .ctx
        .store
        .write(move |tx| open_session(tx, opening))
        .await?;
    Ok(LoginResponse {
        access_token: issued.access,
        refresh_token: issued.refresh,
        access_expires_at: Some(ts(issued.access_expires_ms)),
        refresh_expires_at: Some(ts(issued.refresh_expires_ms)),
        account_id: account.account_id,
        roles,
        session_id,
    })
}

/// Login's input checks, each naming its field.
fn check_login(body: &LoginRequest) -> Result<(), Status> {
    let LoginRequest {
        username,
        password,
        user_agent,
    } = body;
    if username.is_empty() {
        return Err(Status::invalid("username", "is required"));
    }
    if username.chars().count() > USERNAME_MAX {
        return Err(Status::invalid(
            "username",
            format!("must be at most {USERNAME_MAX} characters"),
        ));
    }
    if password.is_empty() {
        return Err(Status::invalid("password", "is required"));
    }
    if password.chars().count() > PASSWORD_MAX {
        return Err(Status::invalid(
            "password",
            format!("must be at most {PASSWORD_MAX} characters"),
        ));
    }
    if user_agent.chars().count() > USER_AGENT_MAX {
        return Err(Status::invalid(
            "user_agent",
            format!("must be at most {USER_AGENT_MAX} characters"),
        ));
    }
    Ok(())
}

/// What Login's write needs once the password was verified.
struct Opening {
    account_id: String,
    /// The hash the password was checked against: the write refuses if it changed since.
    verified_hash: String,
    user_agent: String,
    /// Expired sessions of the account to purge on the way.
    purge: Vec<String>,
    /// The new token pair (token, hash).
    access: (String, [u8; 32]),
    refresh: (String, [u8; 32]),
    attempt: Attempt,
    now: i64,
    config: AuthConfig,
    policy: throttle::Policy,
    trail: Audit,
}

/// Login's write: clears the throttle, purges expired sessions, opens a session with a
/// fresh token pair and queues its audit event. Returns the tokens, the session and the
/// account's roles.
fn open_session(tx: &mut Tx<'_>, o: Opening) -> Result<(Issued, String, Vec<String>), Status> {
    let Opening {
        account_id,
        verified_hash,
        user_agent,
        purge,
        access,
        refresh,
        attempt,
        now,
        config,
        policy,
        trail,
    } = o;
    let Some(a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())? else {
        return Err(bad_credentials());
    };
    if a.password_hash != verified_hash {
        return Err(bad_credentials());
    }
    // An admitted attempt completes even if others locked the name meanwhile.
    throttle::succeeded(tx, &attempt, now, &policy)?;
    purge_sessions(tx, &account_id, &purge, now)?;
    let mut session = SessionRecord {
        session_id: new_id("ses"),
        account_id: account_id.clone(),
        created_ms: now,
        last_used_ms: now,
        refresh_expires_ms: 0,
        user_agent,
        revoked_ms: 0,
        refresh_hash: Vec::new(),
    };
    tx.put(
        ACCOUNT_SESSIONS,
        &account_session_key(&account_id, now, &session.session_id),
        Vec::new(),
    );
    let issued = issue(tx, &mut session, now, &config, access, refresh);
    audit::emit(
        tx,
        &AuthAuditEvent {
            session_id: session.session_id.clone(),
            ..trail.event("login_succeeded", &account_id)
        },
    )?;
    Ok((issued, session.session_id, a.roles))
}

/// Deletes the sessions of `purge` (with their tokens) that are still expired.
fn purge_sessions(
    tx: &mut Tx<'_>,
    account_id: &str,
    purge: &[String],
    now: i64,
) -> Result<(), Status> {
    for sid in purge {
        let Some(s) = tx.get_msg::<SessionRecord>(SESSIONS, sid.as_bytes())? else {
            continue;
        };
        if s.refresh_expires_ms > now {
            continue;
        }
        purge_tokens(tx, sid, now, true)?;
        tx.delete(SESSIONS, sid.as_bytes());
        tx.delete(
            ACCOUNT_SESSIONS,
            &account_session_key(account_id, s.created_ms, sid),
        );
    }
    Ok(())
}

pub(super) async fn refresh(
    auth: &Auth,
    request: Request<RefreshRequest>,
) -> Result<RefreshResponse, Status> {
    let Some(hash) = token_key(&request.body.refresh_token, REFRESH_PREFIX) else {
        return Err(bad_token());
    };
    let now = auth.now();
    let trail = Audit::new(&request.meta, ts(now));
    let config = auth.config.clone();
    let access = new_token(ACCESS_PREFIX);
    let refresh = new_token(REFRESH_PREFIX);
    let outcome = auth
        .ctx
        .store
        .write(move |tx| exchange(tx, &hash, now, &trail, &config, access, refresh))
        .await?;
    match outcome {
        Outcome::Invalid => Err(bad_token()),
        Outcome::Reused {
            session_id,
            account_id,
            epoch,
        } => {
            tracing::warn!(
                session_id,
                account_id,
                "refresh token reused: session revoked"
            );
            auth.announce(session_notice(session_id, epoch)).await;
            Err(bad_token())
        }
        Outcome::Issued(issued, account_id, session_id) => Ok(RefreshResponse {
            access_token: issued.access,
            refresh_token: issued.refresh,
            access_expires_at: Some(ts(issued.access_expires_ms)),
            refresh_expires_at: Some(ts(issued.refresh_expires_ms)),
            account_id,
            session_id,
        }),
    }
}

/// What a presented refresh token came to.
enum Outcome {
    Invalid,
    Reused {
        session_id: String,
        account_id: String,
        epoch: u64,
    },
    Issued(Issued, String, String),
}

/// Refresh's write: spends a current refresh token for a fresh pair, or revokes the
/// session when a spent one comes back.
fn exchange(
    tx: &mut Tx<'_>,
    hash: &[u8; 32],
    now: i64,
    trail: &Audit,
    config: &AuthConfig,
    access: (String, [u8; 32]),
    refresh: (String, [u8; 32]),
) -> Result<Outcome, Status> {
    let Some(mut rec) = tx.get_msg::<TokenRecord>(TOKENS, hash)? else {
        return Ok(Outcome::Invalid);
    };
    if rec.kind != TokenKind::Refresh as i32 {
        return Ok(Outcome::Invalid);
    }
    let Some(mut session) = tx.get_msg::<SessionRecord>(SESSIONS, rec.session_id.as_bytes())?
    else {
        return Ok(Outcome::Invalid);
    };
    if session.revoked_ms != 0 {
        return Ok(Outcome::Invalid);
    }
    let current = bool::from(session.refresh_hash.as_slice().ct_eq(&hash[..]));
    if rec.used || !current {
        // A spent token came back: either the client or a thief holds a copy.
        // The family cannot be trusted any more (the writes are kept: Ok).
        revoke(tx, &mut session, now);
        let epoch = bump_epoch(tx)?;
        audit::emit(
            tx,
            &AuthAuditEvent {
                session_id: session.session_id.clone(),
                revoked_sessions: 1,
                ..trail.event("refresh_reuse", &session.account_id)
            },
        )?;
        return Ok(Outcome::Reused {
            session_id: session.session_id,
            account_id: session.account_id,
            epoch,
        });
    }
    if rec.expires_ms <= now {
        return Ok(Outcome::Invalid);
    }
    if tx.get(ACCOUNTS, session.account_id.as_bytes())?.is_none() {
        return Ok(Outcome::Invalid);
    }
    rec.used = true;
    tx.put_msg(TOKENS, hash, &rec);
    purge_tokens(tx, &session.session_id, now, false)?;
    let issued = issue(tx, &mut session, now, config, access, refresh);
    Ok(Outcome::Issued(
        issued,
        session.account_id,
        session.session_id,
    ))
}

pub(super) async fn logout(
    auth: &Auth,
    request: Request<LogoutRequest>,
) -> Result<LogoutResponse, Status> {
    let LogoutRequest {
        token,
        all_sessions,
    } = request.body;
    let (token, kind, prefix) = match token {
        Some(logout_request::Token::RefreshToken(t)) => (t, TokenKind::Refresh, REFRESH_PREFIX),
        Some(logout_request::Token::AccessToken(t)) => (t, TokenKind::Access, ACCESS_PREFIX),
        None => {
            return Err(Status::invalid(
                "token",
                "give the refresh_token or the access_token of the session",
            ));
        }
    };
    let Some(hash) = token_key(&token, prefix) else {
        return Err(bad_token());
    };
    let now = auth.now();
    let trail = Audit::new(&request.meta, ts(now));
    let revoked = auth
        .ctx
        .store
        .write(move |tx| {
            let Some(rec) = tx.get_msg::<TokenRecord>(TOKENS, &hash)? else {
                return Ok(None);
            };
            if rec.kind != kind as i32 || rec.expires_ms <= now {
                return Ok(None);
            }
            let logout = |tx: &mut Tx<'_>, n: u32, session_id: &str| {
                if n == 0 {
                    return Ok(0);
                }
                audit::emit(
                    tx,
                    &AuthAuditEvent {
                        session_id: session_id.to_string(),
                        revoked_sessions: n,
                        ..trail.event("logout", &rec.account_id)
                    },
                )?;
                bump_epoch(tx)
            };
            if all_sessions {
                let n = revoke_all(tx, &rec.account_id, now, None)?;
                let epoch = logout(tx, n, "")?;
                return Ok(Some((n, account_notice(rec.account_id, epoch))));
            }
            let Some(mut s) = tx.get_msg::<SessionRecord>(SESSIONS, rec.session_id.as_bytes())?
            else {
                return Ok(None);
            };
            let n = u32::from(revoke(tx, &mut s, now));
            let epoch = logout(tx, n, &rec.session_id)?;
            Ok(Some((n, session_notice(rec.session_id, epoch))))
        })
        .await?;
    match revoked {
        Some((revoked_sessions, notice)) => {
            if revoked_sessions > 0 {
                auth.announce(notice).await;
            }
            Ok(LogoutResponse { revoked_sessions })
        }
        None => Err(bad_token()),
    }
}

pub(super) async fn validate(
    auth: &Auth,
    request: Request<ValidateRequest>,
) -> Result<ValidateResponse, Status> {
    let Some(hash) = token_key(&request.body.access_token, ACCESS_PREFIX) else {
        return Err(bad_token());
    };
    // Read before the rows: the answer is then at least as new as this epoch.
    let revocation_epoch = auth.epoch()?;
    let store = &auth.ctx.store;
    let now = auth.now();
    let Some(rec) = store.get_msg_cached::<TokenRecord>(TOKENS, &hash)? else {
        return Err(bad_token());
    };
    if rec.kind != TokenKind::Access as i32 || rec.expires_ms <= now {
        return Err(bad_token());
    }
    // Revocation is a write to this row, which drops it from the cache.
    let Some(session) =
        store.get_msg_cached::<SessionRecord>(SESSIONS, rec.session_id.as_bytes())?
    else {
        return Err(bad_token());
    };
    if session.revoked_ms != 0 {
        return Err(bad_token());
    }
    let Some(account) =
        store.get_msg_cached::<AccountRecord>(ACCOUNTS, rec.account_id.as_bytes())?
    else {
        return Err(bad_token());
    };
    if now - session.last_used_ms >= TOUCH_EVERY_MS {
        // Off the hot path; re-checked in the writer so it never revives a session.
        let store = store.clone();
        let sid = session.session_id.clone();
        auth.ctx.spawn(async move {
            let r = store
                .write(move |tx| {
                    if let Some(mut s) = tx.get_msg::<SessionRecord>(SESSIONS, sid.as_bytes())?
                        && s.revoked_ms == 0
                        && s.last_used_ms < now
                    {
                        s.last_used_ms = now;
                        tx.put_msg(SESSIONS, sid.as_bytes(), &s);
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "session last-use not recorded");
            }
        });
    }
    Ok(ValidateResponse {
        account_id: account.account_id,
        roles: account.roles,
        session_id: session.session_id,
        expires_at: Some(ts(rec.expires_ms)),
        revocation_epoch,
    })
}

pub(super) async fn list_sessions(
    auth: &Auth,
    request: Request<ListSessionsRequest>,
) -> Result<ListSessionsResponse, Status> {
    let ListSessionsRequest {
        account_id,
        page_size,
        page_token,
    } = request.body;
    if account_id.is_empty() {
        return Err(Status::invalid("account_id", "is required"));
    }
    request.meta.authorize_owner(&account_id, &["admin"])?;
    let caller_session = request.meta.caller_session.as_deref();
    let page_size = paging::page_size(page_size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)?;
    let prefix = account_sessions_prefix(&account_id);
    let now = auth.now();
    let store = &auth.ctx.store;
    let listing = paging::Listing {
        store,
        table: ACCOUNT_SESSIONS,
        prefix: &prefix,
        kind: SESSIONS_TOKEN,
        limit: page_size,
        // Closed sessions are skipped but pruned as they expire, so few are read past.
        max_scan: usize::MAX,
    };
    let mut page = paging::Page::start(listing, &page_token)?;
    while let Some((key, _)) = page.next_row()? {
        let Some(sid) = key.get(prefix.len() + 8..) else {
            continue;
        };
        let Some(s) = store.get_msg::<SessionRecord>(SESSIONS, sid)? else {
            continue;
        };
        if !s.is_open(now) {
            continue;
        }
        let current = caller_session == Some(s.session_id.as_str());
        page.keep(Session {
            session_id: s.session_id,
            created_at: Some(ts(s.created_ms)),
            last_used_at: Some(ts(s.last_used_ms)),
            expires_at: Some(ts(s.refresh_expires_ms)),
            user_agent: s.user_agent,
            current,
        });
    }
    let (sessions, next_page_token) = page.finish();
    Ok(ListSessionsResponse {
        sessions,
        next_page_token,
    })
}
