//! auth's audit trail: security events queued on `audit.auth.<kind>` (stream `AUDIT`) as
//! [`AuthAuditEvent`]s through the transactional outbox ([`Tx::emit`]), so an event is
//! published if and only if the change it records committed — the same way payment
//! writes `audit.payment.<kind>`. What an event may hold is decided here, once: ids,
//! the source address, the caller, roles, lock times; never a password, a token or a hash
//! of either, and for a username that names no account only a short SHA-256 prefix of it
//! (it may be a password typed into the wrong box).

use aicore_proto::aicore::auth::v1::AuthAuditEvent;
use aicore_proto::{Metadata, Status};
use sha2::{Digest, Sha256};

use super::throttle::NATS_SOURCE;
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::Tx;

/// Bytes of SHA-256 kept of an unknown username.
const USERNAME_PREFIX_BYTES: usize = 8;

/// What every event of one request shares: source, caller, request id, time.
#[derive(Debug, Clone)]
pub(super) struct Audit(AuthAuditEvent);

impl Audit {
    /// The shared fields of `meta`'s request at `at`.
    pub(super) fn new(meta: &Metadata, at: prost_types::Timestamp) -> Self {
        let (actor_account_id, actor_roles) = meta
            .caller
            .as_ref()
            .map(|c| (c.account_id.clone(), c.roles.clone()))
            .unwrap_or_default();
        Audit(AuthAuditEvent {
            source: meta
                .client_addr
                .clone()
                .unwrap_or_else(|| NATS_SOURCE.to_string()),
            actor_account_id,
            actor_roles,
            request_id: meta.request_id.clone().unwrap_or_default(),
            at: Some(at),
            ..Default::default()
        })
    }

    /// An event of `kind` about account `account_id`.
    pub(super) fn event(&self, kind: &str, account_id: &str) -> AuthAuditEvent {
        AuthAuditEvent {
            kind: kind.to_string(),
            account_id: account_id.to_string(),
            ..self.0.clone()
        }
    }

    /// An event of `kind` about `username`: its account when there is one, else a short
    /// hash of the name.
    pub(super) fn event_for_name(
        &self,
        kind: &str,
        account_id: Option<&str>,
        username: &str,
    ) -> AuthAuditEvent {
        match account_id {
            Some(id) => self.event(kind, id),
            None => AuthAuditEvent {
                username_sha256_prefix: username_prefix(username),
                ..self.event(kind, "")
            },
        }
    }
}

/// The hex of the first bytes of SHA-256 of the lowercased username.
pub(super) fn username_prefix(username: &str) -> String {
    let digest = Sha256::digest(username.to_ascii_lowercase().as_bytes());
    digest[..USERNAME_PREFIX_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Queues `event` on `audit.auth.<kind>` in `tx`.
pub(super) fn emit(tx: &mut Tx<'_>, event: &AuthAuditEvent) -> Result<(), Status> {
    tx.emit(event)
}
