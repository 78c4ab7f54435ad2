//! What story-teller reads and asks of other domains ([`Sources`]): world facts, quest
//! state, knowledge-base lore and ai-integration's generation; over NATS in production
//! ([`OverNats`]), a fake in the unit tests.

use super::*;

/// A knowledge-base document a narration is grounded on.
#[derive(Debug, Clone, PartialEq)]
pub struct Lore {
    /// Its id.
    pub document_id: String,
    /// Its title.
    pub title: String,
    /// The start of its body.
    pub text: String,
}

/// One item of generated narration.
#[derive(Debug, Clone, PartialEq)]
pub enum Gen {
    /// Generation started on this model.
    Started {
        /// The model.
        model_id: String,
        /// ai-integration's offline provider (no model).
        offline: bool,
    },
    /// The next piece of text.
    Delta(String),
    /// Generation ended.
    Done {
        /// Tokens of the prompt.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// Stopped at the token limit.
        truncated: bool,
    },
}

/// What story-teller reads from other domains; over NATS in production.
pub trait Sources: Send + Sync + 'static {
    /// The live fact under `key`, or `None`.
    fn fact(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>>;
    /// Where `player` stands with `quest_id`: ACTIVE, COMPLETED, NOT_STARTED, or
    /// UNSPECIFIED for anything else (available again, abandoned).
    fn quest(
        &self,
        player: String,
        quest_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<QuestStatus, Status>>;
    /// Up to `max` documents with any of `tags` matching `query`, best first.
    fn lore(
        &self,
        query: String,
        tags: Vec<String>,
        max: usize,
        chars: usize,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Vec<Lore>, Status>>;
    /// Streams a narration from a system prompt and a user message.
    fn generate(
        &self,
        system: String,
        user: String,
        max_tokens: u32,
        player_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Gen, Status>>, Status>>;
}

/// The production [`Sources`]: the SDK client.
pub struct OverNats {
    ctx: Ctx,
}

impl OverNats {
    /// Reads through `ctx`'s client.
    pub fn new(ctx: Ctx) -> OverNats {
        OverNats { ctx }
    }
}

/// Log pages of quest-system read to find one quest's entry.
const QUEST_LOG_PAGES: usize = 10;

impl Sources for OverNats {
    fn fact(
        &self,
        key: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        Box::pin(async move { aicore_runtime::facts::fetch(&self.ctx, key, &options).await })
    }

    fn quest(
        &self,
        player: String,
        quest_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<QuestStatus, Status>> {
        use aicore_proto::aicore::quest_system::v1::{
            GetLogRequest, QuestState, QuestSystemClient,
        };
        Box::pin(async move {
            let client = QuestSystemClient::new(self.ctx.client()?.clone());
            let mut token = String::new();
            for _ in 0..QUEST_LOG_PAGES {
                let r = client
                    .get_log(
                        GetLogRequest {
                            player_id: player.clone(),
                            states: vec![],
                            page_size: 200,
                            page_token: token,
                        },
                        &options,
                    )
                    .await?;
                if let Some(e) = r.entries.iter().find(|e| e.quest_id == quest_id) {
                    return Ok(match QuestState::try_from(e.state) {
                        Ok(QuestState::Active) => QuestStatus::Active,
                        Ok(QuestState::Completed) => QuestStatus::Completed,
                        _ => QuestStatus::Unspecified,
                    });
                }
                if r.next_page_token.is_empty() {
                    return Ok(QuestStatus::NotStarted);
                }
                token = r.next_page_token;
            }
            Err(Status::new(
                Code::ResourceExhausted,
                "the player's quest log is too long to check a quest condition",
            ))
        })
    }

    fn lore(
        &self,
        query: String,
        tags: Vec<String>,
        max: usize,
        chars: usize,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<Vec<Lore>, Status>> {
        use aicore_proto::aicore::knowledge_base::v1::{
            GetRequest, KnowledgeBaseClient, SearchRequest,
        };
        Box::pin(async move {
            let client = KnowledgeBaseClient::new(self.ctx.client()?.clone());
            let hits = client
                .search(
                    SearchRequest {
                        query,
                        any_tags: tags,
                        page_size: max as i32,
                        ..Default::default()
                    },
                    &options,
                )
                .await?
                .hits;
            let mut out = Vec::new();
            for h in hits.into_iter().take(max) {
                let doc = client
                    .get(
                        GetRequest {
                            document_id: h.document_id.clone(),
                        },
                        &options,
                    )
                    .await?
                    .document
                    .unwrap_or_default();
                out.push(Lore {
                    document_id: h.document_id,
                    title: doc.title,
                    text: doc.body.chars().take(chars).collect(),
                });
            }
            Ok(out)
        })
    }

    fn generate(
        &self,
        system: String,
        user: String,
        max_tokens: u32,
        player_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Gen, Status>>, Status>> {
        use aicore_proto::aicore::ai_integration::v1::{
            AiIntegrationClient, ChatMessage, ChatRequest, FinishReason, GenerationParams, Role,
            chat_response,
        };
        Box::pin(async move {
            let client = AiIntegrationClient::new(self.ctx.client()?.clone());
            let stream = client
                .chat(
                    ChatRequest {
                        messages: vec![
                            ChatMessage {
                                role: Role::System as i32,
                                content: system,
                            },
                            ChatMessage {
                                role: Role::User as i32,
                                content: user,
                            },
                        ],
                        params: Some(GenerationParams {
                            max_tokens,
                            ..Default::default()
                        }),
                        player_id,
                        ..Default::default()
                    },
                    &options,
                )
                .await?;
            Ok(stream
                .filter_map(|item| async move {
                    let item = match item {
                        Ok(i) => i.item?,
                        Err(e) => return Some(Err(e)),
                    };
                    Some(Ok(match item {
                        chat_response::Item::Started(s) => {
                            let s = s.served_by.unwrap_or_default();
                            Gen::Started {
                                model_id: s.model_id,
                                offline: s.offline,
                            }
                        }
                        chat_response::Item::Delta(t) => Gen::Delta(t),
                        chat_response::Item::Summary(s) => {
                            let u = s.usage.unwrap_or_default();
                            Gen::Done {
                                prompt_tokens: u.prompt_tokens,
                                completion_tokens: u.completion_tokens,
                                truncated: s.finish_reason == FinishReason::Length as i32,
                            }
                        }
                    }))
                })
                .boxed())
        })
    }
}
