//! payment on a real appliance: many tasks transfer between a few wallets through the SDK
//! while the appliance is killed with SIGKILL, then it restarts on the same data directory
//! and the ledger invariant is checked from the public API alone — balances add up to
//! what was credited, every acknowledged transfer is in the ledger exactly once, and
//! retrying any transfer after the restart (acknowledged or not) never pays twice. The
//! wallets belong to registered accounts: payment pays only accounts that exist.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aicore_e2e::Appliance;
use aicore_proto::aicore::payment::v1 as pay;
use aicore_proto::{CallOptions, Code};

type Client = pay::PaymentClient<aicore_sdk::Client>;

const WALLETS: usize = 8;
const TASKS: usize = 32;
const SEED: i64 = 10_000;
/// Acknowledged transfers to wait for before the crash, so it lands mid-load.
const BEFORE_CRASH: usize = 300;

/// Registers the wallets' owners (payment pays only accounts that exist); their ids.
async fn register_players(sdk: &aicore_sdk::Client) -> Vec<String> {
    use aicore_proto::aicore::auth::v1 as auth;
    let a = auth::AuthClient::new(sdk.clone());
    let mut ids = Vec::new();
    for i in 0..WALLETS {
        let r = a
            .register(
                auth::RegisterRequest {
                    username: format!("wallet-{i}"),
                    password: "amber-walrus-quarry".into(),
                    display_name: String::new(),
                },
                &opts(),
            )
            .await
            .expect("register");
        ids.push(r.account_id);
    }
    ids
}

fn opts() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(5))
}

/// The transfer task `task` makes as its `n`-th: a pseudo-random pair of distinct wallets
/// and amount; the key doubles as the reason so the ledger shows which call wrote what.
fn transfer(players: &[String], task: usize, n: usize) -> pay::TransferRequest {
    let x = (task * 7919 + n * 104_729 + n * n * 31) % (WALLETS * (WALLETS - 1));
    let from = x % WALLETS;
    let to = (from + 1 + x / WALLETS) % WALLETS;
    let key = format!("t-{task}-{n}");
    pay::TransferRequest {
        from_player_id: players[from].clone(),
        to_player_id: players[to].clone(),
        currency: "GOLD".into(),
        amount: (x % 97 + 1) as i64,
        reason: key.clone(),
        idempotency_key: key,
    }
}

/// Every ledger entry of a player, all pages.
async fn ledger(c: &Client, player_id: &str) -> Vec<pay::Transaction> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_transactions(
                pay::ListTransactionsRequest {
                    player_id: player_id.into(),
                    currency: "GOLD".into(),
                    page_size: 200,
                    page_token: token,
                },
                &opts(),
            )
            .await
            .expect("list transactions");
        all.extend(page.transactions);
        token = page.next_page_token;
        if token.is_empty() {
            return all;
        }
    }
}

/// Checks the invariant from the public API and returns every entry by id.
async fn check_ledger(c: &Client, players: &[String]) -> HashMap<String, pay::Transaction> {
    let mut total = 0;
    let mut entries = HashMap::new();
    for player in players {
        let w = c
            .get_wallet(
                pay::GetWalletRequest {
                    player_id: player.clone(),
                    currency: "GOLD".into(),
                },
                &opts(),
            )
            .await
            .expect("get wallet");
        let balance = w.balances[0].amount;
        assert!(balance >= 0, "{} is negative", player);
        let txs = ledger(c, player).await;
        assert_eq!(
            txs.iter().map(|t| t.amount).sum::<i64>(),
            balance,
            "{}: balance is the sum of its ledger",
            player
        );
        assert_eq!(txs.first().map(|t| t.balance_after), Some(balance));
        total += balance;
        for t in txs {
            assert!(entries.insert(t.transaction_id.clone(), t).is_none());
        }
    }
    assert_eq!(total, SEED * WALLETS as i64, "money was created or lost");
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_concurrent_transfers_survive_a_crash_exactly_once() {
    let mut app = Appliance::start().await;
    let sdk = app.client().await;
    let players = Arc::new(register_players(&sdk).await);
    let client: Client = pay::PaymentClient::new(sdk);
    for i in 0..WALLETS {
        client
            .credit(
                pay::CreditRequest {
                    player_id: players[i].clone(),
                    currency: "GOLD".into(),
                    amount: SEED,
                    reason: "seed".into(),
                    idempotency_key: format!("seed-{i}"),
                },
                &opts(),
            )
            .await
            .expect("seed credit");
    }

    // Money goes only to accounts that exist (payment asks auth over NATS).
    let mut to_nobody = transfer(&players, 0, 0);
    to_nobody.to_player_id = "acc_doesnotexist".into();
    let e = client.transfer(to_nobody, &opts()).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert_eq!(e.field_violations[0].field, "to_player_id");

    let acked = Arc::new(Mutex::new(Vec::new()));
    let unacked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (client, acked, unacked, stop, players) = (
            client.clone(),
            acked.clone(),
            unacked.clone(),
            stop.clone(),
            players.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = transfer(&players, task, n);
                n += 1;
                match client.transfer(req.clone(), &opts()).await {
                    Ok(r) => acked.lock().unwrap().push((req, r)),
                    Err(e) if e.code == Code::FailedPrecondition => {}
                    // The appliance is gone: whether this one committed is unknown.
                    Err(_) => {
                        unacked.lock().unwrap().push(req);
                        return;
                    }
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < BEFORE_CRASH {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.crash().await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("transfer task");
    }

    let again = Appliance::start_in(&app.data_dir).await;
    let client: Client = pay::PaymentClient::new(again.client().await);
    let entries = check_ledger(&client, &players).await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= BEFORE_CRASH);
    for (req, r) in &acked {
        for t in [r.debit.as_ref().unwrap(), r.credit.as_ref().unwrap()] {
            assert_eq!(
                entries.get(&t.transaction_id),
                Some(t),
                "acknowledged {} lost",
                req.idempotency_key
            );
        }
    }

    // Retrying after the restart: acknowledged transfers replay their first answer; the
    // ones cut off by the crash either replay (they had committed) or run now — once.
    for (req, r) in acked.iter().take(20) {
        assert_eq!(&client.transfer(req.clone(), &opts()).await.unwrap(), r);
    }
    let unacked = std::mem::take(&mut *unacked.lock().unwrap());
    assert!(!unacked.is_empty(), "the crash cut no transfer off");
    for req in &unacked {
        match client.transfer(req.clone(), &opts()).await {
            Ok(_) => {}
            Err(e) => assert_eq!(e.code, Code::FailedPrecondition, "{e}"),
        }
    }
    let entries = check_ledger(&client, &players).await;
    // Every transfer that ever committed has both entries exactly once.
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for t in entries.values() {
        *per_key.entry(t.reason.as_str()).or_default() += 1;
    }
    for (key, n) in per_key {
        let expected = if key == "seed" { WALLETS } else { 2 };
        assert_eq!(n, expected, "{key} is in the ledger {n} times");
    }
}
