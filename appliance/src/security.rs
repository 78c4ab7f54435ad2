//! Security by default: which certificates `aicore run` keeps issued, which NATS user each
//! certificate identity maps to and what that user may publish and subscribe, and how
//! every NATS client of the appliance presents its certificate.
//!
//! The certificate authority itself (keys, issuing, the index, revocation) is
//! [`crate::certs`]; writing the nats-server configuration and reloading it is
//! [`crate::nats_child`]. This module decides the policy between the two: the principals
//! (`domains`, `gateway`, `admin`, and any `game-server` an operator issues), their
//! least-privilege permissions (deny by default), and when a certificate is renewed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::certs::{Authority, Issued};
use crate::config::SecurityConfig;
use crate::nats_child::{Accounts, Export, ExternalAccount, NatsTls, NatsUser};

/// The nats-server's own certificate.
pub const SERVER_NAME: &str = "nats";
/// The principals `aicore run` issues for itself, each named after its role.
pub const BUILT_IN: &[&str] = &["domains", "gateway", "admin"];
/// The subject the auth domain announces revoked tokens on (the gateway listens).
const AUTH_REVOKED: &str = aicore_proto::subjects::AUTH_REVOKED;
/// The subject the router domain announces route-table changes on (the gateway listens).
const ROUTER_CHANGED: &str = aicore_proto::subjects::ROUTER_CHANGED;

/// The files a NATS client presents: its certificate and key, and the CA it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA certificate the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl ClientTls {
    /// The certificate of principal `name` in a certificate directory.
    pub fn in_dir(dir: &Path, name: &str) -> ClientTls {
        ClientTls {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Whether all three files exist.
    pub fn exists(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }

    /// Adds TLS with this identity to `options`. The files are read again at every
    /// (re)connect, so a renewed certificate is used from the next reconnect on.
    pub fn apply(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        options
            .require_tls(true)
            .add_root_certificates(self.ca.clone())
            .add_client_certificate(self.cert.clone(), self.key.clone())
    }
}

/// Adds `tls` (when there is one) to `options`.
pub fn with_tls(
    options: async_nats::ConnectOptions,
    tls: Option<&ClientTls>,
) -> async_nats::ConnectOptions {
    match tls {
        Some(t) => t.apply(options),
        None => options,
    }
}

/// The NATS user a certificate maps to: its subject in RFC 2253 form, which is what
/// nats-server's `verify_and_map` compares against the `user` of each entry.
pub fn user_of(name: &str, role: &str) -> String {
    format!("CN={name},OU={role},O=AI Core")
}

/// The NATS account of the appliance's own principals (`domains`, `gateway`, `admin`).
/// JetStream lives here. External principals (game servers) each get an account of their
/// ([`aicore_runtime::serve::EXTERNAL_ACCOUNT`]) that imports the services they may call,
/// so nats-server itself tells a domain which principal sent a request.
pub const HOME_ACCOUNT: &str = "AICORE";

/// The reply-subject prefix of principal `name`: its requests' inboxes live under it, and
/// it may subscribe only there, so no principal reads another's replies (tokens among
/// them). Clients set it as their inbox prefix (async-nats `custom_inbox_prefix`, nats-py
/// `inbox_prefix`, nats.js `inboxPrefix`).
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX.{name}")
}

/// The micro protocol's discovery requests (`$SRV.<verb>`, `.<name>`, `.<name>.<id>`) and
/// nothing else under `$SRV`: the domains answer them (subscribe) and capability-registry
/// asks them across the network (publish, replies in the domains' own inbox).
const DISCOVERY: &[&str] = &[
    "$SRV.PING",
    "$SRV.PING.>",
    "$SRV.INFO",
    "$SRV.INFO.>",
    "$SRV.STATS",
    "$SRV.STATS.>",
];
/// What the domains publish to: events, audit, telemetry, AI, dead letters, the
/// appliance's notices, calls to other domains, and the replies of streamed answers (to
/// any principal's inbox in this account, and `_R_.` for a principal in another account;
/// a reply grants no read access). The discovery requests ([`DISCOVERY`]) come on top.
const DOMAIN_PUBLISH: &[&str] = &[
    "svc.>",
    "evt.>",
    "audit.>",
    "telemetry.>",
    "ai.>",
    "dlq.>",
    "aicore.>",
    "_INBOX.>",
    "_R_.>",
    "$JS.API.>",
    "$JS.ACK.>",
    "$JS.FC.>",
];
/// What the domains subscribe to, besides their own inbox and [`DISCOVERY`].
const DOMAIN_SUBSCRIBE: &[&str] = &[
    "svc.>",
    "evt.>",
    "audit.>",
    "telemetry.>",
    "ai.>",
    "dlq.>",
    "aicore.>",
];
/// What a game server may always publish (into the home account, through an import).
const TELEMETRY: &[&str] = &["telemetry.>", "evt.telemetry.>"];

/// The permissions of principal `name` holding `role`; `None` for a role that gets no
/// user (the server). `imports` are what a game server's account imports: the RPCs it
/// may call, and telemetry.
fn permissions(role: &str, name: &str, imports: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let inbox = format!("{}.>", inbox_prefix(name));
    Some(match role {
        // Serve `svc.>` (queue groups) and the micro protocol; emit events, audit,
        // telemetry, AI and dead letters; use JetStream; call other domains.
        "domains" => {
            let mut subscribe = s(DOMAIN_SUBSCRIBE);
            subscribe.extend(s(DISCOVERY));
            subscribe.push(inbox);
            let mut publish = s(DOMAIN_PUBLISH);
            publish.extend(s(DISCOVERY));
            (publish, subscribe)
        }
        // Requests to `svc.>` and their replies only; revocation notices and route-table
        // changes; readiness.
        "gateway" => (
            s(&["svc.>", "$SRV.PING", "$SRV.PING.>"]),
            vec![inbox, AUTH_REVOKED.to_string(), ROUTER_CHANGED.to_string()],
        ),
        // What its account imports: the allowed RPCs, and telemetry.
        "game-server" => (imports.to_vec(), vec![inbox]),
        "admin" => (s(&[">"]), s(&[">"])),
        _ => return None,
    })
}

/// Whether NATS subject `subject` matches `pattern` (`*` one token, `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The RPC subjects (of every contract in this build) that `allow` patterns select.
/// Patterns are matched with `-` read as `_`, as everywhere else domain names appear.
pub fn allowed_rpcs(allow: &[String]) -> Vec<String> {
    let patterns: Vec<String> = allow.iter().map(|p| p.replace('-', "_")).collect();
    aicore_proto::SERVICES
        .iter()
        .flat_map(|s| s.methods.iter())
        .filter(|m| patterns.iter().any(|p| subject_matches(p, m.subject)))
        .map(|m| m.subject.to_string())
        .collect()
}

/// The services the home account exports to external principals: every RPC (a
/// streaming one with a streamed response, so its items all cross back) and telemetry.
fn exports() -> Vec<Export> {
    let mut out: Vec<Export> = aicore_proto::SERVICES
        .iter()
        .flat_map(|s| s.methods.iter())
        .map(|m| Export {
            subject: m.subject.to_string(),
            streamed: m.server_streaming,
        })
        .collect();
    out.extend(TELEMETRY.iter().map(|t| Export {
        subject: t.to_string(),
        streamed: false,
    }));
    out
}

/// The accounts and users for every certificate in the index that is neither revoked
/// nor expired, and the public-key pins of exactly those certificates. Anything else (no
/// certificate, another CA, a revoked or re-issued-over certificate) has no user or no
/// pin and cannot connect.
pub fn accounts(ca: &Authority, game_server_allow: &[String], now: SystemTime) -> Result<Accounts> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut imports = allowed_rpcs(game_server_allow);
    imports.extend(TELEMETRY.iter().map(|t| t.to_string()));
    let mut out = Accounts {
        home: HOME_ACCOUNT.to_string(),
        exports: exports(),
        external: ExternalAccount {
            name: aicore_runtime::serve::EXTERNAL_ACCOUNT.to_string(),
            users: Vec::new(),
            imports: imports.clone(),
        },
        ..Accounts::default()
    };
    for c in ca.list_all()? {
        if c.revoked || c.not_after <= now {
            continue;
        }
        let Some((publish, subscribe)) = permissions(&c.role, &c.name, &imports) else {
            continue;
        };
        match ca.pin(&c) {
            Ok(pin) => out.pinned.push(pin),
            Err(e) => {
                tracing::warn!(certificate = %c.name, serial = %c.serial, error = %format!("{e:#}"), "certificate left out: its public key cannot be read");
                continue;
            }
        }
        let user = NatsUser {
            user: user_of(&c.name, &c.role),
            publish,
            subscribe,
            // Domains answer requests whose reply subjects they cannot know.
            allow_responses: c.role == "domains",
        };
        let users = match c.role.as_str() {
            "game-server" => &mut out.external.users,
            _ => &mut out.users,
        };
        if !users.contains(&user) {
            users.push(user);
        }
    }
    out.pinned.sort();
    out.pinned.dedup();
    Ok(out)
}

/// Whether `c`, the certificate the appliance keeps for `role`, must be (re)issued now.
fn due(c: Option<&Issued>, role: &str, now: SystemTime) -> bool {
    match c {
        None => true,
        Some(c) => {
            c.role != role
                || c.revoked
                || c.needs_renewal(now)
                || !c.cert_path.exists()
                || !c.key_path.exists()
        }
    }
}

/// Refuses to issue, by hand, a certificate under a name the appliance keeps for itself
/// with another role (it would replace that principal's files).
pub fn check_manual_issue(name: &str, role: &str) -> Result<()> {
    if name == SERVER_NAME {
        bail!("{name:?} is the nats-server's certificate, issued by `aicore run` itself");
    }
    if BUILT_IN.contains(&name) && name != role {
        bail!("{name:?} is the appliance's own {name} principal; pick another name");
    }
    Ok(())
}

/// Issues the server certificate and the built-in principals' certificates where they
/// are missing or due for renewal. Returns the names it (re)issued.
pub fn ensure_issued(
    ca: &Authority,
    config: &SecurityConfig,
    sans: &[String],
    now: SystemTime,
) -> Result<Vec<String>> {
    let mut renewed = Vec::new();
    let window = |days: u32| now + Duration::from_secs(u64::from(days) * 86_400);
    let until = config
        .cert_secs
        .map(|s| now + Duration::from_secs(s))
        .unwrap_or_else(|| window(config.cert_days));
    if due(ca.get(SERVER_NAME)?.as_ref(), "server", now) {
        ca.renew_own(SERVER_NAME, "server", now, until, sans)?;
        renewed.push(SERVER_NAME.to_string());
    }
    for name in BUILT_IN {
        if due(ca.get(name)?.as_ref(), name, now) {
            ca.renew_own(name, name, now, until, &[])?;
            renewed.push(name.to_string());
        }
    }
    Ok(renewed)
}

/// The subject alternative names of the server certificate.
pub fn server_sans(config: &SecurityConfig, nats_host: &str) -> Vec<String> {
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for h in config
        .host_names
        .iter()
        .map(String::as_str)
        .chain([nats_host])
    {
        if !h.is_empty() && h != "0.0.0.0" && h != "::" && !sans.iter().any(|s| s == h) {
            sans.push(h.to_string());
        }
    }
    sans
}

/// The TLS and users blocks of the nats-server configuration.
pub fn nats_tls(ca: &Authority, config: &SecurityConfig, now: SystemTime) -> Result<NatsTls> {
    let dir = ca.ca_path();
    let dir = dir.parent().context("the CA has a directory")?;
    Ok(NatsTls {
        cert_file: dir.join(format!("{SERVER_NAME}.pem")),
        key_file: dir.join(format!("{SERVER_NAME}.key")),
        ca_file: ca.ca_path(),
        accounts: accounts(ca, &config.game_server_allow, now)?,
    })
}

/// Checks the configuration's security settings.
pub fn validate(config: &SecurityConfig) -> Result<()> {
    for s in &config.game_server_allow {
        if !s.starts_with("svc.") || s.chars().any(char::is_whitespace) || s.contains('"') {
            bail!("security.game_server_allow: {s:?} must be a subject under svc.");
        }
    }
    if config.cert_days == 0 {
        bail!("security.cert_days must be at least 1");
    }
    let ceilings = std::iter::once(("game_server_roles".to_string(), &config.game_server_roles))
        .chain(
            config
                .principal_roles
                .iter()
                .map(|(name, roles)| (format!("principal_roles.{name}"), roles)),
        );
    for (field, roles) in ceilings {
        if let Some(r) = roles.iter().find(|r| !KNOWN_ROLES.contains(&r.as_str())) {
            bail!(
                "security.{field}: unknown role {r:?} (one of {})",
                KNOWN_ROLES.join(", ")
            );
        }
    }
    Ok(())
}

/// The roles an account can hold (auth's roles), so a ceiling naming another is a typo.
const KNOWN_ROLES: &[&str] = &["player", "service", "admin"];

/// Who may act for whom, for the domain runtime: the game servers' role ceilings.
pub fn trust(config: &SecurityConfig) -> aicore_runtime::serve::Trust {
    aicore_runtime::serve::Trust {
        default_ceiling: config.game_server_roles.clone(),
        ceilings: config
            .principal_roles
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_follow_the_index_and_leave_out_revoked_and_servers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let config = SecurityConfig::default();
        let now = SystemTime::now();
        let renewed = ensure_issued(&ca, &config, &server_sans(&config, "127.0.0.1"), now).unwrap();
        assert_eq!(renewed, ["nats", "domains", "gateway", "admin"]);
        assert!(ensure_issued(&ca, &config, &[], now).unwrap().is_empty());
        ca.issue("arena", "game-server", 30, &[], None).unwrap();
        ca.issue("lobby", "game-server", 30, &[], None).unwrap();
        ca.revoke("arena", None).unwrap();
        let a = accounts(&ca, &[], now).unwrap();
        let names: Vec<&str> = a.users.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(
            names,
            [
                "CN=admin,OU=admin,O=AI Core",
                "CN=domains,OU=domains,O=AI Core",
                "CN=gateway,OU=gateway,O=AI Core"
            ]
        );
        // The revoked game server has no user; the other has one in the external account.
        let external: Vec<&str> = a.external.users.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(external, ["CN=lobby,OU=game-server,O=AI Core"]);
        // Pins: the three home principals and lobby (no server, not arena).
        assert_eq!(a.pinned.len(), 4);
        let arena = ca.get("arena").unwrap().unwrap();
        assert!(!a.pinned.contains(&arena.pin));
        // A revoked built-in principal is issued again at the next check, and so is one
        // whose name was reused for another role.
        ca.revoke("gateway", None).unwrap();
        assert_eq!(ensure_issued(&ca, &config, &[], now).unwrap(), ["gateway"]);
        ca.issue("admin", "game-server", 30, &[], None).unwrap();
        assert_eq!(ensure_issued(&ca, &config, &[], now).unwrap(), ["admin"]);
        assert!(check_manual_issue("admin", "game-server").is_err());
        assert!(check_manual_issue("nats", "admin").is_err());
        check_manual_issue("admin", "admin").unwrap();
        check_manual_issue("arena-3", "game-server").unwrap();
    }

    #[test]
    fn revocation_is_by_certificate_and_a_renewed_certificate_keeps_the_old_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let now = SystemTime::now();
        let pins = || accounts(&ca, &[], now).unwrap().pinned;
        let first = ca.issue("arena", "game-server", 30, &[], None).unwrap();
        assert_eq!(pins(), std::slice::from_ref(&first.pin));
        // Re-issued (renewal): both are accepted, the old one until it expires.
        let second = ca.issue("arena", "game-server", 30, &[], None).unwrap();
        assert_ne!(first.pin, second.pin);
        assert_eq!(pins().len(), 2);
        // Revoking one certificate by serial leaves the other.
        ca.revoke("arena", Some(&first.serial)).unwrap();
        assert_eq!(pins(), std::slice::from_ref(&second.pin));
        // Revoking the name revokes all; issuing it again does not bring them back.
        ca.revoke("arena", None).unwrap();
        assert!(pins().is_empty());
        let third = ca.issue("arena", "game-server", 30, &[], None).unwrap();
        assert_eq!(pins(), std::slice::from_ref(&third.pin));
        // An expired certificate is not pinned.
        let later = now + Duration::from_secs(31 * 86_400);
        assert!(accounts(&ca, &[], later).unwrap().pinned.is_empty());
        // A record written before pins existed is pinned from its key file, to the same
        // value the issue recorded.
        let mut legacy = third.clone();
        legacy.pin.clear();
        assert_eq!(ca.pin(&legacy).unwrap(), third.pin);
    }

    #[test]
    fn allow_patterns_select_rpcs_by_nats_wildcards() {
        let rpcs = allowed_rpcs(&["svc.world-state.v1.>".into(), "svc.auth.v1.validate".into()]);
        assert!(rpcs.contains(&"svc.world_state.v1.get".to_string()));
        assert!(rpcs.contains(&"svc.world_state.v1.watch".to_string()));
        assert!(rpcs.contains(&"svc.auth.v1.validate".to_string()));
        assert!(!rpcs.iter().any(|r| r == "svc.auth.v1.login"));
        assert!(allowed_rpcs(&["svc.*.v1.get".into()]).len() > 3);
        assert!(allowed_rpcs(&[]).is_empty());
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(!subject_matches("a.b.c.>", "a.b.c"));
    }

    /// The TLS and users blocks, with real certificates, are accepted by the real
    /// nats-server.
    #[test]
    fn rendered_tls_config_is_valid_for_nats_server() {
        use crate::nats_child::{NatsChildConfig, render_config, resolve_binary};
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(&dir.path().join("certs"), 3650).unwrap();
        let config = SecurityConfig {
            game_server_allow: vec!["svc.state_manager.v1.>".into()],
            ..SecurityConfig::default()
        };
        let now = SystemTime::now();
        ensure_issued(&ca, &config, &server_sans(&config, "127.0.0.1"), now).unwrap();
        ca.issue("arena", "game-server", 30, &[], None).unwrap();
        let cfg = NatsChildConfig {
            binary: resolve_binary(None).expect("the pinned nats-server (make tools)"),
            store_dir: dir.path().join("js"),
            config_path: dir.path().join("nats.conf"),
            tls: Some(nats_tls(&ca, &config, now).unwrap()),
            ..NatsChildConfig::default()
        };
        let text = render_config(&cfg);
        assert!(text.contains("verify_and_map: true"), "{text}");
        assert!(text.contains("CN=arena,OU=game-server,O=AI Core"), "{text}");
        assert!(text.contains("\"EXTERNAL\""), "{text}");
        assert!(
            text.contains("subject: \"svc.state_manager.v1.get\""),
            "{text}"
        );
        std::fs::write(&cfg.config_path, &text).unwrap();
        let out = std::process::Command::new(&cfg.binary)
            .arg("-t")
            .arg("-c")
            .arg(&cfg.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server rejected:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_gateway_cannot_serve_and_every_principal_reads_only_its_own_replies() {
        let (publish, subscribe) = permissions("gateway", "gateway", &[]).unwrap();
        assert!(publish.contains(&"svc.>".to_string()));
        assert!(!subscribe.iter().any(|s| s.starts_with("svc") || s == ">"));
        assert!(subscribe.contains(&"_INBOX.gateway.>".to_string()));
        let imports = vec!["svc.settings.v1.get".to_string()];
        let (publish, subscribe) = permissions("game-server", "arena", &imports).unwrap();
        assert_eq!(publish, imports);
        assert_eq!(subscribe, ["_INBOX.arena.>"]);
        let (_, subscribe) = permissions("domains", "domains", &[]).unwrap();
        assert!(subscribe.contains(&"_INBOX.domains.>".to_string()));
        // Nobody but the admin may read every inbox.
        for role in ["domains", "gateway", "game-server"] {
            let (_, subscribe) = permissions(role, role, &imports).unwrap();
            assert!(
                !subscribe.iter().any(|s| s == "_INBOX.>" || s == ">"),
                "{role}: {subscribe:?}"
            );
        }
        assert!(permissions("server", "nats", &[]).is_none());
    }

    #[test]
    fn the_domains_may_ask_and_answer_discovery_but_nothing_else_under_srv() {
        let (publish, subscribe) = permissions("domains", "domains", &[]).unwrap();
        let allowed =
            |list: &[String], subject: &str| list.iter().any(|p| subject_matches(p, subject));
        for subject in [
            "$SRV.PING",
            "$SRV.INFO",
            "$SRV.STATS",
            "$SRV.PING.auth",
            "$SRV.STATS.auth.0a1b2c",
        ] {
            assert!(allowed(&publish, subject), "publish {subject}");
            assert!(allowed(&subscribe, subject), "subscribe {subject}");
        }
        // Discovery replies come back in the domains' own inbox, and only there.
        assert!(allowed(&subscribe, "_INBOX.domains.r1.PING"));
        assert!(!allowed(&subscribe, "_INBOX.gateway.r1.PING"));
        for subject in [
            "$SRV",
            "$SRV.KILL",
            "$SRV.SCHEDULE.auth",
            "$SYS.REQ.SERVER.PING",
        ] {
            assert!(!allowed(&publish, subject), "publish {subject}");
            assert!(!allowed(&subscribe, subject), "subscribe {subject}");
        }
        // The gateway may ask who answers, never the registry's richer INFO and STATS.
        let (publish, _) = permissions("gateway", "gateway", &[]).unwrap();
        assert!(allowed(&publish, "$SRV.PING"));
        assert!(!allowed(&publish, "$SRV.STATS"));
    }
}
