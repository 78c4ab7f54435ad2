use super::*;
use bytes::Bytes;

#[test]
fn every_service_has_subjects_under_its_domain() {
    assert!(!SERVICES.is_empty());
    for s in SERVICES {
        assert!(!s.methods.is_empty(), "{} has no rpcs", s.full_name);
        for m in s.methods {
            assert_eq!(m.subject, format!("svc.{}.v1.{}", s.domain, m.rpc));
            assert!(descriptor_pool().get_message_by_name(m.input).is_some());
            assert!(descriptor_pool().get_message_by_name(m.output).is_some());
        }
    }
}

#[test]
fn status_round_trips_through_proto_and_http() {
    let s = Status::invalid("password", "must be 8 to 128 characters");
    let back = Status::from_reply(Some(400), "x", &s.to_proto().encode_to_vec());
    assert_eq!(back, s);
    let bare = Status::from_reply(Some(503), "no responders", &[]);
    assert_eq!(bare.code, Code::Unavailable);
    for c in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::Conflict,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
    ] {
        assert_eq!(code_from_http(http_status(c)), c);
    }
}

#[test]
fn writes_are_retry_safe_only_with_an_idempotency_key() {
    use aicore::state_manager::v1 as sm;
    let put = find_service("state_manager")
        .unwrap()
        .method("put")
        .unwrap()
        .1;
    let get = find_service("state_manager")
        .unwrap()
        .method("get")
        .unwrap()
        .1;
    assert!(get.policy.read_only && get.idempotency_key == 0);
    assert!(!put.policy.read_only && put.idempotency_key == 6);
    let keyless = sm::PutRequest {
        player_id: "p".into(),
        key: "k".into(),
        expected_version: Some(0),
        ..Default::default()
    };
    let body = Bytes::from(keyless.encode_to_vec());
    assert!(!put.retry_safe(&body));
    assert!(get.retry_safe(&sm::GetRequest::default().encode_to_vec()));
    // A key added by the transport is the request's key; one of its own is kept.
    let keyed = put.with_idempotency_key(body.clone(), "k-1");
    assert!(put.retry_safe(&keyed));
    let decoded = sm::PutRequest::decode(keyed.clone()).unwrap();
    assert_eq!(decoded.idempotency_key, "k-1");
    assert_eq!(decoded.expected_version, Some(0));
    assert_eq!(put.with_idempotency_key(keyed.clone(), "k-2"), keyed);
    // An explicitly empty key is no key.
    let empty = sm::PutRequest {
        idempotency_key: String::new(),
        ..keyless
    };
    assert!(!put.retry_safe(&empty.encode_to_vec()));
    assert_eq!(get.with_idempotency_key(Bytes::new(), "k"), Bytes::new());
}

#[test]
fn malformed_body_is_invalid_argument() {
    let r = Request {
        body: Bytes::from_static(&[0xff, 0xff, 0xff]),
        meta: Metadata::default(),
    };
    let e = r.decode::<ErrorProto>().unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
}
