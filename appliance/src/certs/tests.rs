//! Tests of the CA: chains, renewals that keep their key, private files, the index and
//! revocation, and refused names.

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
