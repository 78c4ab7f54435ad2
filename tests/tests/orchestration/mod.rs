//! orchestration on a real appliance (real nats-server, real store, payment and auth over
//! NATS): a saga whose third step fails has its two completed steps compensated, newest
//! first, and the player's wallet ends as it began; and a run killed with SIGKILL in the
//! middle resumes when the appliance restarts on the same data directory, finishes, and
//! no step takes effect twice (the ledger holds each step's entry exactly once).

use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::auth::v1 as auth;
use aicore_proto::aicore::orchestration::v1 as orch;
use aicore_proto::aicore::payment::v1 as pay;
use aicore_proto::{CallOptions, Code};
use aicore_domains::orchestration::json::to_struct;
use serde_json::{Value, json};

type Orch = orch::OrchestrationClient<aicore_sdk::Client>;

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(10))
}

fn bind(to: &str, from: &str) -> orch::Binding {
    orch::Binding {
        target: to.into(),
        source: from.into(),
    }
}

/// A payment call for the run's player (`/input/player`).
fn pay_call(rpc: &str, literal: Value, mut bindings: Vec<orch::Binding>) -> orch::Call {
    bindings.insert(0, bind("/playerId", "/input/player"));
    orch::Call {
        domain: "payment".into(),
        rpc: rpc.into(),
        input: Some(to_struct(&literal)),
        bindings,
    }
}

/// Credits `amount` of `currency`; undone by debiting what the reply says was credited.
fn credit_step(id: &str, currency: &str, amount: i64) -> orch::Step {
    orch::Step {
        step_id: id.into(),
        call: Some(pay_call(
            "Credit",
            json!({"currency": currency, "amount": amount, "reason": id}),
            vec![],
        )),
        compensation: Some(pay_call(
            "Debit",
            json!({"currency": currency, "reason": format!("undo {id}")}),
            vec![bind(
                "/amount",
                &format!("/steps/{id}/output/transaction/amount"),
            )],
        )),
        ..Default::default()
    }
}

async fn register(app: &Appliance, name: &str) -> String {
    auth::AuthClient::new(app.client().await)
        .register(
            auth::RegisterRequest {
                username: name.into(),
                password: "amber-walrus-quarry".into(),
                display_name: String::new(),
            },
            &opts(),
        )
        .await
        .expect("register")
        .account_id
}

async fn balance(app: &Appliance, player: &str, currency: &str) -> i64 {
    pay::PaymentClient::new(app.client().await)
        .get_wallet(
            pay::GetWalletRequest {
                player_id: player.into(),
                currency: currency.into(),
            },
            &opts(),
        )
        .await
        .expect("wallet")
        .balances
        .iter()
        .map(|m| m.amount)
        .sum()
}

async fn ledger(app: &Appliance, player: &str, currency: &str) -> Vec<pay::Transaction> {
    pay::PaymentClient::new(app.client().await)
        .list_transactions(
            pay::ListTransactionsRequest {
                player_id: player.into(),
                currency: currency.into(),
                page_size: 200,
                page_token: String::new(),
            },
            &opts(),
        )
        .await
        .expect("ledger")
        .transactions
}

async fn define(o: &Orch, workflow_id: &str, steps: Vec<orch::Step>) {
    o.define(
        orch::DefineRequest {
            workflow: Some(orch::Workflow {
                workflow_id: workflow_id.into(),
                steps,
                ..Default::default()
            }),
            expected_version: None,
        },
        &opts(),
    )
    .await
    .expect("define");
}

async fn status(o: &Orch, run_id: &str) -> orch::Run {
    o.status(
        orch::StatusRequest {
            run_id: run_id.into(),
        },
        &opts(),
    )
    .await
    .expect("status")
    .run
    .expect("a run")
}

/// Polls Status until `done` (bounded, so a stuck run fails the test with its state).
async fn wait_for(o: &Orch, run_id: &str, done: impl Fn(&orch::Run) -> bool) -> orch::Run {
    for _ in 0..1200 {
        let r = status(o, run_id).await;
        if done(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run_id} never got there: {:?}", status(o, run_id).await);
}

fn is_final(r: &orch::Run) -> bool {
    matches!(
        r.state(),
        orch::RunState::Succeeded
            | orch::RunState::Compensated
            | orch::RunState::Cancelled
            | orch::RunState::Failed
    )
}

#[tokio::test]
async fn a_saga_with_a_failing_step_compensates_the_completed_ones() {
    let app = Appliance::start_serving(&["auth", "payment", "orchestration"]).await;
    let player = register(&app, "saga-player").await;
    let sdk = app.client().await;
    pay::PaymentClient::new(sdk.clone())
        .credit(
            pay::CreditRequest {
                player_id: player.clone(),
                currency: "GOLD".into(),
                amount: 100,
                reason: "seed".into(),
                idempotency_key: "seed".into(),
            },
            &opts(),
        )
        .await
        .expect("seed credit");
    let o = Orch::new(sdk);
    // Reserve the price, grant the gems, then charge more than is left: the charge fails.
    let reserve = orch::Step {
        step_id: "reserve".into(),
        call: Some(pay_call(
            "Debit",
            json!({"currency": "GOLD", "reason": "reserve"}),
            vec![bind("/amount", "/input/price")],
        )),
        compensation: Some(pay_call(
            "Credit",
            json!({"currency": "GOLD", "reason": "release"}),
            vec![bind("/amount", "/input/price")],
        )),
        ..Default::default()
    };
    let charge = orch::Step {
        step_id: "charge".into(),
        call: Some(pay_call(
            "Debit",
            json!({"currency": "GOLD", "amount": 1000, "reason": "charge"}),
            vec![],
        )),
        ..Default::default()
    };
    define(
        &o,
        "buy_gems",
        vec![reserve, credit_step("grant", "GEMS", 5), charge],
    )
    .await;
    let run = o
        .start(
            orch::StartRequest {
                workflow_id: "buy_gems".into(),
                input: Some(to_struct(&json!({"player": player, "price": 30}))),
                idempotency_key: "buy-1".into(),
            },
            &opts(),
        )
        .await
        .expect("start")
        .run
        .expect("a run");
    let run = wait_for(&o, &run.run_id, is_final).await;
    assert_eq!(run.state(), orch::RunState::Compensated, "{run:?}");
    let states: Vec<_> = run.steps.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        [
            orch::StepState::Compensated,
            orch::StepState::Compensated,
            orch::StepState::Failed
        ]
    );
    let error = run.error.expect("why it did not succeed");
    assert_eq!(error.code, Code::FailedPrecondition as i32, "{error:?}");
    assert!(error.message.contains("charge"), "{}", error.message);
    // The wallet is as it began; the ledger shows each move and its undo once.
    assert_eq!(balance(&app, &player, "GOLD").await, 100);
    assert_eq!(balance(&app, &player, "GEMS").await, 0);
    let moves = |ledger: Vec<pay::Transaction>| {
        let mut m: Vec<(i64, String)> = ledger.into_iter().map(|t| (t.amount, t.reason)).collect();
        m.sort();
        m
    };
    assert_eq!(
        moves(ledger(&app, &player, "GOLD").await),
        [
            (-30, "reserve".to_string()),
            (30, "release".to_string()),
            (100, "seed".to_string())
        ]
    );
    assert_eq!(
        moves(ledger(&app, &player, "GEMS").await),
        [(-5, "undo grant".to_string()), (5, "grant".to_string())]
    );
    let listed = o
        .list_runs(
            orch::ListRunsRequest {
                workflow_id: "buy_gems".into(),
                state: orch::RunState::Compensated as i32,
                ..Default::default()
            },
            &opts(),
        )
        .await
        .expect("list");
    assert_eq!(listed.runs.len(), 1);
    assert_eq!(listed.runs[0].run_id, run.run_id);
}

#[tokio::test]
async fn a_run_killed_mid_way_resumes_after_restart_and_no_step_runs_twice() {
    let mut app = Appliance::start_serving(&["auth", "payment", "orchestration"]).await;
    let player = register(&app, "crash-player").await;
    let o = Orch::new(app.client().await);
    // Five credits, a read of the game clock (time-manager is not served yet, so the run
    // waits there, retrying), five more credits.
    let mut steps: Vec<orch::Step> = (0..5).map(|i| credit_step(&format!("a{i}"), "GOLD", 1)).collect();
    steps.push(orch::Step {
        step_id: "clock".into(),
        call: Some(orch::Call {
            domain: "time_manager".into(),
            rpc: "Now".into(),
            input: None,
            bindings: vec![],
        }),
        max_retries: 10,
        timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..Default::default()
    });
    steps.extend((0..5).map(|i| credit_step(&format!("b{i}"), "GOLD", 10)));
    define(&o, "long", steps).await;
    let run = o
        .start(
            orch::StartRequest {
                workflow_id: "long".into(),
                input: Some(to_struct(&json!({"player": player}))),
                idempotency_key: "long-1".into(),
            },
            &opts(),
        )
        .await
        .expect("start")
        .run
        .expect("a run");
    let before = wait_for(&o, &run.run_id, |r| {
        r.steps[5].state() == orch::StepState::Running && r.steps[5].attempts >= 1
    })
    .await;
    assert_eq!(before.state(), orch::RunState::Running);
    assert!(
        before.steps[..5]
            .iter()
            .all(|s| s.state() == orch::StepState::Succeeded)
    );
    app.crash().await;

    // Back on the same data, now serving every domain (time-manager included).
    std::fs::remove_file(app.data_dir.join("aicore.toml")).expect("drop the serve list");
    let again = Appliance::start_in(&app.data_dir).await;
    let o = Orch::new(again.client().await);
    let after = wait_for(&o, &run.run_id, is_final).await;
    assert_eq!(after.state(), orch::RunState::Succeeded, "{after:?}");
    assert!(
        after.steps[5].attempts > before.steps[5].attempts,
        "the step in flight at the kill was sent again after the restart"
    );
    assert!(
        after.steps[..5]
            .iter()
            .zip(&before.steps[..5])
            .all(|(a, b)| a.attempts == 1 && a.output == b.output),
        "steps done before the kill were not run again"
    );
    // Each credit exactly once: five of 1 and five of 10.
    assert_eq!(balance(&again, &player, "GOLD").await, 55);
    let mut reasons: Vec<String> = ledger(&again, &player, "GOLD")
        .await
        .into_iter()
        .map(|t| t.reason)
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]
    );
    drop(app);
}
