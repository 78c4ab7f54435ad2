//! Unit and property tests of quest-system, on an in-memory store and a manual clock.

use std::sync::Mutex;
use std::time::Duration;

use aicore_proto::aicore::common::v1::{Value, value};
use aicore_proto::aicore::quest_system::v1::{
    FactCondition, FactOperator, Objective, Prerequisites, Reward,
};
use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};

/// How the next credit fails, if at all.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Refused before paying (payment down).
    Before,
    /// Paid, but the reply was lost.
    After,
}

/// A payment stand-in with payment's idempotency: one transaction per key.
#[derive(Default)]
struct Payments {
    by_key: Mutex<HashMap<String, (Grant, String)>>,
    fault: Mutex<Option<Fault>>,
}

impl Payments {
    fn paid(&self, player: &str, currency: &str) -> i64 {
        let m = self.by_key.lock().unwrap();
        m.values()
            .filter(|(g, _)| g.player_id == player && g.currency == currency)
            .map(|(g, _)| g.amount)
            .sum()
    }
    fn fail_next(&self, f: Fault) {
        *self.fault.lock().unwrap() = Some(f);
    }
}

impl RewardSink for Payments {
    fn credit(&self, grant: Grant, _: CallOptions) -> BoxFuture<'_, Result<String, Status>> {
        Box::pin(async move {
            let fault = self.fault.lock().unwrap().take();
            if fault == Some(Fault::Before) {
                return Err(Status::new(Code::Unavailable, "payment is down"));
            }
            let mut m = self.by_key.lock().unwrap();
            let n = m.len();
            let (first, id) = m
                .entry(grant.idempotency_key.clone())
                .or_insert_with(|| (grant.clone(), format!("tx{n}")))
                .clone();
            assert_eq!(first, grant, "same key, different parameters");
            if fault == Some(Fault::After) {
                return Err(Status::new(Code::DeadlineExceeded, "reply lost"));
            }
            Ok(id)
        })
    }
}

#[derive(Default)]
struct Facts(Mutex<HashMap<String, Fact>>);

impl Facts {
    fn set(&self, key: &str, content_type: &str, data: &str) {
        self.0.lock().unwrap().insert(
            key.into(),
            Fact {
                key: key.into(),
                data: Bytes::from(data.to_string()),
                content_type: content_type.into(),
                ..Default::default()
            },
        );
    }
}

impl WorldFacts for Facts {
    fn get(&self, key: String, _: CallOptions) -> BoxFuture<'_, Result<Option<Fact>, Status>> {
        Box::pin(async move { Ok(self.0.lock().unwrap().get(&key).cloned()) })
    }
}

struct World {
    qs: QuestSystem,
    pay: Arc<Payments>,
    facts: Arc<Facts>,
    clock: Arc<aicore_runtime::ManualClock>,
}

fn world() -> World {
    let (ctx, clock) = Ctx::for_tests();
    let pay = Arc::new(Payments::default());
    let facts = Arc::new(Facts::default());
    World {
        qs: QuestSystem::with_dependencies(ctx, Default::default(), pay.clone(), facts.clone()),
        pay,
        facts,
        clock,
    }
}

fn quest(id: &str, repeatable: bool) -> Quest {
    Quest {
        quest_id: id.into(),
        title: format!("Quest {id}"),
        objectives: vec![
            Objective {
                objective_id: "wolves".into(),
                description: "Kill wolves".into(),
                target: 3,
            },
            Objective {
                objective_id: "talk".into(),
                description: String::new(),
                target: 1,
            },
        ],
        rewards: vec![
            Reward {
                currency: "GOLD".into(),
                amount: 100,
            },
            Reward {
                currency: "GEMS".into(),
                amount: 2,
            },
        ],
        repeatable,
        ..Default::default()
    }
}

impl World {
    async fn define(&self, q: Quest) -> Result<Quest, Status> {
        let r = self
            .qs
            .define_quest(Request::new(DefineQuestRequest {
                quest: Some(q),
                expected_version: None,
            }))
            .await?;
        Ok(r.quest.unwrap_or_default())
    }
    async fn accept(&self, p: &str, q: &str) -> Result<PlayerQuest, Status> {
        let r = self
            .qs
            .accept(Request::new(AcceptRequest {
                player_id: p.into(),
                quest_id: q.into(),
            }))
            .await?;
        Ok(r.player_quest.unwrap_or_default())
    }
    async fn progress(
        &self,
        p: &str,
        q: &str,
        o: &str,
        delta: i64,
        key: &str,
    ) -> Result<ProgressResponse, Status> {
        self.qs
            .progress(Request::new(ProgressRequest {
                player_id: p.into(),
                quest_id: q.into(),
                objective_id: o.into(),
                delta,
                idempotency_key: key.into(),
            }))
            .await
    }
    async fn finish_objectives(&self, p: &str, q: &str) {
        let tag = rand::random::<u64>();
        self.progress(p, q, "wolves", 5, &format!("w{tag}"))
            .await
            .unwrap();
        self.progress(p, q, "talk", 1, &format!("t{tag}"))
            .await
            .unwrap();
    }
    async fn complete(&self, p: &str, q: &str) -> Result<CompleteResponse, Status> {
        self.qs
            .complete(Request::new(CompleteRequest {
                player_id: p.into(),
                quest_id: q.into(),
            }))
            .await
    }
    async fn abandon(&self, p: &str, q: &str) -> Result<PlayerQuest, Status> {
        let r = self
            .qs
            .abandon(Request::new(AbandonRequest {
                player_id: p.into(),
                quest_id: q.into(),
            }))
            .await?;
        Ok(r.player_quest.unwrap_or_default())
    }
    async fn available(&self, p: &str) -> Vec<String> {
        self.qs
            .list_available(Request::new(ListAvailableRequest {
                player_id: p.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .quests
            .into_iter()
            .map(|q| q.quest_id)
            .collect()
    }
    fn completed_events(&self) -> Vec<QuestCompleted> {
        self.qs
            .ctx
            .store
            .scan(OUTBOX, b"", b"", 10_000)
            .unwrap()
            .into_iter()
            .map(|(_, v)| aicore_runtime::store::decode::<OutboxEvent>(OUTBOX, v).unwrap())
            .filter(|e| e.subject == COMPLETED_SUBJECT)
            .map(|e| prost::Message::decode(e.payload.as_slice()).unwrap())
            .collect()
    }
}

fn precondition(e: Status, state: &str) {
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    assert!(e.message.contains(state), "{e} should name {state}");
}

#[tokio::test]
async fn accept_progress_complete_pays_once_and_repeats_the_first_result() {
    let w = world();
    w.define(quest("wolf_hunt", false)).await.unwrap();
    let pq = w.accept("p1", "wolf_hunt").await.unwrap();
    assert_eq!(
        (pq.state, pq.quest_version, pq.objectives.len()),
        (QuestState::Active as i32, 1, 2)
    );
    // Accepting again returns it unchanged.
    assert_eq!(w.accept("p1", "wolf_hunt").await.unwrap(), pq);
    let r = w
        .progress("p1", "wolf_hunt", "wolves", 2, "k1")
        .await
        .unwrap();
    assert!(!r.all_objectives_done);
    // A replay adds nothing.
    assert_eq!(
        w.progress("p1", "wolf_hunt", "wolves", 2, "k1")
            .await
            .unwrap(),
        r
    );
    precondition(w.complete("p1", "wolf_hunt").await.unwrap_err(), "wolves");
    let r = w
        .progress("p1", "wolf_hunt", "wolves", 10, "k2")
        .await
        .unwrap();
    let wolves = &r.player_quest.as_ref().unwrap().objectives[0];
    assert_eq!(
        (wolves.current, wolves.done),
        (3, true),
        "clamped to the target"
    );
    assert!(!r.all_objectives_done);
    assert!(
        w.progress("p1", "wolf_hunt", "talk", 1, "k3")
            .await
            .unwrap()
            .all_objectives_done
    );
    let first = w.complete("p1", "wolf_hunt").await.unwrap();
    let pq = first.player_quest.clone().unwrap();
    assert_eq!(
        (pq.state, pq.completions),
        (QuestState::Completed as i32, 1)
    );
    assert_eq!(first.reward_transaction_ids.len(), 2);
    assert_eq!(w.complete("p1", "wolf_hunt").await.unwrap(), first);
    assert_eq!(
        (w.pay.paid("p1", "GOLD"), w.pay.paid("p1", "GEMS")),
        (100, 2)
    );
    let events = w.completed_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].reward_transaction_ids,
        first.reward_transaction_ids
    );
    assert!(
        w.pay
            .by_key
            .lock()
            .unwrap()
            .contains_key("quest:p1:wolf_hunt:GOLD")
    );
    // Completed and not repeatable: no way back.
    precondition(w.accept("p1", "wolf_hunt").await.unwrap_err(), "COMPLETED");
    precondition(w.abandon("p1", "wolf_hunt").await.unwrap_err(), "COMPLETED");
    precondition(
        w.progress("p1", "wolf_hunt", "talk", 1, "k4")
            .await
            .unwrap_err(),
        "COMPLETED",
    );
}

#[tokio::test]
async fn a_failed_or_lost_credit_converges_on_retry_and_blocks_abandon_meanwhile() {
    let w = world();
    w.define(quest("q", false)).await.unwrap();
    w.accept("p1", "q").await.unwrap();
    w.finish_objectives("p1", "q").await;
    w.pay.fail_next(Fault::Before);
    assert_eq!(
        w.complete("p1", "q").await.unwrap_err().code,
        Code::Unavailable
    );
    precondition(w.abandon("p1", "q").await.unwrap_err(), "being completed");
    w.pay.fail_next(Fault::After);
    assert_eq!(
        w.complete("p1", "q").await.unwrap_err().code,
        Code::DeadlineExceeded
    );
    assert_eq!(w.pay.paid("p1", "GOLD"), 100);
    let r = w.complete("p1", "q").await.unwrap();
    assert_eq!(r.player_quest.unwrap().state, QuestState::Completed as i32);
    assert_eq!(
        (w.pay.paid("p1", "GOLD"), w.pay.paid("p1", "GEMS")),
        (100, 2)
    );
    assert_eq!(w.completed_events().len(), 1);
}

#[tokio::test]
async fn abandon_and_reaccept_restarts_progress_and_repeatable_quests_pay_per_completion() {
    let w = world();
    w.define(quest("daily", true)).await.unwrap();
    precondition(w.abandon("p1", "daily").await.unwrap_err(), "AVAILABLE");
    precondition(w.complete("p1", "daily").await.unwrap_err(), "AVAILABLE");
    w.accept("p1", "daily").await.unwrap();
    w.progress("p1", "daily", "wolves", 2, "a").await.unwrap();
    let pq = w.abandon("p1", "daily").await.unwrap();
    assert_eq!(pq.state, QuestState::Abandoned as i32);
    assert_eq!(
        w.abandon("p1", "daily").await.unwrap(),
        pq,
        "abandoning again is a no-op"
    );
    precondition(w.complete("p1", "daily").await.unwrap_err(), "ABANDONED");
    precondition(
        w.progress("p1", "daily", "wolves", 1, "b")
            .await
            .unwrap_err(),
        "ABANDONED",
    );
    let pq = w.accept("p1", "daily").await.unwrap();
    assert!(pq.objectives.iter().all(|o| o.current == 0));
    for round in 1..=3u32 {
        w.finish_objectives("p1", "daily").await;
        let r = w.complete("p1", "daily").await.unwrap();
        assert_eq!(r.player_quest.unwrap().completions, round);
        assert_eq!(w.pay.paid("p1", "GOLD"), 100 * i64::from(round));
        w.accept("p1", "daily").await.unwrap();
    }
    assert!(
        w.pay
            .by_key
            .lock()
            .unwrap()
            .contains_key("quest:p1:daily:GOLD:3")
    );
}

#[tokio::test]
async fn prerequisites_gate_accept_and_list_available() {
    let w = world();
    w.define(quest("intro", false)).await.unwrap();
    let mut q = quest("siege", false);
    q.prerequisites = Some(Prerequisites {
        completed_quest_ids: vec!["intro".into()],
        facts: vec![
            FactCondition {
                key: "castle.gate".into(),
                op: FactOperator::Equals as i32,
                value: Some(Value {
                    kind: Some(value::Kind::StringValue("closed".into())),
                }),
            },
            FactCondition {
                key: "army.size".into(),
                op: FactOperator::GreaterThan as i32,
                value: Some(Value {
                    kind: Some(value::Kind::IntValue(10)),
                }),
            },
            FactCondition {
                key: "dragon".into(),
                op: FactOperator::NotExists as i32,
                value: None,
            },
        ],
    });
    w.define(q).await.unwrap();
    assert_eq!(w.available("p1").await, vec!["intro"]);
    precondition(w.accept("p1", "siege").await.unwrap_err(), "intro");
    w.accept("p1", "intro").await.unwrap();
    assert!(
        w.available("p1").await.is_empty(),
        "active quests are not available"
    );
    w.finish_objectives("p1", "intro").await;
    w.complete("p1", "intro").await.unwrap();
    precondition(w.accept("p1", "siege").await.unwrap_err(), "castle.gate");
    w.facts.set("castle.gate", "text/plain", "closed");
    w.facts.set("army.size", "application/json", "7");
    precondition(w.accept("p1", "siege").await.unwrap_err(), "army.size");
    w.facts.set("army.size", "text/plain; charset=utf-8", "12");
    assert_eq!(w.available("p1").await, vec!["siege"]);
    w.facts.set("dragon", "text/plain", "awake");
    assert!(w.available("p1").await.is_empty());
    assert_eq!(w.available("p2").await, vec!["intro"]);
}

#[tokio::test]
async fn definitions_are_validated_naming_the_field_and_versioned() {
    let w = world();
    type Edit = Box<dyn Fn(&mut Quest)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|q| q.quest_id = "Bad Id".into()), "quest.quest_id"),
        (Box::new(|q| q.objectives.clear()), "quest.objectives"),
        (
            Box::new(|q| q.objectives[1].target = 0),
            "quest.objectives[1].target",
        ),
        (
            Box::new(|q| q.objectives[1].objective_id = "wolves".into()),
            "quest.objectives[1].objective_id",
        ),
        (
            Box::new(|q| q.rewards[0].amount = 0),
            "quest.rewards[0].amount",
        ),
        (
            Box::new(|q| q.rewards[1].currency = "GOLD".into()),
            "quest.rewards[1].currency",
        ),
        (
            Box::new(|q| {
                q.prerequisites = Some(Prerequisites {
                    completed_quest_ids: vec![],
                    facts: vec![FactCondition {
                        key: "k".into(),
                        op: FactOperator::LessThan as i32,
                        value: None,
                    }],
                })
            }),
            "quest.prerequisites.facts[0].value",
        ),
    ];
    for (edit, field) in cases {
        let mut q = quest("q", false);
        edit(&mut q);
        let e = w.define(q).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
    let v1 = w.define(quest("q", false)).await.unwrap();
    w.accept("p1", "q").await.unwrap();
    let mut q2 = quest("q", false);
    q2.rewards[0].amount = 999;
    let e =
        w.qs.define_quest(Request::new(DefineQuestRequest {
            quest: Some(q2.clone()),
            expected_version: Some(0),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
    assert_eq!(w.define(q2).await.unwrap().version, 2);
    // The player keeps the version they accepted, rewards included.
    w.finish_objectives("p1", "q").await;
    w.complete("p1", "q").await.unwrap();
    assert_eq!(w.pay.paid("p1", "GOLD"), 100);
    let got =
        w.qs.get_quest(Request::new(GetQuestRequest {
            quest_id: "q".into(),
            version: 1,
        }))
        .await
        .unwrap();
    assert_eq!(got.quest.unwrap(), v1);
    let e = w.accept("p1", "nope").await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::NotFound, "quest_id")
    );
}

#[tokio::test]
async fn log_is_most_recent_first_filtered_and_private() {
    let w = world();
    for id in ["a", "b", "c"] {
        w.define(quest(id, false)).await.unwrap();
        w.accept("p1", id).await.unwrap();
        w.clock.advance(Duration::from_secs(1));
    }
    w.abandon("p1", "a").await.unwrap();
    let log = |states: Vec<i32>, page_size: i32, page_token: String| {
        w.qs.get_log(Request::new(GetLogRequest {
            player_id: "p1".into(),
            states,
            page_size,
            page_token,
        }))
    };
    let r = log(vec![], 2, String::new()).await.unwrap();
    let ids: Vec<_> = r.entries.iter().map(|e| e.quest_id.as_str()).collect();
    assert_eq!(ids, vec!["a", "c"]);
    let r = log(vec![], 2, r.next_page_token).await.unwrap();
    assert_eq!(
        r.entries
            .iter()
            .map(|e| e.quest_id.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    assert!(r.next_page_token.is_empty());
    let r = log(vec![QuestState::Active as i32], 0, String::new())
        .await
        .unwrap();
    assert_eq!(r.entries.len(), 2);
    let e = log(vec![0], 0, String::new()).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "states[0]");
    let e =
        w.qs.get_log(
            Request::new(GetLogRequest {
                player_id: "p1".into(),
                ..Default::default()
            })
            .on_behalf_of("p2", &["player"]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
}

#[test]
fn reward_keys_stay_within_payments_limit() {
    assert_eq!(reward_key("p", "q", "GOLD", 1), "quest:p:q:GOLD");
    assert_eq!(reward_key("p", "q", "GOLD", 2), "quest:p:q:GOLD:2");
    let long = reward_key(&"p".repeat(128), "q", "GOLD", 1);
    assert!(long.len() <= MAX_CREDIT_KEY_CHARS && long.starts_with("quest:"));
    assert_ne!(long, reward_key(&"p".repeat(128), "q", "GEMS", 1));
}

#[derive(Debug, Clone)]
enum Action {
    Accept(usize),
    Progress(usize, bool),
    Complete(usize, Option<bool>),
    Abandon(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0usize..2).prop_map(Action::Accept),
        (0usize..2, any::<bool>()).prop_map(|(q, o)| Action::Progress(q, o)),
        (0usize..2, proptest::option::of(any::<bool>())).prop_map(|(q, f)| Action::Complete(q, f)),
        (0usize..2).prop_map(Action::Abandon),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever players do (and however payment fails), an entry is only ever active,
    /// completed or abandoned, refusals are FailedPrecondition, and every completion
    /// is paid exactly once: never twice, and never lost once Complete is retried.
    #[test]
    fn quest_state_machine_never_reaches_an_illegal_state_or_pays_twice(actions in proptest::collection::vec(action(), 1..50)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let w = world();
            let ids = ["once", "daily"];
            w.define(quest("once", false)).await.unwrap();
            w.define(quest("daily", true)).await.unwrap();
            let mut n = 0u64;
            for a in actions {
                n += 1;
                let (q, r) = match a {
                    Action::Accept(q) => (q, w.accept("p", ids[q]).await.map(|_| ())),
                    Action::Progress(q, first) => {
                        let o = if first { "wolves" } else { "talk" };
                        (q, w.progress("p", ids[q], o, 2, &format!("k{n}")).await.map(|_| ()))
                    }
                    Action::Complete(q, fault) => {
                        if let Some(after) = fault {
                            w.pay.fail_next(if after { Fault::After } else { Fault::Before });
                        }
                        (q, w.complete("p", ids[q]).await.map(|_| ()))
                    }
                    Action::Abandon(q) => (q, w.abandon("p", ids[q]).await.map(|_| ())),
                };
                // A fault the action never reached does not carry over.
                w.pay.fault.lock().unwrap().take();
                if let Err(e) = r {
                    assert!(
                        matches!(e.code, Code::FailedPrecondition | Code::Unavailable | Code::DeadlineExceeded),
                        "unexpected refusal {e}"
                    );
                }
                let entry = w.qs.entry("p", ids[q]).unwrap();
                if let Some(e) = entry {
                    let pq = e.quest.unwrap();
                    assert!(
                        [QuestState::Active, QuestState::Completed, QuestState::Abandoned]
                            .iter()
                            .any(|s| *s as i32 == pq.state)
                    );
                    assert!(!e.completing || pq.state == QuestState::Active as i32);
                    if pq.state == QuestState::Completed as i32 {
                        assert!(pq.completions >= 1);
                    }
                    if ids[q] == "once" {
                        assert!(pq.completions <= 1);
                    }
                }
            }
            // Retry every interrupted completion; then pay == completions × reward.
            let mut completions = 0i64;
            for id in ids {
                if w.qs.entry("p", id).unwrap().is_some_and(|e| e.completing) {
                    w.complete("p", id).await.unwrap();
                }
                completions += w
                    .qs
                    .entry("p", id)
                    .unwrap()
                    .and_then(|e| e.quest)
                    .map_or(0, |pq| i64::from(pq.completions));
            }
            assert_eq!(w.pay.paid("p", "GOLD"), 100 * completions);
            assert_eq!(w.completed_events().len() as i64, completions);
        });
    }
}
