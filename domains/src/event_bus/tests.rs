use super::*;

fn bus() -> EventBus {
    EventBus::new(Ctx::for_tests().0, EventBusConfig::default())
}

fn field(s: &Status) -> &str {
    &s.field_violations[0].field
}

#[test]
fn subjects_must_fall_in_a_publishable_stream() {
    assert_eq!(
        check_subject("subject", "evt.world.changed").unwrap().name,
        "EVENTS"
    );
    assert_eq!(
        check_subject("subject", "telemetry.fps").unwrap().name,
        "TELEMETRY"
    );
    for bad in [
        "",
        "evt.world",
        "evt..x",
        "evt.*.x",
        "evt.world.>",
        "evt.a b.c",
        "dlq.EVENTS.c",
        "svc.auth.v1.login",
        "world.changed",
    ] {
        let e = check_subject("subject", bad).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{bad}");
        assert_eq!(field(&e), "subject");
    }
}

#[test]
fn filters_stay_inside_their_stream() {
    let events = streams::by_name("EVENTS").unwrap();
    check_filter("f", "", events).unwrap();
    check_filter("f", "evt.world.*", events).unwrap();
    check_filter("f", "evt.>", events).unwrap();
    check_filter("f", ">", events).unwrap();
    assert!(check_filter("f", "audit.>", events).is_err());
    assert!(check_filter("f", "evt.>.x", events).is_err());
    assert!(check_filter("f", "evt.wor*", events).is_err());
}

#[test]
fn headers_refuse_reserved_and_malformed_names() {
    let mut h = HashMap::new();
    h.insert("X-Trace".to_string(), "abc".to_string());
    let built = publish_headers("application/json", &h).unwrap();
    assert_eq!(
        built.get("Content-Type").unwrap().as_str(),
        "application/json"
    );
    assert_eq!(built.get("X-Trace").unwrap().as_str(), "abc");
    for (name, value) in [
        ("Nats-Msg-Id", "x"),
        ("nats-expected-stream", "x"),
        ("bad name", "x"),
        ("a:b", "x"),
        ("X-Ok", "two\nlines"),
    ] {
        let mut h = HashMap::new();
        h.insert(name.to_string(), value.to_string());
        let e = publish_headers("", &h).unwrap_err();
        assert_eq!(field(&e), "headers", "{name}");
    }
}

#[test]
fn ack_tokens_parse_both_layouts_and_refuse_others() {
    let v1 = parse_ack_token("$JS.ACK.EVENTS.worker.2.17.5.1790230470084404000.3").unwrap();
    assert_eq!(
        v1,
        AckToken {
            stream: "EVENTS".into(),
            consumer: "worker".into(),
            stream_sequence: 17,
            delivered: 2,
        }
    );
    let v2 = parse_ack_token("$JS.ACK._.hash.EVENTS.worker.1.9.9.1790230470084404000.0.x").unwrap();
    assert_eq!(v2.stream_sequence, 9);
    for bad in [
        "",
        "evt.world.changed",
        "$JS.ACK.EVENTS.worker.x.17.5.1.3",
        "$JS.API.EVENTS.worker.2.17.5.1.3",
        "$JS.ACK.EVENTS.worker.2.17.5.1",
        "$JS.ACK.EVENTS.wo rker.2.17.5.1.3",
    ] {
        assert_eq!(
            field(&parse_ack_token(bad).unwrap_err()),
            "ack_token",
            "{bad}"
        );
    }
}

#[test]
fn ack_payloads_follow_the_protocol() {
    let req = |kind: AckKind, delay: Option<u64>, reason: &str| AckRequest {
        ack_token: String::new(),
        kind: kind as i32,
        delay: delay.map(|s| duration_to_proto(Duration::from_secs(s))),
        reason: reason.into(),
    };
    assert_eq!(ack_payload(&req(AckKind::Ack, None, "")).unwrap(), "+ACK");
    assert_eq!(ack_payload(&req(AckKind::Nak, None, "")).unwrap(), "-NAK");
    assert_eq!(
        ack_payload(&req(AckKind::Nak, Some(2), "")).unwrap(),
        "-NAK {\"delay\":2000000000}"
    );
    assert_eq!(
        ack_payload(&req(AckKind::Term, None, "bad\npayload")).unwrap(),
        "+TERM badpayload"
    );
    assert!(
        ack_payload(&AckRequest {
            kind: 42,
            ..Default::default()
        })
        .is_err()
    );
}

#[test]
fn deliver_policies_need_their_start() {
    let mut r = CreateConsumerRequest {
        deliver_policy: DeliverPolicy::BySequence as i32,
        ..Default::default()
    };
    assert_eq!(field(&deliver_policy(&r).unwrap_err()), "start_sequence");
    r.start_sequence = 4;
    assert_eq!(
        deliver_policy(&r).unwrap(),
        consumer::DeliverPolicy::ByStartSequence { start_sequence: 4 }
    );
    r.deliver_policy = DeliverPolicy::ByTime as i32;
    assert_eq!(field(&deliver_policy(&r).unwrap_err()), "start_time");
    r.start_time = Some(prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 5,
    });
    let p = deliver_policy(&r).unwrap();
    let consumer::DeliverPolicy::ByStartTime { start_time } = p else {
        panic!("{p:?}")
    };
    assert_eq!(time_to_proto(start_time), r.start_time);
}

#[test]
fn dead_letters_read_back_their_origin() {
    let mut h = HeaderMap::new();
    h.insert(dlq_headers::STREAM, "EVENTS");
    h.insert(dlq_headers::SEQUENCE, "42");
    h.insert(dlq_headers::SUBJECT, "evt.quest.completed");
    h.insert(dlq_headers::PUBLISHED, "2027-01-15T08:00:00Z");
    h.insert(dlq_headers::CONSUMER, "worker");
    h.insert(dlq_headers::DELIVERIES, "2");
    h.insert(dlq_headers::REASON, REASON_MAX_DELIVER);
    h.insert("Content-Type", "application/json");
    h.insert("X-Trace", "t1");
    h.insert("Nats-Msg-Id", "dlq:EVENTS:worker:42");
    let m = StreamMessage {
        subject: "dlq.EVENTS.worker".into(),
        sequence: 7,
        headers: h,
        payload: Bytes::from_static(b"{}"),
        time: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    };
    let d = dead_letter(&m);
    assert_eq!(d.dlq_sequence, 7);
    assert_eq!(d.consumer, "worker");
    assert_eq!(d.deliveries, 2);
    assert_eq!(d.reason, REASON_MAX_DELIVER);
    let msg = d.message.unwrap();
    assert_eq!(msg.stream, "EVENTS");
    assert_eq!(msg.sequence, 42);
    assert_eq!(msg.subject, "evt.quest.completed");
    assert_eq!(msg.content_type, "application/json");
    assert_eq!(msg.headers.len(), 1, "{:?}", msg.headers);
    assert_eq!(msg.headers["X-Trace"], "t1");
    assert!(msg.published_at.is_some());
}

#[tokio::test]
async fn requests_are_validated_before_jetstream_is_needed() {
    let b = bus();
    let e = b
        .publish(Request::new(PublishRequest {
            subject: "evt.world.changed".into(),
            dedup_id: String::new(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "dedup_id");
    let e = b
        .publish(Request::new(PublishRequest {
            subject: "evt.world.changed".into(),
            dedup_id: "a".into(),
            data: Bytes::from(vec![0; MAX_DATA_BYTES + 1]),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    let e = b
        .create_consumer(Request::new(CreateConsumerRequest {
            stream: "EVENTS".into(),
            name: "ok".into(),
            max_deliver: 101,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "max_deliver");
    let e = b
        .create_consumer(Request::new(CreateConsumerRequest {
            stream: "NOPE".into(),
            name: "ok".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "stream");
    let e = b
        .fetch(Request::new(FetchRequest {
            stream: "EVENTS".into(),
            consumer: "has.dot".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "consumer");
    let e = b
        .dead_letters(Request::new(DeadLettersRequest {
            page_size: -1,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field(&e), "page_size");
    // Valid, but this context has no NATS: Unavailable, not a panic.
    let e = b
        .list_streams(Request::new(ListStreamsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable);
}
