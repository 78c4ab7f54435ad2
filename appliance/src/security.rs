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
use crate::nats_child::{NatsTls, NatsUser};

/// The nats-server's own certificate.
pub const SERVER_NAME: &str = "nats";
/// The principals `aicore run` issues for itself, each named after its role.
pub const BUILT_IN: &[&str] = &["domains", "gateway", "admin"];
/// The subject the auth domain announces revoked tokens on (the gateway listens).
const AUTH_REVOKED: &str = "aicore.auth.revoked";

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

/// What the domains both publish and subscribe to: their requests (queue groups), the
/// micro protocol, their replies, and the event subjects (events, audit, telemetry, AI,
/// dead letters, the appliance's own notices).
const DOMAIN_SUBJECTS: &[&str] = &[
    "svc.>",
    "evt.>",
    "audit.>",
    "telemetry.>",
    "ai.>",
    "dlq.>",
    "aicore.>",
    "$SRV.>",
    "_INBOX.>",
];

/// The permissions of a role; `None` for a role that gets no user (the server).
fn permissions(role: &str, game_server_allow: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Some(match role {
        // Serve `svc.>` (queue groups) and the micro protocol; emit events, audit,
        // telemetry, AI and dead letters; use JetStream; call other domains.
        "domains" => {
            let mut publish = s(DOMAIN_SUBJECTS);
            publish.extend(s(&["$JS.API.>", "$JS.ACK.>", "$JS.FC.>"]));
            (publish, s(DOMAIN_SUBJECTS))
        }
        // Requests to `svc.>` and their replies only; revocation notices; readiness.
        "gateway" => (
            s(&["svc.>", "$SRV.PING", "$SRV.PING.>"]),
            s(&["_INBOX.>", AUTH_REVOKED]),
        ),
        // A configured subset of `svc.>`, and telemetry.
        "game-server" => {
            let mut publish = game_server_allow.to_vec();
            publish.extend(s(&["telemetry.>", "evt.telemetry.>"]));
            (publish, s(&["_INBOX.>"]))
        }
        "admin" => (s(&[">"]), s(&[">"])),
        _ => return None,
    })
}

/// The NATS users for every certificate in the index that is neither revoked nor
/// expired. Anything else (no certificate, another CA, a revoked identity) has no user
/// and cannot connect.
pub fn users(
    ca: &Authority,
    game_server_allow: &[String],
    now: SystemTime,
) -> Result<Vec<NatsUser>> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    for c in ca.list()? {
        if c.revoked || c.not_after <= now {
            continue;
        }
        if let Some((publish, subscribe)) = permissions(&c.role, game_server_allow) {
            out.push(NatsUser {
                user: user_of(&c.name, &c.role),
                publish,
                subscribe,
                // Domains answer requests whose reply subjects they cannot know.
                allow_responses: c.role == "domains",
            });
        }
    }
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
        ca.issue_between(SERVER_NAME, "server", now, until, sans, None)?;
        renewed.push(SERVER_NAME.to_string());
    }
    for name in BUILT_IN {
        if due(ca.get(name)?.as_ref(), name, now) {
            ca.issue_between(name, name, now, until, &[], None)?;
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
        users: users(ca, &config.game_server_allow, now)?,
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_follow_the_index_and_leave_out_revoked_and_servers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let config = SecurityConfig::default();
        let now = SystemTime::now();
        let renewed = ensure_issued(&ca, &config, &server_sans(&config, "127.0.0.1"), now).unwrap();
        assert_eq!(renewed, ["nats", "domains", "gateway", "admin"]);
        assert!(ensure_issued(&ca, &config, &[], now).unwrap().is_empty());
        ca.issue("arena", "game-server", 30, &[], None).unwrap();
        ca.revoke("arena").unwrap();
        let names: Vec<String> = users(&ca, &[], now)
            .unwrap()
            .into_iter()
            .map(|u| u.user)
            .collect();
        assert_eq!(
            names,
            [
                "CN=admin,OU=admin,O=AI Core",
                "CN=domains,OU=domains,O=AI Core",
                "CN=gateway,OU=gateway,O=AI Core"
            ]
        );
        // A revoked built-in principal is issued again at the next check, and so is one
        // whose name was reused for another role.
        ca.revoke("gateway").unwrap();
        assert_eq!(ensure_issued(&ca, &config, &[], now).unwrap(), ["gateway"]);
        ca.issue("admin", "game-server", 30, &[], None).unwrap();
        assert_eq!(ensure_issued(&ca, &config, &[], now).unwrap(), ["admin"]);
        assert!(check_manual_issue("admin", "game-server").is_err());
        assert!(check_manual_issue("nats", "admin").is_err());
        check_manual_issue("admin", "admin").unwrap();
        check_manual_issue("arena-3", "game-server").unwrap();
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
    fn the_gateway_cannot_serve_and_a_game_server_only_calls_what_is_allowed() {
        let (publish, subscribe) = permissions("gateway", &[]).unwrap();
        assert!(publish.contains(&"svc.>".to_string()));
        assert!(!subscribe.iter().any(|s| s.starts_with("svc") || s == ">"));
        let allow = vec!["svc.settings.v1.get".to_string()];
        let (publish, subscribe) = permissions("game-server", &allow).unwrap();
        assert!(publish.contains(&allow[0]));
        assert!(!publish.iter().any(|s| s == "svc.>" || s == ">"));
        assert_eq!(subscribe, ["_INBOX.>"]);
        assert!(permissions("server", &[]).is_none());
    }
}
