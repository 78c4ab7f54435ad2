//! [`serve`]: puts any generated `XxxServer` on NATS as a micro-protocol
//! service — one endpoint per RPC on `svc.<domain>.v1.<rpc>`, queue group `<domain>` so
//! replicas share load, `$SRV.PING/INFO/STATS` answered per the micro protocol
//! ([`crate::micro`]). Requests run
//! concurrently up to a per-domain bound; each honours the caller's deadline header; a
//! panic is caught and answered as Internal while the service keeps serving; errors go
//! out as micro-protocol error headers plus a `common.Error` body. Streams are sent as
//! messages to the reply inbox closed by an end marker (or, when the service stops
//! mid-stream, by an Unavailable error, so shutdown never waits on a long stream). It
//! does not decide placement or connect to NATS: the appliance hands it a connected client.

mod cancel;
mod metadata;
mod record;
mod reply;
mod request;
mod stream;
mod trust;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aicore_proto::{Code, Dispatch, ServiceInfo, Status};
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use tokio_util::sync::CancellationToken;

use crate::micro;
use cancel::{Streams, listen_for_cancels};
use record::Record;
use request::handle;

pub use trust::{EXTERNAL_ACCOUNT, Trust};

/// How often a quiet stream says it is alive ([`aicore_proto::headers::STREAM`]
/// `heartbeat`). nats-server forgets a streamed reply's route across accounts two
/// minutes (its default response threshold) after the last message, so a quiet watch by
/// a game server would go silently dead without one; clients can also tell a dead stream
/// from a quiet one.
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(30);

/// Tunables of one served domain.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Requests of this domain handled at once; more wait in the subscription.
    pub max_in_flight: usize,
    /// Version announced in `$SRV.INFO`.
    pub version: String,
    /// Who may act for whom.
    pub trust: Arc<Trust>,
    /// How often a quiet stream sends a heartbeat.
    pub stream_heartbeat: Duration,
    /// The store the domain writes to: `$SRV.PING` and `$SRV.INFO` say in their
    /// metadata whether it takes writes (`aicore status` and `/readyz` show it).
    pub store: Option<crate::Store>,
    /// Where the domain's per-RPC counters and latency histograms go (none: not kept).
    pub metrics: Option<Arc<crate::metrics::Registry>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_in_flight: 256,
            version: env!("CARGO_PKG_VERSION").to_string(),
            trust: Arc::default(),
            stream_heartbeat: STREAM_HEARTBEAT,
            store: None,
            metrics: None,
        }
    }
}

/// A domain being served; [`ServiceHandle::stop`] drains it.
pub struct ServiceHandle {
    domain: &'static str,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    liveness: Liveness,
}

/// How often a domain's request loop marks itself alive when no request wakes it.
pub const LOOP_TURN: Duration = Duration::from_secs(1);

/// What a health loop needs to tell a live domain instance from a wedged one: its micro
/// instance id (to ask this instance, not any replica on the NATS network, for a ping)
/// and when its request loop last turned.
#[derive(Clone)]
pub struct Liveness {
    /// The domain.
    pub domain: &'static str,
    /// Its micro instance id: `$SRV.PING.<domain>.<id>` reaches this instance only.
    pub id: String,
    /// Milliseconds since `since` at the loop's last turn.
    turned: Arc<AtomicU64>,
    since: Instant,
}

impl Liveness {
    /// How long ago the request loop last turned (at least every [`LOOP_TURN`] while it
    /// runs; a loop stuck in a handler or stopped stops turning).
    pub fn since_last_turn(&self) -> Duration {
        let at = Duration::from_millis(self.turned.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(at)
    }

    fn turn(&self) {
        let now = self.since.elapsed().as_millis();
        self.turned
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl ServiceHandle {
    /// The domain served.
    pub fn domain(&self) -> &'static str {
        self.domain
    }

    /// This instance's liveness, for a health loop.
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// Stops taking requests and waits for the ones in flight to finish.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Serves `dispatch` on NATS until `shutdown` (or [`ServiceHandle::stop`]).
pub async fn serve(
    nats: async_nats::Client,
    dispatch: Arc<dyn Dispatch>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<ServiceHandle, Status> {
    let info = dispatch.service();
    let endpoints = subscribe(&nats, info).await?;
    let service = Arc::new(micro_service(info, &options));
    let cancel = shutdown.child_token();
    let discovery = micro::serve_discovery(nats.clone(), service.clone(), cancel.clone())
        .await
        .map_err(|e| unavailable(format!("cannot start {}: {e}", info.domain)))?;
    // Streams callers abandoned: every replica hears the cancel of a stream; the one
    // running it stops it (see `Streams`).
    let streams = Streams::default();
    listen_for_cancels(&nats, info, &streams, &shutdown).await?;
    let mut requests = futures::stream::select_all(endpoints);
    let limit = options.max_in_flight.max(1);
    let served = Arc::new(AtomicU64::new(0));
    let stop = cancel.clone();
    let rpc_metrics = options.metrics.as_ref().map(|m| m.rpc(info));
    let options = Arc::new(options);
    let liveness = Liveness {
        domain: info.domain,
        id: service.id.clone(),
        turned: Arc::new(AtomicU64::new(0)),
        since: Instant::now(),
    };
    let alive = liveness.clone();
    let task = tokio::spawn(async move {
        // Requests run concurrently as futures of this one task (no task spawned per
        // request: measured, spawning plus a semaphore cost a fifth of the throughput of a
        // trivial handler). At most `limit` are in flight; past that, requests wait in the
        // subscription until one finishes. Handlers that burn CPU or block must move that
        // work off the task (argon2 runs on the blocking pool; store writes on the writer
        // thread).
        let mut in_flight = FuturesUnordered::new();
        let mut turns = tokio::time::interval(LOOP_TURN);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = turns.tick() => alive.turn(),
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                r = requests.next(), if in_flight.len() < limit => match r {
                    Some((method, request)) => {
                        served.fetch_add(1, Ordering::Relaxed);
                        let record = Record { stats: &service.endpoints[method].stats, rpc: rpc_metrics.as_deref(), method };
                        in_flight.push(handle(&*dispatch, &nats, record, &options, &stop, &streams, method, request));
                    }
                    None => break,
                },
            }
        }
        // Stop taking requests (dropping the subscriptions unsubscribes them), then
        // finish every in-flight one.
        drop(requests);
        while in_flight.next().await.is_some() {}
        // The subscriptions may also have ended on their own (the connection closed).
        stop.cancel();
        let _ = discovery.await;
        tracing::info!(
            domain = info.domain,
            served = served.load(Ordering::Relaxed),
            "domain stopped"
        );
    });
    Ok(ServiceHandle {
        domain: info.domain,
        cancel,
        task,
        liveness,
    })
}

/// Serving could not start: NATS refused a subscription.
fn unavailable(what: String) -> Status {
    Status::new(Code::Unavailable, what)
}

/// One subscription per RPC, in the domain's queue group, each request tagged with the
/// index of its RPC.
async fn subscribe(
    nats: &async_nats::Client,
    info: &'static ServiceInfo,
) -> Result<Vec<BoxStream<'static, (usize, async_nats::Message)>>, Status> {
    let mut endpoints = Vec::with_capacity(info.methods.len());
    for (i, m) in info.methods.iter().enumerate() {
        let sub = nats
            .queue_subscribe(m.subject, info.domain.to_string())
            .await
            .map_err(|e| unavailable(format!("cannot subscribe to {}: {e}", m.subject)))?;
        endpoints.push(sub.map(move |r| (i, r)).boxed());
    }
    Ok(endpoints)
}

/// The domain as the micro protocol describes it: one endpoint per RPC.
fn micro_service(info: &'static ServiceInfo, options: &ServeOptions) -> micro::Service {
    micro::Service::with_store(
        options.store.clone(),
        info.domain,
        options.version.clone(),
        info.description,
        info.methods
            .iter()
            .map(|m| micro::Endpoint {
                name: m.rpc,
                subject: m.subject,
                stats: Default::default(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
