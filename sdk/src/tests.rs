use super::*;
use crate::breaker::{Health, attempt_outcome};

#[test]
fn traceparent_has_w3c_shape() {
    let t = new_traceparent();
    let parts: Vec<&str> = t.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
}

fn reply(error: Option<Code>) -> Message {
    let headers = error.map(|code| {
        let mut h = HeaderMap::new();
        let status = Status::new(code, "x");
        h.insert(header_names::SERVICE_ERROR, "x");
        h.insert(
            header_names::SERVICE_ERROR_CODE,
            status.http_status().to_string().as_str(),
        );
        h
    });
    Message {
        subject: "_INBOX.x".into(),
        reply: None,
        payload: Bytes::new(),
        headers,
        status: None,
        description: None,
        length: 0,
    }
}

/// A DeadlineExceeded reply is judged as silence: it counts only when the attempt had
/// a reasonable time, and it never resets a breaker (the service's reply and the
/// caller's timer race, so the outcome must not depend on which comes first).
#[test]
fn a_deadline_exceeded_reply_is_judged_like_silence() {
    let c = ClientConfig::default();
    let whole = c.attempt_timeout;
    let short = c.attempt_timeout / 10;
    let late = || Ok(reply(Some(Code::DeadlineExceeded)));
    let health = |r, attempt| attempt_outcome(&c, "svc.x.v1.y", r, attempt).health;
    assert_eq!(health(late(), whole), Health::Failed);
    assert_eq!(health(late(), short), Health::Unknown);
    for other in [None, Some(Code::Unavailable), Some(Code::InvalidArgument)] {
        assert_eq!(
            health(Ok(reply(other)), whole),
            Health::Answered,
            "{other:?}"
        );
    }
}

#[test]
fn backoff_grows_and_is_capped() {
    let c = ClientConfig::default();
    assert_eq!(backoff_cap(&c, 0), c.backoff_base);
    assert_eq!(backoff_cap(&c, 2), c.backoff_base * 4);
    assert_eq!(backoff_cap(&c, 30), c.backoff_max);
}
