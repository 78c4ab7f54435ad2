//! Password rules and password checks: the username and password rules of Register, and
//! how a password check is admitted through the login throttle (see [`super::throttle`])
//! into a hashing slot (see [`super::hashing`]) and how its failure is recorded.

use super::*;

/// The blocklist shipped with the binary (one password a line, `#` comments).
pub(super) const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

/// The OWASP floor for argon2id; a configuration below it is allowed (tests) but logged.
pub(super) const OWASP_MIN_MEMORY_KIB: u32 = 19 * 1024;
pub(super) const OWASP_MIN_ITERATIONS: u32 = 2;

pub(super) fn check_username(username: &str) -> Result<(), Status> {
    let n = username.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&n) {
        return Err(Status::invalid(
            "username",
            format!("must be {USERNAME_MIN}–{USERNAME_MAX} characters"),
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(Status::invalid(
            "username",
            "may hold only letters, digits, `_`, `-` and `.`",
        ));
    }
    Ok(())
}

impl Auth {
    /// Checks a new password against the rules of Register (reported under `field`).
    pub(super) fn check_password(
        &self,
        field: &str,
        password: &str,
        username: &str,
    ) -> Result<(), Status> {
        let n = password.chars().count();
        if n < PASSWORD_MIN {
            return Err(Status::invalid(
                field,
                format!("must be at least {PASSWORD_MIN} characters"),
            ));
        }
        if n > PASSWORD_MAX {
            return Err(Status::invalid(
                field,
                format!("must be at most {PASSWORD_MAX} characters"),
            ));
        }
        let lower = password.to_lowercase();
        if self.common_passwords.contains(lower.as_str()) {
            return Err(Status::invalid(
                field,
                "is one of the most common passwords; choose another",
            ));
        }
        if lower == username.to_lowercase() {
            return Err(Status::invalid(field, "must differ from the username"));
        }
        Ok(())
    }

    /// Counts a password attempt before its hash runs, or refuses it (without a hash) when
    /// its source or username is locked out: see [`throttle`]. The attempt first gets a
    /// hashing slot (see [`hashing`]; in the reserved lane when its source recently
    /// logged into the name, or when `trusted`), so an attempt shed for capacity is not
    /// counted. Returns the slot to check the password in and the locks the admission
    /// started (the threshold-th attempt starts one, so that no other is checked
    /// meanwhile; its own success lifts it again).
    pub(super) async fn admit(
        &self,
        attempt: &Attempt,
        now: i64,
        deadline: Option<std::time::Instant>,
        trusted: bool,
    ) -> Result<(hashing::Slot, Vec<LockStarted>), Status> {
        // A read first: attempts against a lock cost no write.
        let (until, known_source) = throttle::peek(&self.ctx.store, attempt, now, &self.throttle)?;
        if until > 0 {
            return Err(locked_error(until, now));
        }
        let lane = match trusted || known_source {
            true => hashing::Lane::Trusted,
            false => hashing::Lane::Other,
        };
        let slot = self.hasher.admit(lane, deadline).await?;
        let (a, policy) = (attempt.clone(), self.throttle.clone());
        let admission = self
            .ctx
            .store
            .write(move |tx| throttle::admit(tx, &a, now, &policy))
            .await?;
        match admission {
            Admission::Admitted(started) => Ok((slot, started)),
            Admission::Locked(until) => Err(locked_error(until, now)),
        }
    }

    /// Records a failed password check: `failed`, plus a `lockout` event (from the same
    /// template) for each lock its admission started — a lock a wrong password confirmed,
    /// not one a right password lifted again. One write of its own: the attempt itself
    /// was counted when it was admitted.
    pub(super) async fn record_failure(
        &self,
        failed: AuthAuditEvent,
        started: Vec<LockStarted>,
        attempt: &Attempt,
        now: i64,
    ) -> Result<(), Status> {
        for lock in &started {
            tracing::info!(
                source = attempt.source(),
                all_sources = lock.account_wide,
                failures = lock.failures,
                lock_ms = lock.until_ms - now,
                "logins locked after failed password checks"
            );
        }
        self.ctx
            .store
            .write(move |tx| {
                audit::emit(tx, &failed)?;
                for lock in started {
                    audit::emit(
                        tx,
                        &AuthAuditEvent {
                            kind: "lockout".into(),
                            all_sources: lock.account_wide,
                            locked_until: Some(ts(lock.until_ms)),
                            failures: lock.failures,
                            ..failed.clone()
                        },
                    )?;
                }
                Ok(())
            })
            .await
    }
}
