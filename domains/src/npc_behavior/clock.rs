//! Needs over game time: advancing NPCs' needs to a game time in one write (Tick and the
//! time-manager ticks both end here), and the background task that follows the game
//! clock (`evt.time.tick`) so needs decay without a caller. A tick an NPC has already seen
//! changes nothing, so redelivered and late ticks are harmless.

use std::sync::Arc;

use aicore_proto::aicore::npc_behavior::v1::{NpcDefinition, NpcState};
use aicore_proto::{Code, Status};

use super::{NPCS, NpcBehavior, STATE, utility};

impl NpcBehavior {
    /// Advances the needs of `ids` to `until` in one write; an NPC already ticked to
    /// `until` or later is left alone, so a repeated tick decays nothing twice. Answers
    /// how many were advanced.
    pub(super) async fn advance(&self, ids: Vec<String>, until: i64) -> Result<u32, Status> {
        self.ctx
            .store
            .write(move |tx| {
                let mut advanced = 0;
                for (i, id) in ids.iter().enumerate() {
                    let def = tx
                        .get_msg::<NpcDefinition>(NPCS, id.as_bytes())?
                        .ok_or_else(|| {
                            Status::with_field(
                                Code::NotFound,
                                &format!("npc_ids[{i}]"),
                                format!("no NPC `{id}`"),
                            )
                        })?;
                    let mut state =
                        tx.get_msg::<NpcState>(STATE, id.as_bytes())?
                            .unwrap_or(NpcState {
                                ticked_to_game_seconds: -1,
                                ..Default::default()
                            });
                    if until <= state.ticked_to_game_seconds {
                        continue;
                    }
                    state.needs = utility::needs_at(&def, &state, until).into_iter().collect();
                    state.ticked_to_game_seconds = until;
                    state.current_activity = utility::scheduled_at(&def.schedule, until)
                        .map(|e| e.activity.clone())
                        .unwrap_or_default();
                    tx.put_msg(STATE, id.as_bytes(), &state);
                    advanced += 1;
                }
                Ok(advanced)
            })
            .await
    }

    /// Advances every NPC to the game time of a time-manager tick (`evt.time.tick`
    /// payload), in batches of `max_tick` NPCs, one write each. A redelivered or late
    /// tick (not after an NPC's last one) changes nothing; a lost one is made up by the
    /// next, since decay is computed from the elapsed game time. Answers how many NPCs
    /// were advanced.
    pub async fn on_tick(&self, payload: &[u8]) -> Result<u32, Status> {
        use aicore_proto::aicore::time_manager::v1::TickEvent;
        use prost::Message;
        let event = TickEvent::decode(payload)
            .map_err(|e| Status::invalid("payload", format!("is not a TickEvent: {e}")))?;
        let until = event
            .game_time
            .map(|t| t.seconds)
            .filter(|s| *s >= 0)
            .ok_or_else(|| Status::invalid("game_time", "must be a game time, 0 or more"))?;
        let batch = self.config.max_tick.max(1);
        let mut from = Vec::new();
        let mut advanced = 0;
        loop {
            let rows = self.ctx.store.scan(NPCS, b"", &from, batch)?;
            let full = rows.len() == batch;
            let Some((last, _)) = rows.last() else { break };
            from = [last.as_slice(), b"\0".as_slice()].concat();
            let ids = rows
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            advanced += self.advance(ids, until).await?;
            if !full {
                break;
            }
        }
        Ok(advanced)
    }

    /// The background task: follows time-manager's `evt.time.tick` (core NATS, a queue
    /// group so one appliance of a cluster handles each tick) until `Ctx::shutdown`, so
    /// needs decay as game time passes without anyone calling Tick.
    pub async fn follow_clock(self: Arc<Self>) {
        use aicore_proto::Event;
        use aicore_proto::aicore::time_manager::v1::TickEvent;
        use futures::StreamExt;
        let Ok(client) = self.ctx.client() else {
            return;
        };
        let subject = TickEvent::default().subject();
        let mut ticks = match client
            .nats()
            .queue_subscribe(subject.clone(), "npc_behavior".to_string())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, %subject, "npc-behavior cannot follow the game clock");
                return;
            }
        };
        let stop = self.ctx.shutdown.clone();
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = ticks.next() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            if let Err(e) = self.on_tick(&msg.payload).await {
                tracing::warn!(error = %e, "npc-behavior: a game-clock tick advanced no needs");
            }
        }
    }
}
