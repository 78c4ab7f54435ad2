//! event-bus's handlers: each RPC of the contract over the JetStream context, and the one
//! pull a Fetch and a Replay share.

use super::*;

impl EventBusHandler for EventBus {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<PublishResponse, Status> {
        let b = request.body;
        check_subject("subject", &b.subject)?;
        check_dedup_id(&b.dedup_id)?;
        if b.data.len() > MAX_DATA_BYTES {
            let mut e = Status::invalid("data", format!("must be at most {MAX_DATA_BYTES} bytes"));
            e.code = Code::ResourceExhausted;
            return Err(e);
        }
        let headers = publish_headers(&b.content_type, &b.headers)?;
        let js = self.js()?;
        let ack = js
            .send_publish(
                b.subject,
                PublishMessage::build()
                    .payload(b.data)
                    .headers(headers)
                    .message_id(&b.dedup_id),
            )
            .await
            .map_err(|e| unavailable("publishing", e))?
            .await
            .map_err(|e| unavailable("storing the message", e))?;
        Ok(PublishResponse {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Streaming<ReplayResponse>, Status> {
        let deadline = request.meta.deadline;
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_filter("filter_subject", &b.filter_subject, def)?;
        let deliver_policy = replay_start(&b.start)?;
        let mut stream = self.stream(def.name).await?;
        let last_at_start = stream
            .info()
            .await
            .map_err(|e| unavailable("reading the stream", e))?
            .state
            .last_sequence;
        let ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: b.filter_subject.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("creating a replay consumer", e))?;
        let pending_at_start = ordered.cached_info().num_pending;
        let messages = ordered
            .messages()
            .await
            .map_err(|e| unavailable("starting the replay", e))?;
        let limit = if b.max_messages == 0 {
            u64::MAX
        } else {
            u64::from(b.max_messages)
        };
        let follow = b.follow;
        let (tx, rx) = futures::channel::mpsc::channel::<Result<ReplayResponse, Status>>(64);
        let stop = self.ctx.shutdown.clone();
        let run = ReplayRun {
            deadline,
            limit,
            follow,
            pending_at_start,
            last_at_start,
        };
        self.ctx.spawn(run.forward(messages, tx, stop));
        Ok(Box::pin(rx))
    }

    async fn create_consumer(
        &self,
        request: Request<CreateConsumerRequest>,
    ) -> Result<CreateConsumerResponse, Status> {
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_consumer_name("name", &b.name)?;
        check_filter("filter_subject", &b.filter_subject, def)?;
        let deliver_policy = deliver_policy(&b)?;
        let ack_wait = match &b.ack_wait {
            Some(d) => duration_from_proto("ack_wait", d)?,
            None => Duration::from_millis(self.config().default_ack_wait_ms),
        };
        if ack_wait < Duration::from_millis(100) {
            return Err(Status::invalid("ack_wait", "must be at least 100 ms"));
        }
        let max_deliver = match b.max_deliver {
            0 => self.config().default_max_deliver.clamp(1, MAX_MAX_DELIVER),
            n if n > MAX_MAX_DELIVER => {
                return Err(Status::invalid(
                    "max_deliver",
                    format!("must be at most {MAX_MAX_DELIVER}"),
                ));
            }
            n => n,
        };
        let wanted = consumer::pull::Config {
            durable_name: Some(b.name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: i64::from(max_deliver),
            filter_subject: b.filter_subject.clone(),
            ..Default::default()
        };
        let stream = self.stream(def.name).await?;
        let same = |i: &consumer::Info| {
            i.config.filter_subject == wanted.filter_subject
                && i.config.deliver_policy == wanted.deliver_policy
                && i.config.ack_wait == wanted.ack_wait
                && i.config.max_deliver == wanted.max_deliver
                && i.config.ack_policy == consumer::AckPolicy::Explicit
        };
        let existing = |i: consumer::Info| {
            if same(&i) {
                Ok(CreateConsumerResponse {
                    consumer: Some(consumer_info(&i)),
                    created: false,
                })
            } else {
                Err(Status::conflict(format!(
                    "consumer {} exists on {} with a different configuration",
                    b.name, def.name
                )))
            }
        };
        if let Ok(i) = stream.consumer_info(&b.name).await {
            return existing(i);
        }
        match stream.create_consumer_strict(wanted.clone()).await {
            Ok(mut c) => {
                let info = c
                    .info()
                    .await
                    .map_err(|e| unavailable("reading the consumer", e))?;
                Ok(CreateConsumerResponse {
                    consumer: Some(consumer_info(info)),
                    created: true,
                })
            }
            Err(e) => match stream.consumer_info(&b.name).await {
                // Lost a race with an identical (or different) creation.
                Ok(i) => existing(i),
                Err(_) => Err(unavailable("creating the consumer", e)),
            },
        }
    }

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<FetchResponse, Status> {
        let remaining = request.meta.remaining();
        let b = request.body;
        let def = check_stream("stream", &b.stream)?;
        check_consumer_name("consumer", &b.consumer)?;
        let max = match b.max_messages {
            0 => DEFAULT_FETCH,
            n => n.min(MAX_FETCH),
        } as usize;
        let mut wait = match &b.wait {
            Some(d) => duration_from_proto("wait", d)?.min(MAX_FETCH_WAIT),
            None => DEFAULT_FETCH_WAIT,
        };
        // Leave time to answer before the caller's deadline.
        if let Some(r) = remaining {
            wait = wait.min(r.saturating_sub(Duration::from_millis(500)));
        }
        let stream = self.stream(def.name).await?;
        let consumer: consumer::PullConsumer =
            stream.get_consumer(&b.consumer).await.map_err(|e| {
                if e.downcast_ref::<ConsumerInfoError>()
                    .is_some_and(consumer_missing)
                {
                    Status::not_found(format!(
                        "consumer {} does not exist on {}",
                        b.consumer, def.name
                    ))
                } else {
                    unavailable("reading the consumer", e)
                }
            })?;
        // First what is there now; only if nothing, wait for one message, then take what
        // else is ready. A pull never asks for more than this call returns, so no message
        // is delivered into a dropped inbox (which would cost it a delivery attempt).
        let mut out = pull(&consumer, max, None).await?;
        if out.is_empty() && wait >= Duration::from_millis(10) {
            out = pull(&consumer, 1, Some(wait)).await?;
            if !out.is_empty() && max > 1 {
                out.extend(pull(&consumer, max - 1, None).await?);
            }
        }
        Ok(FetchResponse { messages: out })
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<AckResponse, Status> {
        let b = request.body;
        let token = parse_ack_token(&b.ack_token)?;
        let payload = ack_payload(&b)?;
        let js = self.js()?;
        let stream = match js.get_stream_no_info(&token.stream).await {
            Ok(s) => s,
            Err(_) => return Ok(AckResponse { applied: false }),
        };
        let info = match stream.consumer_info(&token.consumer).await {
            Ok(i) => i,
            Err(e) if consumer_missing(&e) => return Ok(AckResponse { applied: false }),
            Err(e) => return Err(unavailable("reading the consumer", e)),
        };
        // Already acknowledged (at or below the floor): nothing to do. JetStream answers
        // any ack alike, so this is how a second Ack learns it was not applied.
        if token.stream_sequence <= info.ack_floor.stream_sequence {
            return Ok(AckResponse { applied: false });
        }
        // Request (not publish) so the server has processed it before we answer.
        let nats = js.client();
        match tokio::time::timeout(
            Duration::from_secs(2),
            nats.request(b.ack_token.clone(), payload),
        )
        .await
        {
            Ok(Ok(_)) => Ok(AckResponse { applied: true }),
            Ok(Err(e)) => Err(unavailable("acknowledging", e)),
            Err(_) => Err(Status::new(
                Code::Unavailable,
                "JetStream did not confirm the ack in time",
            )),
        }
    }

    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<ListStreamsResponse, Status> {
        let b = request.body;
        let size = paging::page_size(b.page_size, DEFAULT_STREAMS_PAGE, MAX_STREAMS_PAGE)?;
        let after = if b.page_token.is_empty() {
            None
        } else {
            Some(
                String::from_utf8(paging::decode_token(b'S', &b.page_token)?)
                    .map_err(|_| paging::bad_token())?,
            )
        };
        let mut all: Vec<stream::Info> = self
            .js()?
            .streams()
            .try_collect()
            .await
            .map_err(|e| unavailable("listing streams", e))?;
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        let rest: Vec<&stream::Info> = all
            .iter()
            .filter(|i| {
                after
                    .as_ref()
                    .is_none_or(|a| i.config.name.as_str() > a.as_str())
            })
            .collect();
        let page: Vec<StreamInfo> = rest.iter().take(size).map(|i| stream_info(i)).collect();
        let next_page_token = if rest.len() > size {
            paging::encode_token(b'S', page.last().map(|s| s.name.as_bytes()).unwrap_or(b""))
        } else {
            String::new()
        };
        Ok(ListStreamsResponse {
            streams: page,
            next_page_token,
        })
    }

    async fn dead_letters(
        &self,
        request: Request<DeadLettersRequest>,
    ) -> Result<DeadLettersResponse, Status> {
        let b = request.body;
        let c = self.config();
        let size = paging::page_size(b.page_size, c.default_page_size, c.max_page_size)?;
        if !b.stream.is_empty() {
            check_stream("stream", &b.stream)?;
        }
        if !b.consumer.is_empty() {
            check_consumer_name("consumer", &b.consumer)?;
        }
        let filter = format!(
            "dlq.{}.{}",
            if b.stream.is_empty() { "*" } else { &b.stream },
            if b.consumer.is_empty() {
                "*"
            } else {
                &b.consumer
            },
        );
        let mut from = if b.page_token.is_empty() {
            1
        } else {
            let raw = paging::decode_token(b'D', &b.page_token)?;
            u64::from_be_bytes(raw.try_into().map_err(|_| paging::bad_token())?)
        };
        let dlq = self
            .js()?
            .get_stream_no_info(DLQ)
            .await
            .map_err(|e| unavailable("reading DLQ", e))?;
        let mut out = Vec::with_capacity(size);
        let mut more = false;
        loop {
            let got = dlq
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(filter.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(unavailable("reading DLQ", e)),
            };
            if out.len() == size {
                more = true;
                break;
            }
            from = m.sequence + 1;
            out.push(dead_letter(&m));
        }
        Ok(DeadLettersResponse {
            dead_letters: out,
            next_page_token: if more {
                paging::encode_token(b'D', &from.to_be_bytes())
            } else {
                String::new()
            },
        })
    }
}

/// One pull: up to `max` messages, waiting up to `wait` (`None`: only what is ready now).
pub(super) async fn pull(
    consumer: &consumer::PullConsumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<EventMessage>, Status> {
    let batch = match wait {
        None => consumer.fetch().max_messages(max).messages().await,
        Some(w) => {
            consumer
                .batch()
                .max_messages(max)
                .expires(w)
                .messages()
                .await
        }
    }
    .map_err(|e| unavailable("pulling messages", e))?;
    let msgs: Vec<jetstream::Message> = batch
        .try_collect()
        .await
        .map_err(|e| unavailable("pulling messages", e))?;
    msgs.iter().map(|m| from_delivery(m, true)).collect()
}

/// Where a Replay starts: the whole stream, a sequence or a time.
fn replay_start(start: &Option<replay_request::Start>) -> Result<consumer::DeliverPolicy, Status> {
    Ok(match start {
        None => consumer::DeliverPolicy::All,
        Some(replay_request::Start::FromSequence(s)) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: (*s).max(1),
        },
        Some(replay_request::Start::FromTime(t)) => consumer::DeliverPolicy::ByStartTime {
            start_time: time_from_proto("from_time", t)?,
        },
    })
}

/// A running Replay: what it forwards and when it stops.
struct ReplayRun {
    deadline: Option<std::time::Instant>,
    /// Messages to send at most (`u64::MAX`: no limit).
    limit: u64,
    /// Whether to go on after catching up (else the replay ends there).
    follow: bool,
    pending_at_start: u64,
    last_at_start: u64,
}

impl ReplayRun {
    /// Forwards the replayed messages to the caller's stream, with a caught-up marker once
    /// it reached what the stream held at the start; ends at the limit, at the caller's
    /// deadline, when the caller goes away, or when the appliance stops.
    async fn forward(
        self,
        mut messages: consumer::pull::Ordered,
        mut tx: futures::channel::mpsc::Sender<Result<ReplayResponse, Status>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let ReplayRun {
            deadline,
            limit,
            follow,
            pending_at_start,
            last_at_start,
        } = self;
        let mut sent = 0u64;
        let mut caught_up = pending_at_start == 0 || last_at_start == 0;
        let marker = |last| ReplayResponse {
            item: Some(replay_response::Item::CaughtUp(ReplayCaughtUp {
                last_sequence: last,
            })),
        };
        if caught_up {
            if !follow {
                return;
            }
            if tx.send(Ok(marker(last_at_start))).await.is_err() {
                return;
            }
        }
        while sent < limit {
            let wait = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), messages.next())
                        .await
                        .ok(),
                    None => Some(messages.next().await),
                }
            };
            // The appliance stopping ends a replay (the runtime ends the caller's
            // stream with Unavailable, so it can resume).
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = wait => match n { Some(n) => n, None => return },
            };
            let item = match next {
                None => return,
                Some(Err(e)) => Err(unavailable("replaying", e)),
                Some(Ok(m)) => from_delivery(&m, false).map(|msg| {
                    let pending = m.info().map(|i| i.pending).unwrap_or(1);
                    (msg, pending)
                }),
            };
            let (msg, pending) = match item {
                Ok(x) => x,
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            };
            let seq = msg.sequence;
            sent += 1;
            let out = ReplayResponse {
                item: Some(replay_response::Item::Message(msg)),
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
            if !caught_up && (pending == 0 || seq >= last_at_start) {
                caught_up = true;
                if !follow {
                    return;
                }
                if tx.send(Ok(marker(seq.max(last_at_start)))).await.is_err() {
                    return;
                }
            }
        }
    }
}
