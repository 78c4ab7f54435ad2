//! The certificates' remaining validity as a `/metrics` gauge.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Result;

use super::{Index, secs};

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
