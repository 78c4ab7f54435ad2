//! auth's login throttle: how many password checks a username may cost, counted per
//! source address *and* username, with a much higher, short-capped ceiling per username.
//!
//! Why this shape. A failure counter on the account alone has three flaws: concurrent
//! guesses all pass the "not locked yet" check before any failure is recorded (48 at once
//! got 18–28 hash checks with a threshold of 5); a lock answer given after the hash leaks
//! whether the password was right; and anyone can lock a player out for the longest lock
//! with one burst. So here:
//!
//! - An attempt is counted *before* its hash runs: [`admit`] reserves it in a store write
//!   (the single writer serialises them, so N concurrent guesses from one source reserve
//!   one by one and at most `lockout_threshold` are admitted before the lock). A refused
//!   attempt is answered before any hash runs, from the records alone, so the answer
//!   cannot depend on the password. A success gives its reservation back ([`succeeded`]).
//! - Records are keyed by the username (a SHA-256 prefix of its lowercased form, so a
//!   password typed into the username box is not stored), never by the account: an
//!   unknown username is counted and locked exactly like a known one, and the store
//!   holds no list of tried names in clear.
//! - Per (source, username) — the source is the client's IP address from the gateway, or
//!   `nats` for callers talking NATS directly — `lockout_threshold` counted attempts lock
//!   that pair for `lockout_base_ms`, doubling with every further one up to
//!   `lockout_max_secs`. Another source is not affected.
//! - Per username, attempts from all sources count towards `account_lockout_threshold`
//!   (much higher); past it the username locks for every source, doubling from
//!   `lockout_base_ms` but never longer than `account_lockout_max_secs` (short), so a
//!   flood from many addresses slows guessing to about one try per that cap without
//!   shutting the player out for long. A source that logged into the account within
//!   `trusted_source_days` is exempt from that account-wide lock (its own pair limit
//!   still applies): the player's usual address keeps working during such a flood.
//! - A record is forgotten after `lockout_forget_secs` without attempts once its lock has
//!   ended (a trusted source's record lives until its trust ends). Each admission deletes
//!   a few expired records through an index ordered by expiry, so the table is bounded by
//!   what the admitted attempt rate can create within those windows.
//!
//! Tables:
//! - `auth.login_throttle`: `a` + name key → [`ThrottleRecord`] (all sources), and
//!   `p` + name key + source → [`ThrottleRecord`] (one source).
//! - `auth.login_throttle_expiry`: expiry (ms, big-endian) + record key → empty.

use std::time::Duration;

use aicore_proto::internal::auth::ThrottleRecord;
use aicore_proto::{Code, Status};
use sha2::{Digest, Sha256};

use super::AuthConfig;
use aicore_runtime::Store;
use aicore_runtime::store::Tx;

const THROTTLE: &str = "auth.login_throttle";
const EXPIRY: &str = "auth.login_throttle_expiry";
/// Expired records deleted per admission.
const PURGE_PER_ADMISSION: usize = 16;
/// The source of callers that send no client address (principals talking NATS).
pub(super) const NATS_SOURCE: &str = "nats";

/// Bytes of SHA-256 kept as a username's key.
const NAME_KEY_BYTES: usize = 16;

/// The throttle's numbers, from [`AuthConfig`].
#[derive(Debug, Clone)]
pub(super) struct Policy {
    threshold: u32,
    base_ms: u64,
    max_ms: u64,
    account_threshold: u32,
    account_max_ms: u64,
    forget_ms: i64,
    trusted_ms: i64,
}

impl Policy {
    pub(super) fn new(c: &AuthConfig) -> Self {
        let ms = |secs: u64| secs.saturating_mul(1000);
        Policy {
            threshold: c.lockout_threshold,
            base_ms: c.lockout_base_ms,
            max_ms: ms(c.lockout_max_secs),
            account_threshold: c.account_lockout_threshold,
            account_max_ms: ms(c.account_lockout_max_secs),
            forget_ms: i64::try_from(ms(c.lockout_forget_secs)).unwrap_or(i64::MAX),
            trusted_ms: i64::try_from(ms(u64::from(c.trusted_source_days).saturating_mul(86_400)))
                .unwrap_or(i64::MAX),
        }
    }
}

/// `base · 2^(failures − threshold)` from the threshold-th on, capped; zero below it.
fn growing(failures: u32, threshold: u32, base_ms: u64, max_ms: u64) -> Duration {
    if failures < threshold {
        return Duration::ZERO;
    }
    let doublings = (failures - threshold).min(40);
    Duration::from_millis(base_ms.saturating_mul(1u64 << doublings).min(max_ms))
}

impl AuthConfig {
    /// How long a (source, username) pair locks once `failures` attempts are counted:
    /// nothing below `lockout_threshold`, then `base · 2^(failures − threshold)`, capped
    /// at `lockout_max_secs`.
    pub fn lock_for(&self, failures: u32) -> Duration {
        let p = Policy::new(self);
        growing(failures, p.threshold, p.base_ms, p.max_ms)
    }

    /// How long a username locks for every (untrusted) source once `failures` attempts
    /// from all sources are counted: nothing below `account_lockout_threshold`, then
    /// doubling from `lockout_base_ms`, capped at `account_lockout_max_secs`.
    pub fn account_lock_for(&self, failures: u32) -> Duration {
        let p = Policy::new(self);
        growing(failures, p.account_threshold, p.base_ms, p.account_max_ms)
    }
}

/// The key of a username: a SHA-256 prefix of its lowercased form (usernames compare
/// case-insensitively, so `Alice` and `alice` are one).
pub(super) fn name_key(username: &str) -> [u8; NAME_KEY_BYTES] {
    let digest = Sha256::digest(username.to_ascii_lowercase().as_bytes());
    let mut key = [0u8; NAME_KEY_BYTES];
    key.copy_from_slice(&digest[..NAME_KEY_BYTES]);
    key
}

/// Who is trying: a username's key and a source address.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    name: [u8; NAME_KEY_BYTES],
    source: String,
}

impl Attempt {
    /// An attempt on `username` from `source` (`None` = [`NATS_SOURCE`]).
    pub(super) fn new(username: &str, source: Option<&str>) -> Self {
        Attempt {
            name: name_key(username),
            source: source.unwrap_or(NATS_SOURCE).to_string(),
        }
    }

    /// The source, for the audit trail.
    pub(super) fn source(&self) -> &str {
        &self.source
    }

    fn account_key(&self) -> Vec<u8> {
        account_key(&self.name)
    }

    fn pair_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + NAME_KEY_BYTES + self.source.len());
        k.push(b'p');
        k.extend_from_slice(&self.name);
        k.extend_from_slice(self.source.as_bytes());
        k
    }
}

fn account_key(name: &[u8; NAME_KEY_BYTES]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + NAME_KEY_BYTES);
    k.push(b'a');
    k.extend_from_slice(name);
    k
}

fn expiry_key(expires_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = (expires_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// A record as it stands at `now`: counters forgotten after the quiet period.
fn current(mut r: ThrottleRecord, now: i64, p: &Policy) -> ThrottleRecord {
    let quiet_since = r.last_attempt_ms.max(r.locked_until_ms);
    if now.saturating_sub(quiet_since) >= p.forget_ms {
        r.failures = 0;
        r.locked_until_ms = 0;
    }
    r
}

fn trusted(pair: &ThrottleRecord, now: i64, p: &Policy) -> bool {
    pair.last_success_ms > 0 && now.saturating_sub(pair.last_success_ms) < p.trusted_ms
}

/// When the record may be deleted (0 = now: it holds nothing worth keeping).
fn expires(r: &ThrottleRecord, p: &Policy) -> i64 {
    let counting = (r.failures > 0 || r.locked_until_ms > 0).then(|| {
        r.last_attempt_ms
            .max(r.locked_until_ms)
            .saturating_add(p.forget_ms)
    });
    let trust = (r.last_success_ms > 0).then(|| r.last_success_ms.saturating_add(p.trusted_ms));
    counting.into_iter().chain(trust).max().unwrap_or(0)
}

fn load(
    get: impl Fn(&[u8]) -> Result<Option<ThrottleRecord>, Status>,
    key: &[u8],
    now: i64,
    p: &Policy,
) -> Result<ThrottleRecord, Status> {
    Ok(current(get(key)?.unwrap_or_default(), now, p))
}

/// Writes `r` under `key` and moves its expiry index row; deletes both when it holds
/// nothing.
fn save(tx: &mut Tx<'_>, key: &[u8], mut r: ThrottleRecord, p: &Policy) {
    if r.expires_ms != 0 {
        tx.delete(EXPIRY, &expiry_key(r.expires_ms, key));
    }
    r.expires_ms = expires(&r, p);
    if r.expires_ms == 0 {
        tx.delete(THROTTLE, key);
        return;
    }
    tx.put(EXPIRY, &expiry_key(r.expires_ms, key), Vec::new());
    tx.put_msg(THROTTLE, key, &r);
}

/// Deletes up to [`PURGE_PER_ADMISSION`] records whose time is up, oldest first.
fn purge(tx: &mut Tx<'_>, now: i64) -> Result<(), Status> {
    for (k, _) in tx.scan(EXPIRY, b"", b"", PURGE_PER_ADMISSION)? {
        let Some((at, key)) = k.split_at_checked(8) else {
            continue;
        };
        let at = u64::from_be_bytes(at.try_into().unwrap_or_default());
        if at > now.max(0) as u64 {
            break;
        }
        tx.delete(EXPIRY, &k);
        if tx
            .get_msg::<ThrottleRecord>(THROTTLE, key)?
            .is_some_and(|r| r.expires_ms.max(0) as u64 == at)
        {
            tx.delete(THROTTLE, key);
        }
    }
    Ok(())
}

/// A lock that an admission started, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LockStarted {
    /// For every source (true) or only the attempt's own (false).
    pub account_wide: bool,
    /// Attempts counted when it started.
    pub failures: u32,
    /// Until when (ms since the epoch).
    pub until_ms: i64,
}

/// What [`admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admission {
    /// The attempt is counted; its password may be checked. The locks it started (the
    /// threshold-th attempt starts one, which its own success lifts again).
    Admitted(Vec<LockStarted>),
    /// Refused until then (ms since the epoch); nothing was counted.
    Locked(i64),
}

/// The lock in force for `a` at `now`, if any, from its two records.
fn lock_in_force(pair: &ThrottleRecord, account: &ThrottleRecord, now: i64, p: &Policy) -> i64 {
    let mut until = 0;
    if pair.locked_until_ms > now {
        until = pair.locked_until_ms;
    }
    if account.locked_until_ms > now && !trusted(pair, now, p) {
        until = until.max(account.locked_until_ms);
    }
    until
}

/// Whether `a` is locked at `now` (until when, 0 = not) and whether its source is
/// trusted for its username (logged into it recently), read without a write: a refused
/// attempt costs no write. [`admit`] decides again inside its write.
pub(super) fn peek(
    store: &Store,
    a: &Attempt,
    now: i64,
    p: &Policy,
) -> Result<(i64, bool), Status> {
    let get = |k: &[u8]| store.get_msg::<ThrottleRecord>(THROTTLE, k);
    let pair = load(get, &a.pair_key(), now, p)?;
    let account = load(get, &a.account_key(), now, p)?;
    Ok((
        lock_in_force(&pair, &account, now, p),
        trusted(&pair, now, p),
    ))
}

/// Counts attempt `a` at `now` unless it is locked out (inside a write, so concurrent
/// attempts are counted one after the other).
pub(super) fn admit(
    tx: &mut Tx<'_>,
    a: &Attempt,
    now: i64,
    p: &Policy,
) -> Result<Admission, Status> {
    let (pair_key, account_key) = (a.pair_key(), a.account_key());
    let mut pair = load(|k| tx.get_msg(THROTTLE, k), &pair_key, now, p)?;
    let mut account = load(|k| tx.get_msg(THROTTLE, k), &account_key, now, p)?;
    let until = lock_in_force(&pair, &account, now, p);
    if until > 0 {
        return Ok(Admission::Locked(until));
    }
    let mut started = Vec::new();
    let mut count = |r: &mut ThrottleRecord, lock: Duration, account_wide: bool| {
        r.last_attempt_ms = now;
        if !lock.is_zero() {
            r.locked_until_ms =
                now.saturating_add(i64::try_from(lock.as_millis()).unwrap_or(i64::MAX));
            started.push(LockStarted {
                account_wide,
                failures: r.failures,
                until_ms: r.locked_until_ms,
            });
        }
    };
    pair.failures = pair.failures.saturating_add(1);
    let lock = growing(pair.failures, p.threshold, p.base_ms, p.max_ms);
    count(&mut pair, lock, false);
    account.failures = account.failures.saturating_add(1);
    let lock = growing(
        account.failures,
        p.account_threshold,
        p.base_ms,
        p.account_max_ms,
    );
    count(&mut account, lock, true);
    save(tx, &pair_key, pair, p);
    save(tx, &account_key, account, p);
    purge(tx, now)?;
    Ok(Admission::Admitted(started))
}

/// Gives back the reservation of an admitted attempt whose password was right: the pair
/// starts over (and its source is trusted from now on), and the username's count loses
/// this attempt, so logging in often never adds up to a lock.
pub(super) fn succeeded(tx: &mut Tx<'_>, a: &Attempt, now: i64, p: &Policy) -> Result<(), Status> {
    let (pair_key, account_key) = (a.pair_key(), a.account_key());
    let mut pair = load(|k| tx.get_msg(THROTTLE, k), &pair_key, now, p)?;
    pair.failures = 0;
    pair.locked_until_ms = 0;
    pair.last_success_ms = now;
    save(tx, &pair_key, pair, p);
    let mut account = load(|k| tx.get_msg(THROTTLE, k), &account_key, now, p)?;
    account.failures = account.failures.saturating_sub(1);
    if account.failures < p.account_threshold {
        account.locked_until_ms = 0;
    }
    save(tx, &account_key, account, p);
    Ok(())
}

/// Until when `username` is locked for every untrusted source (0 = it is not).
pub(super) fn account_locked_until(
    store: &Store,
    username: &str,
    now: i64,
    p: &Policy,
) -> Result<i64, Status> {
    let get = |k: &[u8]| store.get_msg::<ThrottleRecord>(THROTTLE, k);
    let r = load(get, &account_key(&name_key(username)), now, p)?;
    Ok(if r.locked_until_ms > now {
        r.locked_until_ms
    } else {
        0
    })
}

/// The answer to a locked-out attempt: the same for every username, known or not, and
/// for every password, right or wrong.
pub(super) fn locked_error(locked_until_ms: i64, now: i64) -> Status {
    let wait = Duration::from_millis(u64::try_from(locked_until_ms - now).unwrap_or(0));
    Status::new(
        Code::ResourceExhausted,
        "too many failed logins: try again later",
    )
    .with_retry_after(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&AuthConfig::default())
    }

    async fn admit_at(store: &Store, a: &Attempt, now: i64) -> Admission {
        let (a, p) = (a.clone(), policy());
        store.write(move |tx| admit(tx, &a, now, &p)).await.unwrap()
    }

    fn rows(store: &Store, table: &'static str) -> usize {
        store.scan(table, b"", b"", usize::MAX).unwrap().len()
    }

    #[test]
    fn lock_lengths_grow_and_are_capped() {
        let cfg = AuthConfig::default();
        assert_eq!(cfg.lock_for(4), Duration::ZERO);
        assert_eq!(cfg.lock_for(5), Duration::from_secs(1));
        assert_eq!(cfg.lock_for(8), Duration::from_secs(8));
        assert_eq!(cfg.lock_for(50), Duration::from_secs(15 * 60));
        assert_eq!(cfg.lock_for(u32::MAX), Duration::from_secs(15 * 60));
        assert_eq!(cfg.account_lock_for(49), Duration::ZERO);
        assert_eq!(cfg.account_lock_for(50), Duration::from_secs(1));
        assert_eq!(cfg.account_lock_for(55), Duration::from_secs(32));
        assert_eq!(cfg.account_lock_for(56), Duration::from_secs(60));
        assert_eq!(cfg.account_lock_for(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn usernames_are_keyed_case_insensitively_and_not_in_clear() {
        assert_eq!(name_key("Alice"), name_key("alice"));
        assert_ne!(name_key("alice"), name_key("alice2"));
        let a = Attempt::new("hunter2-in-the-wrong-box", Some("192.0.2.1"));
        assert!(!a.pair_key().windows(6).any(|w| w == b"hunter".as_slice()));
    }

    #[tokio::test]
    async fn forgotten_records_are_purged_by_later_admissions() {
        let store = Store::in_memory();
        let p = policy();
        let t0 = 1_000_000;
        for i in 0..10 {
            let a = Attempt::new(&format!("name{i}"), Some("192.0.2.1"));
            assert!(matches!(
                admit_at(&store, &a, t0).await,
                Admission::Admitted(_)
            ));
        }
        assert_eq!(rows(&store, THROTTLE), 20);
        assert_eq!(rows(&store, EXPIRY), 20);
        // Once the quiet period is over, each admission deletes a bounded number.
        let later = t0 + p.forget_ms;
        admit_at(&store, &Attempt::new("other", None), later).await;
        assert_eq!(rows(&store, THROTTLE), 20 - PURGE_PER_ADMISSION + 2);
        admit_at(&store, &Attempt::new("other", None), later).await;
        assert_eq!(rows(&store, THROTTLE), 2);
        assert_eq!(rows(&store, EXPIRY), 2);
    }

    #[tokio::test]
    async fn a_success_is_given_back_and_trusts_its_source() {
        let store = Store::in_memory();
        let p = policy();
        let home = Attempt::new("mira", Some("192.0.2.1"));
        let now = 5_000_000;
        admit_at(&store, &home, now).await;
        let (h, pp) = (home.clone(), p.clone());
        store
            .write(move |tx| succeeded(tx, &h, now, &pp))
            .await
            .unwrap();
        // The username's count is back to zero; the pair remembers the success only.
        let account: ThrottleRecord = store
            .get_msg(THROTTLE, &home.account_key())
            .unwrap()
            .unwrap_or_default();
        assert_eq!(account.failures, 0);
        let pair: ThrottleRecord = store.get_msg(THROTTLE, &home.pair_key()).unwrap().unwrap();
        assert_eq!((pair.failures, pair.last_success_ms), (0, now));
        assert_eq!(pair.expires_ms, now + p.trusted_ms);
    }
}
