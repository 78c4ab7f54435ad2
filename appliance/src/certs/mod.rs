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

//!
//! This file holds the CA and its index; `issue` makes and signs certificates, `expiry`
//! exports their remaining validity as metrics.

mod expiry;
mod issue;

pub use expiry::ExpiryMetrics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use crate::files::write_private;
use issue::{ca_params, spki_pin};

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

#[cfg(test)]
mod tests;
