//! How far the relay is behind ([`Backlog`]), read from the outbox table itself whenever
//! `/metrics` is scraped ([`OutboxMetrics`]); the relay keeps no counters of its own.

use std::time::SystemTime;

use aicore_proto::Status;

use super::{OUTBOX, OUTBOX_META, OutboxEvent, OutboxMeta, unix_ms};
use crate::store::{self, Store};

/// How far the relay is behind: read when metrics are scraped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Events queued: from the oldest still in the outbox to the last queued (exact
    /// unless a publish failed while later ones succeeded; then the gap is counted too).
    pub events: u64,
    /// Age of the oldest queued event, in milliseconds (0 when none is queued).
    pub oldest_age_ms: u64,
}

/// The outbox's backlog now.
pub fn backlog(store: &Store, now: SystemTime) -> Result<Backlog, Status> {
    let Some((_, oldest)) = store.scan(OUTBOX, b"", b"", 1)?.into_iter().next() else {
        return Ok(Backlog::default());
    };
    let oldest = store::decode::<OutboxEvent>(OUTBOX, oldest)?;
    let meta = store
        .get_msg::<OutboxMeta>(OUTBOX_META, b"meta")?
        .unwrap_or_default();
    Ok(Backlog {
        events: meta.next_seq.saturating_sub(oldest.seq).max(1),
        oldest_age_ms: unix_ms(now).saturating_sub(oldest.queued_unix_ms),
    })
}

/// The outbox's figures for `/metrics`.
pub struct OutboxMetrics(pub Store);

impl crate::metrics::Collect for OutboxMetrics {
    fn collect(&self, out: &mut crate::metrics::Exposition) {
        use crate::metrics::Kind;
        // A store that cannot be read says so in its own figures; the page goes on.
        let Ok(b) = backlog(&self.0, SystemTime::now()) else {
            return;
        };
        out.scalar(
            "aicore_outbox_backlog_events",
            Kind::Gauge,
            "Events queued in the outbox, not yet published to JetStream.",
            b.events,
        );
        out.scalar(
            "aicore_outbox_oldest_event_age_seconds",
            Kind::Gauge,
            "Age of the oldest event waiting in the outbox (0 when it is empty).",
            b.oldest_age_ms as f64 / 1000.0,
        );
    }
}
