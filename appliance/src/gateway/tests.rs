use super::*;

#[test]
fn traces_continue_valid_parents_and_replace_bad_ones() {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_static(parent));
    let t = Trace::from_headers(&h);
    assert!(
        t.traceparent
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(t.traceparent.ends_with("-01"));
    assert_ne!(t.traceparent, parent);
    assert_eq!(t.parent, Some(0x00f067aa0ba902b7));
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
    );
    let t = Trace::from_headers(&h);
    assert_eq!(t.parent, None);
    assert!(!t.traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    let mut h = HeaderMap::new();
    h.insert(
        REQUEST_ID_HEADER,
        HeaderValue::from_static("bad id with spaces"),
    );
    let t = Trace::from_headers(&h);
    assert_eq!(t.request_id.len(), 32);
    assert!(check_request_id(&h).is_err());
    let long = "a".repeat(MAX_REQUEST_ID + 1);
    h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
    let e = check_request_id(&h).unwrap_err();
    assert_eq!(e.status.field_violations[0].field, "X-Request-Id");
    h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-42"));
    assert_eq!(Trace::from_headers(&h).request_id, "req-42");
    assert!(check_request_id(&h).is_ok());
}

#[test]
fn only_tokens_of_auths_shape_are_checked_with_auth() {
    let good = format!("at_{}", "aZ09-_".repeat(7) + "x");
    assert_eq!(good.len(), 46);
    assert!(access_token_shaped(&good));
    for bad in [
        "",
        "at_",
        "rt_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_x",
        "at_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_",
        "at_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_xy",
        "at_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09+/x",
        "bogus",
    ] {
        assert!(!access_token_shaped(bad), "{bad}");
    }
}

#[test]
fn bearer_tokens_are_read_case_insensitively() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer(&h), None);
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer at_x"),
    );
    assert_eq!(bearer(&h), Some("at_x"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer(&h), None);
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
    assert_eq!(bearer(&h), None);
}
