//! What the contracts say about each RPC: its subject, who may call it ([`Access`],
//! [`Policy`]), whether a retry is safe ([`MethodInfo`]), and each service's table
//! ([`ServiceInfo`]).

use bytes::Bytes;

use crate::{Caller, Code, Status};

/// Who may call an RPC, from `(aicore.common.v1.policy)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// Only principals with one of [`Policy::roles`].
    Roles,
}

/// The policy of one RPC, generated from its options.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Who may call it.
    pub access: Access,
    /// With [`Access::Roles`]: the roles allowed.
    pub roles: &'static [&'static str],
    /// The RPC changes nothing (a read): always safe to retry after a timeout or
    /// Unavailable. See [`MethodInfo::retry_safe`] for writes.
    pub read_only: bool,
    /// Default deadline when the caller sets none; 0 = the client's default.
    pub default_deadline_ms: u32,
}

impl Policy {
    /// Whether `caller` may make this call: the one access check every transport applies
    /// (the domain runtime for every NATS request, the gateway before it forwards one).
    /// `None` is a trusted principal of the appliance's own account (a domain, the
    /// gateway acting as itself, the admin CLI), which passes; an end user or an external
    /// principal passes a role-gated RPC only with one of its roles.
    pub fn permits(&self, caller: Option<&Caller>) -> Result<(), Status> {
        match (self.access, caller) {
            (Access::Roles, Some(c)) if !self.roles.iter().any(|r| c.has_role(r)) => {
                Err(Status::new(
                    Code::PermissionDenied,
                    format!("this call needs one of the roles {:?}", self.roles),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// One RPC: where it is served and what it takes.
#[derive(Debug)]
pub struct MethodInfo {
    /// The domain (`auth`).
    pub domain: &'static str,
    /// The service's full proto name (`aicore.auth.v1.Auth`).
    pub service: &'static str,
    /// The RPC's proto name (`Login`).
    pub name: &'static str,
    /// The RPC's snake name (`login`), the last token of its subject.
    pub rpc: &'static str,
    /// `svc.<domain>.v1.<rpc>`.
    pub subject: &'static str,
    /// Full proto name of the request message.
    pub input: &'static str,
    /// Full proto name of the response (or stream item) message.
    pub output: &'static str,
    /// Whether the reply is a stream.
    pub server_streaming: bool,
    /// Field number of the request's `idempotency_key` (a string), 0 when it has none.
    pub idempotency_key: u32,
    /// Access and retry policy.
    pub policy: Policy,
}

impl MethodInfo {
    /// Whether the request `body` (encoded) may be sent again after an attempt whose
    /// outcome is unknown (a timeout, a lost reply): only when that is provably safe —
    /// the RPC is a read, or the request carries an idempotency key, so a replay returns
    /// the first reply instead of applying the write again (or answering Conflict to a
    /// create-only write that the first attempt applied).
    pub fn retry_safe(&self, body: &[u8]) -> bool {
        self.policy.read_only
            || (self.idempotency_key != 0
                && string_field_len(body, self.idempotency_key).is_some_and(|n| n > 0))
    }

    /// `body` with `key` as its idempotency key when the RPC's request has that field
    /// and `body` carries no key of its own (else `body` unchanged). The field is
    /// appended: in protobuf the last occurrence of a field wins, and an absent or empty
    /// one is the same as none.
    pub fn with_idempotency_key(&self, body: Bytes, key: &str) -> Bytes {
        if self.idempotency_key == 0
            || key.is_empty()
            || string_field_len(&body, self.idempotency_key).is_some_and(|n| n > 0)
        {
            return body;
        }
        let mut out = Vec::with_capacity(body.len() + key.len() + 8);
        out.extend_from_slice(&body);
        use prost::encoding::{WireType, encode_key, encode_varint};
        encode_key(self.idempotency_key, WireType::LengthDelimited, &mut out);
        encode_varint(key.len() as u64, &mut out);
        out.extend_from_slice(key.as_bytes());
        Bytes::from(out)
    }
}

/// The length of the last occurrence of length-delimited field `number` at the top level
/// of the encoded message `body` (`None`: absent, or `body` is not valid protobuf).
fn string_field_len(mut body: &[u8], number: u32) -> Option<usize> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut last = None;
    while !body.is_empty() {
        let (tag, wire_type) = decode_key(&mut body).ok()?;
        if tag == number && wire_type == WireType::LengthDelimited {
            let len = usize::try_from(decode_varint(&mut body).ok()?).ok()?;
            body = body.get(len..)?;
            last = Some(len);
        } else {
            skip_field(wire_type, tag, &mut body, DecodeContext::default()).ok()?;
        }
    }
    last
}

/// One service: its domain and RPCs.
#[derive(Debug)]
pub struct ServiceInfo {
    /// The domain name, from the package `aicore.<domain>.v1`.
    pub domain: &'static str,
    /// The service's proto name (`StateManager`).
    pub name: &'static str,
    /// The service's full proto name.
    pub full_name: &'static str,
    /// One line on what it does (`$SRV.INFO`, OpenAPI, CLI).
    pub description: &'static str,
    /// Its RPCs, in declaration order.
    pub methods: &'static [MethodInfo],
}

impl ServiceInfo {
    /// Finds an RPC by snake name (`list_sessions`), proto name (`ListSessions`) or
    /// kebab name (`list-sessions`).
    pub fn method(&self, name: &str) -> Option<(usize, &'static MethodInfo)> {
        let snake = name.replace('-', "_");
        self.methods
            .iter()
            .enumerate()
            .find(|(_, m)| m.rpc == snake || m.name == name)
    }
}
