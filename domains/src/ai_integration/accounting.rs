//! Token accounting and the `AI` stream's records. Every AI request ends in one store
//! write that adds its tokens to the caller's hourly row for the model and queues its
//! [`AiRecord`] on `ai.<rpc>.<outcome>` through the outbox (`tx.emit`), so the count and
//! the record never disagree. Prompts and answers are in the record only when the
//! operator turned `record_prompts` on; API keys never are.
//!
//! Table `ai_integration.usage`: `<player>\0<hour, u64 big-endian>\0<model>` → [`UsageRow`]
//! (player ids have no control characters; an empty player is service work). One row
//! per player, hour and model; GetUsage sums a window of hours, the budget check the
//! current hour.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aicore_proto::Status;
use aicore_proto::aicore::ai_integration::v1::{AiRecord, ModelUsage, ServedBy, Usage};
use aicore_runtime::outbox::Emit;
use aicore_runtime::store::{Store, decode};

/// The usage table.
pub const USAGE: &str = "ai_integration.usage";
/// Rows one GetUsage reads at most (a window of 90 days for a few dozen models).
const MAX_USAGE_ROWS: usize = 100_000;

/// Tokens of one player, hour and model.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageRow {
    /// Calls that reached a provider.
    #[prost(uint64, tag = "1")]
    pub requests: u64,
    /// Prompt tokens.
    #[prost(uint64, tag = "2")]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[prost(uint64, tag = "3")]
    pub completion_tokens: u64,
}

/// The hour (since the epoch) `t` falls in.
pub fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

fn prefix(player: &str) -> Vec<u8> {
    let mut k = player.as_bytes().to_vec();
    k.push(0);
    k
}

fn key(player: &str, hour: u64, model: &str) -> Vec<u8> {
    let mut k = prefix(player);
    k.extend_from_slice(&hour.to_be_bytes());
    k.push(0);
    k.extend_from_slice(model.as_bytes());
    k
}

/// Tokens `player` used in `hour`, all models together.
pub fn hour_tokens(store: &Store, player: &str, hour: u64) -> Result<u64, Status> {
    let mut p = prefix(player);
    p.extend_from_slice(&hour.to_be_bytes());
    let mut total = 0u64;
    for (_, v) in store.scan(USAGE, &p, &p, 10_000)? {
        let row: UsageRow = decode(USAGE, v)?;
        total = total.saturating_add(row.prompt_tokens + row.completion_tokens);
    }
    Ok(total)
}

/// Usage of `player` per model over the `hours` hours ending with `now`'s, optionally of
/// one model, ordered by model id.
pub fn usage(
    store: &Store,
    player: &str,
    model: &str,
    hours: u64,
    now: SystemTime,
) -> Result<Vec<ModelUsage>, Status> {
    let p = prefix(player);
    let from_hour = hour_of(now).saturating_sub(hours.saturating_sub(1));
    let mut from = p.clone();
    from.extend_from_slice(&from_hour.to_be_bytes());
    let mut per_model: std::collections::BTreeMap<String, ModelUsage> = Default::default();
    for (k, v) in store.scan(USAGE, &p, &from, MAX_USAGE_ROWS)? {
        let Some(m) = k.get(p.len() + 9..) else {
            continue;
        };
        let m = String::from_utf8_lossy(m).into_owned();
        if !model.is_empty() && m != model {
            continue;
        }
        let row: UsageRow = decode(USAGE, v)?;
        let e = per_model.entry(m.clone()).or_insert_with(|| ModelUsage {
            model_id: m,
            ..Default::default()
        });
        e.requests += row.requests;
        e.prompt_tokens += row.prompt_tokens;
        e.completion_tokens += row.completion_tokens;
    }
    Ok(per_model.into_values().collect())
}

/// How one request ended, for its record.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `complete`, `chat` or `embed`.
    pub rpc: &'static str,
    /// The request id (from the caller, else made).
    pub request_id: String,
    /// The player; empty for service work.
    pub player: String,
    /// Which model served (or was tried last, for errors).
    pub served_by: ServedBy,
    /// Tokens spent at the provider (none for a cache hit or an error before any).
    pub usage: Option<Usage>,
    /// Whether a provider was called (counts a request in the usage row).
    pub provider_called: bool,
    /// Arrival to the last byte.
    pub latency: Duration,
    /// Arrival to the first token (Chat).
    pub first_token: Option<Duration>,
    /// `ok`, `error` or `cancelled`.
    pub outcome: &'static str,
    /// The error, for `error`.
    pub error: String,
    /// The prompt and the answer (kept only with `record_prompts`).
    pub prompt: String,
    /// See `prompt`.
    pub answer: String,
}

/// Writes `o`: its tokens into the usage row and its record into the outbox, in one
/// transaction. `record_prompts` decides whether the texts go into the record.
pub async fn record(
    store: &Store,
    now: SystemTime,
    o: Outcome,
    record_prompts: bool,
) -> Result<(), Status> {
    let hour = hour_of(now);
    let model = o.served_by.model_id.clone();
    let rec = AiRecord {
        request_id: o.request_id,
        rpc: o.rpc.to_string(),
        player_id: o.player.clone(),
        served_by: Some(o.served_by),
        usage: o.usage,
        latency: prost_types::Duration::try_from(o.latency).ok(),
        first_token_latency: o
            .first_token
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        outcome: o.outcome.to_string(),
        error: o.error,
        prompt: if record_prompts {
            o.prompt
        } else {
            String::new()
        },
        answer: if record_prompts {
            o.answer
        } else {
            String::new()
        },
        at: Some(aicore_runtime::timestamp(now)),
    };
    let count = o.provider_called && !model.is_empty();
    let (player, usage) = (o.player, o.usage);
    store
        .write(move |tx| {
            if count {
                let k = key(&player, hour, &model);
                let mut row: UsageRow = tx.get_msg(USAGE, &k)?.unwrap_or_default();
                row.requests += 1;
                if let Some(u) = usage {
                    row.prompt_tokens += u64::from(u.prompt_tokens);
                    row.completion_tokens += u64::from(u.completion_tokens);
                }
                tx.put_msg(USAGE, &k, &row);
            }
            tx.emit(&rec)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(model: &str) -> ServedBy {
        ServedBy {
            model_id: model.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn tokens_add_up_per_player_model_and_hour_and_the_window_bounds_them() {
        let store = Store::in_memory();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rec = |player: &str, model: &str, p: u32, c: u32, at: SystemTime| {
            let store = store.clone();
            let o = Outcome {
                rpc: "chat",
                player: player.into(),
                served_by: served(model),
                usage: Some(Usage {
                    prompt_tokens: p,
                    completion_tokens: c,
                    total_tokens: p + c,
                    estimated: false,
                }),
                provider_called: true,
                outcome: "ok",
                ..Default::default()
            };
            async move { record(&store, at, o, false).await.unwrap() }
        };
        rec("p1", "llama", 10, 5, t0).await;
        rec("p1", "llama", 1, 2, t0).await;
        rec("p1", "qwen", 3, 3, t0).await;
        rec("p2", "llama", 100, 100, t0).await;
        rec("p1", "llama", 7, 7, t0 - Duration::from_secs(5 * 3600)).await;
        let u = usage(&store, "p1", "", 1, t0).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(
            (
                u[0].model_id.as_str(),
                u[0].requests,
                u[0].prompt_tokens,
                u[0].completion_tokens
            ),
            ("llama", 2, 11, 7)
        );
        assert_eq!(u[1].model_id, "qwen");
        let day = usage(&store, "p1", "llama", 24, t0).unwrap();
        assert_eq!((day[0].requests, day[0].prompt_tokens), (3, 18));
        assert_eq!(hour_tokens(&store, "p1", hour_of(t0)).unwrap(), 11 + 7 + 6);
        assert_eq!(hour_tokens(&store, "p2", hour_of(t0)).unwrap(), 200);
        // Service work (no player) is its own account.
        assert!(usage(&store, "", "", 24, t0).unwrap().is_empty());
    }
}
