//! The account handlers: Register, ChangePassword, GrantRole and GetAccount, and the reads
//! of an account they share.

use super::*;

impl Auth {
    pub(super) fn account(&self, account_id: &str) -> Result<AccountRecord, Status> {
        self.ctx
            .store
            .get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no account {account_id}")))
    }

    pub(super) fn account_by_username(
        &self,
        username: &str,
    ) -> Result<Option<AccountRecord>, Status> {
        let key = username.to_ascii_lowercase();
        let Some(id) = self.ctx.store.get(USERNAMES, key.as_bytes())? else {
            return Ok(None);
        };
        self.ctx.store.get_msg::<AccountRecord>(ACCOUNTS, &id)
    }
}

pub(super) async fn register(
    auth: &Auth,
    request: Request<RegisterRequest>,
) -> Result<RegisterResponse, Status> {
    let RegisterRequest {
        username,
        password,
        display_name,
    } = request.body;
    check_username(&username)?;
    auth.check_password("password", &password, &username)?;
    let display_name = if display_name.is_empty() {
        username.clone()
    } else {
        display_name
    };
    if display_name.chars().count() > DISPLAY_NAME_MAX {
        return Err(Status::invalid(
            "display_name",
            format!("must be at most {DISPLAY_NAME_MAX} characters"),
        ));
    }
    if display_name.chars().any(char::is_control) || display_name.trim().is_empty() {
        return Err(Status::invalid(
            "display_name",
            "must be visible text without control characters",
        ));
    }
    let password_hash = auth
        .hasher
        .hash(hashing::Lane::Other, request.meta.deadline, password)
        .await?;
    let account = AccountRecord {
        account_id: new_id("acc"),
        username,
        display_name,
        roles: vec![ROLE_PLAYER.to_string()],
        created_ms: auth.now(),
        password_hash,
    };
    let account_id = account.account_id.clone();
    auth.ctx
        .store
        .write(move |tx| {
            let key = account.username.to_ascii_lowercase();
            if tx.get(USERNAMES, key.as_bytes())?.is_some() {
                return Err(Status::conflict("this username is taken"));
            }
            tx.put(
                USERNAMES,
                key.as_bytes(),
                account.account_id.clone().into_bytes(),
            );
            tx.put_msg(ACCOUNTS, account.account_id.as_bytes(), &account);
            Ok(())
        })
        .await?;
    tracing::info!(account_id, "account registered");
    Ok(RegisterResponse { account_id })
}

/// Revokes every other session of the account; the caller's own session (when the
/// call came with one, see the module notes) stays valid.
pub(super) async fn change_password(
    auth: &Auth,
    request: Request<ChangePasswordRequest>,
) -> Result<ChangePasswordResponse, Status> {
    let ChangePasswordRequest {
        account_id,
        old_password,
        new_password,
    } = request.body;
    if account_id.is_empty() {
        return Err(Status::invalid("account_id", "is required"));
    }
    request.meta.authorize_owner(&account_id, &["admin"])?;
    // Trusted principals (admin CLI) and admins acting for someone else need no old
    // password; an owner (admin or not) must prove it.
    let needs_old = request
        .meta
        .caller
        .as_ref()
        .is_some_and(|c| c.account_id == account_id);
    // The owner's calling session survives; it is spared only if it is one of this
    // account's sessions (revoke_all looks among them).
    let keep = request.meta.caller_session.clone().filter(|_| needs_old);
    let account = auth.account(&account_id)?;
    auth.check_password("new_password", &new_password, &account.username)?;
    let now = auth.now();
    let trail = Audit::new(&request.meta, ts(now));
    let deadline = request.meta.deadline;
    // The old password is a password check like a login's, throttled alike.
    let attempt =
        needs_old.then(|| Attempt::new(&account.username, request.meta.client_addr.as_deref()));
    if let Some(attempt) = &attempt {
        verify_old_password(auth, attempt, old_password, &account, now, deadline, &trail).await?;
    }
    let policy = auth.throttle.clone();
    let new_hash = auth
        .hasher
        .hash(hashing::Lane::Trusted, deadline, new_password)
        .await?;
    let checked_hash = account.password_hash;
    let notified = account_id.clone();
    let (revoked_sessions, epoch) = auth
        .ctx
        .store
        .write(move |tx| {
            let Some(mut a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())? else {
                return Err(Status::not_found(format!("no account {account_id}")));
            };
            if a.password_hash != checked_hash {
                return Err(Status::conflict(
                    "the password was changed meanwhile; try again",
                ));
            }
            a.password_hash = new_hash;
            tx.put_msg(ACCOUNTS, account_id.as_bytes(), &a);
            if let Some(attempt) = &attempt {
                throttle::succeeded(tx, attempt, now, &policy)?;
            }
            let n = revoke_all(tx, &account_id, now, keep.as_deref())?;
            audit::emit(
                tx,
                &AuthAuditEvent {
                    session_id: keep.unwrap_or_default(),
                    revoked_sessions: n,
                    ..trail.event("password_changed", &account_id)
                },
            )?;
            Ok((n, bump_epoch(tx)?))
        })
        .await?;
    auth.announce(account_notice(notified, epoch)).await;
    Ok(ChangePasswordResponse { revoked_sessions })
}

/// ChangePassword's proof of the old password: a password check like a login's, throttled
/// alike (in the reserved lane: the caller is authenticated).
async fn verify_old_password(
    auth: &Auth,
    attempt: &Attempt,
    old_password: String,
    account: &AccountRecord,
    now: i64,
    deadline: Option<std::time::Instant>,
    trail: &Audit,
) -> Result<(), Status> {
    let account_id = &account.account_id;
    if old_password.is_empty() {
        return Err(Status::invalid("old_password", "is required"));
    }
    if old_password.chars().count() > PASSWORD_MAX {
        return Err(bad_credentials());
    }
    // An authenticated caller: the reserved lane.
    let (slot, started) = auth.admit(attempt, now, deadline, true).await?;
    auth.password_checks.fetch_add(1, Ordering::Relaxed);
    let ok = slot
        .verify(old_password, account.password_hash.clone())
        .await?;
    if !ok {
        let failed = trail.event("password_change_failed", account_id);
        auth.record_failure(failed, started, attempt, now).await?;
        return Err(Status::unauthenticated("the old password is wrong"));
    }
    Ok(())
}

pub(super) async fn grant_role(
    auth: &Auth,
    request: Request<GrantRoleRequest>,
) -> Result<GrantRoleResponse, Status> {
    let GrantRoleRequest {
        account_id,
        role,
        revoke,
    } = request.body;
    if account_id.is_empty() {
        return Err(Status::invalid("account_id", "is required"));
    }
    if !ROLES.contains(&role.as_str()) {
        return Err(Status::invalid(
            "role",
            "must be \"player\", \"service\" or \"admin\"",
        ));
    }
    let notified = account_id.clone();
    let trail = Audit::new(&request.meta, auth.ctx.now_ts());
    let (roles, changed) = auth
        .ctx
        .store
        .write(move |tx| {
            let Some(mut a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())? else {
                return Err(Status::not_found(format!("no account {account_id}")));
            };
            let mut roles = a.roles.clone();
            roles.retain(|r| r != &role);
            if !revoke {
                roles.push(role.clone());
            }
            let roles = canonical_roles(&roles);
            if roles == a.roles {
                return Ok((roles, None));
            }
            a.roles = roles.clone();
            tx.put_msg(ACCOUNTS, account_id.as_bytes(), &a);
            audit::emit(
                tx,
                &AuthAuditEvent {
                    role,
                    role_removed: revoke,
                    roles: roles.clone(),
                    ..trail.event("role_changed", &account_id)
                },
            )?;
            Ok((roles, Some(bump_epoch(tx)?)))
        })
        .await?;
    if let Some(epoch) = changed {
        auth.announce(account_notice(notified, epoch)).await;
    }
    Ok(GrantRoleResponse { roles })
}

pub(super) async fn get_account(
    auth: &Auth,
    request: Request<GetAccountRequest>,
) -> Result<GetAccountResponse, Status> {
    let account_id = request.body.account_id;
    if account_id.is_empty() {
        return Err(Status::invalid("account_id", "is required"));
    }
    request.meta.authorize_owner(&account_id, &["admin"])?;
    let a = auth.account(&account_id)?;
    let locked_until =
        throttle::account_locked_until(&auth.ctx.store, &a.username, auth.now(), &auth.throttle)?;
    Ok(GetAccountResponse {
        account: Some(public_account(&a, locked_until)),
    })
}
