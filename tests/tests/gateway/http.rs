//! A small HTTP/1.1 client for the gateway tests (hyper-util's pooled client): JSON posts
//! with headers, plain GETs, and Server-Sent Events read as they arrive.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One answered request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `field` of the first error detail.
    pub fn field(&self) -> String {
        self.json()["field_violations"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client whose connections come from `source` (any address of 127.0.0.0/8 is
    /// this machine's loopback): the gateway sees another client address.
    pub fn from_address(base: &str, source: std::net::IpAddr) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(source));
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        let mut typed = false;
        for (k, v) in headers {
            typed |= k.eq_ignore_ascii_case("content-type");
            b = b.header(*k, *v);
        }
        if !typed && !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .expect("a valid request")
    }

    /// Sends a request and reads the whole reply.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            self.client
                .request(self.request(method, path, body, headers)),
        )
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers");
        let (parts, body) = r.into_parts();
        let body = body.collect().await.expect("reading the body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// `POST path` with a JSON body and headers.
    pub async fn post(&self, path: &str, json: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::POST, path, json, headers).await
    }

    /// `POST path` with a bearer token.
    pub async fn call(&self, path: &str, json: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.post(path, json, &[("authorization", &auth)]).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, "", &[]).await
    }

    /// `POST path` answering an event stream: the status, headers and a reader of events.
    pub async fn stream(
        &self,
        path: &str,
        json: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HeaderMap, Events) {
        let r = self
            .client
            .request(self.request(Method::POST, path, json, headers))
            .await
            .expect("the gateway answers");
        let (parts, body) = r.into_parts();
        (
            parts.status.as_u16(),
            parts.headers,
            Events {
                body,
                buffer: String::new(),
            },
        )
    }
}

/// Reads Server-Sent Events off a response body.
pub struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    /// The next event (comments and keep-alives skipped); `None` when the body ends.
    pub async fn next(&mut self, wait: Duration) -> Option<Event> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
            }
            let frame = tokio::time::timeout_at(give_up, self.body.frame())
                .await
                .expect("an event in time")?
                .expect("reading the event stream");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
