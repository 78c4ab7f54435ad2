//! Certificate issues and revocations on the AUDIT stream, like every other security event:
//! `audit.certs.issued.<serial>` and `audit.certs.revoked.<serial>`, a JSON record each
//! (name, role, serial, validity; never a key).
//!
//! `aicore certs issue|revoke` works on the certificate index whether or not an appliance
//! runs, so the record is written by the running appliance when it sees the change in
//! the index (at start and every `security.check_interval_secs`), exactly once per
//! certificate and kind: each record has a subject of its own, and one is published only
//! when the stream holds none on that subject yet (with the subject as `Nats-Msg-Id`, so a
//! race with another appliance on the same stream stores one). An issue older than the
//! stream's retention is not recorded late.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::certs::{Authority, Issued};

/// One audit record.
#[derive(Debug, serde::Serialize)]
struct Record<'a> {
    kind: &'a str,
    name: &'a str,
    role: &'a str,
    serial: &'a str,
    not_before: u64,
    not_after: u64,
    /// When the appliance recorded it (seconds since the epoch).
    seen_at: u64,
}

/// The records certificate `c` calls for: issued, and revoked when it is.
fn subjects(c: &Issued) -> Vec<(&'static str, String)> {
    let mut out = vec![("issued", format!("audit.certs.issued.{}", c.serial))];
    if c.revoked {
        out.push(("revoked", format!("audit.certs.revoked.{}", c.serial)));
    }
    out
}

/// Publishes the records of `certs` not yet in the stream; `done` remembers what is
/// known to be there. Returns how many it published.
async fn publish_new(
    js: &jetstream::Context,
    certs: &[Issued],
    retention: Duration,
    done: &mut HashSet<String>,
) -> Result<usize, String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stream = js
        .get_stream("AUDIT")
        .await
        .map_err(|e| format!("the AUDIT stream: {e}"))?;
    let mut published = 0;
    for c in certs {
        for (kind, subject) in subjects(c) {
            if done.contains(&subject) {
                continue;
            }
            if kind == "issued"
                && !retention.is_zero()
                && now.saturating_sub(c.not_before) > retention.as_secs()
            {
                done.insert(subject);
                continue;
            }
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(_) => {
                    done.insert(subject);
                    continue;
                }
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(format!("reading {subject}: {e}")),
            }
            let record = Record {
                kind,
                name: &c.name,
                role: &c.role,
                serial: &c.serial,
                not_before: c.not_before,
                not_after: c.not_after,
                seen_at: now,
            };
            let body = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", subject.as_str());
            js.publish_with_headers(subject.clone(), headers, body.into())
                .await
                .map_err(|e| format!("publishing {subject}: {e}"))?
                .await
                .map_err(|e| format!("publishing {subject}: {e}"))?;
            done.insert(subject);
            published += 1;
        }
    }
    Ok(published)
}

/// Records certificate issues and revocations from the index in `certs_dir` every
/// `every`, until `stop`.
pub async fn run(
    js: jetstream::Context,
    certs_dir: PathBuf,
    ca_days: u32,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut done = HashSet::new();
    loop {
        let listed = Authority::open_or_create(&certs_dir, ca_days).and_then(|ca| ca.list_all());
        match listed {
            Ok(certs) => match publish_new(&js, &certs, retention, &mut done).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "certificate changes audited"),
                Err(e) => {
                    tracing::warn!(error = %e, "auditing certificate changes failed; retrying")
                }
            },
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the certificate index failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
