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

mod audit;
mod hashing;
mod throttle;

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

/// The blocklist shipped with the binary (one password a line, `#` comments).
const COMMON_PASSWORDS: &str = include_str!("../data/common-passwords.txt");

/// The OWASP floor for argon2id; a configuration below it is allowed (tests) but logged.
const OWASP_MIN_MEMORY_KIB: u32 = 19 * 1024;
const OWASP_MIN_ITERATIONS: u32 = 2;

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

// ---------------------------------------------------------------- stored records

/// An account as stored (never leaves the domain: [`Account`] is its public view).
#[derive(Clone, PartialEq, prost::Message)]
struct AccountRecord {
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
enum TokenKind {
    Unspecified = 0,
    Access = 1,
    Refresh = 2,
}

/// One issued token, stored under the SHA-256 of the token.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenRecord {
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
struct SessionRecord {
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
    fn is_open(&self, now: i64) -> bool {
        self.revoked_ms == 0 && self.refresh_expires_ms > now
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

/// A notice that session `id` ended, at `epoch`.
fn session_notice(id: String, epoch: u64) -> RevocationNotice {
    RevocationNotice {
        session_ids: vec![id],
        epoch,
        ..Default::default()
    }
}

/// A notice that account `id`'s sessions ended or its password or roles changed.
fn account_notice(id: String, epoch: u64) -> RevocationNotice {
    RevocationNotice {
        account_ids: vec![id],
        epoch,
        ..Default::default()
    }
}

/// Moves the revocation epoch on by one, inside the revoking write, and returns it.
fn bump_epoch(tx: &mut Tx<'_>) -> Result<u64, Status> {
    let current = tx
        .get(META, EPOCH_KEY)?
        .map(|b| decode_epoch(&b))
        .transpose()?
        .unwrap_or(0);
    let next = current.saturating_add(1);
    tx.put(META, EPOCH_KEY, next.to_be_bytes().to_vec());
    Ok(next)
}

fn decode_epoch(b: &[u8]) -> Result<u64, Status> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| Status::internal("stored data is unreadable"))
}

/// Where revocation notices and heartbeats go instead of NATS (tests).
pub type RevocationHook = Arc<dyn Fn(RevocationNotice) + Send + Sync>;

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

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh token with `prefix` and the hash it is stored under.
fn new_token(prefix: &str) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = sha256(&token);
    (token, hash)
}

/// The storage key of a presented token, or `None` when it cannot be one of ours.
fn token_key(token: &str, prefix: &str) -> Option<[u8; 32]> {
    let secret = token.strip_prefix(prefix)?;
    (secret.len() == TOKEN_SECRET_CHARS).then(|| sha256(token))
}

fn account_sessions_prefix(account_id: &str) -> Vec<u8> {
    format!("{account_id}/").into_bytes()
}

fn account_session_key(account_id: &str, created_ms: i64, session_id: &str) -> Vec<u8> {
    let mut k = account_sessions_prefix(account_id);
    k.extend_from_slice(&(u64::MAX - created_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(session_id.as_bytes());
    k
}

fn session_tokens_prefix(session_id: &str) -> Vec<u8> {
    format!("{session_id}/").into_bytes()
}

fn session_token_key(session_id: &str, expires_ms: i64, hash: &[u8]) -> Vec<u8> {
    let mut k = session_tokens_prefix(session_id);
    k.extend_from_slice(&(expires_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(hash);
    k
}

/// The expiry and token hash encoded in a `session_tokens` key after its prefix.
fn parse_session_token_key(prefix_len: usize, key: &[u8]) -> Option<(i64, &[u8])> {
    let rest = key.get(prefix_len..)?;
    let (exp, hash) = rest.split_at_checked(8)?;
    let exp = i64::try_from(u64::from_be_bytes(exp.try_into().ok()?)).ok()?;
    Some((exp, hash))
}

fn canonical_roles(roles: &[String]) -> Vec<String> {
    ROLES
        .iter()
        .filter(|r| roles.iter().any(|h| h == *r))
        .map(|r| r.to_string())
        .collect()
}

/// The public view of an account; `locked_until_ms` is its all-sources lock (0 = none).
fn public_account(a: &AccountRecord, locked_until_ms: i64) -> Account {
    Account {
        account_id: a.account_id.clone(),
        username: a.username.clone(),
        display_name: a.display_name.clone(),
        roles: a.roles.clone(),
        created_at: Some(ts(a.created_ms)),
        locked_until: (locked_until_ms > 0).then(|| ts(locked_until_ms)),
    }
}

/// A newly issued token pair, as written by [`issue`].
struct Issued {
    access: String,
    refresh: String,
    access_expires_ms: i64,
    refresh_expires_ms: i64,
}

/// Writes the records of a fresh access/refresh pair for `session` and points the session
/// at the new refresh token.
fn issue(
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
fn purge_tokens(tx: &mut Tx<'_>, session_id: &str, now: i64, all: bool) -> Result<(), Status> {
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
fn revoke(tx: &mut Tx<'_>, session: &mut SessionRecord, now: i64) -> bool {
    if session.revoked_ms != 0 {
        return false;
    }
    session.revoked_ms = now.max(1);
    tx.put_msg(SESSIONS, session.session_id.as_bytes(), &*session);
    true
}

/// Revokes every open session of an account but `keep`; returns how many were open.
fn revoke_all(
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

fn check_username(username: &str) -> Result<(), Status> {
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

    /// Sends revocation notices to `hook` instead of NATS.
    pub fn with_revocation_hook(mut self, hook: RevocationHook) -> Self {
        self.on_revoked = Some(hook);
        self
    }

    /// The current revocation epoch (0 = nothing revoked yet).
    fn epoch(&self) -> Result<u64, Status> {
        self.ctx
            .store
            .get_cached(META, EPOCH_KEY)?
            .map_or(Ok(0), |b| decode_epoch(&b))
    }

    /// Announces a committed revocation, before the reply goes out (on the same
    /// connection, so a subscriber sees the notice before the caller sees the reply).
    /// Core NATS, so it may be lost: the epoch it carries and the heartbeats let a cache
    /// find out.
    async fn announce(&self, mut notice: RevocationNotice) {
        notice.heartbeat_interval_ms =
            u32::try_from(self.config.revocation_heartbeat_ms).unwrap_or(u32::MAX);
        if let Some(hook) = &self.on_revoked {
            hook(notice);
            return;
        }
        let Some(client) = &self.ctx.client else {
            return;
        };
        let subject = aicore_proto::subjects::AUTH_REVOKED;
        if let Err(e) = client
            .nats()
            .publish(subject, notice.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, epoch = notice.epoch, "revocation notice not sent");
        }
    }

    /// Publishes one heartbeat: the current revocation epoch, no ids.
    pub async fn heartbeat(&self) {
        match self.epoch() {
            Ok(epoch) => {
                self.announce(RevocationNotice {
                    epoch,
                    ..Default::default()
                })
                .await
            }
            Err(e) => tracing::warn!(error = %e, "revocation epoch unreadable; no heartbeat"),
        }
    }

    /// Publishes a heartbeat every `revocation_heartbeat_ms` until `ctx.shutdown`.
    pub async fn run_heartbeats(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.revocation_heartbeat_ms.max(1));
        let stop = self.ctx.shutdown.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.heartbeat().await,
            }
        }
    }

    /// Checks a new password against the rules of Register (reported under `field`).
    fn check_password(&self, field: &str, password: &str, username: &str) -> Result<(), Status> {
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
    async fn admit(
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
    async fn record_failure(
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

    fn account(&self, account_id: &str) -> Result<AccountRecord, Status> {
        self.ctx
            .store
            .get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no account {account_id}")))
    }

    fn account_by_username(&self, username: &str) -> Result<Option<AccountRecord>, Status> {
        let key = username.to_ascii_lowercase();
        let Some(id) = self.ctx.store.get(USERNAMES, key.as_bytes())? else {
            return Ok(None);
        };
        self.ctx.store.get_msg::<AccountRecord>(ACCOUNTS, &id)
    }

    /// Sessions of an account whose refresh token has expired (candidates to purge).
    fn expired_sessions(&self, account_id: &str, now: i64) -> Result<Vec<String>, Status> {
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

impl AuthHandler for Auth {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<RegisterResponse, Status> {
        let RegisterRequest {
            username,
            password,
            display_name,
        } = request.body;
        check_username(&username)?;
        self.check_password("password", &password, &username)?;
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
        let password_hash = self
            .hasher
            .hash(hashing::Lane::Other, request.meta.deadline, password)
            .await?;
        let account = AccountRecord {
            account_id: new_id("acc"),
            username,
            display_name,
            roles: vec![ROLE_PLAYER.to_string()],
            created_ms: self.now(),
            password_hash,
        };
        let account_id = account.account_id.clone();
        self.ctx
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

    async fn login(&self, request: Request<LoginRequest>) -> Result<LoginResponse, Status> {
        let LoginRequest {
            username,
            password,
            user_agent,
        } = request.body;
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
        let now = self.now();
        // Known and unknown usernames take the same path: counted and locked alike by
        // the throttle, and one hash each (the dummy one for an unknown name).
        let attempt = Attempt::new(&username, request.meta.client_addr.as_deref());
        let account = self.account_by_username(&username)?;
        let trail = Audit::new(&request.meta, ts(now));
        let known = account.as_ref().map(|a| a.account_id.clone());
        let known = known.as_deref();
        let (slot, started) = self
            .admit(&attempt, now, request.meta.deadline, false)
            .await?;
        let hash = account
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |a| a.password_hash.clone());
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        let ok = slot.verify(password, hash).await?;
        let Some(account) = account.filter(|_| ok) else {
            // The attempt was counted when it was admitted.
            let failed = trail.event_for_name("login_failed", known, &username);
            self.record_failure(failed, started, &attempt, now).await?;
            return Err(bad_credentials());
        };
        let account_id = account.account_id.clone();
        let config = self.config.clone();
        let policy = self.throttle.clone();
        let purge = self.expired_sessions(&account_id, now)?;
        let access = new_token(ACCESS_PREFIX);
        let refresh = new_token(REFRESH_PREFIX);
        let verified_hash = account.password_hash;
        let (issued, session_id, roles) = self
            .ctx
            .store
            .write(move |tx| {
                let Some(a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())? else {
                    return Err(bad_credentials());
                };
                if a.password_hash != verified_hash {
                    return Err(bad_credentials());
                }
                // An admitted attempt completes even if others locked the name meanwhile.
                throttle::succeeded(tx, &attempt, now, &policy)?;
                for sid in &purge {
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
                        &account_session_key(&account_id, s.created_ms, sid),
                    );
                }
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
            })
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

    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<RefreshResponse, Status> {
        let Some(hash) = token_key(&request.body.refresh_token, REFRESH_PREFIX) else {
            return Err(bad_token());
        };
        enum Outcome {
            Invalid,
            Reused {
                session_id: String,
                account_id: String,
                epoch: u64,
            },
            Issued(Issued, String, String),
        }
        let now = self.now();
        let trail = Audit::new(&request.meta, ts(now));
        let config = self.config.clone();
        let access = new_token(ACCESS_PREFIX);
        let refresh = new_token(REFRESH_PREFIX);
        let outcome = self
            .ctx
            .store
            .write(move |tx| {
                let Some(mut rec) = tx.get_msg::<TokenRecord>(TOKENS, &hash)? else {
                    return Ok(Outcome::Invalid);
                };
                if rec.kind != TokenKind::Refresh as i32 {
                    return Ok(Outcome::Invalid);
                }
                let Some(mut session) =
                    tx.get_msg::<SessionRecord>(SESSIONS, rec.session_id.as_bytes())?
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
                tx.put_msg(TOKENS, &hash, &rec);
                purge_tokens(tx, &session.session_id, now, false)?;
                let issued = issue(tx, &mut session, now, &config, access, refresh);
                Ok(Outcome::Issued(
                    issued,
                    session.account_id,
                    session.session_id,
                ))
            })
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
                self.announce(session_notice(session_id, epoch)).await;
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

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<LogoutResponse, Status> {
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
        let now = self.now();
        let trail = Audit::new(&request.meta, ts(now));
        let revoked = self
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
                let Some(mut s) =
                    tx.get_msg::<SessionRecord>(SESSIONS, rec.session_id.as_bytes())?
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
                    self.announce(notice).await;
                }
                Ok(LogoutResponse { revoked_sessions })
            }
            None => Err(bad_token()),
        }
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<ValidateResponse, Status> {
        let Some(hash) = token_key(&request.body.access_token, ACCESS_PREFIX) else {
            return Err(bad_token());
        };
        // Read before the rows: the answer is then at least as new as this epoch.
        let revocation_epoch = self.epoch()?;
        let store = &self.ctx.store;
        let now = self.now();
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
            self.ctx.spawn(async move {
                let r = store
                    .write(move |tx| {
                        if let Some(mut s) =
                            tx.get_msg::<SessionRecord>(SESSIONS, sid.as_bytes())?
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

    /// Revokes every other session of the account; the caller's own session (when the
    /// call came with one, see the module notes) stays valid.
    async fn change_password(
        &self,
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
        let account = self.account(&account_id)?;
        self.check_password("new_password", &new_password, &account.username)?;
        let now = self.now();
        let trail = Audit::new(&request.meta, ts(now));
        let deadline = request.meta.deadline;
        // The old password is a password check like a login's, throttled alike.
        let attempt =
            needs_old.then(|| Attempt::new(&account.username, request.meta.client_addr.as_deref()));
        if let Some(attempt) = &attempt {
            if old_password.is_empty() {
                return Err(Status::invalid("old_password", "is required"));
            }
            if old_password.chars().count() > PASSWORD_MAX {
                return Err(bad_credentials());
            }
            // An authenticated caller: the reserved lane.
            let (slot, started) = self.admit(attempt, now, deadline, true).await?;
            self.password_checks.fetch_add(1, Ordering::Relaxed);
            let ok = slot
                .verify(old_password, account.password_hash.clone())
                .await?;
            if !ok {
                let failed = trail.event("password_change_failed", &account_id);
                self.record_failure(failed, started, attempt, now).await?;
                return Err(Status::unauthenticated("the old password is wrong"));
            }
        }
        let policy = self.throttle.clone();
        let new_hash = self
            .hasher
            .hash(hashing::Lane::Trusted, deadline, new_password)
            .await?;
        let checked_hash = account.password_hash;
        let notified = account_id.clone();
        let (revoked_sessions, epoch) = self
            .ctx
            .store
            .write(move |tx| {
                let Some(mut a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())?
                else {
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
        self.announce(account_notice(notified, epoch)).await;
        Ok(ChangePasswordResponse { revoked_sessions })
    }

    async fn grant_role(
        &self,
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
        let trail = Audit::new(&request.meta, self.ctx.now_ts());
        let (roles, changed) = self
            .ctx
            .store
            .write(move |tx| {
                let Some(mut a) = tx.get_msg::<AccountRecord>(ACCOUNTS, account_id.as_bytes())?
                else {
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
            self.announce(account_notice(notified, epoch)).await;
        }
        Ok(GrantRoleResponse { roles })
    }

    async fn list_sessions(
        &self,
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
        let now = self.now();
        let store = &self.ctx.store;
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

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<GetAccountResponse, Status> {
        let account_id = request.body.account_id;
        if account_id.is_empty() {
            return Err(Status::invalid("account_id", "is required"));
        }
        request.meta.authorize_owner(&account_id, &["admin"])?;
        let a = self.account(&account_id)?;
        let locked_until = throttle::account_locked_until(
            &self.ctx.store,
            &a.username,
            self.now(),
            &self.throttle,
        )?;
        Ok(GetAccountResponse {
            account: Some(public_account(&a, locked_until)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use aicore_proto::Code;

    use aicore_runtime::ManualClock;

    const PW: &str = "correct horse battery";

    fn req<T>(body: T) -> Request<T> {
        Request::new(body)
    }

    fn as_caller<T>(body: T, account_id: &str, roles: &[&str]) -> Request<T> {
        Request::new(body).on_behalf_of(account_id, roles)
    }

    fn setup() -> (Auth, Arc<ManualClock>) {
        let (ctx, clock) = Ctx::for_tests();
        (Auth::new(&ctx, AuthConfig::default()).unwrap(), clock)
    }

    async fn register(auth: &Auth, username: &str) -> String {
        auth.register(req(RegisterRequest {
            username: username.into(),
            password: PW.into(),
            display_name: String::new(),
        }))
        .await
        .unwrap()
        .account_id
    }

    async fn login(auth: &Auth, username: &str, password: &str) -> Result<LoginResponse, Status> {
        auth.login(req(LoginRequest {
            username: username.into(),
            password: password.into(),
            user_agent: "test-agent".into(),
        }))
        .await
    }

    async fn validate(auth: &Auth, token: &str) -> Result<ValidateResponse, Status> {
        auth.validate(req(ValidateRequest {
            access_token: token.into(),
        }))
        .await
    }

    async fn refresh(auth: &Auth, token: &str) -> Result<RefreshResponse, Status> {
        auth.refresh(req(RefreshRequest {
            refresh_token: token.into(),
        }))
        .await
    }

    fn field(s: &Status) -> &str {
        s.field_violations.first().map_or("", |v| v.field.as_str())
    }

    #[tokio::test]
    async fn register_login_validate() {
        let (auth, _clock) = setup();
        let id = register(&auth, "Alice").await;
        // Usernames are case-insensitive at login.
        let l = login(&auth, "alice", PW).await.unwrap();
        assert_eq!(l.account_id, id);
        assert_eq!(l.roles, vec!["player"]);
        assert!(l.access_token.starts_with("at_") && l.refresh_token.starts_with("rt_"));
        assert_ne!(l.access_token, l.refresh_token);
        let v = validate(&auth, &l.access_token).await.unwrap();
        assert_eq!(v.account_id, id);
        assert_eq!(v.roles, vec!["player"]);
        assert_eq!(v.session_id, l.session_id);
        assert_eq!(v.expires_at, l.access_expires_at);
        let access_ttl = l.access_expires_at.unwrap().seconds - auth.ctx.now_ts().seconds;
        assert_eq!(access_ttl, 15 * 60);
        // A refresh token is not an access token, and vice versa.
        assert_eq!(
            validate(&auth, &l.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        assert_eq!(
            refresh(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        let a = auth
            .get_account(as_caller(
                GetAccountRequest {
                    account_id: id.clone(),
                },
                &id,
                &["player"],
            ))
            .await
            .unwrap()
            .account
            .unwrap();
        assert_eq!(
            (a.username.as_str(), a.display_name.as_str()),
            ("Alice", "Alice")
        );
        assert!(a.locked_until.is_none());
    }

    #[tokio::test]
    async fn the_store_holds_no_token_or_password() {
        let (auth, _clock) = setup();
        let id = register(&auth, "bob").await;
        let l = login(&auth, "bob", PW).await.unwrap();
        let tokens = auth.ctx.store.scan(TOKENS, b"", b"", 100).unwrap();
        assert_eq!(tokens.len(), 2);
        let account = auth
            .ctx
            .store
            .get(ACCOUNTS, id.as_bytes())
            .unwrap()
            .unwrap();
        assert!(!contains(&account, PW.as_bytes()));
        for table in [TOKENS, SESSIONS, SESSION_TOKENS, ACCOUNT_SESSIONS] {
            for (k, v) in auth.ctx.store.scan(table, b"", b"", 100).unwrap() {
                for t in [&l.access_token, &l.refresh_token] {
                    let secret = &t.as_bytes()[3..];
                    assert!(!contains(&k, secret) && !contains(&v, secret), "{table}");
                }
            }
        }
        let rec: AccountRecord = auth
            .ctx
            .store
            .get_msg(ACCOUNTS, id.as_bytes())
            .unwrap()
            .unwrap();
        assert!(
            rec.password_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn duplicate_username_conflicts_case_insensitively() {
        let (auth, _clock) = setup();
        register(&auth, "Carol").await;
        let e = auth
            .register(req(RegisterRequest {
                username: "cAROL".into(),
                password: "another good passphrase".into(),
                display_name: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Conflict);
    }

    #[tokio::test]
    async fn bad_usernames_and_weak_passwords_are_refused_naming_the_field() {
        let (auth, _clock) = setup();
        let cases = [
            ("dave", "short7!", "password"),
            ("dave", &"x".repeat(257), "password"),
            ("dave", "Password1", "password"),
            ("dave", "QWERTYUIOP", "password"),
            ("dave", "iloveyou", "password"),
            ("davedave", "DaveDave", "password"),
            ("da", PW, "username"),
            (&"d".repeat(65), PW, "username"),
            ("dave smith", PW, "username"),
            ("dave/x", PW, "username"),
        ];
        for (username, password, want) in cases {
            let e = auth
                .register(req(RegisterRequest {
                    username: username.into(),
                    password: password.into(),
                    display_name: String::new(),
                }))
                .await
                .unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{username} / {password}");
            assert_eq!(field(&e), want, "{username} / {password}");
        }
        let e = auth
            .register(req(RegisterRequest {
                username: "dave".into(),
                password: PW.into(),
                display_name: "d".repeat(65),
            }))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "display_name");
        // 256 characters is allowed, as are multi-byte characters.
        let long = "é".repeat(256);
        auth.register(req(RegisterRequest {
            username: "dave".into(),
            password: long.clone(),
            display_name: String::new(),
        }))
        .await
        .unwrap();
        login(&auth, "dave", &long).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_answer_alike() {
        let (auth, _clock) = setup();
        register(&auth, "erin").await;
        let wrong = login(&auth, "erin", "not the password").await.unwrap_err();
        let unknown = login(&auth, "nobody", "not the password")
            .await
            .unwrap_err();
        assert_eq!(wrong.code, Code::Unauthenticated);
        assert_eq!(wrong, unknown);
    }

    #[tokio::test]
    async fn refresh_rotates_the_pair_within_the_session() {
        let (auth, clock) = setup();
        register(&auth, "frank").await;
        let l = login(&auth, "frank", PW).await.unwrap();
        clock.advance(Duration::from_secs(60));
        let r1 = refresh(&auth, &l.refresh_token).await.unwrap();
        assert_eq!(r1.session_id, l.session_id);
        assert_eq!(r1.account_id, l.account_id);
        assert_ne!(r1.access_token, l.access_token);
        assert_ne!(r1.refresh_token, l.refresh_token);
        assert!(r1.refresh_expires_at.unwrap().seconds > l.refresh_expires_at.unwrap().seconds);
        let v = validate(&auth, &r1.access_token).await.unwrap();
        assert_eq!(v.session_id, l.session_id);
        let r2 = refresh(&auth, &r1.refresh_token).await.unwrap();
        validate(&auth, &r2.access_token).await.unwrap();
    }

    #[tokio::test]
    async fn a_reused_refresh_token_revokes_the_family() {
        let (auth, _clock) = setup();
        register(&auth, "grace").await;
        let l = login(&auth, "grace", PW).await.unwrap();
        let other = login(&auth, "grace", PW).await.unwrap();
        let r1 = refresh(&auth, &l.refresh_token).await.unwrap();
        validate(&auth, &l.access_token).await.unwrap();
        validate(&auth, &r1.access_token).await.unwrap();
        // The spent token comes back (a thief, or a client that lost the reply).
        let e = refresh(&auth, &l.refresh_token).await.unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
        for t in [&l.access_token, &r1.access_token] {
            assert_eq!(
                validate(&auth, t).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
        assert_eq!(
            refresh(&auth, &r1.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        // Other sessions of the account are not part of the family.
        validate(&auth, &other.access_token).await.unwrap();
        refresh(&auth, &other.refresh_token).await.unwrap();
    }

    #[tokio::test]
    async fn logout_takes_effect_at_once_even_when_cached() {
        let (auth, _clock) = setup();
        register(&auth, "heidi").await;
        let l = login(&auth, "heidi", PW).await.unwrap();
        let keep = login(&auth, "heidi", PW).await.unwrap();
        // Warm the cache.
        validate(&auth, &l.access_token).await.unwrap();
        validate(&auth, &l.access_token).await.unwrap();
        let out = auth
            .logout(req(LogoutRequest {
                token: Some(logout_request::Token::AccessToken(l.access_token.clone())),
                all_sessions: false,
            }))
            .await
            .unwrap();
        assert_eq!(out.revoked_sessions, 1);
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        assert_eq!(
            refresh(&auth, &l.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        // Twice is not an error; the other session lives on.
        let again = auth
            .logout(req(LogoutRequest {
                token: Some(logout_request::Token::RefreshToken(l.refresh_token.clone())),
                all_sessions: false,
            }))
            .await
            .unwrap();
        assert_eq!(again.revoked_sessions, 0);
        validate(&auth, &keep.access_token).await.unwrap();
        // A made-up token is Unauthenticated, a missing one InvalidArgument.
        let e = auth
            .logout(req(LogoutRequest {
                token: Some(logout_request::Token::AccessToken(format!(
                    "at_{}",
                    "A".repeat(43)
                ))),
                all_sessions: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
        let e = auth
            .logout(req(LogoutRequest {
                token: None,
                all_sessions: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "token");
    }

    #[tokio::test]
    async fn logout_of_all_sessions() {
        let (auth, _clock) = setup();
        register(&auth, "ivan").await;
        let a = login(&auth, "ivan", PW).await.unwrap();
        let b = login(&auth, "ivan", PW).await.unwrap();
        let c = login(&auth, "ivan", PW).await.unwrap();
        let out = auth
            .logout(req(LogoutRequest {
                token: Some(logout_request::Token::RefreshToken(a.refresh_token.clone())),
                all_sessions: true,
            }))
            .await
            .unwrap();
        assert_eq!(out.revoked_sessions, 3);
        for l in [&a, &b, &c] {
            assert_eq!(
                validate(&auth, &l.access_token).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
    }

    #[tokio::test]
    async fn access_and_refresh_tokens_expire() {
        let (auth, clock) = setup();
        register(&auth, "judy").await;
        let l = login(&auth, "judy", PW).await.unwrap();
        clock.advance(Duration::from_secs(15 * 60 - 1));
        validate(&auth, &l.access_token).await.unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        // The refresh token still works and gives a fresh access token.
        let r = refresh(&auth, &l.refresh_token).await.unwrap();
        validate(&auth, &r.access_token).await.unwrap();
        // An expired access token cannot log out; the refresh token can.
        let e = auth
            .logout(req(LogoutRequest {
                token: Some(logout_request::Token::AccessToken(l.access_token.clone())),
                all_sessions: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
        clock.advance(Duration::from_secs(30 * 24 * 3600));
        assert_eq!(
            refresh(&auth, &r.refresh_token).await.unwrap_err().code,
            Code::Unauthenticated
        );
        // The next login purges the dead session's rows.
        let l2 = login(&auth, "judy", PW).await.unwrap();
        assert!(
            auth.ctx
                .store
                .get(SESSIONS, l.session_id.as_bytes())
                .unwrap()
                .is_none()
        );
        let tokens = auth.ctx.store.scan(TOKENS, b"", b"", 100).unwrap();
        assert_eq!(tokens.len(), 2, "only the new session's pair is left");
        validate(&auth, &l2.access_token).await.unwrap();
    }

    #[tokio::test]
    async fn lockout_grows_and_success_resets_it() {
        let (auth, clock) = setup();
        let id = register(&auth, "mallory").await;
        let wrong = "wrong password!";
        for _ in 0..5 {
            let e = login(&auth, "mallory", wrong).await.unwrap_err();
            assert_eq!(e.code, Code::Unauthenticated);
        }
        // Locked: even the right password is refused, with when to retry.
        let e = login(&auth, "mallory", PW).await.unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(e.retry_after_ms, 1000);
        let a = auth
            .get_account(req(GetAccountRequest {
                account_id: id.clone(),
            }))
            .await
            .unwrap()
            .account
            .unwrap();
        // One source's failures lock that source only, not the account for everyone.
        assert!(a.locked_until.is_none());
        clock.advance(Duration::from_millis(1000));
        // Each further failure doubles the lock: 2 s after the sixth, 4 s after the seventh.
        assert_eq!(
            login(&auth, "mallory", wrong).await.unwrap_err().code,
            Code::Unauthenticated
        );
        assert_eq!(
            login(&auth, "mallory", PW)
                .await
                .unwrap_err()
                .retry_after_ms,
            2000
        );
        clock.advance(Duration::from_millis(2000));
        assert_eq!(
            login(&auth, "mallory", wrong).await.unwrap_err().code,
            Code::Unauthenticated
        );
        clock.advance(Duration::from_millis(1000));
        assert_eq!(
            login(&auth, "mallory", PW)
                .await
                .unwrap_err()
                .retry_after_ms,
            3000
        );
        clock.advance(Duration::from_millis(3000));
        // Success resets the counter: the next failure does not lock.
        login(&auth, "mallory", PW).await.unwrap();
        for _ in 0..4 {
            assert_eq!(
                login(&auth, "mallory", wrong).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
        login(&auth, "mallory", PW).await.unwrap();
    }

    /// Auth with cheap argon2 parameters, for tests that run many password checks (what
    /// they count is checks, not time).
    fn setup_cheap() -> (Auth, Arc<ManualClock>) {
        let (ctx, clock) = Ctx::for_tests();
        let config = AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            // Slots for every racing attempt at once, as on a machine with many cores: with
            // one or two, hashing's own queue would serialise the races these tests run
            // and hide a throttle that counts too late.
            max_concurrent_hashes: 64,
            ..AuthConfig::default()
        };
        (Auth::new(&ctx, config).unwrap(), clock)
    }

    async fn login_from(
        auth: &Auth,
        username: &str,
        password: impl Into<String>,
        addr: &str,
    ) -> Result<LoginResponse, Status> {
        let mut r = req(LoginRequest {
            username: username.into(),
            password: password.into(),
            user_agent: String::new(),
        });
        r.meta.client_addr = Some(addr.into());
        auth.login(r).await
    }

    fn checks(auth: &Auth) -> u64 {
        auth.password_checks.load(Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_guesses_cost_at_most_threshold_password_checks() {
        let (auth, _clock) = setup_cheap();
        register(&auth, "olga").await;
        let before = checks(&auth);
        let guesses =
            (0..48).map(|i| login_from(&auth, "olga", format!("guess {i}"), "198.51.100.9"));
        let answers = futures::future::join_all(guesses).await;
        let threshold = u64::from(AuthConfig::default().lockout_threshold);
        assert_eq!(checks(&auth) - before, threshold);
        let codes = |c: Code| {
            answers
                .iter()
                .filter(|a| a.as_ref().unwrap_err().code == c)
                .count()
        };
        assert_eq!(codes(Code::Unauthenticated) as u64, threshold);
        assert_eq!(codes(Code::ResourceExhausted) as u64, 48 - threshold);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_locked_attempt_is_refused_without_a_password_check_whatever_the_password() {
        let (auth, clock) = setup_cheap();
        register(&auth, "petra").await;
        let from = "198.51.100.10";
        for i in 0..4 {
            login_from(&auth, "petra", &format!("wrong {i}"), from)
                .await
                .unwrap_err();
        }
        // Right and wrong passwords race for the last admission before the lock: one is
        // checked, every other one is refused unchecked, the right ones included.
        let before = checks(&auth);
        let shared = &auth;
        let racing = (0..8).map(|i| {
            let pw = if i % 2 == 0 {
                PW.to_string()
            } else {
                format!("wrong {i}")
            };
            async move { login_from(shared, "petra", pw, from).await }
        });
        let answers = futures::future::join_all(racing).await;
        let refused: Vec<&Status> = answers
            .iter()
            .filter_map(|a| a.as_ref().err())
            .filter(|e| e.code == Code::ResourceExhausted)
            .collect();
        // Whatever was checked was answered as checked; the rest were refused unchecked.
        assert_eq!(checks(&auth) - before, (8 - refused.len()) as u64);
        if answers.iter().all(Result::is_err) {
            // A wrong password won the admission: its lock held every other attempt off.
            assert_eq!(checks(&auth) - before, 1);
            assert_eq!(refused.len(), 7);
        }
        // Otherwise a right password won and its success lifted the lock, so attempts
        // admitted after it were checked again (the scheduler decides how many).
        // Locked, the right and the wrong password get the very same answer, unchecked.
        // (If the admitted one was right, its success started the count over.)
        clock.advance(Duration::from_secs(1));
        for i in 0..5 {
            let _ = login_from(&auth, "petra", format!("again {i}"), from).await;
        }
        let before = checks(&auth);
        let right = login_from(&auth, "petra", PW, from).await.unwrap_err();
        let wrong = login_from(&auth, "petra", "wrong again", from)
            .await
            .unwrap_err();
        assert_eq!(right.code, Code::ResourceExhausted);
        assert_eq!(right, wrong);
        assert_eq!(checks(&auth), before);
    }

    #[tokio::test]
    async fn unknown_usernames_are_answered_counted_and_locked_like_known_ones() {
        let (auth, clock) = setup_cheap();
        register(&auth, "quentin").await;
        let from = "198.51.100.11";
        for round in 0..2 {
            for i in 0..5 {
                let before = checks(&auth);
                let known = login_from(&auth, "quentin", "not it", from)
                    .await
                    .unwrap_err();
                assert_eq!(checks(&auth) - before, 1);
                let unknown = login_from(&auth, "quentina", "not it", from)
                    .await
                    .unwrap_err();
                assert_eq!(
                    checks(&auth) - before,
                    2,
                    "a dummy check for the unknown name"
                );
                assert_eq!(known, unknown, "round {round}, attempt {i}");
                if round == 1 {
                    break;
                }
            }
            let before = checks(&auth);
            let known = login_from(&auth, "quentin", PW, from).await.unwrap_err();
            let unknown = login_from(&auth, "quentina", PW, from).await.unwrap_err();
            assert_eq!(known.code, Code::ResourceExhausted);
            assert_eq!(known, unknown, "round {round}");
            // Whatever the case of the name.
            let upper = login_from(&auth, "QUENTINA", PW, from).await.unwrap_err();
            assert_eq!(upper, unknown);
            assert_eq!(checks(&auth), before);
            clock.advance(Duration::from_millis(known.retry_after_ms));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_from_one_source_does_not_lock_the_player_out_elsewhere() {
        let (auth, clock) = setup_cheap();
        let cfg = AuthConfig::default();
        let id = register(&auth, "rhea").await;
        // The player's usual address.
        login_from(&auth, "rhea", PW, "192.0.2.50").await.unwrap();
        // One address bursts: it locks itself out, and only itself.
        let burst = (0..48).map(|i| login_from(&auth, "rhea", format!("guess {i}"), "203.0.113.1"));
        futures::future::join_all(burst).await;
        let e = login_from(&auth, "rhea", PW, "203.0.113.1")
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        login_from(&auth, "rhea", PW, "198.51.100.77")
            .await
            .unwrap();

        // Many addresses flood the name: past the all-sources ceiling it locks for
        // addresses the player has not used, never longer than the short cap, and the
        // player's usual address keeps working.
        let cap = cfg.account_lockout_max_secs * 1000;
        let mut longest = 0;
        for i in 0..500u32 {
            let addr = format!("10.0.{}.{}", i / 250, i % 250);
            if let Err(e) = login_from(&auth, "rhea", "spray", &addr).await
                && e.code == Code::ResourceExhausted
            {
                longest = longest.max(e.retry_after_ms);
                if e.retry_after_ms == cap {
                    break;
                }
                clock.advance(Duration::from_millis(e.retry_after_ms));
            }
        }
        assert_eq!(longest, cap);
        let a = auth
            .get_account(req(GetAccountRequest { account_id: id }))
            .await
            .unwrap()
            .account
            .unwrap();
        assert!(
            a.locked_until.is_some(),
            "the flood locks the name for new sources"
        );
        let e = login_from(&auth, "rhea", PW, "198.51.100.200")
            .await
            .unwrap_err();
        assert!(e.retry_after_ms <= cfg.account_lockout_max_secs * 1000);
        login_from(&auth, "rhea", PW, "192.0.2.50").await.unwrap();
        // Once the short lock is over, a new address gets in with the right password.
        clock.advance(Duration::from_millis(e.retry_after_ms));
        login_from(&auth, "rhea", PW, "198.51.100.200")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn change_password_revokes_sessions_and_retires_the_old_password() {
        let (auth, _clock) = setup();
        let id = register(&auth, "nina").await;
        let a = login(&auth, "nina", PW).await.unwrap();
        let b = login(&auth, "nina", PW).await.unwrap();
        let new_pw = "a brand new passphrase";
        // Wrong old password.
        let e = auth
            .change_password(as_caller(
                ChangePasswordRequest {
                    account_id: id.clone(),
                    old_password: "not it at all".into(),
                    new_password: new_pw.into(),
                },
                &id,
                &["player"],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::Unauthenticated);
        // New password breaking the rules.
        let e = auth
            .change_password(as_caller(
                ChangePasswordRequest {
                    account_id: id.clone(),
                    old_password: PW.into(),
                    new_password: "password123".into(),
                },
                &id,
                &["player"],
            ))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "new_password");
        validate(&auth, &a.access_token).await.unwrap();
        let out = auth
            .change_password(as_caller(
                ChangePasswordRequest {
                    account_id: id.clone(),
                    old_password: PW.into(),
                    new_password: new_pw.into(),
                },
                &id,
                &["player"],
            ))
            .await
            .unwrap();
        assert_eq!(out.revoked_sessions, 2);
        for l in [&a, &b] {
            assert_eq!(
                validate(&auth, &l.access_token).await.unwrap_err().code,
                Code::Unauthenticated
            );
            assert_eq!(
                refresh(&auth, &l.refresh_token).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
        assert_eq!(
            login(&auth, "nina", PW).await.unwrap_err().code,
            Code::Unauthenticated
        );
        login(&auth, "nina", new_pw).await.unwrap();
    }

    #[tokio::test]
    async fn change_password_keeps_the_calling_session_and_ends_the_others() {
        let (auth, _clock) = setup();
        let id = register(&auth, "nora").await;
        register(&auth, "olaf").await;
        let mine = login(&auth, "nora", PW).await.unwrap();
        let b = login(&auth, "nora", PW).await.unwrap();
        let c = login(&auth, "nora", PW).await.unwrap();
        let olaf = login(&auth, "olaf", PW).await.unwrap();
        let change = |old: &str, new: &str, session: &str| {
            let mut r = as_caller(
                ChangePasswordRequest {
                    account_id: id.clone(),
                    old_password: old.into(),
                    new_password: new.into(),
                },
                &id,
                &["player"],
            );
            r.meta.caller_session = Some(session.to_string());
            r
        };
        let out = auth
            .change_password(change(PW, "first new passphrase", &mine.session_id))
            .await
            .unwrap();
        assert_eq!(out.revoked_sessions, 2);
        validate(&auth, &mine.access_token).await.unwrap();
        let mine = refresh(&auth, &mine.refresh_token).await.unwrap();
        for l in [&b, &c] {
            assert_eq!(
                validate(&auth, &l.access_token).await.unwrap_err().code,
                Code::Unauthenticated
            );
            assert_eq!(
                refresh(&auth, &l.refresh_token).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
        // The session is listed as the current one.
        let mut list = as_caller(
            ListSessionsRequest {
                account_id: id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
            &id,
            &["player"],
        );
        list.meta.caller_session = Some(mine.session_id.clone());
        let sessions = auth.list_sessions(list).await.unwrap().sessions;
        assert_eq!(sessions.len(), 1);
        assert!(sessions[0].current);
        // Naming another account's session spares nothing of this one and touches nothing
        // of the other.
        let d = login(&auth, "nora", "first new passphrase").await.unwrap();
        let out = auth
            .change_password(change(
                "first new passphrase",
                "second new passphrase",
                &olaf.session_id,
            ))
            .await
            .unwrap();
        assert_eq!(out.revoked_sessions, 2);
        for t in [&mine.access_token, &d.access_token] {
            assert_eq!(
                validate(&auth, t).await.unwrap_err().code,
                Code::Unauthenticated
            );
        }
        validate(&auth, &olaf.access_token).await.unwrap();
    }

    #[tokio::test]
    async fn change_password_authorization() {
        let (auth, _clock) = setup();
        let victim = register(&auth, "oscar").await;
        let other = register(&auth, "peggy").await;
        let body = |old: &str| ChangePasswordRequest {
            account_id: victim.clone(),
            old_password: old.into(),
            new_password: "taken over by someone".into(),
        };
        let e = auth
            .change_password(as_caller(body(PW), &other, &["player"]))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        // The owner must give the old password.
        let e = auth
            .change_password(as_caller(body(""), &victim, &["player"]))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "old_password");
        // An admin acting for another account need not.
        auth.change_password(as_caller(body(""), &other, &["admin"]))
            .await
            .unwrap();
        login(&auth, "oscar", "taken over by someone")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn grant_role_takes_effect_in_validate_at_once() {
        let (auth, _clock) = setup();
        let id = register(&auth, "quinn").await;
        let l = login(&auth, "quinn", PW).await.unwrap();
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap().roles,
            vec!["player"]
        );
        let grant = |role: &str, revoke: bool| GrantRoleRequest {
            account_id: id.clone(),
            role: role.into(),
            revoke,
        };
        let r = auth
            .grant_role(as_caller(grant("admin", false), "acc_admin", &["admin"]))
            .await
            .unwrap();
        assert_eq!(r.roles, vec!["player", "admin"]);
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap().roles,
            vec!["player", "admin"]
        );
        // Granting again changes nothing; revoking applies at once too.
        let r = auth.grant_role(req(grant("admin", false))).await.unwrap();
        assert_eq!(r.roles, vec!["player", "admin"]);
        auth.grant_role(req(grant("player", true))).await.unwrap();
        assert_eq!(
            validate(&auth, &l.access_token).await.unwrap().roles,
            vec!["admin"]
        );
        let e = auth
            .grant_role(req(grant("root", false)))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "role");
        let e = auth
            .grant_role(req(GrantRoleRequest {
                account_id: "acc_missing".into(),
                role: "admin".into(),
                revoke: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::NotFound);
    }

    #[tokio::test]
    async fn players_see_only_their_own_sessions_and_account() {
        let (auth, _clock) = setup();
        let alice = register(&auth, "rita").await;
        let bob = register(&auth, "sam").await;
        login(&auth, "rita", PW).await.unwrap();
        let list = |caller: &str, roles: &[&str]| {
            as_caller(
                ListSessionsRequest {
                    account_id: alice.clone(),
                    page_size: 0,
                    page_token: String::new(),
                },
                caller,
                roles,
            )
        };
        let e = auth
            .list_sessions(list(&bob, &["player"]))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let own = auth.list_sessions(list(&alice, &["player"])).await.unwrap();
        assert_eq!(own.sessions.len(), 1);
        assert_eq!(own.sessions[0].user_agent, "test-agent");
        let admin = auth.list_sessions(list(&bob, &["admin"])).await.unwrap();
        assert_eq!(admin.sessions, own.sessions);
        let e = auth
            .get_account(as_caller(
                GetAccountRequest {
                    account_id: alice.clone(),
                },
                &bob,
                &["player"],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
    }

    #[tokio::test]
    async fn list_sessions_paginates_newest_first_and_skips_ended_sessions() {
        let (auth, clock) = setup();
        let id = register(&auth, "trent").await;
        let mut logins = Vec::new();
        for _ in 0..7 {
            logins.push(login(&auth, "trent", PW).await.unwrap());
            clock.advance(Duration::from_secs(1));
        }
        // End two of them.
        for i in [1, 4] {
            auth.logout(req(LogoutRequest {
                token: Some(logout_request::Token::AccessToken(
                    logins[i].access_token.clone(),
                )),
                all_sessions: false,
            }))
            .await
            .unwrap();
        }
        let mut want: Vec<String> = logins.iter().map(|l| l.session_id.clone()).collect();
        want.remove(4);
        want.remove(1);
        want.reverse();
        let mut got = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = auth
                .list_sessions(req(ListSessionsRequest {
                    account_id: id.clone(),
                    page_size: 2,
                    page_token: token,
                }))
                .await
                .unwrap();
            pages += 1;
            assert!(page.sessions.len() <= 2);
            assert!(page.sessions.iter().all(|s| !s.current));
            got.extend(page.sessions.into_iter().map(|s| s.session_id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(got, want);
        assert_eq!(pages, 3);
        let e = auth
            .list_sessions(req(ListSessionsRequest {
                account_id: id.clone(),
                page_size: 2,
                page_token: "bm90IGEgdG9rZW4".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "page_token");
        let e = auth
            .list_sessions(req(ListSessionsRequest {
                account_id: id.clone(),
                page_size: -1,
                page_token: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(field(&e), "page_size");
        let all = auth
            .list_sessions(req(ListSessionsRequest {
                account_id: id,
                page_size: 1000,
                page_token: String::new(),
            }))
            .await
            .unwrap();
        assert_eq!(all.sessions.len(), 5);
        assert!(all.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn every_revocation_is_announced_with_the_next_epoch_after_its_commit() {
        let (ctx, _clock) = Ctx::for_tests();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<RevocationNotice>::new()));
        let sink = seen.clone();
        let auth = Auth::new(&ctx, AuthConfig::default())
            .unwrap()
            .with_revocation_hook(Arc::new(move |r| sink.lock().unwrap().push(r)));
        let take = || std::mem::take(&mut *seen.lock().unwrap());
        let notice = |sessions: &[&str], accounts: &[&str], epoch: u64| RevocationNotice {
            session_ids: sessions.iter().map(|s| s.to_string()).collect(),
            account_ids: accounts.iter().map(|s| s.to_string()).collect(),
            epoch,
            heartbeat_interval_ms: 500,
        };
        let id = register(&auth, "rosa").await;
        let a = login(&auth, "rosa", PW).await.unwrap();
        let b = login(&auth, "rosa", PW).await.unwrap();
        assert!(take().is_empty(), "login revokes nothing");
        // Validate answers carry the epoch too.
        assert_eq!(
            validate(&auth, &b.access_token)
                .await
                .unwrap()
                .revocation_epoch,
            0
        );

        // Logout of one session names it; the refreshed token still belongs to it.
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(a.access_token.clone())),
            all_sessions: false,
        }))
        .await
        .unwrap();
        assert_eq!(take(), vec![notice(&[&a.session_id], &[], 1)]);
        // Nothing revoked, nothing announced, the epoch unchanged.
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::RefreshToken(a.refresh_token.clone())),
            all_sessions: false,
        }))
        .await
        .unwrap();
        assert!(take().is_empty());

        // Refresh-token reuse names the session.
        refresh(&auth, &b.refresh_token).await.unwrap();
        refresh(&auth, &b.refresh_token).await.unwrap_err();
        assert_eq!(take(), vec![notice(&[&b.session_id], &[], 2)]);

        // Password change, role change and logout-all name the account; a grant that
        // changes nothing announces nothing.
        login(&auth, "rosa", PW).await.unwrap();
        auth.change_password(req(ChangePasswordRequest {
            account_id: id.clone(),
            old_password: String::new(),
            new_password: "another-fine-passphrase".into(),
        }))
        .await
        .unwrap();
        assert_eq!(take(), vec![notice(&[], &[&id], 3)]);
        let grant = || GrantRoleRequest {
            account_id: id.clone(),
            role: "admin".into(),
            revoke: false,
        };
        auth.grant_role(req(grant())).await.unwrap();
        assert_eq!(take(), vec![notice(&[], &[&id], 4)]);
        auth.grant_role(req(grant())).await.unwrap();
        assert!(take().is_empty());
        let c = login(&auth, "rosa", "another-fine-passphrase")
            .await
            .unwrap();
        assert_eq!(
            validate(&auth, &c.access_token)
                .await
                .unwrap()
                .revocation_epoch,
            4
        );
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(c.access_token)),
            all_sessions: true,
        }))
        .await
        .unwrap();
        assert_eq!(take(), vec![notice(&[], &[&id], 5)]);
        // A heartbeat repeats the current epoch, with no ids.
        auth.heartbeat().await;
        assert_eq!(take(), vec![notice(&[], &[], 5)]);
        // The epoch is stored with the revocations.
        let stored = auth.ctx.store.get(META, EPOCH_KEY).unwrap().unwrap();
        assert_eq!(decode_epoch(&stored).unwrap(), 5);
    }

    #[tokio::test]
    async fn heartbeats_run_until_shutdown() {
        let (ctx, _clock) = Ctx::for_tests();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = seen.clone();
        let auth = Arc::new(
            Auth::new(&ctx, AuthConfig::default())
                .unwrap()
                .with_revocation_hook(Arc::new(move |_| {
                    sink.fetch_add(1, Ordering::Relaxed);
                })),
        );
        let task = tokio::spawn(auth.clone().run_heartbeats());
        let beats = async {
            while seen.load(Ordering::Relaxed) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), beats)
            .await
            .expect("no heartbeats");
        ctx.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the heartbeats outlived shutdown")
            .unwrap();
    }

    /// The outbox's auth audit events, in order.
    fn audited(auth: &Auth) -> Vec<AuthAuditEvent> {
        use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
        use aicore_runtime::store::decode;
        auth.ctx
            .store
            .scan(OUTBOX, b"", b"", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, v)| decode::<OutboxEvent>(OUTBOX, v).unwrap())
            .filter(|e| e.subject.starts_with("audit.auth."))
            .map(|e| {
                let a = AuthAuditEvent::decode(e.payload.as_slice()).unwrap();
                assert_eq!(e.subject, format!("audit.auth.{}", a.kind));
                a
            })
            .collect()
    }

    /// What a flow through every audited change used: the secrets that must not appear
    /// in any event.
    struct Flow {
        account_id: String,
        secrets: Vec<Vec<u8>>,
    }

    const FROM: &str = "192.0.2.44";
    const NEW_PW: &str = "a fresh enough passphrase";
    const UNKNOWN: &str = "hunter2-typed-as-a-name";

    /// Logs in, fails, gets locked, changes roles and password, reuses a refresh token and
    /// logs out, each once; refusals in between. Returns the account and the secrets.
    async fn audited_flow(auth: &Auth, clock: &ManualClock) -> Flow {
        let id = register(auth, "sasha").await;
        assert!(audited(auth).is_empty(), "registering is not audited");
        let mut secrets: Vec<Vec<u8>> = vec![
            PW.into(),
            NEW_PW.into(),
            UNKNOWN.into(),
            UNKNOWN.to_lowercase().into(),
        ];
        let l = login_from(auth, "sasha", PW, FROM).await.unwrap();
        login_from(auth, "sasha", "wrong once", FROM)
            .await
            .unwrap_err();
        login_from(auth, UNKNOWN, "wrong again", FROM)
            .await
            .unwrap_err();
        for i in 0..4 {
            login_from(auth, "sasha", format!("wrong {i}"), FROM)
                .await
                .unwrap_err();
        }
        // Refused while locked: nothing to record.
        let locked = login_from(auth, "sasha", PW, FROM).await.unwrap_err();
        assert_eq!(locked.code, Code::ResourceExhausted);
        clock.advance(Duration::from_millis(locked.retry_after_ms));
        let mut grant = as_caller(
            GrantRoleRequest {
                account_id: id.clone(),
                role: "admin".into(),
                revoke: false,
            },
            "acc_boss",
            &["admin"],
        );
        grant.meta.request_id = Some("req-9".into());
        auth.grant_role(grant.clone()).await.unwrap();
        auth.grant_role(grant).await.unwrap();
        let e = auth
            .grant_role(req(GrantRoleRequest {
                account_id: "acc_missing".into(),
                role: "admin".into(),
                revoke: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::NotFound);
        let other = login_from(auth, "sasha", PW, FROM).await.unwrap();
        let change = |old: &str| {
            let mut r = as_caller(
                ChangePasswordRequest {
                    account_id: id.clone(),
                    old_password: old.into(),
                    new_password: NEW_PW.into(),
                },
                &id,
                &["player"],
            );
            r.meta.caller_session = Some(l.session_id.clone());
            r.meta.client_addr = Some(FROM.into());
            r
        };
        auth.change_password(change("not the old one"))
            .await
            .unwrap_err();
        auth.change_password(change(PW)).await.unwrap();
        let rotated = refresh(auth, &l.refresh_token).await.unwrap();
        refresh(auth, &l.refresh_token).await.unwrap_err();
        let last = login_from(auth, "sasha", NEW_PW, FROM).await.unwrap();
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(
                last.access_token.clone(),
            )),
            all_sessions: false,
        }))
        .await
        .unwrap();
        // Logging out twice ends nothing and records nothing.
        auth.logout(req(LogoutRequest {
            token: Some(logout_request::Token::AccessToken(
                last.access_token.clone(),
            )),
            all_sessions: false,
        }))
        .await
        .unwrap();
        for t in [&l, &other, &last] {
            for token in [&t.access_token, &t.refresh_token] {
                secrets.push(token.as_bytes().to_vec());
                secrets.push(token.as_bytes()[3..].to_vec());
                let hash = sha256(token);
                secrets.push(hash.to_vec());
                secrets.push(
                    hash.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        .into(),
                );
            }
        }
        for token in [&rotated.access_token, &rotated.refresh_token] {
            secrets.push(token.as_bytes()[3..].to_vec());
        }
        let a: AccountRecord = auth
            .ctx
            .store
            .get_msg(ACCOUNTS, id.as_bytes())
            .unwrap()
            .unwrap();
        secrets.push(a.password_hash.clone().into());
        // The PHC string's salt and hash parts on their own.
        for part in a.password_hash.split('$').skip(4) {
            secrets.push(part.into());
        }
        Flow {
            account_id: id,
            secrets,
        }
    }

    #[tokio::test]
    async fn every_security_change_queues_its_audit_event_with_the_change() {
        let (auth, clock) = setup_cheap();
        let Flow { account_id: id, .. } = audited_flow(&auth, &clock).await;
        let events = audited(&auth);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "login_succeeded",
                "login_failed",
                "login_failed",
                "login_failed",
                "login_failed",
                "login_failed",
                "login_failed",
                "lockout",
                "role_changed",
                "login_succeeded",
                "password_change_failed",
                "password_changed",
                "refresh_reuse",
                "login_succeeded",
                "logout",
            ]
        );
        for e in &events {
            assert!(e.at.is_some());
            // Refresh, logout and the grant were sent without a client address.
            let over_nats = matches!(e.kind.as_str(), "role_changed" | "refresh_reuse" | "logout");
            assert_eq!(e.source, if over_nats { "nats" } else { FROM }, "{e:?}");
            if e.kind != "login_failed" || e.account_id == id {
                assert_eq!(e.account_id, id, "{e:?}");
                assert!(e.username_sha256_prefix.is_empty());
            }
        }
        // The unknown name: no account, only a short hash of what was typed.
        let unknown = &events[2];
        assert_eq!(unknown.account_id, "");
        assert_eq!(
            unknown.username_sha256_prefix,
            audit::username_prefix(UNKNOWN)
        );
        assert_eq!(unknown.username_sha256_prefix.len(), 16);
        let lockout = &events[7];
        assert_eq!((lockout.all_sources, lockout.failures), (false, 5));
        assert!(lockout.locked_until.is_some());
        let role = &events[8];
        assert_eq!(
            (role.role.as_str(), role.role_removed, role.roles.clone()),
            (
                "admin",
                false,
                vec!["player".to_string(), "admin".to_string()]
            )
        );
        assert_eq!(
            (role.actor_account_id.as_str(), role.request_id.as_str()),
            ("acc_boss", "req-9")
        );
        let changed = &events[11];
        assert_eq!(
            changed.revoked_sessions, 1,
            "the other session; the caller's kept"
        );
        assert!(!changed.session_id.is_empty());
        assert_eq!(events[12].revoked_sessions, 1);
        assert_eq!(events[14].revoked_sessions, 1);
        assert_eq!(events[14].session_id, events[13].session_id);
    }

    #[tokio::test]
    async fn audit_events_hold_no_password_token_or_hash() {
        let (auth, clock) = setup_cheap();
        let flow = audited_flow(&auth, &clock).await;
        let events = audited(&auth);
        assert!(events.len() > 10);
        for e in &events {
            let bytes = e.encode_to_vec();
            for secret in &flow.secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                    "{} holds {:?}",
                    e.kind,
                    String::from_utf8_lossy(secret)
                );
            }
        }
    }
}
