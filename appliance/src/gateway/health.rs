//! Readiness: NATS connected and every exposed domain answering `$SRV.PING`. Asking costs a
//! NATS round trip to every service, so an answer is reused for a short while and only one
//! check runs at a time (callers during a check wait for its answer). Liveness (`/healthz`)
//! needs none of this: a process that answers HTTP is alive.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;

/// A readiness answer.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// NATS is connected.
    pub nats_connected: bool,
    /// Exposed domains that did not answer.
    pub missing: Vec<String>,
    /// Why the store refuses writes, when a domain says it does (reads still work, so
    /// the appliance stays ready; the body says the store is read-only).
    pub store_error: Option<String>,
}

impl Readiness {
    /// Ready to serve.
    pub fn ready(&self) -> bool {
        self.nats_connected && self.missing.is_empty()
    }

    /// The JSON body of `/readyz`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "ready": self.ready(),
            "nats_connected": self.nats_connected,
            "missing": self.missing,
            "store": if self.store_error.is_some() { "read-only" } else { "writable" },
            "store_error": self.store_error,
        })
        .to_string()
    }
}

/// Cached readiness checks.
pub struct Ready {
    domains: Vec<&'static str>,
    reuse: Duration,
    /// How long to wait for `$SRV.PING` answers.
    wait: Duration,
    last: Mutex<Option<(Instant, Readiness)>>,
}

impl Ready {
    /// Checks of `domains`, each answer reused for `reuse`.
    pub fn new(domains: Vec<&'static str>, reuse: Duration) -> Self {
        Ready {
            domains,
            reuse,
            wait: Duration::from_millis(500),
            last: Mutex::new(None),
        }
    }

    /// The current answer (cached, or checked now).
    pub async fn check(&self, nats: &async_nats::Client) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = &*last
            && at.elapsed() < self.reuse
        {
            return r.clone();
        }
        let r = self.probe(nats).await;
        *last = Some((Instant::now(), r.clone()));
        r
    }

    async fn probe(&self, nats: &async_nats::Client) -> Readiness {
        let connected = nats.connection_state() == async_nats::connection::State::Connected;
        let mut missing: BTreeSet<&str> = self.domains.iter().copied().collect();
        let mut store_error = None;
        let inbox = nats.new_inbox();
        if connected && let Ok(mut sub) = nats.subscribe(inbox.clone()).await {
            if nats
                .publish_with_reply("$SRV.PING", inbox, Bytes::new())
                .await
                .is_ok()
            {
                let deadline = tokio::time::Instant::now() + self.wait;
                while !missing.is_empty()
                    && let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await
                {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload)
                        && let Some(name) = v.get("name").and_then(|n| n.as_str())
                    {
                        missing.remove(name);
                        if let Some(e) = read_only(&v) {
                            store_error = Some(e);
                        }
                    }
                }
            }
            let _ = sub.unsubscribe().await;
        }
        Readiness {
            nats_connected: connected,
            missing: missing.into_iter().map(str::to_string).collect(),
            store_error,
        }
    }
}

/// From a `$SRV.PING` answer: why its store refuses writes, if it says so.
pub fn read_only(ping: &serde_json::Value) -> Option<String> {
    let meta = ping.get("metadata")?;
    (meta.get("store")?.as_str()? == "read-only").then(|| {
        meta.get("store_error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown")
            .to_string()
    })
}
