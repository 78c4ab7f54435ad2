//! auth: accounts and sessions. It owns registration (argon2id password hashes, a
//! common-password blocklist), login behind a throttle that counts every password check
//! before it runs, per source address and username (see [`throttle`]: unknown usernames
//! are counted and locked like known ones, a locked attempt is refused without a hash,
//! and one burst cannot lock a player out for long), opaque bearer tokens (a short-lived
//! access token and a single-use refresh token per session, rotated on every Refresh; a
//! reused refresh token revokes its session), the gateway's Validate hot path, roles, and
//! session listing. It does not rate-limit other calls (the gateway's job), send mail, or
//! expire rows with a background sweeper: expired rows are removed on the account's and
//! session's next write.
//!
//! Tokens are `at_` / `rt_` followed by 256 random bits in base64url; only their SHA-256
//! is stored, so a copy of the store yields no usable token. A session is one refresh-token
//! family; revoking it is one write to its session row, which Validate reads through the
//! store's cache, so revocation (and a role change, a write to the account row) is seen by
//! the very next Validate. Caches of Validate answers outside this domain (the gateway's)
//! learn of it from a `RevocationNotice` on [`aicore_proto::subjects::AUTH_REVOKED`],
//! published after the commit and before the reply. Notices are core NATS, so one can be
//! lost: every revoking commit also moves a persisted revocation epoch on by one in the
//! same write, each notice carries its epoch, Validate answers carry the current one, and
//! a heartbeat task publishes the current epoch every `revocation_heartbeat_ms` until
//! `ctx.shutdown`. A cache that sees a gap in the epochs, or hears nothing for two
//! heartbeat intervals, knows not to trust what it holds.
//!
//! Tables (ids are `acc_<hex>` / `ses_<hex>`, never containing `/`):
//! - `auth.accounts`: `account_id` → [`AccountRecord`] (profile, roles, PHC hash).
//! - `auth.usernames`: lowercased username → `account_id` (case-insensitive uniqueness).
//! - `auth.tokens`: `sha256(token)` → [`TokenRecord`] (kind, session, expiry, spent flag).
//! - `auth.sessions`: `session_id` → [`SessionRecord`] (the family: current refresh hash,
//!   revocation time).
//! - `auth.account_sessions`: `account_id / !created_ms / session_id` → empty; `!x` is
//!   `u64::MAX - x` big-endian, so a forward scan lists newest first.
//! - `auth.session_tokens`: `session_id / expires_ms / sha256` → empty, so a session's
//!   expired tokens are found oldest first and its tokens can be purged with it.
//! - `auth.login_throttle`, `auth.login_throttle_expiry`: see [`throttle`].
//! - `auth.meta`: `revocation_epoch` → u64 big-endian.
//!
//! A caller's session comes with the call when its token was validated by the gateway
//! (`Metadata::caller_session`): ChangePassword keeps that session and revokes every other
//! one of the account, and ListSessions marks it `current`. Without one (a trusted
//! principal, an admin acting for someone else) ChangePassword revokes every session.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::aicore::auth::v1::{
    Account, AuthAuditEvent, AuthHandler, AuthServer, ChangePasswordRequest,
    ChangePasswordResponse, GetAccountRequest, GetAccountResponse, GrantRoleRequest,
    GrantRoleResponse, ListSessionsRequest, ListSessionsResponse, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse, RegisterRequest,
    RegisterResponse, RevocationNotice, Session, ValidateRequest, ValidateResponse, logout_request,
};
use aicore_proto::internal::auth::{AccountRecord, SessionRecord, TokenKind, TokenRecord};
use aicore_proto::{Dispatch, Request, Status};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use aicore_runtime::new_id;
use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging};

mod accounts;
mod audit;
mod hashing;
mod passwords;
mod records;
mod revocation;
mod sessions;
mod throttle;
mod tokens;

use passwords::*;
use records::*;

pub use revocation::RevocationHook;

use revocation::*;
use tokens::*;

use audit::Audit;
use throttle::{Admission, Attempt, LockStarted, locked_error};

const ACCOUNTS: &str = "auth.accounts";
const USERNAMES: &str = "auth.usernames";
const TOKENS: &str = "auth.tokens";
const SESSIONS: &str = "auth.sessions";
const ACCOUNT_SESSIONS: &str = "auth.account_sessions";
const SESSION_TOKENS: &str = "auth.session_tokens";
const META: &str = "auth.meta";
const EPOCH_KEY: &[u8] = b"revocation_epoch";

const ACCESS_PREFIX: &str = "at_";
const REFRESH_PREFIX: &str = "rt_";
/// base64url (no padding) length of a 32-byte token secret.
const TOKEN_SECRET_CHARS: usize = 43;

/// The roles an account may hold.
const ROLES: [&str; 3] = ["player", "service", "admin"];
const ROLE_PLAYER: &str = "player";

/// Limits from `auth.proto`.
const USERNAME_MIN: usize = 3;
const USERNAME_MAX: usize = 64;
const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 256;
const DISPLAY_NAME_MAX: usize = 64;
const USER_AGENT_MAX: usize = 256;
const PAGE_SIZE_DEFAULT: u32 = 50;
const PAGE_SIZE_MAX: u32 = 200;
/// Page-token kind of ListSessions.
const SESSIONS_TOKEN: u8 = b'S';

/// Validate records `last_used_at` at most this often per session, so the hot path stays
/// a cache hit instead of a write per call.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Expired sessions purged per Login (bounds the work one Login adds to the writer).
const PURGE_PER_LOGIN: usize = 32;
/// Upper bound of rows one scan of an account's sessions or a session's tokens reads.
const SCAN_LIMIT: usize = 100_000;

/// Configuration of auth (`[domains.auth]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds; each Refresh issues a fresh one, so a
    /// session used at least this often never expires.
    pub refresh_token_ttl_secs: u64,
    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    pub argon2_memory_kib: u32,
    /// argon2id passes over memory (OWASP minimum with 19 MiB: 2).
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each holds `argon2_memory_kib`, so this bounds
    /// hashing's memory); 0 = the number of CPUs. With two or more, one is kept for
    /// logins from a source the name recently logged in from (see
    /// `domains/src/auth/hashing.rs`).
    pub max_concurrent_hashes: usize,
    /// Password checks that may wait for a hashing slot, per lane; more are shed at once
    /// (429 with Retry-After), as are checks that could not finish before their caller's
    /// deadline.
    pub max_waiting_hashes: usize,
    /// Password checks one source address may have failed on one username before that
    /// pair locks (other sources are not affected). See the login throttle
    /// (`domains/src/auth/throttle.rs`).
    pub lockout_threshold: u32,
    /// First lock, in milliseconds; doubles with every further failure.
    pub lockout_base_ms: u64,
    /// Longest lock of one source on one username, in seconds.
    pub lockout_max_secs: u64,
    /// Failed password checks on one username from all sources together before it locks
    /// for every source that has not logged into it lately; far above
    /// `lockout_threshold`.
    pub account_lockout_threshold: u32,
    /// How often, in milliseconds, auth publishes the current revocation epoch for caches
    /// of Validate answers (they stop trusting their cache after two silent intervals).
    pub revocation_heartbeat_ms: u64,
    /// Longest lock of a username for all sources, in seconds: short, so a flood from
    /// many addresses never shuts a player out for long.
    pub account_lockout_max_secs: u64,
    /// A failure count is forgotten after this many seconds without attempts once its
    /// lock has ended.
    pub lockout_forget_secs: u64,
    /// A source that logged into an account within this many days is exempt from that
    /// account's all-sources lock (0 = no source is).
    pub trusted_source_days: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: OWASP_MIN_MEMORY_KIB,
            argon2_iterations: OWASP_MIN_ITERATIONS,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            max_waiting_hashes: 64,
            lockout_threshold: 5,
            lockout_base_ms: 1000,
            lockout_max_secs: 15 * 60,
            revocation_heartbeat_ms: 500,
            account_lockout_threshold: 50,
            account_lockout_max_secs: 60,
            lockout_forget_secs: 3600,
            trusted_source_days: 30,
        }
    }
}

// ---------------------------------------------------------------- the service

/// The auth domain.
pub struct Auth {
    ctx: Ctx,
    config: AuthConfig,
    /// Where password hashes run, bounded (see [`hashing`]).
    hasher: Arc<hashing::Hasher>,
    /// A hash of a random password, verified when the username is unknown so that an
    /// unknown user costs the same time as a wrong password.
    dummy_hash: String,
    common_passwords: HashSet<&'static str>,
    /// The login throttle's numbers (see [`throttle`]).
    throttle: throttle::Policy,
    /// Password checks run so far (login and ChangePassword, dummy ones included): what
    /// the throttle bounds, counted so tests can assert it without measuring time.
    password_checks: AtomicU64,
    /// Replaces publishing revocation notices (tests; `None` = the context's client).
    on_revoked: Option<RevocationHook>,
}

impl aicore_runtime::Domain for Auth {
    type Config = AuthConfig;

    /// auth's dispatcher, with its revocation heartbeats running until `ctx.shutdown`
    /// when it has a NATS client to send them on.
    fn build(ctx: &Ctx, config: &AuthConfig) -> Result<Arc<dyn Dispatch>, Status> {
        let auth = Arc::new(Auth::new(ctx, config.clone())?);
        if ctx.client.is_some() {
            tokio::runtime::Handle::try_current()
                .map_err(|_| Status::internal("auth needs a tokio runtime for its heartbeats"))?;
            ctx.spawn(auth.clone().run_heartbeats());
        }
        Ok(Arc::new(AuthServer(auth)))
    }
}

fn bad_credentials() -> Status {
    Status::unauthenticated("wrong username or password")
}

fn bad_token() -> Status {
    Status::unauthenticated("the token is invalid, expired or revoked")
}

fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl Auth {
    /// Builds auth on a context: checks its configuration and prepares the dummy hash.
    pub fn new(ctx: &Ctx, config: AuthConfig) -> Result<Auth, Status> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| Status::invalid("domains.auth.argon2", e.to_string()))?;
        if config.argon2_memory_kib < OWASP_MIN_MEMORY_KIB
            || config.argon2_iterations < OWASP_MIN_ITERATIONS
        {
            tracing::warn!(
                memory_kib = config.argon2_memory_kib,
                iterations = config.argon2_iterations,
                "argon2id parameters are below the OWASP minimum (19456 KiB, 2 passes)"
            );
        }
        if config.access_token_ttl_secs == 0
            || config.refresh_token_ttl_secs < config.access_token_ttl_secs
        {
            return Err(Status::invalid(
                "domains.auth.refresh_token_ttl_secs",
                "token lifetimes must be positive, the refresh token's at least the access token's",
            ));
        }
        if config.lockout_threshold == 0 {
            return Err(Status::invalid(
                "domains.auth.lockout_threshold",
                "must be at least 1",
            ));
        }
        if !(1..=60_000).contains(&config.revocation_heartbeat_ms) {
            return Err(Status::invalid(
                "domains.auth.revocation_heartbeat_ms",
                "must be 1 to 60000",
            ));
        }
        if config.account_lockout_threshold < config.lockout_threshold {
            return Err(Status::invalid(
                "domains.auth.account_lockout_threshold",
                "must be at least lockout_threshold",
            ));
        }
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let (dummy, _) = new_token("dummy_");
        let first_hash = std::time::Instant::now();
        let dummy_hash = argon
            .hash_password(dummy.as_bytes())
            .map_err(|e| Status::internal(format!("argon2 self-test failed: {e}")))?
            .to_string();
        let common_passwords = COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let permits = match config.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let max_waiting = config.max_waiting_hashes;
        Ok(Auth {
            ctx: ctx.clone(),
            throttle: throttle::Policy::new(&config),
            config,
            hasher: Arc::new(hashing::Hasher::new(
                argon,
                permits,
                max_waiting,
                first_hash.elapsed(),
            )),
            dummy_hash,
            common_passwords,
            password_checks: AtomicU64::new(0),
            on_revoked: None,
        })
    }

    fn now(&self) -> i64 {
        ms(self.ctx.clock.now())
    }
}

// The handlers live with what they work on: accounts in [`accounts`], sessions and
// tokens in [`sessions`].
impl AuthHandler for Auth {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<RegisterResponse, Status> {
        accounts::register(self, request).await
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<LoginResponse, Status> {
        sessions::login(self, request).await
    }

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<RefreshResponse, Status> {
        sessions::refresh(self, request).await
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<LogoutResponse, Status> {
        sessions::logout(self, request).await
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<ValidateResponse, Status> {
        sessions::validate(self, request).await
    }

    /// Revokes every other session of the account; the caller's own session (when the
    /// call came with one, see the module notes) stays valid.
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<ChangePasswordResponse, Status> {
        accounts::change_password(self, request).await
    }

    async fn grant_role(
        &self,
        request: Request<GrantRoleRequest>,
    ) -> Result<GrantRoleResponse, Status> {
        accounts::grant_role(self, request).await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<ListSessionsResponse, Status> {
        sessions::list_sessions(self, request).await
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<GetAccountResponse, Status> {
        accounts::get_account(self, request).await
    }
}

#[cfg(test)]
mod tests;
