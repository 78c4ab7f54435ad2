//! Making certificates: the CA's own parameters, and issuing, renewing and signing a
//! server or client certificate with the CA's key, recording it in the index.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{Authority, CA_NAME, Index, Issued, ORG, ROLES, check_name, secs, to_offset};
use crate::files::write_private;

/// The CA's parameters. Recomputed identically on every open, so the CA can sign with
/// its stored key without parsing its own certificate back.
pub(super) fn ca_params(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams> {
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
pub(super) fn spki_pin(key: &KeyPair) -> String {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    sha2::Sha256::digest(key.subject_public_key_info())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Authority {
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
        let (p, serial) = leaf_params(name, role, (now, not_after), sans)?;
        let pin = spki_pin(&key);
        let ca = ca_params(now, not_after)?;
        let issuer = Issuer::new(ca, &self.key);
        let cert = p.signed_by(&key, &issuer)?;

        // The certificate this one replaces stays accepted until it expires; pin it now,
        // while its key file is still the one on disk.
        let mut index = self.load_index()?;
        self.supersede(&mut index, name);
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

    /// Moves the current certificate of `name` to the superseded ones, pinned (it is
    /// dropped when it has no pin and cannot be pinned).
    fn supersede(&self, index: &mut Index, name: &str) {
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
    }
}

/// The parameters of a certificate named `name` with `role` (a server's with `sans`), valid
/// `now..not_after`, and its random serial.
fn leaf_params(
    name: &str,
    role: &str,
    (now, not_after): (SystemTime, SystemTime),
    sans: &[String],
) -> Result<(CertificateParams, Vec<u8>)> {
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
    Ok((p, serial))
}
