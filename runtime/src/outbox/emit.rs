//! Queuing events: [`Emit`] on a store transaction writes the event into the outbox table
//! beside the transaction's own writes, with the next sequence number and the trace of the
//! request it belongs to, so it is relayed if and only if those writes commit. Relaying it
//! is [`super::relay`]'s business.

use std::time::SystemTime;

use aicore_proto::{Event, Status};
use bytes::Bytes;

use super::{OUTBOX, OUTBOX_META, OutboxEvent, OutboxMeta, TRACEPARENT, unix_ms};
use crate::store::Tx;

/// Queuing events in a store transaction.
pub trait Emit {
    /// Queues `event` for JetStream in this transaction, on the subject its message
    /// declares (`(aicore.common.v1.event)`): it is published (by the outbox relay) if and
    /// only if this closure's writes commit, so state and events never disagree.
    fn emit<E: Event>(&mut self, event: &E) -> Result<(), Status> {
        self.emit_raw(&event.subject(), event.encode_to_vec())
    }

    /// Queues a payload on `subject` (messages published on a subject a caller chose,
    /// or a message type serving more than one subject).
    fn emit_raw(&mut self, subject: &str, payload: impl Into<Bytes>) -> Result<(), Status> {
        self.emit_with_headers(subject, Vec::new(), payload)
    }

    /// Like [`Emit::emit_raw`], with message headers (name, value).
    fn emit_with_headers(
        &mut self,
        subject: &str,
        headers: Vec<(String, String)>,
        payload: impl Into<Bytes>,
    ) -> Result<(), Status>;
}

impl Emit for Tx<'_> {
    fn emit_with_headers(
        &mut self,
        subject: &str,
        headers: Vec<(String, String)>,
        payload: impl Into<Bytes>,
    ) -> Result<(), Status> {
        let mut meta = self
            .get_msg::<OutboxMeta>(OUTBOX_META, b"meta")?
            .unwrap_or_default();
        if meta.epoch == 0 {
            meta.epoch = rand::random::<u64>() | 1;
        }
        let seq = meta.next_seq.max(1);
        meta.next_seq = seq + 1;
        self.put_msg(OUTBOX_META, b"meta", &meta);
        let mut headers = headers;
        if let Some(trace) = self.trace
            && !headers
                .iter()
                .any(|h| h.0.eq_ignore_ascii_case(TRACEPARENT))
        {
            headers.push((TRACEPARENT.to_string(), trace.to_string()));
        }
        let event = OutboxEvent {
            seq,
            msg_id: format!("{:016x}-{seq}", meta.epoch),
            subject: subject.to_string(),
            payload: payload.into().to_vec(),
            header_names: headers.iter().map(|h| h.0.clone()).collect(),
            header_values: headers.into_iter().map(|h| h.1).collect(),
            queued_unix_ms: unix_ms(SystemTime::now()),
        };
        self.put_msg(OUTBOX, &seq.to_be_bytes(), &event);
        Ok(())
    }
}
