use aicore_sdk::header_names;
use async_nats::HeaderMap;

use super::metadata::metadata;
use super::*;

#[test]
fn the_client_address_is_an_ip_or_nothing() {
    let meta = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(header_names::CLIENT_ADDR, v);
        metadata(Some(&h), Instant::now(), &Trust::default())
            .unwrap()
            .client_addr
    };
    assert_eq!(meta("203.0.113.7").as_deref(), Some("203.0.113.7"));
    assert_eq!(meta("2001:db8::1").as_deref(), Some("2001:db8::1"));
    // An IPv4 client seen through an IPv6 socket is the same source.
    assert_eq!(meta("::ffff:203.0.113.7").as_deref(), Some("203.0.113.7"));
    for bad in ["", "nats", "example.com", "203.0.113.7:80", "1.2.3.4.5"] {
        assert_eq!(meta(bad), None, "{bad}");
    }
    assert_eq!(meta(&format!("{}1", "0".repeat(64))), None);
    assert_eq!(
        metadata(None, Instant::now(), &Trust::default())
            .unwrap()
            .client_addr,
        None
    );
}

#[test]
fn a_caller_session_is_read_only_with_its_caller() {
    let meta = |caller: Option<&str>, session: &str| {
        let mut h = HeaderMap::new();
        if let Some(c) = caller {
            h.insert(header_names::CALLER, c);
        }
        h.insert(header_names::CALLER_SESSION, session);
        metadata(Some(&h), Instant::now(), &Trust::default())
            .unwrap()
            .caller_session
    };
    assert_eq!(
        meta(Some("acc_1"), "ses_0123abcd").as_deref(),
        Some("ses_0123abcd")
    );
    assert_eq!(meta(None, "ses_0123abcd"), None);
    assert_eq!(meta(Some("acc_1"), "ses/../x"), None);
    assert_eq!(meta(Some("acc_1"), &"s".repeat(65)), None);
}
