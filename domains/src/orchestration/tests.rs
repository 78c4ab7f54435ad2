//! orchestration on an in-memory store, with a stand-in for the domains: a wallet that
//! honours idempotency keys as payment does (a key seen before replays its first reply and
//! changes nothing), counts every call, and can be told to fail, or to hold a call until
//! released.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use aicore_proto::aicore::orchestration::v1::{Binding, Call, Run, Step};
use aicore_proto::aicore::payment::v1 as pay;
use aicore_proto::{CallOptions, MethodInfo};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;

/// The stand-in domains.
#[derive(Default)]
struct Wallet {
    state: StdMutex<WalletState>,
    /// Released by tests holding a call.
    gate: Notify,
}

#[derive(Default)]
struct WalletState {
    /// (player, currency) → balance.
    balances: HashMap<(String, String), i64>,
    /// Idempotency key → first reply.
    replies: HashMap<String, Bytes>,
    /// Every call received: subject and key.
    calls: Vec<(String, String)>,
    /// Errors to answer next, per subject (before applying anything).
    fail: HashMap<String, Vec<Status>>,
    /// Subjects whose next call is applied, then held until `gate` is notified.
    hold_after_apply: Vec<String>,
    /// Subjects whose next call is held before being applied.
    hold_before_apply: Vec<String>,
}

impl Wallet {
    fn balance(&self, player: &str, currency: &str) -> i64 {
        let s = self.state.lock().unwrap();
        *s.balances
            .get(&(player.to_string(), currency.to_string()))
            .unwrap_or(&0)
    }
    fn calls(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().calls.clone()
    }
    fn fail_next(&self, subject: &str, e: Status) {
        let mut s = self.state.lock().unwrap();
        s.fail.entry(subject.into()).or_default().push(e);
    }
    fn apply(&self, subject: &str, body: &Bytes) -> Result<(String, Bytes), Status> {
        let mut s = self.state.lock().unwrap();
        let (player, currency, amount, key) = match subject {
            "svc.payment.v1.credit" => {
                let r = pay::CreditRequest::decode(body.clone()).unwrap();
                (r.player_id, r.currency, r.amount, r.idempotency_key)
            }
            "svc.payment.v1.debit" => {
                let r = pay::DebitRequest::decode(body.clone()).unwrap();
                (r.player_id, r.currency, -r.amount, r.idempotency_key)
            }
            other => panic!("unexpected call to {other}"),
        };
        s.calls.push((subject.into(), key.clone()));
        if let Some(e) = s
            .fail
            .get_mut(subject)
            .filter(|f| !f.is_empty())
            .map(|f| f.remove(0))
        {
            return Err(e);
        }
        if let Some(first) = s.replies.get(&key) {
            return Ok((key, first.clone()));
        }
        let n = s.replies.len();
        let b = s
            .balances
            .entry((player.clone(), currency.clone()))
            .or_default();
        if *b + amount < 0 {
            return Err(Status::new(Code::FailedPrecondition, "insufficient funds"));
        }
        *b += amount;
        let balance_after = *b;
        let reply = Bytes::from(
            pay::CreditResponse {
                transaction: Some(pay::Transaction {
                    transaction_id: format!("tx{n}"),
                    player_id: player,
                    currency,
                    amount,
                    balance_after,
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        );
        s.replies.insert(key.clone(), reply.clone());
        Ok((key, reply))
    }
}

/// The wallet as an [`Invoker`].
struct Fake(Arc<Wallet>);

impl Invoker for Fake {
    fn call(
        &self,
        method: &'static MethodInfo,
        body: Bytes,
        options: CallOptions,
    ) -> BoxFuture<'static, Result<Bytes, Status>> {
        let w = self.0.clone();
        Box::pin(async move {
            assert!(options.timeout.is_some(), "every call is bounded");
            let take = |list: &mut Vec<String>| {
                let found = list.iter().position(|s| s == method.subject);
                found.map(|i| list.remove(i)).is_some()
            };
            let before = take(&mut w.state.lock().unwrap().hold_before_apply);
            if before {
                w.gate.notified().await;
            }
            let (_, reply) = w.apply(method.subject, &body)?;
            let after = take(&mut w.state.lock().unwrap().hold_after_apply);
            if after {
                w.gate.notified().await;
            }
            Ok(reply)
        })
    }
}

fn config() -> OrchestrationConfig {
    OrchestrationConfig {
        retry_backoff_ms: 1,
        max_backoff_ms: 5,
        ..Default::default()
    }
}

fn setup() -> (
    Orchestration,
    Arc<Wallet>,
    Ctx,
    Arc<aicore_runtime::ManualClock>,
) {
    let (ctx, clock) = Ctx::for_tests();
    let wallet = Arc::new(Wallet::default());
    let o = Orchestration::new(ctx.clone(), config(), Arc::new(Fake(wallet.clone()))).unwrap();
    (o, wallet, ctx, clock)
}

fn bind(to: &str, from: &str) -> Binding {
    Binding {
        target: to.into(),
        source: from.into(),
    }
}

fn obj(v: Value) -> Option<prost_types::Struct> {
    Some(json::to_struct(&v))
}

/// A payment call: `currency`, literal amount unless bound, player from the run's input.
fn pay_call(rpc: &str, currency: &str, amount: Option<i64>, extra: Vec<Binding>) -> Call {
    let mut input = json!({ "currency": currency, "reason": "saga" });
    if let Some(a) = amount {
        input["amount"] = json!(a);
    }
    let mut bindings = vec![bind("/player_id", "/input/player")];
    bindings.extend(extra);
    Call {
        domain: "payment".into(),
        rpc: rpc.into(),
        input: obj(input),
        bindings,
    }
}

/// A step crediting `amount` of `currency`, undone by debiting what its reply says was
/// credited (its own output).
fn credit_step(id: &str, currency: &str, amount: i64) -> Step {
    Step {
        step_id: id.into(),
        call: Some(pay_call("Credit", currency, Some(amount), vec![])),
        compensation: Some(pay_call(
            "debit",
            currency,
            None,
            vec![bind(
                "/amount",
                &format!("/steps/{id}/output/transaction/amount"),
            )],
        )),
        ..Default::default()
    }
}

fn debit_step(id: &str, currency: &str, amount: i64) -> Step {
    Step {
        step_id: id.into(),
        call: Some(pay_call("Debit", currency, Some(amount), vec![])),
        compensation: Some(pay_call("Credit", currency, Some(amount), vec![])),
        ..Default::default()
    }
}

fn workflow(id: &str, steps: Vec<Step>) -> Workflow {
    Workflow {
        workflow_id: id.into(),
        steps,
        ..Default::default()
    }
}

async fn define(o: &Orchestration, w: Workflow) -> Result<Workflow, Status> {
    o.define(Request::new(DefineRequest {
        workflow: Some(w),
        expected_version: None,
    }))
    .await
    .map(|r| r.workflow.unwrap())
}

/// A Start of `workflow_id` for player p1 with idempotency key `key`.
fn start_request(workflow_id: &str, key: &str) -> Request<StartRequest> {
    Request::new(StartRequest {
        workflow_id: workflow_id.into(),
        input: obj(json!({ "player": "p1" })),
        idempotency_key: key.into(),
    })
}

async fn start(o: &Orchestration, workflow_id: &str, key: &str) -> Result<Run, Status> {
    o.start(start_request(workflow_id, key))
        .await
        .map(|r| r.run.unwrap())
}

async fn status(o: &Orchestration, run_id: &str) -> Run {
    o.status(Request::new(StatusRequest {
        run_id: run_id.into(),
    }))
    .await
    .unwrap()
    .run
    .unwrap()
}

/// Waits (a hang guard, not a timing assertion) until `done` holds for the run.
async fn wait_for(o: &Orchestration, run_id: &str, done: impl Fn(&Run) -> bool) -> Run {
    for _ in 0..2000 {
        let r = status(o, run_id).await;
        if done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "run {run_id} never got there: {:?}",
        status(o, run_id).await
    );
}

async fn finished(o: &Orchestration, run_id: &str) -> Run {
    wait_for(o, run_id, |r| is_final(r.state)).await
}

fn states(r: &Run) -> Vec<StepState> {
    r.steps.iter().map(|s| s.state()).collect()
}

#[tokio::test]
async fn a_saga_succeeds_and_later_steps_read_earlier_outputs() {
    let (o, wallet, _, _) = setup();
    // `spend` debits exactly what `earn` credited, read from earn's reply.
    let spend = Step {
        step_id: "spend".into(),
        call: Some(pay_call(
            "Debit",
            "gold",
            None,
            vec![bind("/amount", "/steps/earn/output/transaction/amount")],
        )),
        ..Default::default()
    };
    let w = define(
        &o,
        workflow("earn_spend", vec![credit_step("earn", "gold", 30), spend]),
    )
    .await
    .unwrap();
    assert_eq!(w.version, 1);
    let run = start(&o, "earn_spend", "k1").await.unwrap();
    assert_eq!(run.state(), RunState::Running);
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:?}");
    assert_eq!(states(&run), [StepState::Succeeded, StepState::Succeeded]);
    assert_eq!(wallet.balance("p1", "gold"), 0);
    let out = json::from_struct(run.steps[1].output.as_ref().unwrap());
    assert_eq!(out["transaction"]["amount"], json!("-30"));
    // Each step carried its own key, made of the run and the step.
    let keys: Vec<String> = wallet.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(
        keys,
        [
            engine::step_key(&run.run_id, "earn", false),
            engine::step_key(&run.run_id, "spend", false)
        ]
    );
}

#[tokio::test]
async fn a_failing_step_compensates_the_completed_ones_in_reverse() {
    let (o, wallet, _, _) = setup();
    let w = workflow(
        "shop",
        vec![
            credit_step("gold", "gold", 30),
            credit_step("gems", "gems", 5),
            debit_step("charge", "gold", 1000),
            credit_step("never", "gold", 1),
        ],
    );
    define(&o, w).await.unwrap();
    let run = start(&o, "shop", "k1").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated, "{run:?}");
    assert_eq!(
        states(&run),
        [
            StepState::Compensated,
            StepState::Compensated,
            StepState::Failed,
            StepState::Skipped
        ]
    );
    let e = run.error.unwrap();
    assert_eq!(e.code, Code::FailedPrecondition as i32);
    assert!(e.message.contains("charge"), "{}", e.message);
    assert_eq!(wallet.balance("p1", "gold"), 0);
    assert_eq!(wallet.balance("p1", "gems"), 0);
    let calls: Vec<(String, String)> = wallet.calls();
    let id = &run.run_id;
    let expect = |rpc: &str, step: &str, undo: bool| {
        (
            format!("svc.payment.v1.{rpc}"),
            engine::step_key(id, step, undo),
        )
    };
    assert_eq!(
        calls,
        [
            expect("credit", "gold", false),
            expect("credit", "gems", false),
            expect("debit", "charge", false),
            expect("debit", "gems", true),
            expect("debit", "gold", true),
        ]
    );
}

#[tokio::test]
async fn unavailable_is_retried_with_the_same_key_and_other_errors_are_not() {
    let (o, wallet, _, _) = setup();
    let mut step = credit_step("gold", "gold", 7);
    step.max_retries = 3;
    define(&o, workflow("retry", vec![step])).await.unwrap();
    for _ in 0..2 {
        wallet.fail_next(
            "svc.payment.v1.credit",
            Status::new(Code::Unavailable, "busy"),
        );
    }
    let run = start(&o, "retry", "k1").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:?}");
    assert_eq!(run.steps[0].attempts, 3);
    assert_eq!(wallet.balance("p1", "gold"), 7);
    let calls = wallet.calls();
    assert!(calls.iter().all(|c| c.1 == calls[0].1), "{calls:?}");

    // Out of retries: the step fails and the run compensates (nothing completed).
    let mut step = credit_step("gold", "gold", 7);
    step.max_retries = 1;
    define(&o, workflow("retry", vec![step])).await.unwrap();
    for _ in 0..2 {
        wallet.fail_next(
            "svc.payment.v1.credit",
            Status::new(Code::Unavailable, "busy"),
        );
    }
    let run = start(&o, "retry", "k2").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated);
    assert_eq!(run.steps[0].attempts, 2);
    // A refusal is final at once.
    wallet.fail_next(
        "svc.payment.v1.credit",
        Status::new(Code::PermissionDenied, "no"),
    );
    let run = start(&o, "retry", "k3").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated);
    assert_eq!(run.steps[0].attempts, 1);
    assert_eq!(
        run.steps[0].error.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    assert_eq!(wallet.balance("p1", "gold"), 7);
}

#[tokio::test]
async fn a_binding_that_finds_nothing_fails_its_step_without_retry() {
    let (o, wallet, _, _) = setup();
    let mut step = credit_step("gold", "gold", 1);
    step.call
        .as_mut()
        .unwrap()
        .bindings
        .push(bind("/reason", "/input/missing"));
    define(
        &o,
        workflow("w", vec![credit_step("first", "gems", 2), step]),
    )
    .await
    .unwrap();
    let run = start(&o, "w", "k").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated);
    assert_eq!(states(&run), [StepState::Compensated, StepState::Failed]);
    let e = run.steps[1].error.as_ref().unwrap();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(e.message.contains("bindings[1].source"), "{}", e.message);
    assert_eq!(run.steps[1].attempts, 1);
    assert_eq!(wallet.balance("p1", "gems"), 0);
}

/// A crash while a step is in flight, after its domain applied it: a new instance on the
/// same store resumes the run, re-sends the step with the same key, and the domain's
/// replay makes it count once.
#[tokio::test]
async fn a_run_resumes_after_a_crash_and_no_step_takes_effect_twice() {
    let (ctx, _) = Ctx::for_tests();
    let wallet = Arc::new(Wallet::default());
    let first = Orchestration::new(ctx.clone(), config(), Arc::new(Fake(wallet.clone()))).unwrap();
    define(
        &first,
        workflow(
            "three",
            vec![
                credit_step("a", "gold", 1),
                credit_step("b", "gold", 10),
                credit_step("c", "gold", 100),
            ],
        ),
    )
    .await
    .unwrap();
    wallet
        .state
        .lock()
        .unwrap()
        .hold_after_apply
        .push("svc.payment.v1.credit".into());
    let run = start(&first, "three", "k").await.unwrap();
    // `a` is applied and held: the domain has it, the run does not know yet.
    wait_for(&first, &run.run_id, |r| {
        r.steps[0].state() == StepState::Running
    })
    .await;
    while wallet.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    // The crash: every executor of the first instance stops where it is.
    ctx.shutdown.cancel();
    assert!(ctx.wait_tasks(Duration::from_secs(10)).await);
    wallet.gate.notify_one();
    let stuck = status(&first, &run.run_id).await;
    assert_eq!(stuck.state(), RunState::Running);
    assert_eq!(stuck.steps[0].state(), StepState::Running);

    let again = Ctx {
        shutdown: CancellationToken::new(),
        tasks: Default::default(),
        ..ctx.clone()
    };
    let second = Orchestration::new(again, config(), Arc::new(Fake(wallet.clone()))).unwrap();
    assert_eq!(second.resume().unwrap(), 1);
    let run = finished(&second, &run.run_id).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:?}");
    assert_eq!(
        run.steps[0].attempts, 2,
        "the in-flight step was sent again"
    );
    assert_eq!(wallet.balance("p1", "gold"), 111, "each step applied once");
    // Nothing is left to resume.
    assert_eq!(second.resume().unwrap(), 0);
}

#[tokio::test]
async fn cancel_lets_the_step_in_flight_finish_and_compensates_everything_done() {
    let (o, wallet, _, _) = setup();
    define(
        &o,
        workflow(
            "w",
            vec![
                credit_step("a", "gold", 1),
                credit_step("b", "gold", 10),
                credit_step("c", "gold", 100),
            ],
        ),
    )
    .await
    .unwrap();
    let run = start(&o, "w", "k").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Succeeded);
    // Cancelling a finished run changes nothing.
    let after = o
        .cancel(Request::new(CancelRequest {
            run_id: run.run_id.clone(),
            reason: "late".into(),
        }))
        .await
        .unwrap()
        .run
        .unwrap();
    assert_eq!(after.state(), RunState::Succeeded);
    assert_eq!(wallet.balance("p1", "gold"), 111);

    // `a` is held before it is applied; Cancel comes while it is in flight.
    wallet
        .state
        .lock()
        .unwrap()
        .hold_before_apply
        .push("svc.payment.v1.credit".into());
    wallet.state.lock().unwrap().calls.clear();
    let run = start(&o, "w", "k2").await.unwrap();
    wait_for(&o, &run.run_id, |r| {
        r.steps[0].state() == StepState::Running
    })
    .await;
    let cancelled = o
        .cancel(Request::new(CancelRequest {
            run_id: run.run_id.clone(),
            reason: "player left".into(),
        }))
        .await
        .unwrap()
        .run
        .unwrap();
    assert_eq!(cancelled.state(), RunState::Compensating);
    wallet.gate.notify_one();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Cancelled, "{run:?}");
    assert_eq!(
        states(&run),
        [
            StepState::Compensated,
            StepState::Skipped,
            StepState::Skipped
        ]
    );
    assert!(run.error.unwrap().message.contains("player left"));
    assert_eq!(wallet.balance("p1", "gold"), 111);
}

#[tokio::test]
async fn a_run_past_its_deadline_starts_no_step_and_compensates() {
    let (o, wallet, _, clock) = setup();
    let mut w = workflow(
        "slow",
        vec![credit_step("a", "gold", 5), credit_step("b", "gold", 6)],
    );
    w.run_timeout = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    define(&o, w).await.unwrap();
    wallet
        .state
        .lock()
        .unwrap()
        .hold_after_apply
        .push("svc.payment.v1.credit".into());
    let run = start(&o, "slow", "k").await.unwrap();
    while wallet.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_secs(61));
    wallet.gate.notify_one();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated, "{run:?}");
    assert_eq!(
        run.error.as_ref().unwrap().code,
        Code::DeadlineExceeded as i32
    );
    assert_eq!(states(&run), [StepState::Compensated, StepState::Skipped]);
    assert_eq!(wallet.balance("p1", "gold"), 0);
}

#[tokio::test]
async fn a_failed_compensation_fails_the_run_after_the_others_ran() {
    let (o, wallet, _, _) = setup();
    define(
        &o,
        workflow(
            "w",
            vec![
                credit_step("a", "gold", 1),
                credit_step("b", "gems", 2),
                debit_step("c", "gold", 99),
            ],
        ),
    )
    .await
    .unwrap();
    // `c` (a debit) fails, then the undo of `b` (a gems debit) is refused.
    wallet.fail_next(
        "svc.payment.v1.debit",
        Status::new(Code::FailedPrecondition, "c fails"),
    );
    wallet.fail_next(
        "svc.payment.v1.debit",
        Status::new(Code::PermissionDenied, "no"),
    );
    let run = start(&o, "w", "k").await.unwrap();
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Failed, "{run:?}");
    assert_eq!(
        states(&run),
        [
            StepState::Compensated,
            StepState::CompensationFailed,
            StepState::Failed
        ]
    );
    assert_eq!(wallet.balance("p1", "gold"), 0);
    assert_eq!(wallet.balance("p1", "gems"), 2);
}

/// A write RPC whose request has no idempotency key (one exists in the contracts).
fn unkeyed_write() -> &'static MethodInfo {
    aicore_proto::find_service("settings")
        .into_iter()
        .chain(aicore_proto::find_service("world_state"))
        .chain(aicore_proto::find_service("quest_system"))
        .flat_map(|s| s.methods.iter())
        .find(|m| !m.policy.read_only && m.idempotency_key == 0 && !m.server_streaming)
        .expect("an unkeyed write")
}

fn streaming() -> &'static MethodInfo {
    aicore_proto::find_service("world_state")
        .unwrap()
        .methods
        .iter()
        .find(|m| m.server_streaming)
        .expect("a streaming RPC")
}

#[tokio::test]
async fn define_refuses_hostile_and_oversized_workflows_naming_the_field() {
    let (o, _, _, _) = setup();
    let good = || {
        workflow(
            "w",
            vec![credit_step("a", "gold", 1), credit_step("b", "gold", 2)],
        )
    };
    type Edit = Box<dyn Fn(&mut Workflow)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "workflow.workflow_id",
            Box::new(|w| w.workflow_id = "Bad Id".into()),
        ),
        (
            "workflow.workflow_id",
            Box::new(|w| w.workflow_id = "x".repeat(65)),
        ),
        (
            "workflow.description",
            Box::new(|w| w.description = "d".repeat(1025)),
        ),
        ("workflow.steps", Box::new(|w| w.steps.clear())),
        (
            "workflow.steps",
            Box::new(|w| {
                w.steps = (0..51)
                    .map(|i| credit_step(&format!("s{i}"), "gold", 1))
                    .collect()
            }),
        ),
        (
            "workflow.steps[1].step_id",
            Box::new(|w| w.steps[1].step_id = "a".into()),
        ),
        (
            "workflow.steps[0].step_id",
            Box::new(|w| w.steps[0].step_id = "x".repeat(41)),
        ),
        (
            "workflow.steps[0].step_id",
            Box::new(|w| w.steps[0].step_id = "A-b".into()),
        ),
        (
            "workflow.steps[0].call",
            Box::new(|w| w.steps[0].call = None),
        ),
        (
            "workflow.steps[0].call.domain",
            Box::new(|w| w.steps[0].call.as_mut().unwrap().domain = "nowhere".into()),
        ),
        (
            "workflow.steps[0].call.domain",
            Box::new(|w| w.steps[0].call.as_mut().unwrap().domain = "orchestration".into()),
        ),
        (
            "workflow.steps[0].call.rpc",
            Box::new(|w| w.steps[0].call.as_mut().unwrap().rpc = "Steal".into()),
        ),
        (
            "workflow.steps[0].call.rpc",
            Box::new(|w| {
                let m = streaming();
                let c = w.steps[0].call.as_mut().unwrap();
                (c.domain, c.rpc, c.input, c.bindings) =
                    (m.domain.into(), m.name.into(), None, vec![]);
            }),
        ),
        (
            "workflow.steps[0].call.rpc",
            Box::new(|w| {
                let m = unkeyed_write();
                let c = w.steps[0].call.as_mut().unwrap();
                (c.domain, c.rpc, c.input, c.bindings) =
                    (m.domain.into(), m.name.into(), None, vec![]);
            }),
        ),
        (
            "workflow.steps[0].call.input.idempotencyKey",
            Box::new(|w| {
                w.steps[0].call.as_mut().unwrap().input = obj(json!({"idempotencyKey": "fixed"}))
            }),
        ),
        (
            "workflow.steps[0].call.input",
            Box::new(|w| w.steps[0].call.as_mut().unwrap().input = obj(json!({"notAField": 1}))),
        ),
        (
            "workflow.steps[0].call.input",
            Box::new(|w| w.steps[0].call.as_mut().unwrap().input = obj(json!({"amount": "lots"}))),
        ),
        (
            "workflow.steps[0].call.input",
            Box::new(|w| {
                w.steps[0].call.as_mut().unwrap().input = obj(json!({"reason": "r".repeat(9000)}))
            }),
        ),
        (
            "workflow.steps[0].call.bindings",
            Box::new(|w| {
                w.steps[0].call.as_mut().unwrap().bindings =
                    (0..33).map(|_| bind("/reason", "/input/x")).collect()
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].target",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/idempotency_key", "/input/k"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].target",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/nope", "/input/k"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].target",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("amount", "/input/k"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].source",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/amount", "/steps/b/output/x"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].source",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/amount", "/steps/a/output/x"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].source",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/amount", "/env/HOME"))
            }),
        ),
        (
            "workflow.steps[0].call.bindings[1].source",
            Box::new(|w| {
                w.steps[0]
                    .call
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/amount", "/input/~2"))
            }),
        ),
        (
            "workflow.steps[1].compensation.bindings[2].source",
            Box::new(|w| {
                w.steps[1]
                    .compensation
                    .as_mut()
                    .unwrap()
                    .bindings
                    .push(bind("/reason", "/steps/later/output"))
            }),
        ),
        (
            "workflow.steps[0].timeout",
            Box::new(|w| {
                w.steps[0].timeout = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                })
            }),
        ),
        (
            "workflow.steps[0].timeout",
            Box::new(|w| {
                w.steps[0].timeout = Some(prost_types::Duration {
                    seconds: 301,
                    nanos: 0,
                })
            }),
        ),
        (
            "workflow.steps[0].timeout",
            Box::new(|w| {
                w.steps[0].timeout = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        (
            "workflow.steps[0].max_retries",
            Box::new(|w| w.steps[0].max_retries = 11),
        ),
        (
            "workflow.run_timeout",
            Box::new(|w| {
                w.run_timeout = Some(prost_types::Duration {
                    seconds: 13 * 3600,
                    nanos: 0,
                })
            }),
        ),
    ];
    for (field, edit) in cases {
        let mut w = good();
        edit(&mut w);
        let e = define(&o, w).await.expect_err(field);
        assert!(
            matches!(e.code, Code::InvalidArgument | Code::ResourceExhausted),
            "{field}: {e}"
        );
        assert_eq!(e.field_violations[0].field, field, "{e}");
    }
    let e = o
        .define(Request::new(DefineRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "workflow");
    // A whole workflow past 256 KiB is refused before its steps are read.
    let mut huge = good();
    huge.steps = (0..50)
        .map(|i| {
            let mut s = credit_step(&format!("s{i}"), "gold", 1);
            s.call.as_mut().unwrap().input = obj(json!({"reason": "r".repeat(6000)}));
            s
        })
        .collect();
    let e = define(&o, huge).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    // Nothing was stored by any refusal.
    assert!(o.ctx().store.get(WORKFLOWS, b"w").unwrap().is_none());
    // The good one, then versions: replace, create-only, replace-only.
    assert_eq!(define(&o, good()).await.unwrap().version, 1);
    assert_eq!(define(&o, good()).await.unwrap().version, 2);
    let conditional = |v| {
        o.define(Request::new(DefineRequest {
            workflow: Some(good()),
            expected_version: Some(v),
        }))
    };
    assert_eq!(conditional(0).await.unwrap_err().code, Code::Conflict);
    assert_eq!(conditional(1).await.unwrap_err().code, Code::Conflict);
    assert_eq!(conditional(2).await.unwrap().workflow.unwrap().version, 3);
}

#[tokio::test]
async fn start_checks_its_input_and_replays_by_key() {
    let (o, wallet, _, _) = setup();
    define(&o, workflow("w", vec![credit_step("a", "gold", 4)]))
        .await
        .unwrap();
    let e = start(&o, "w", "").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "idempotency_key");
    let e = start(&o, "w", &"k".repeat(129)).await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "idempotency_key");
    let e = start(&o, "nope", "k").await.unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let e = start(&o, "Bad/Id", "k").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "workflow_id");
    let e = o
        .start(Request::new(StartRequest {
            workflow_id: "w".into(),
            input: obj(json!({"blob": "x".repeat(70_000)})),
            idempotency_key: "big".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted);
    assert_eq!(e.field_violations[0].field, "input");

    let first = start(&o, "w", "once").await.unwrap();
    let replay = start(&o, "w", "once").await.unwrap();
    assert_eq!(first.run_id, replay.run_id);
    finished(&o, &first.run_id).await;
    assert_eq!(wallet.balance("p1", "gold"), 4, "one run for one key");
    let e = o
        .start(Request::new(StartRequest {
            workflow_id: "w".into(),
            input: obj(json!({"player": "p2"})),
            idempotency_key: "once".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Conflict);
}

#[tokio::test]
async fn status_cancel_and_list_check_their_input() {
    let (o, _, _, _) = setup();
    define(&o, workflow("w", vec![credit_step("a", "gold", 1)]))
        .await
        .unwrap();
    define(&o, workflow("v", vec![debit_step("a", "gold", 1000)]))
        .await
        .unwrap();
    for bad in ["", "run/../x", &"r".repeat(65), "run\n"] {
        let e = o
            .status(Request::new(StatusRequest { run_id: bad.into() }))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "run_id");
        let e = o
            .cancel(Request::new(CancelRequest {
                run_id: bad.into(),
                reason: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "run_id");
    }
    let e = o
        .status(Request::new(StatusRequest {
            run_id: "run_0".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let ok = start(&o, "w", "k1").await.unwrap();
    let failed = start(&o, "v", "k2").await.unwrap();
    finished(&o, &ok.run_id).await;
    finished(&o, &failed.run_id).await;
    let e = o
        .cancel(Request::new(CancelRequest {
            run_id: ok.run_id.clone(),
            reason: "r".repeat(257),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "reason");

    let list = |workflow_id: &str, state: RunState, page_size: i32, page_token: String| {
        o.list_runs(Request::new(ListRunsRequest {
            workflow_id: workflow_id.into(),
            state: state as i32,
            page_size,
            page_token,
        }))
    };
    let all = list("", RunState::Unspecified, 0, String::new())
        .await
        .unwrap();
    assert_eq!(all.runs.len(), 2);
    let of_v = list("v", RunState::Unspecified, 0, String::new())
        .await
        .unwrap();
    assert_eq!(of_v.runs.len(), 1);
    assert_eq!(of_v.runs[0].run_id, failed.run_id);
    let done = list("", RunState::Succeeded, 0, String::new())
        .await
        .unwrap();
    assert_eq!(done.runs.len(), 1);
    assert_eq!(done.runs[0].run_id, ok.run_id);
    let first = list("", RunState::Unspecified, 1, String::new())
        .await
        .unwrap();
    assert_eq!(first.runs.len(), 1);
    let second = list("", RunState::Unspecified, 1, first.next_page_token)
        .await
        .unwrap();
    assert_eq!(second.runs.len(), 1);
    assert_ne!(first.runs[0].run_id, second.runs[0].run_id);
    assert!(second.next_page_token.is_empty());
    let e = list("", RunState::Unspecified, -1, String::new())
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "page_size");
    let e = o
        .list_runs(Request::new(ListRunsRequest {
            state: 99,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "state");
    let e = list("", RunState::Unspecified, 0, "%%".into())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument);
}

#[tokio::test]
async fn steps_run_on_the_identity_of_the_caller_of_start() {
    struct Spy(StdMutex<Vec<Option<aicore_proto::Caller>>>, Arc<Wallet>);
    impl Invoker for Arc<Spy> {
        fn call(
            &self,
            method: &'static MethodInfo,
            body: Bytes,
            options: CallOptions,
        ) -> BoxFuture<'static, Result<Bytes, Status>> {
            self.0.lock().unwrap().push(options.caller.clone());
            Fake(self.1.clone()).call(method, body, options)
        }
    }
    let (ctx, _) = Ctx::for_tests();
    let spy = Arc::new(Spy(StdMutex::new(Vec::new()), Arc::new(Wallet::default())));
    let o = Orchestration::new(ctx, config(), Arc::new(spy.clone())).unwrap();
    define(&o, workflow("w", vec![credit_step("a", "gold", 1)]))
        .await
        .unwrap();
    let run = o
        .start(start_request("w", "k").on_behalf_of("svc_1", &["service"]))
        .await
        .unwrap()
        .run
        .unwrap();
    finished(&o, &run.run_id).await;
    let seen = spy.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let c = seen[0].as_ref().expect("the caller is forwarded");
    assert_eq!(
        (c.account_id.as_str(), c.roles.clone()),
        ("svc_1", vec!["service".to_string()])
    );
}

#[tokio::test]
async fn past_its_deadline_a_run_stops_retrying_and_compensates() {
    let (ctx, clock) = Ctx::for_tests();
    let wallet = Arc::new(Wallet::default());
    let slow = OrchestrationConfig {
        retry_backoff_ms: 50,
        max_backoff_ms: 50,
        ..Default::default()
    };
    let o = Orchestration::new(ctx, slow, Arc::new(Fake(wallet.clone()))).unwrap();
    let mut step = credit_step("b", "gold", 6);
    step.max_retries = 10;
    let mut w = workflow("w", vec![credit_step("a", "gems", 5), step]);
    w.run_timeout = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    define(&o, w).await.unwrap();
    // `a` is applied and held; then every credit fails as Unavailable, so `b` retries.
    wallet
        .state
        .lock()
        .unwrap()
        .hold_after_apply
        .push("svc.payment.v1.credit".into());
    let run = start(&o, "w", "k").await.unwrap();
    while wallet.calls().is_empty() {
        tokio::task::yield_now().await;
    }
    for _ in 0..11 {
        wallet.fail_next(
            "svc.payment.v1.credit",
            Status::new(Code::Unavailable, "down"),
        );
    }
    wallet.gate.notify_one();
    wait_for(&o, &run.run_id, |r| r.steps[1].attempts >= 1).await;
    clock.advance(Duration::from_secs(61));
    let run = finished(&o, &run.run_id).await;
    assert_eq!(run.state(), RunState::Compensated, "{run:?}");
    assert_eq!(states(&run), [StepState::Compensated, StepState::Failed]);
    assert!(run.steps[1].attempts < 11, "{:?}", run.steps[1]);
    assert_eq!(wallet.balance("p1", "gems"), 0);
}

/// A run is its starter's: another service can neither see it, nor list it, nor cancel
/// it; an admin and a trusted principal can.
#[tokio::test]
async fn a_service_sees_and_cancels_only_the_runs_it_started() {
    let (ctx, _) = Ctx::for_tests();
    let wallet = Arc::new(Wallet::default());
    let o = Orchestration::new(ctx, config(), Arc::new(Fake(wallet))).unwrap();
    define(&o, workflow("w", vec![credit_step("a", "gold", 1)]))
        .await
        .unwrap();
    let run = o
        .start(start_request("w", "k").on_behalf_of("svc_a", &["service"]))
        .await
        .unwrap()
        .run
        .unwrap();
    let done = finished(&o, &run.run_id).await;
    let status_as = |who: &'static str, role: &'static str| {
        o.status(
            Request::new(StatusRequest {
                run_id: run.run_id.clone(),
            })
            .on_behalf_of(who, &[role]),
        )
    };
    assert_eq!(
        status_as("svc_b", "service").await.unwrap_err().code,
        Code::PermissionDenied
    );
    assert!(status_as("svc_a", "service").await.is_ok());
    assert!(status_as("root", "admin").await.is_ok());
    let cancel = o
        .cancel(
            Request::new(CancelRequest {
                run_id: run.run_id.clone(),
                reason: String::new(),
            })
            .on_behalf_of("svc_b", &["service"]),
        )
        .await
        .unwrap_err();
    assert_eq!(cancel.code, Code::PermissionDenied);
    assert_eq!(status(&o, &run.run_id).await.state, done.state);
    let listed = |who: &'static str, role: &'static str| {
        o.list_runs(Request::new(ListRunsRequest::default()).on_behalf_of(who, &[role]))
    };
    let ids = |r: ListRunsResponse| r.runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    let own = vec![run.run_id.clone()];
    assert!(ids(listed("svc_b", "service").await.unwrap()).is_empty());
    assert_eq!(ids(listed("svc_a", "service").await.unwrap()), own);
    assert_eq!(ids(listed("root", "admin").await.unwrap()), own);
    let trusted = o.list_runs(Request::new(ListRunsRequest::default())).await;
    assert_eq!(ids(trusted.unwrap()), own);
}
