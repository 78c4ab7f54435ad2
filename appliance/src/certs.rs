//! The appliance's own certificate authority. On first use it creates a local CA under
//! `<data-dir>/certs/` (a `0700` directory; every file in it written `0600` through
//! [`crate::files::write_private`]) and from then on issues certificates
//! signed by it: the nats-server's server certificate (SANs: localhost, 127.0.0.1, ::1 and
//! configured host names) and one client certificate per principal — `domains`,
//! `gateway`, `admin`, and any external client (`game-server`, tools) an operator issues
//! with `aicore certs issue`. Every issued certificate is recorded in `index.json`
//! (name, role, serial, validity, revoked flag), which `aicore certs list` shows and
//! `aicore certs revoke` updates.
//!
//! This module only issues and records. Making nats-server require these certificates
//! and map each identity to a least-privilege user is the supervisor's job (its TLS and
//! accounts configuration); until that is wired, issuing a certificate grants nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::files::write_private;

/// The organisation every AI Core certificate names.
const ORG: &str = "AI Core";
/// The CA's common name.
const CA_NAME: &str = "AI Core local CA";
/// Roles a client certificate may carry (its OU), each a NATS user with its own rights.
pub const ROLES: &[&str] = &["domains", "gateway", "admin", "game-server"];

/// One issued certificate, as recorded in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Its name (the certificate's CN), unique in the index.
    pub name: String,
    /// `server` or one of [`ROLES`].
    pub role: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, seconds since the epoch.
    pub not_before: u64,
    /// End of validity, seconds since the epoch.
    pub not_after: u64,
    /// Certificate file (PEM).
    pub cert_path: PathBuf,
    /// Private key file (PEM, 0600).
    pub key_path: PathBuf,
    /// Revoked by `aicore certs revoke`.
    #[serde(default)]
    pub revoked: bool,
    /// The certificate's public-key pin: lower-case hex SHA-256 of its DER
    /// SubjectPublicKeyInfo, as nats-server's `pinned_certs` takes it. Every issue makes a
    /// new key, so this names one certificate. Empty in records written before pins
    /// existed (computed from the key file when needed).
    #[serde(default)]
    pub pin: String,
}

impl Issued {
    /// Whether it is due for renewal: two thirds of its lifetime have passed.
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        let now = secs(now);
        let life = self.not_after.saturating_sub(self.not_before);
        now >= self.not_before + life * 2 / 3
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// The current certificate of each name.
    certs: BTreeMap<String, Issued>,
    /// Certificates a newer one of the same name replaced: still accepted until they
    /// expire (a renewed principal keeps its connections until it reconnects with the
    /// new files) unless revoked. Dropped once expired.
    #[serde(default)]
    superseded: Vec<Issued>,
}

/// The local CA in a directory.
pub struct Authority {
    dir: PathBuf,
    key: KeyPair,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(secs(t) as i64).context("time out of range")
}

/// The CA's parameters. Recomputed identically on every open, so the CA can sign with
/// its stored key without parsing its own certificate back.
fn ca_params(not_before: SystemTime, not_after: SystemTime) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = to_offset(not_before)?;
    p.not_after = to_offset(not_after)?;
    Ok(p)
}

/// The nats-server `pinned_certs` form of a key: hex SHA-256 of its SubjectPublicKeyInfo.
fn spki_pin(key: &KeyPair) -> String {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    sha2::Sha256::digest(key.subject_public_key_info())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A certificate name: what may appear in a CN and a file name.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if !ok {
        bail!("certificate name {name:?} must be 1-64 characters of [A-Za-z0-9_-]");
    }
    if name.contains('.') {
        // The name is a token of the principal's reply subjects (`_INBOX.<name>.>`): a
        // dot would let `a` read the replies of `a.b`.
        bail!("certificate name {name:?} must not contain '.'; use '-' or '_'");
    }
    Ok(())
}

impl Authority {
    /// Opens the CA in `dir`, creating it (valid `ca_days`) if there is none.
    pub fn open_or_create(dir: &Path, ca_days: u32) -> Result<Authority> {
        crate::files::create_private_dir(dir)?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        if key_path.exists() && cert_path.exists() {
            let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)
                .context("reading the CA key")?;
            return Ok(Authority {
                dir: dir.to_path_buf(),
                key,
            });
        }
        let key = KeyPair::generate()?;
        let now = SystemTime::now();
        let params = ca_params(now, now + Duration::from_secs(u64::from(ca_days) * 86_400))?;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        tracing::info!(dir = %dir.display(), "created the local certificate authority");
        Ok(Authority {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The CA certificate's path.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn load_index(&self) -> Result<Index> {
        match std::fs::read_to_string(self.index_path()) {
            Ok(s) => serde_json::from_str(&s).context("reading certs/index.json"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e.into()),
        }
    }

    fn save_index(&self, index: &Index) -> Result<()> {
        write_private(
            &self.index_path(),
            serde_json::to_string_pretty(index)?.as_bytes(),
        )
    }

    /// Issues (or re-issues, replacing the record) a certificate named `name`.
    ///
    /// `role` is `server` (TLS server auth; `sans` are its host names and addresses) or a
    /// client role from [`ROLES`] (client auth; CN = name, OU = role). Files go to
    /// `out_dir` (default: the CA directory) as `<name>.pem` / `<name>.key`.
    pub fn issue(
        &self,
        name: &str,
        role: &str,
        days: u32,
        sans: &[String],
        out_dir: Option<&Path>,
    ) -> Result<Issued> {
        if days == 0 {
            bail!("--days must be at least 1");
        }
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
        self.issue_between(name, role, now, not_after, sans, out_dir)
    }

    /// [`Authority::issue`] with an explicit validity window (tests use it for
    /// certificates that are already expired or renew within seconds).
    pub fn issue_between(
        &self,
        name: &str,
        role: &str,
        now: SystemTime,
        not_after: SystemTime,
        sans: &[String],
        out_dir: Option<&Path>,
    ) -> Result<Issued> {
        let key = KeyPair::generate()?;
        self.sign(name, role, (now, not_after), sans, out_dir, key)
    }

    /// Renews one of the appliance's own certificates (kept beside the CA key, in its
    /// directory) for `now..not_after` with the key it already has, when it has a
    /// readable one and is neither revoked nor changing role; else with a new key.
    ///
    /// nats-server pins public keys: a renewal that kept the key keeps the pin, so the
    /// appliance's own connections, made with the old certificate, stay up when it
    /// expires (a new key would have them closed at that moment, dropping the replies in
    /// flight). A new key for these buys nothing here: whoever can read the old key file
    /// can read the CA key beside it.
    pub fn renew_own(
        &self,
        name: &str,
        role: &str,
        now: SystemTime,
        not_after: SystemTime,
        sans: &[String],
    ) -> Result<Issued> {
        let kept = self
            .get(name)?
            .filter(|c| !c.revoked && c.role == role)
            .and_then(|c| std::fs::read_to_string(&c.key_path).ok())
            .and_then(|pem| KeyPair::from_pem(&pem).ok());
        let key = match kept {
            Some(k) => k,
            None => KeyPair::generate()?,
        };
        self.sign(name, role, (now, not_after), sans, None, key)
    }

    fn sign(
        &self,
        name: &str,
        role: &str,
        (now, not_after): (SystemTime, SystemTime),
        sans: &[String],
        out_dir: Option<&Path>,
        key: KeyPair,
    ) -> Result<Issued> {
        check_name(name)?;
        if role != "server" && !ROLES.contains(&role) {
            bail!("unknown role {role:?}: one of server, {}", ROLES.join(", "));
        }
        if not_after <= now {
            bail!("a certificate must end after it starts");
        }
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ORG);
        dn.push(DnType::OrganizationalUnitName, role);
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.not_before = to_offset(now)?;
        p.not_after = to_offset(not_after)?;
        let serial: [u8; 16] = rand::random();
        // A positive serial: clear the top bit.
        let mut serial = serial.to_vec();
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if role == "server" {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for san in sans {
                p.subject_alt_names
                    .push(match san.parse::<std::net::IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(san.clone().try_into()?),
                    });
            }
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let pin = spki_pin(&key);
        let ca = ca_params(now, not_after)?;
        let issuer = Issuer::new(ca, &self.key);
        let cert = p.signed_by(&key, &issuer)?;

        // The certificate this one replaces stays accepted until it expires; pin it now,
        // while its key file is still the one on disk.
        let mut index = self.load_index()?;
        if let Some(mut old) = index.certs.remove(name) {
            if old.pin.is_empty() {
                match self.pin(&old) {
                    Ok(p) => old.pin = p,
                    Err(e) => {
                        tracing::warn!(certificate = %name, error = %format!("{e:#}"), "the replaced certificate cannot be pinned and is no longer accepted")
                    }
                }
            }
            if !old.pin.is_empty() {
                index.superseded.push(old);
            }
        }
        let out = out_dir.unwrap_or(&self.dir);
        crate::files::create_private_dir(out)?;
        let cert_path = out.join(format!("{name}.pem"));
        let key_path = out.join(format!("{name}.key"));
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        let issued = Issued {
            name: name.to_string(),
            role: role.to_string(),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_before: secs(now),
            not_after: secs(not_after),
            cert_path,
            key_path,
            revoked: false,
            pin,
        };
        index.certs.insert(name.to_string(), issued.clone());
        let now = secs(now);
        index.superseded.retain(|c| c.not_after > now);
        self.save_index(&index)?;
        Ok(issued)
    }

    /// The public-key pin of `c`: recorded at issue, or computed from its key file for
    /// records written before pins were.
    pub fn pin(&self, c: &Issued) -> Result<String> {
        if !c.pin.is_empty() {
            return Ok(c.pin.clone());
        }
        let pem = std::fs::read_to_string(&c.key_path)
            .with_context(|| format!("reading {}", c.key_path.display()))?;
        let key =
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", c.key_path.display()))?;
        Ok(spki_pin(&key))
    }

    /// Every certificate still on record: the current one of each name and the ones they
    /// replaced that have not expired yet.
    pub fn list_all(&self) -> Result<Vec<Issued>> {
        let index = self.load_index()?;
        let mut all: Vec<Issued> = index.certs.into_values().collect();
        all.extend(index.superseded);
        Ok(all)
    }

    /// The record of `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<Issued>> {
        Ok(self.load_index()?.certs.remove(name))
    }

    /// Every recorded certificate, by name.
    pub fn list(&self) -> Result<Vec<Issued>> {
        Ok(self.load_index()?.certs.into_values().collect())
    }

    /// Revokes the certificates of `name`: all of them (the current one and every one it
    /// replaced), or only the one with serial `serial`. The supervisor unpins them at its
    /// next check and nats-server closes their connections. Issuing `name` again makes a
    /// new certificate; the revoked ones stay refused. Returns what it revoked.
    pub fn revoke(&self, name: &str, serial: Option<&str>) -> Result<Vec<Issued>> {
        let mut index = self.load_index()?;
        let mut revoked = Vec::new();
        let serial = serial.map(|s| s.trim().to_ascii_lowercase());
        for c in index
            .certs
            .values_mut()
            .chain(index.superseded.iter_mut())
            .filter(|c| c.name == name)
            .filter(|c| serial.as_deref().is_none_or(|s| c.serial == s))
        {
            c.revoked = true;
            revoked.push(c.clone());
        }
        if revoked.is_empty() {
            match serial {
                Some(s) => bail!("no certificate named {name:?} with serial {s}"),
                None => bail!("no certificate named {name:?}"),
            }
        }
        self.save_index(&index)?;
        Ok(revoked)
    }
}

/// Seconds until each certificate expires, for `/metrics` (read from the CA's directory
/// at scrape time, so renewals show at once): every current certificate of the index
/// by name and role, and the CA itself (`name="ca"`). Cardinality is the number of
/// principals the operator issued certificates to.
pub struct ExpiryMetrics {
    dir: PathBuf,
}

impl ExpiryMetrics {
    /// The certificates of the CA in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        ExpiryMetrics { dir }
    }

    /// The CA certificate's end of validity, seconds since the epoch.
    fn ca_not_after(&self) -> Result<i64> {
        let pem = std::fs::read(self.dir.join("ca.pem"))?;
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow::anyhow!("ca.pem: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("ca.pem: {e}"))?;
        Ok(cert.validity().not_after.timestamp())
    }
}

impl aicore_runtime::metrics::Collect for ExpiryMetrics {
    fn collect(&self, out: &mut aicore_runtime::metrics::Exposition) {
        const NAME: &str = "aicore_cert_expiry_seconds";
        let now = secs(SystemTime::now()) as i64;
        let index: Index = match std::fs::read_to_string(self.dir.join("index.json")) {
            Ok(s) => serde_json::from_str(&s).unwrap_or_default(),
            Err(_) => Index::default(),
        };
        out.family(
            NAME,
            aicore_runtime::metrics::Kind::Gauge,
            "Seconds until a certificate expires (negative once expired), by name and role.",
        );
        match self.ca_not_after() {
            Ok(t) => out.sample(NAME, &[("name", "ca"), ("role", "ca")], t - now),
            Err(e) => tracing::debug!(error = %e, "CA certificate not read for metrics"),
        }
        for c in index.certs.values().filter(|c| !c.revoked) {
            out.sample(
                NAME,
                &[("name", &c.name), ("role", &c.role)],
                c.not_after as i64 - now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::files::testing::{mode, open_dir};

    fn verify_client(ca: &Authority, cert_path: &Path) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca.ca_path()).unwrap())
            .unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_file(cert_path).unwrap();
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn issued_client_certs_chain_to_our_ca_and_not_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let issued = ca.issue("gateway", "gateway", 30, &[], None).unwrap();
        verify_client(&ca, &issued.cert_path).expect("chains to our CA");

        let other_dir = tempfile::tempdir().unwrap();
        let other = Authority::open_or_create(other_dir.path(), 3650).unwrap();
        assert!(verify_client(&other, &issued.cert_path).is_err());

        // Reopening reuses the same CA, and it still signs verifiable certificates.
        let again = Authority::open_or_create(dir.path(), 3650).unwrap();
        assert_eq!(
            std::fs::read(again.ca_path()).unwrap(),
            std::fs::read(ca.ca_path()).unwrap()
        );
        let admin = again.issue("admin", "admin", 30, &[], None).unwrap();
        verify_client(&ca, &admin.cert_path).expect("signed by the reopened CA");
    }

    #[test]
    fn the_appliances_own_renewals_keep_their_key_unless_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let first = ca.renew_own("domains", "domains", now, later, &[]).unwrap();
        let renewed = ca.renew_own("domains", "domains", now, later, &[]).unwrap();
        assert_ne!(renewed.serial, first.serial, "a new certificate");
        assert_eq!(renewed.pin, first.pin, "the same key");
        verify_client(&ca, &renewed.cert_path).expect("chains to our CA");
        // Issued the usual way (the CLI), a certificate gets a new key.
        let reissued = ca
            .issue_between("domains", "domains", now, later, &[], None)
            .unwrap();
        assert_ne!(reissued.pin, renewed.pin);
        // A revoked certificate's key is never reused, nor one under another role.
        ca.revoke("domains", None).unwrap();
        let after_revoke = ca.renew_own("domains", "domains", now, later, &[]).unwrap();
        assert_ne!(after_revoke.pin, reissued.pin);
        let other_role = ca.renew_own("domains", "gateway", now, later, &[]).unwrap();
        assert_ne!(other_role.pin, after_revoke.pin);
    }

    #[test]
    fn keys_are_private_and_the_index_records_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let srv = ca
            .issue(
                "nats",
                "server",
                90,
                &["localhost".into(), "127.0.0.1".into()],
                None,
            )
            .unwrap();
        for key in [dir.path().join("ca.key"), srv.key_path.clone()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let gs = ca.issue("arena-1", "game-server", 30, &[], None).unwrap();
        assert_eq!(ca.list().unwrap().len(), 2);
        assert!(!gs.revoked);
        ca.revoke("arena-1", None).unwrap();
        let listed = ca.list().unwrap();
        assert!(listed.iter().any(|c| c.name == "arena-1" && c.revoked));
        assert!(listed.iter().any(|c| c.name == "nats" && !c.revoked));
        assert!(ca.revoke("nobody", None).is_err());
    }

    #[test]
    fn every_file_is_private_even_in_an_open_directory() {
        let dir = open_dir();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let gs = ca.issue("arena-1", "game-server", 30, &[], None).unwrap();
        let out = dir.path().join("handed-out");
        let tool = ca.issue("tool", "admin", 30, &[], Some(&out)).unwrap();
        ca.revoke("tool", None).unwrap();
        for f in [
            ca.ca_path(),
            dir.path().join("ca.key"),
            dir.path().join("index.json"),
            gs.cert_path,
            gs.key_path,
            tool.cert_path,
            tool.key_path,
        ] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        assert_eq!(mode(&out), 0o700, "a directory --out creates");
        // An existing directory keeps the mode the operator gave it.
        assert_eq!(mode(dir.path()), 0o755);
    }

    #[test]
    fn a_link_planted_where_a_key_is_written_is_never_followed() {
        let dir = open_dir();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        let out = open_dir();
        let victim = out.path().join("victim");
        std::fs::write(&victim, b"").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
        // Where the key went on its way before (`<name>.tmp`): not used any more.
        std::os::unix::fs::symlink(&victim, out.path().join("arena.tmp")).unwrap();
        let issued = ca
            .issue("arena", "game-server", 30, &[], Some(out.path()))
            .unwrap();
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"",
            "the link was followed"
        );
        assert!(
            std::fs::symlink_metadata(&issued.key_path)
                .unwrap()
                .file_type()
                .is_file()
        );
        assert_eq!(mode(&issued.key_path), 0o600);
        KeyPair::from_pem(&std::fs::read_to_string(&issued.key_path).unwrap()).unwrap();

        // A link at the key's own path: refused, its target untouched, nothing recorded.
        std::os::unix::fs::symlink(&victim, out.path().join("bench.key")).unwrap();
        let err = ca
            .issue("bench", "game-server", 30, &[], Some(out.path()))
            .unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"");
        assert!(ca.get("bench").unwrap().is_none());
    }

    #[test]
    fn bad_names_roles_and_days_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path(), 3650).unwrap();
        assert!(ca.issue("../evil", "admin", 30, &[], None).is_err());
        assert!(ca.issue("ok", "root", 30, &[], None).is_err());
        assert!(ca.issue("ok", "admin", 0, &[], None).is_err());
        assert!(ca.list().unwrap().is_empty());
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let c = Issued {
            name: "x".into(),
            role: "admin".into(),
            serial: "01".into(),
            not_before: 1_000,
            not_after: 1_000 + 300,
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            revoked: false,
            pin: String::new(),
        };
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert!(!c.needs_renewal(at(1_199)));
        assert!(c.needs_renewal(at(1_200)));
    }
}
