//! Who a request comes from and what it may claim: the account external principals
//! connect through ([`EXTERNAL_ACCOUNT`]), the principal nats-server's
//! `Nats-Request-Info` stamp names, and the role ceiling ([`Trust`]) that bounds the
//! caller such a principal claims. Reading the rest of a request's headers is
//! [`super::metadata`]'s.

use aicore_proto::{Caller, Code, Status};

/// The NATS account external principals (game servers) connect to, apart from the
/// appliance's own account. It imports the services they may call with `share`, so
/// nats-server stamps every request crossing over with the sender's account and its
/// certificate-mapped user ([`aicore_proto::headers::REQUEST_INFO`]), replacing anything
/// the sender put there: a domain knows which principal sent a request and the principal
/// cannot say otherwise. (One account for all of them, present from the start, because
/// nats-server does not wire the imports of an account added by a configuration reload.)
pub const EXTERNAL_ACCOUNT: &str = "EXTERNAL";

/// Who may act for whom over NATS.
///
/// Requests without a `Nats-Request-Info` stamp come from the appliance's own account
/// (the domains, the gateway, the admin CLI): trusted principals whose `Aicore-Caller`
/// headers are taken as they are (the gateway sets them only from a validated token).
/// Requests stamped with an external principal's account may act for any end user but
/// only with roles within that principal's ceiling; without a caller header they act as
/// the principal itself (`principal:<name>`) holding its ceiling's roles.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The roles an external principal may claim when it has no entry in `ceilings`.
    pub default_ceiling: Vec<String>,
    /// Per external principal (certificate name): the roles it may claim.
    pub ceilings: std::collections::HashMap<String, Vec<String>>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            default_ceiling: vec!["player".to_string()],
            ceilings: Default::default(),
        }
    }
}

impl Trust {
    /// The roles external principal `name` may claim.
    pub fn ceiling(&self, name: &str) -> &[String] {
        self.ceilings
            .get(name)
            .unwrap_or(&self.default_ceiling)
            .as_slice()
    }

    /// The caller a request from external principal `principal` acts as, given the
    /// caller it claimed; PermissionDenied when it claims a role beyond its ceiling.
    pub(super) fn bound(&self, principal: &str, claimed: Option<Caller>) -> Result<Caller, Status> {
        let ceiling = self.ceiling(principal);
        match claimed {
            Some(c) => match c.roles.iter().find(|r| !ceiling.contains(r)) {
                Some(role) => Err(Status::new(
                    Code::PermissionDenied,
                    format!(
                        "principal {principal:?} may not act with role {role:?} (its ceiling is {ceiling:?})"
                    ),
                )),
                None => Ok(c),
            },
            None => Ok(Caller {
                account_id: format!("principal:{principal}"),
                roles: ceiling.to_vec(),
            }),
        }
    }
}

/// The external principal named by a `Nats-Request-Info` stamp: the certificate name
/// (`CN`) of the user nats-server mapped the sender's certificate to. PermissionDenied for
/// any other account or user (nothing else imports our services).
pub(super) fn external_principal(info: &str) -> Result<String, Status> {
    let v = serde_json::from_str::<serde_json::Value>(info).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    let (account, user) = (field("acc"), field("user"));
    let name = (account == EXTERNAL_ACCOUNT)
        .then(|| principal_of_user(user))
        .flatten();
    name.map(str::to_string).ok_or_else(|| {
        Status::new(
            Code::PermissionDenied,
            format!("requests from NATS account {account:?} user {user:?} are not accepted"),
        )
    })
}

/// The principal name of a certificate-mapped NATS user (`CN=<name>,OU=<role>,O=AI Core`)
/// of an external role.
fn principal_of_user(user: &str) -> Option<&str> {
    let mut name = None;
    let mut external = false;
    for part in user.split(',') {
        match part.split_once('=') {
            Some(("CN", n)) if !n.is_empty() => name = Some(n),
            Some(("OU", "game-server")) => external = true,
            _ => {}
        }
    }
    name.filter(|_| external)
}
