//! What ai-integration asks of a provider, and how a provider's failures become the
//! common error model. A provider turns a conversation into a stream of text pieces
//! ending with why it stopped and what it cost, and texts into vectors. Two kinds exist:
//! an OpenAI-compatible HTTP server ([`super::openai`]) and the built-in offline provider
//! ([`super::offline`]). Routing, caching, accounting and records are not here: they are
//! the domain's, the same for every provider.
//!
//! The split that matters for fallback: [`ChatStart`] is returned only once the provider
//! produced its first piece, so any error before it is a failure *before the first
//! token* (ai-integration may try the next model of the router's chain); an error in
//! [`ChatStart::rest`] is a failure mid-answer, which is reported as an error, never as a
//! shorter answer.

use std::time::Duration;

use aicore_proto::aicore::ai_integration::v1::{FinishReason, Role};
use aicore_proto::{Code, Status};
use futures::stream::BoxStream;

/// One message of a conversation, as providers take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// Generation parameters, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature (`None`: the provider's default).
    pub temperature: Option<f64>,
    /// Nucleus sampling (`None`: the provider's default).
    pub top_p: Option<f64>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
    /// A seed, for providers that take one.
    pub seed: Option<u64>,
}

/// What a chat call needs: the model's name at the provider, the conversation, the
/// parameters, and where to send it when the model overrides the provider's URL.
#[derive(Debug, Clone)]
pub struct ChatCall {
    /// The model's name at the provider (`llama3.1:8b`).
    pub model: String,
    /// Base URL overriding the provider's (empty: the provider's).
    pub endpoint: String,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Generation parameters.
    pub params: Params,
}

/// Token counts a provider reported (or that were estimated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    /// Tokens of the prompt.
    pub prompt: u32,
    /// Tokens generated.
    pub completion: u32,
}

/// One piece of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// More text.
    Text(String),
    /// The end: why, and the provider's usage when it sent one.
    Done {
        /// Why generation stopped.
        finish: FinishReason,
        /// Usage as the provider reported it (`None`: it sent none).
        usage: Option<Tokens>,
    },
}

/// The rest of an answer after its first piece.
pub type Pieces = BoxStream<'static, Result<Piece, ProviderError>>;

/// A chat call that has started answering.
pub struct ChatStart {
    /// The first piece (text, or an immediate end).
    pub first: Piece,
    /// Everything after it, ending with [`Piece::Done`] or an error.
    pub rest: Pieces,
}

/// Vectors for texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of the inputs, when the provider reported them.
    pub prompt_tokens: Option<u32>,
}

/// How a provider call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The provider refused the request as malformed (HTTP 400, 404, 422).
    BadRequest,
    /// The provider refused our credentials (HTTP 401, 403).
    Auth,
    /// The provider is rate limiting; retry after this long if it said.
    RateLimited(Option<Duration>),
    /// The provider failed (HTTP 5xx) or is unreachable.
    Unavailable,
    /// Connecting, the first token or the whole answer took too long.
    Timeout,
    /// The answer could not be read (bad JSON, an error event inside the stream) or the
    /// stream ended before `[DONE]`.
    Malformed,
    /// Every slot for concurrent calls to the provider stayed taken until the deadline.
    Busy,
}

/// A provider's failure, naming the provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderError {
    /// The provider's id.
    pub provider: String,
    /// What kind of failure.
    pub failure: Failure,
    /// What happened, for operators (never the API key; at most a short excerpt of the
    /// provider's error body).
    pub message: String,
}

impl ProviderError {
    /// A failure of `provider`.
    pub fn new(provider: &str, failure: Failure, message: impl Into<String>) -> Self {
        ProviderError {
            provider: provider.to_string(),
            failure,
            message: message.into(),
        }
    }

    /// Whether trying another model may help: anything but a request the provider
    /// found malformed (another model would most likely refuse it too).
    pub fn falls_back(&self) -> bool {
        !matches!(self.failure, Failure::BadRequest)
    }

    /// A short reason for the router's statistics (`http 503`, `timeout`).
    pub fn reason(&self) -> &'static str {
        match self.failure {
            Failure::BadRequest => "bad request",
            Failure::Auth => "auth",
            Failure::RateLimited(_) => "rate limited",
            Failure::Unavailable => "unavailable",
            Failure::Timeout => "timeout",
            Failure::Malformed => "malformed answer",
            Failure::Busy => "busy",
        }
    }

    /// Whether the failure says something about the model's health (a request it found
    /// malformed does not).
    pub fn counts_against_model(&self) -> bool {
        !matches!(self.failure, Failure::BadRequest)
    }
}

impl From<ProviderError> for Status {
    /// One code per kind of failure, so a caller can tell them apart, each naming the
    /// provider.
    fn from(e: ProviderError) -> Status {
        let code = match e.failure {
            Failure::BadRequest => Code::InvalidArgument,
            Failure::Auth => Code::FailedPrecondition,
            Failure::RateLimited(_) | Failure::Busy => Code::ResourceExhausted,
            Failure::Unavailable => Code::Unavailable,
            Failure::Timeout => Code::DeadlineExceeded,
            Failure::Malformed => Code::Internal,
        };
        let status = Status::new(code, e.to_string());
        match e.failure {
            Failure::RateLimited(Some(after)) => status.with_retry_after(after),
            Failure::Busy => status.with_retry_after(Duration::from_secs(1)),
            _ => status,
        }
    }
}

/// Tokens of `text` when a provider reports none: about four characters per token, the
/// usual rule of thumb for English with BPE vocabularies.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    chars.div_ceil(4).min(u32::MAX as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_its_own_code_naming_the_provider() {
        let cases = [
            (Failure::BadRequest, Code::InvalidArgument),
            (Failure::Auth, Code::FailedPrecondition),
            (
                Failure::RateLimited(Some(Duration::from_secs(3))),
                Code::ResourceExhausted,
            ),
            (Failure::Unavailable, Code::Unavailable),
            (Failure::Timeout, Code::DeadlineExceeded),
            (Failure::Malformed, Code::Internal),
        ];
        for (failure, code) in cases {
            let s = Status::from(ProviderError::new("ollama", failure, "x"));
            assert_eq!(s.code, code);
            assert!(s.message.contains("ollama"), "{}", s.message);
        }
        let s = Status::from(ProviderError::new(
            "p",
            Failure::RateLimited(Some(Duration::from_secs(3))),
            "slow down",
        ));
        assert_eq!(s.retry_after_ms, 3000);
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
        assert_eq!(estimate_tokens("abcdefghi"), 3);
    }
}
