//! The built-in offline provider: every AI feature works, and is testable, with no model
//! at all. Its answers are deterministic — the same conversation and seed give the same
//! text, word for word — and template-based: a sentence picked by a hash of the request
//! from a small set, filled with the words the request is about. Every reply that comes
//! from it says so (`served_by.provider_id = "offline"`, `served_by.offline = true`); the
//! text does not pretend to be a model's.
//!
//! Its embeddings are feature-hashed bags of words (each lowercase word adds ±1 to one
//! of `dimensions` coordinates chosen by its hash; the vector is then normalised), so
//! texts sharing words are close in cosine similarity: vector search over offline
//! embeddings ranks documents by shared vocabulary, which keeps hybrid search meaningful
//! in tests and offline deployments. It counts one token per word.

use aicore_proto::aicore::ai_integration::v1::{FinishReason, Role};
use sha2::{Digest, Sha256};

use super::provider::{ChatCall, Embeddings, Piece, Tokens};

/// The provider id (and model id) of the offline provider.
pub const ID: &str = "offline";

/// Sentence templates; `{topic}` is replaced by the words the request is about.
const TEMPLATES: &[&str] = &[
    "Of {topic}, the old stories say little that can be trusted, traveller.",
    "You ask about {topic}. Few here remember, but the road north may hold an answer.",
    "{topic}? Speak to the keeper of the archive; I know only rumours.",
    "The tale of {topic} is told differently in every tavern from here to the coast.",
    "I have heard of {topic}, though never from anyone who came back to tell it twice.",
];

/// Words too common to name a topic.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "and", "or", "is", "are", "was", "what", "who",
    "how", "why", "me", "you", "i", "about", "tell", "do", "does", "it", "that", "this", "with",
    "for", "be", "can", "please", "my", "your",
];

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// The answer to `call`, as words (each a piece of the stream) and why it stopped.
pub fn answer(call: &ChatCall) -> (Vec<String>, FinishReason, Tokens) {
    let last_user = call
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .or(call.messages.last())
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    let topic: Vec<String> = words(last_user)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .take(4)
        .collect();
    let topic = if topic.is_empty() {
        "that".to_string()
    } else {
        topic.join(" ")
    };
    let mut h = Sha256::new();
    for m in &call.messages {
        h.update([m.role as u8]);
        h.update(m.content.as_bytes());
        h.update([0]);
    }
    h.update(call.params.seed.unwrap_or(0).to_le_bytes());
    let digest = h.finalize();
    let pick = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
    let template = TEMPLATES[(pick % TEMPLATES.len() as u64) as usize];
    let text = template.replace("{topic}", &topic);
    let mut out: Vec<String> = text
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let mut finish = FinishReason::Stop;
    let max = call.params.max_tokens.max(1) as usize;
    if out.len() > max {
        out.truncate(max);
        finish = FinishReason::Length;
    }
    // A stop sequence ends the text where it first appears.
    let joined: String = out.concat();
    if let Some(at) = call
        .params
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| joined.find(s.as_str()))
        .min()
    {
        let cut = &joined[..at];
        out = cut
            .split_inclusive(' ')
            .map(str::to_string)
            .filter(|w| !w.is_empty())
            .collect();
        finish = FinishReason::Stop;
    }
    let prompt = call
        .messages
        .iter()
        .map(|m| words(&m.content).count() as u32)
        .sum();
    let tokens = Tokens {
        prompt,
        completion: out.len() as u32,
    };
    (out, finish, tokens)
}

/// The answer to `call` as the pieces a provider streams.
pub fn pieces(call: &ChatCall) -> Vec<Piece> {
    let (words, finish, tokens) = answer(call);
    let mut out: Vec<Piece> = words.into_iter().map(Piece::Text).collect();
    out.push(Piece::Done {
        finish,
        usage: Some(tokens),
    });
    out
}

/// A deterministic vector of `dimensions` for each text (see the module doc).
pub fn embed(inputs: &[String], dimensions: usize) -> Embeddings {
    let dimensions = dimensions.max(1);
    let mut tokens = 0u32;
    let vectors = inputs
        .iter()
        .map(|text| {
            let mut v = vec![0f32; dimensions];
            for w in words(text) {
                tokens += 1;
                let d = Sha256::digest(w.as_bytes());
                let at = u64::from_le_bytes(d[..8].try_into().unwrap_or_default());
                let sign = if d[8] & 1 == 0 { 1.0 } else { -1.0 };
                v[(at % dimensions as u64) as usize] += sign;
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
            v
        })
        .collect();
    Embeddings {
        vectors,
        prompt_tokens: Some(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::super::provider::{Message, Params};
    use super::*;

    fn call(text: &str, seed: Option<u64>, max_tokens: u32) -> ChatCall {
        ChatCall {
            model: ID.into(),
            endpoint: String::new(),
            messages: vec![Message {
                role: Role::User,
                content: text.into(),
            }],
            params: Params {
                max_tokens,
                seed,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_same_request_gives_the_same_words_and_mentions_the_topic() {
        let a = answer(&call("Tell me about the dragon of Emberfall", None, 256));
        let b = answer(&call("Tell me about the dragon of Emberfall", None, 256));
        assert_eq!(a, b);
        let text: String = a.0.concat();
        assert!(text.contains("dragon emberfall"), "{text}");
        assert_eq!(a.1, FinishReason::Stop);
        assert_eq!(a.2.completion as usize, a.0.len());
        // Another seed may pick another template, always the same one for that seed.
        let seeded: Vec<String> = (0..8)
            .map(|s| answer(&call("dragons", Some(s), 256)).0.concat())
            .collect();
        assert!(seeded.iter().any(|t| t != &seeded[0]));
        assert_eq!(seeded[3], answer(&call("dragons", Some(3), 256)).0.concat());
    }

    #[test]
    fn max_tokens_and_stop_sequences_end_the_answer() {
        let (w, finish, t) = answer(&call("the dragon", None, 3));
        assert_eq!(
            (w.len(), finish, t.completion),
            (3, FinishReason::Length, 3)
        );
        let mut c = call("the dragon", None, 256);
        let full: String = answer(&c).0.concat();
        let stop = full.split(' ').nth(2).unwrap().to_string();
        c.params.stop = vec![stop.clone()];
        let cut: String = answer(&c).0.concat();
        assert!(!cut.contains(&stop), "{cut:?} still has {stop:?}");
        assert!(full.starts_with(cut.trim_end()));
    }

    #[test]
    fn embeddings_are_deterministic_normalised_and_closer_for_shared_words() {
        let texts = vec![
            "the red dragon sleeps under the mountain".to_string(),
            "a red dragon under a mountain".to_string(),
            "fishing boats leave the harbour at dawn".to_string(),
        ];
        let e = embed(&texts, 64);
        assert_eq!(e, embed(&texts, 64));
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        for v in &e.vectors {
            assert_eq!(v.len(), 64);
            assert!((cos(v, v) - 1.0).abs() < 1e-5);
        }
        assert!(cos(&e.vectors[0], &e.vectors[1]) > cos(&e.vectors[0], &e.vectors[2]));
    }
}
