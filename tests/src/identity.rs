//! The NATS client certificates tests present: the rustls crypto provider and an
//! [`Identity`] (a certificate, its key and the CA it chains to).

use std::path::{Path, PathBuf};
use std::sync::Once;

/// Installs the process's rustls crypto provider (ring, as in the appliance) once.
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client certificate: its file, its key and the CA the server must chain to.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The CA certificate (PEM) the server's certificate is checked against.
    pub ca: PathBuf,
    /// The client certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The principal's name (the certificate's CN).
    pub name: String,
}

impl Identity {
    /// `<name>.pem` / `<name>.key` in `dir`, trusting `ca`.
    pub fn in_dir(dir: &Path, name: &str, ca: &Path) -> Identity {
        Identity {
            ca: ca.to_path_buf(),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            name: name.to_string(),
        }
    }

    /// The principal's reply-subject prefix: the only inboxes it may subscribe to.
    pub fn inbox_prefix(&self) -> String {
        format!("_INBOX.{}", self.name)
    }

    /// Connect options presenting this certificate, with the principal's own inboxes.
    pub fn options(&self) -> async_nats::ConnectOptions {
        install_crypto();
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.ca.clone())
            .add_client_certificate(self.cert.clone(), self.key.clone())
            .custom_inbox_prefix(self.inbox_prefix())
    }
}
