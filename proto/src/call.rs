//! A call as a handler sees it: the caller, the metadata that travels with the body
//! ([`Metadata`]), the [`Request`], the [`Reply`] a dispatched call produces, and the
//! [`Dispatch`] trait the generated server wrappers implement.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prost::Message;

use crate::{Code, ServiceInfo, Status};

/// The authenticated principal on whose behalf a call is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account id.
    pub account_id: String,
    /// Its roles (`player`, `service`, `admin`).
    pub roles: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// What travels with a request besides its body.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The end user behind the call, when a gateway or service acts for one. `None` is
    /// a trusted principal talking NATS directly (a domain, the admin CLI). For a request
    /// from an external principal (a game server) this is never `None`: the runtime sets
    /// the player it acts for, or the principal itself, within the principal's role
    /// ceiling.
    pub caller: Option<Caller>,
    /// The external NATS principal the request came from (a game server's certificate
    /// name), as nats-server stamped it; `None` for the appliance's own principals.
    pub principal: Option<String>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// The end client's IP address ([`headers::CLIENT_ADDR`]), when a valid one came.
    pub client_addr: Option<String>,
    /// With [`Metadata::caller`]: the caller's session ([`headers::CALLER_SESSION`]),
    /// when the caller came with a session token.
    pub caller_session: Option<String>,
}

impl Metadata {
    /// Time left before the deadline (`None` = no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Refuses the call unless the caller is the owner of `account_id`'s data or holds one
    /// of `roles`. Trusted principals (no caller) pass.
    pub fn authorize_owner(&self, account_id: &str, roles: &[&str]) -> Result<(), Status> {
        match &self.caller {
            None => Ok(()),
            Some(c) if c.account_id == account_id => Ok(()),
            Some(c) if roles.iter().any(|r| c.has_role(r)) => Ok(()),
            Some(_) => Err(Status::new(
                Code::PermissionDenied,
                "the caller may only act on its own data",
            )),
        }
    }

    /// Refuses the call unless the caller is trusted or holds one of `roles`.
    pub fn authorize_roles(&self, roles: &[&str]) -> Result<(), Status> {
        match &self.caller {
            None => Ok(()),
            Some(c) if roles.iter().any(|r| c.has_role(r)) => Ok(()),
            Some(_) => Err(Status::new(
                Code::PermissionDenied,
                format!("this call needs one of the roles {roles:?}"),
            )),
        }
    }
}

/// A request as a handler sees it: the decoded body and its metadata.
#[derive(Debug, Clone)]
pub struct Request<T> {
    /// The decoded request message.
    pub body: T,
    /// Deadline, caller, trace.
    pub meta: Metadata,
}

impl<T> Request<T> {
    /// A request from a trusted principal (no end user behind it) with no deadline.
    pub fn new(body: T) -> Self {
        Request {
            body,
            meta: Metadata::default(),
        }
    }

    /// The same request, made on behalf of `account_id` holding `roles`.
    pub fn on_behalf_of(mut self, account_id: &str, roles: &[&str]) -> Self {
        self.meta.caller = Some(Caller {
            account_id: account_id.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        });
        self
    }
}

impl Request<Bytes> {
    /// Decodes the raw body as `T`; malformed protobuf is InvalidArgument.
    pub fn decode<T: Message + Default>(self) -> Result<Request<T>, Status> {
        let body = T::decode(self.body).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("the request body is not a valid protobuf message: {e}"),
            )
        })?;
        Ok(Request {
            body,
            meta: self.meta,
        })
    }
}

/// A stream of replies, for server-streaming RPCs.
pub type Streaming<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a dispatched call produced, encoded.
pub enum Reply {
    /// One message.
    Unary(Bytes),
    /// A stream of messages.
    Stream(BoxStream<'static, Result<Bytes, Status>>),
}

impl Reply {
    /// Encodes one reply message.
    pub fn unary<M: Message>(m: &M) -> Self {
        Reply::Unary(Bytes::from(m.encode_to_vec()))
    }

    /// Encodes a stream of reply messages lazily.
    pub fn stream<M: Message + 'static>(s: Streaming<M>) -> Self {
        use futures::StreamExt;
        Reply::Stream(s.map(|r| r.map(|m| Bytes::from(m.encode_to_vec()))).boxed())
    }
}

/// A service ready to serve: the generated `XxxServer` wrapper implements it.
pub trait Dispatch: Send + Sync + 'static {
    /// The service served.
    fn service(&self) -> &'static ServiceInfo;
    /// Runs RPC number `method` (index into [`ServiceInfo::methods`]) on a raw request.
    fn call(
        &self,
        method: usize,
        request: Request<Bytes>,
    ) -> BoxFuture<'static, Result<Reply, Status>>;
}
