//! Unit and property tests of payment, on an in-memory store and a manual clock. Every
//! test that changes money ends by checking the ledger invariant from the tables.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aicore_proto::aicore::payment::v1::Price;
use proptest::prelude::*;

use super::accounts::KnownAccounts;
use super::*;
use aicore_runtime::ManualClock;
use aicore_runtime::outbox::{OUTBOX, OutboxEvent};
use aicore_runtime::store::Store;

/// The accounts the tests pay (the proptest's `PLAYERS` among them).
const ACCOUNTS: [&str; 10] = ["p0", "p1", "p2", "p3", "p10", "alice", "bob", "a", "b", "c"];

fn domain(edit: impl FnOnce(&mut PaymentConfig)) -> (Arc<Payment>, Arc<ManualClock>) {
    let (p, clock, _) = domain_with_accounts(edit);
    (p, clock)
}

/// The domain on an in-memory directory holding [`ACCOUNTS`] (and "d"), which the test
/// may add to.
fn domain_with_accounts(
    edit: impl FnOnce(&mut PaymentConfig),
) -> (Arc<Payment>, Arc<ManualClock>, Arc<KnownAccounts>) {
    let (ctx, clock) = Ctx::for_tests();
    let mut config = PaymentConfig::default();
    edit(&mut config);
    let accounts = Arc::new(KnownAccounts::new(ACCOUNTS.into_iter().chain(["d"])));
    (
        Arc::new(Payment::with_accounts(ctx, config, accounts.clone())),
        clock,
        accounts,
    )
}

fn trusted<T>(body: T) -> Request<T> {
    Request::new(body)
}

fn as_player<T>(player: &str, body: T) -> Request<T> {
    Request::new(body).on_behalf_of(player, &["player"])
}

fn credit_req(player: &str, currency: &str, amount: i64, key: &str) -> CreditRequest {
    CreditRequest {
        player_id: player.into(),
        currency: currency.into(),
        amount,
        reason: "test".into(),
        idempotency_key: key.into(),
    }
}

fn debit_req(player: &str, currency: &str, amount: i64, key: &str) -> DebitRequest {
    DebitRequest {
        player_id: player.into(),
        currency: currency.into(),
        amount,
        reason: "test".into(),
        idempotency_key: key.into(),
    }
}

fn transfer_req(from: &str, to: &str, currency: &str, amount: i64, key: &str) -> TransferRequest {
    TransferRequest {
        from_player_id: from.into(),
        to_player_id: to.into(),
        currency: currency.into(),
        amount,
        reason: String::new(),
        idempotency_key: key.into(),
    }
}

fn purchase_req(
    player: &str,
    item: &str,
    currency: &str,
    quantity: u32,
    key: &str,
) -> PurchaseRequest {
    PurchaseRequest {
        player_id: player.into(),
        item_id: item.into(),
        currency: currency.into(),
        quantity,
        idempotency_key: key.into(),
    }
}

fn refund_req(id: &str, key: &str) -> RefundRequest {
    RefundRequest {
        transaction_id: id.into(),
        idempotency_key: key.into(),
        reason: String::new(),
    }
}

fn item_req(item: &str, prices: &[(&str, i64)]) -> DefineItemRequest {
    DefineItemRequest {
        item_id: item.into(),
        name: item.to_uppercase(),
        description: String::new(),
        prices: prices
            .iter()
            .map(|(c, a)| Price {
                currency: c.to_string(),
                amount: *a,
            })
            .collect(),
        disabled: false,
        expected_version: None,
        idempotency_key: String::new(),
    }
}

async fn credit(
    p: &Payment,
    player: &str,
    cur: &str,
    amount: i64,
    key: &str,
) -> Result<Transaction, Status> {
    let r = p
        .credit(trusted(credit_req(player, cur, amount, key)))
        .await?;
    Ok(r.transaction.unwrap_or_default())
}

async fn debit(
    p: &Payment,
    player: &str,
    cur: &str,
    amount: i64,
    key: &str,
) -> Result<Transaction, Status> {
    let r = p
        .debit(trusted(debit_req(player, cur, amount, key)))
        .await?;
    Ok(r.transaction.unwrap_or_default())
}

async fn purchase(
    p: &Payment,
    player: &str,
    item: &str,
    cur: &str,
    qty: u32,
    key: &str,
) -> Result<Transaction, Status> {
    let r = p
        .purchase(trusted(purchase_req(player, item, cur, qty, key)))
        .await?;
    Ok(r.transaction.unwrap_or_default())
}

async fn refund(p: &Payment, id: &str, key: &str) -> Result<Transaction, Status> {
    let r = p.refund(trusted(refund_req(id, key))).await?;
    Ok(r.transaction.unwrap_or_default())
}

async fn define(p: &Payment, item: &str, prices: &[(&str, i64)]) -> Item {
    p.define_item(trusted(item_req(item, prices)))
        .await
        .unwrap()
        .item
        .unwrap()
}

async fn balance(p: &Payment, player: &str, currency: &str) -> i64 {
    let w = p
        .get_wallet(trusted(GetWalletRequest {
            player_id: player.into(),
            currency: currency.into(),
        }))
        .await
        .unwrap();
    w.balances[0].amount
}

async fn list(
    p: &Payment,
    player: &str,
    currency: &str,
    size: i32,
    token: &str,
) -> ListTransactionsResponse {
    p.list_transactions(trusted(ListTransactionsRequest {
        player_id: player.into(),
        currency: currency.into(),
        page_size: size,
        page_token: token.into(),
    }))
    .await
    .unwrap()
}

fn ledger(store: &Store) -> Vec<Transaction> {
    store
        .scan(LEDGER, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| decode(LEDGER, v).unwrap())
        .collect()
}

fn outbox(store: &Store) -> Vec<OutboxEvent> {
    store
        .scan(OUTBOX, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, v)| decode(OUTBOX, v).unwrap())
        .collect()
}

/// Every wallet, by (player, currency).
fn wallets(store: &Store) -> BTreeMap<(String, String), i64> {
    store
        .scan(WALLETS, b"", b"", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let k = String::from_utf8(k).unwrap();
            let (player, currency) = k.split_once('\0').unwrap();
            let w: Wallet = decode(WALLETS, v).unwrap();
            ((player.to_string(), currency.to_string()), w.balance)
        })
        .collect()
}

/// The ledger invariant, read from the tables: no balance is negative; each balance is the
/// sum of its wallet's entries and the `balance_after` of its newest; per currency, the
/// sum of all balances equals the sum of the ledger. Sums in i128 so they cannot overflow.
fn check_invariants(store: &Store) {
    let wallets = wallets(store);
    let mut per_wallet: HashMap<(String, String), (i128, i64)> = HashMap::new();
    let mut ledger_sum: BTreeMap<String, i128> = BTreeMap::new();
    for t in ledger(store) {
        let e = per_wallet
            .entry((t.player_id.clone(), t.currency.clone()))
            .or_default();
        e.0 += i128::from(t.amount);
        e.1 = t.balance_after;
        *ledger_sum.entry(t.currency).or_default() += i128::from(t.amount);
    }
    let mut balance_sum: BTreeMap<String, i128> = BTreeMap::new();
    for ((player, currency), balance) in &wallets {
        assert!(*balance >= 0, "{player} has a negative {currency} balance");
        let (sum, last) = per_wallet
            .get(&(player.clone(), currency.clone()))
            .copied()
            .unwrap_or_default();
        assert_eq!(i128::from(*balance), sum, "{player} {currency}");
        assert_eq!(*balance, last, "{player} {currency}: newest balance_after");
        *balance_sum.entry(currency.clone()).or_default() += i128::from(*balance);
    }
    assert_eq!(
        per_wallet.len(),
        wallets.len(),
        "every ledger wallet has a balance"
    );
    assert_eq!(balance_sum, ledger_sum);
}

#[tokio::test]
async fn credit_debit_and_get_wallet() {
    let (p, _) = domain(|_| {});
    // A player with no entries has an empty wallet, not NotFound.
    assert_eq!(balance(&p, "p1", "GOLD").await, 0);
    let c = credit(&p, "p1", "GOLD", 100, "k1").await.unwrap();
    assert_eq!(c.kind, TransactionKind::Credit as i32);
    assert_eq!((c.amount, c.balance_after), (100, 100));
    assert!(c.transaction_id.starts_with("txn_"));
    assert_eq!(c.reason, "test");
    assert!(c.created_at.is_some());
    let d = debit(&p, "p1", "GOLD", 30, "k2").await.unwrap();
    assert_eq!(
        (d.kind, d.amount, d.balance_after),
        (TransactionKind::Debit as i32, -30, 70)
    );
    credit(&p, "p1", "GEMS", 5, "k3").await.unwrap();
    let all = p
        .get_wallet(trusted(GetWalletRequest {
            player_id: "p1".into(),
            currency: String::new(),
        }))
        .await
        .unwrap();
    let got: Vec<(String, i64)> = all
        .balances
        .into_iter()
        .map(|m| (m.currency, m.amount))
        .collect();
    assert_eq!(got, vec![("GEMS".into(), 5), ("GOLD".into(), 70)]);
    // Debiting to exactly zero is allowed.
    debit(&p, "p1", "GOLD", 70, "k4").await.unwrap();
    assert_eq!(balance(&p, "p1", "GOLD").await, 0);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let (p, _) = domain(|c| c.max_amount = 1000);
    let cases: Vec<(CreditRequest, &str)> = vec![
        (credit_req("p1", "GOLD", 0, "k"), "amount"),
        (credit_req("p1", "GOLD", -5, "k"), "amount"),
        (credit_req("p1", "GOLD", 1001, "k"), "amount"),
        (credit_req("p1", "gold", 1, "k"), "currency"),
        (credit_req("p1", "", 1, "k"), "currency"),
        (credit_req("p1", "GOLD-1", 1, "k"), "currency"),
        (credit_req("p1", &"G".repeat(17), 1, "k"), "currency"),
        (credit_req("", "GOLD", 1, "k"), "player_id"),
        (credit_req("p\0x", "GOLD", 1, "k"), "player_id"),
        (credit_req("p1", "GOLD", 1, ""), "idempotency_key"),
        (
            credit_req("p1", "GOLD", 1, &"k".repeat(129)),
            "idempotency_key",
        ),
        (
            CreditRequest {
                reason: "r".repeat(257),
                ..credit_req("p1", "GOLD", 1, "k")
            },
            "reason",
        ),
    ];
    for (req, field) in cases {
        let e = p.credit(trusted(req.clone())).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{req:?}");
        assert_eq!(e.field_violations[0].field, field, "{req:?}");
    }
    let e = debit(&p, "p1", "GOLD", -1, "k").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "amount");
    let e = p
        .transfer(trusted(transfer_req("p1", "p2", "GOLD", 0, "k")))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "amount");
    let e = refund(&p, "", "k").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "transaction_id");
    let e = refund(&p, "txn_zz", "k").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "transaction_id");
    assert!(ledger(&p.ctx.store).is_empty());
    assert!(outbox(&p.ctx.store).is_empty());
    // A configured currency list turns unknown codes into errors.
    let (p, _) = domain(|c| c.currencies = vec!["GOLD".into()]);
    credit(&p, "p1", "GOLD", 1, "k").await.unwrap();
    let e = credit(&p, "p1", "GEMS", 1, "k2").await.unwrap_err();
    assert_eq!(e.field_violations[0].field, "currency");
}

#[tokio::test]
async fn insufficient_funds_is_failed_precondition_and_writes_nothing() {
    let (p, _) = domain(|_| {});
    credit(&p, "p1", "GOLD", 50, "c1").await.unwrap();
    define(&p, "sword", &[("GOLD", 30)]).await;
    let (ledger_before, outbox_before) = (ledger(&p.ctx.store).len(), outbox(&p.ctx.store).len());
    let e = debit(&p, "p1", "GOLD", 51, "d1").await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "amount")
    );
    let e = p
        .transfer(trusted(transfer_req("p1", "p2", "GOLD", 51, "t1")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "amount")
    );
    let e = purchase(&p, "p1", "sword", "GOLD", 2, "b1")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "quantity")
    );
    // Another currency is another wallet.
    let e = debit(&p, "p1", "GEMS", 1, "d2").await.unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    assert_eq!(balance(&p, "p1", "GOLD").await, 50);
    assert_eq!(balance(&p, "p2", "GOLD").await, 0);
    assert_eq!(ledger(&p.ctx.store).len(), ledger_before);
    assert_eq!(outbox(&p.ctx.store).len(), outbox_before);
    // A refusal records no idempotency reply: the same request succeeds once funds arrive.
    credit(&p, "p1", "GOLD", 1, "c2").await.unwrap();
    assert_eq!(
        debit(&p, "p1", "GOLD", 51, "d1")
            .await
            .unwrap()
            .balance_after,
        0
    );
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn balances_cannot_overflow() {
    let (p, _) = domain(|c| c.max_amount = i64::MAX);
    credit(&p, "p1", "GOLD", i64::MAX, "c1").await.unwrap();
    let e = credit(&p, "p1", "GOLD", 1, "c2").await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "amount")
    );
    credit(&p, "p2", "GOLD", 1, "c3").await.unwrap();
    let e = p
        .transfer(trusted(transfer_req("p2", "p1", "GOLD", 1, "t1")))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition);
    // Neither side of the refused transfer was written.
    assert_eq!(balance(&p, "p2", "GOLD").await, 1);
    assert_eq!(balance(&p, "p1", "GOLD").await, i64::MAX);
    // price × quantity overflowing is refused before any balance is looked at.
    define(&p, "gem", &[("GOLD", i64::MAX / 2 + 1)]).await;
    let e = purchase(&p, "p1", "gem", "GOLD", 2, "b1")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "quantity")
    );
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn transfer_moves_money_in_one_transaction_with_linked_entries() {
    let (p, _) = domain(|_| {});
    credit(&p, "alice", "GOLD", 100, "c1").await.unwrap();
    let r = p
        .transfer(as_player(
            "alice",
            transfer_req("alice", "bob", "GOLD", 40, "t1"),
        ))
        .await
        .unwrap();
    let (out, inn) = (r.debit.unwrap(), r.credit.unwrap());
    assert_eq!(
        (out.kind, out.amount, out.balance_after),
        (TransactionKind::TransferOut as i32, -40, 60)
    );
    assert_eq!(
        (inn.kind, inn.amount, inn.balance_after),
        (TransactionKind::TransferIn as i32, 40, 40)
    );
    assert_eq!(
        (
            out.counterparty_player_id.as_str(),
            inn.counterparty_player_id.as_str()
        ),
        ("bob", "alice")
    );
    assert_eq!(out.related_transaction_id, inn.transaction_id);
    assert_eq!(inn.related_transaction_id, out.transaction_id);
    let e = p
        .transfer(trusted(transfer_req("alice", "alice", "GOLD", 1, "t2")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::InvalidArgument, "to_player_id")
    );
    assert_eq!(balance(&p, "alice", "GOLD").await, 60);
    assert_eq!(balance(&p, "bob", "GOLD").await, 40);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn purchase_pays_price_times_quantity_and_records_the_item() {
    let (p, _) = domain(|c| c.max_quantity = 10);
    credit(&p, "p1", "GOLD", 1000, "c1").await.unwrap();
    define(&p, "sword", &[("GOLD", 30), ("GEMS", 2)]).await;
    let t = p
        .purchase(as_player(
            "p1",
            purchase_req("p1", "sword", "GOLD", 3, "b1"),
        ))
        .await
        .unwrap()
        .transaction
        .unwrap();
    assert_eq!(
        (t.kind, t.amount, t.balance_after),
        (TransactionKind::Purchase as i32, -90, 910)
    );
    assert_eq!((t.item_id.as_str(), t.quantity), ("sword", 3));
    // Quantity 0 means 1.
    let t = purchase(&p, "p1", "sword", "GOLD", 0, "b2").await.unwrap();
    assert_eq!((t.amount, t.quantity), (-30, 1));
    // Existing purchases keep their price when the catalog changes.
    define(&p, "sword", &[("GOLD", 50)]).await;
    assert_eq!(
        purchase(&p, "p1", "sword", "GOLD", 1, "b3")
            .await
            .unwrap()
            .amount,
        -50
    );
    let first = list(&p, "p1", "", 0, "").await.transactions;
    assert_eq!(
        first.iter().map(|t| t.amount).collect::<Vec<_>>(),
        vec![-50, -30, -90, 1000]
    );
    let cases = [
        (
            purchase_req("p1", "ghost", "GOLD", 1, "x1"),
            Code::NotFound,
            None,
        ),
        (
            purchase_req("p1", "sword", "GEMS", 1, "x2"),
            Code::FailedPrecondition,
            Some("currency"),
        ),
        (
            purchase_req("p1", "sword", "GOLD", 11, "x3"),
            Code::InvalidArgument,
            Some("quantity"),
        ),
        (
            purchase_req("p1", "Sword!", "GOLD", 1, "x4"),
            Code::InvalidArgument,
            Some("item_id"),
        ),
    ];
    for (req, code, field) in cases {
        let e = p.purchase(trusted(req.clone())).await.unwrap_err();
        assert_eq!(e.code, code, "{req:?}");
        if let Some(f) = field {
            assert_eq!(e.field_violations[0].field, f);
        }
    }
    let mut withdrawn = item_req("sword", &[("GOLD", 50)]);
    withdrawn.disabled = true;
    p.define_item(trusted(withdrawn)).await.unwrap();
    let e = purchase(&p, "p1", "sword", "GOLD", 1, "x5")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "item_id")
    );
    assert_eq!(balance(&p, "p1", "GOLD").await, 830);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn refund_reverses_a_purchase_or_debit_exactly_once() {
    let (p, _) = domain(|_| {});
    credit(&p, "p1", "GOLD", 100, "c1").await.unwrap();
    define(&p, "sword", &[("GOLD", 30)]).await;
    let bought = purchase(&p, "p1", "sword", "GOLD", 2, "b1").await.unwrap();
    assert_eq!(balance(&p, "p1", "GOLD").await, 40);
    let r = refund(&p, &bought.transaction_id, "r1").await.unwrap();
    assert_eq!(
        (r.kind, r.amount, r.balance_after),
        (TransactionKind::Refund as i32, 60, 100)
    );
    assert_eq!((r.item_id.as_str(), r.quantity), ("sword", 2));
    assert_eq!(r.related_transaction_id, bought.transaction_id);
    // A second refund, with another key, is refused; the replay of the first is not.
    let e = refund(&p, &bought.transaction_id, "r2").await.unwrap_err();
    assert_eq!(
        (e.code, e.field_violations[0].field.as_str()),
        (Code::FailedPrecondition, "transaction_id")
    );
    assert_eq!(refund(&p, &bought.transaction_id, "r1").await.unwrap(), r);
    assert_eq!(balance(&p, "p1", "GOLD").await, 100);
    let d = debit(&p, "p1", "GOLD", 10, "d1").await.unwrap();
    assert_eq!(
        refund(&p, &d.transaction_id, "r3").await.unwrap().amount,
        10
    );
    // Credits, transfers and refunds themselves are not refundable.
    let c = credit(&p, "p1", "GOLD", 5, "c2").await.unwrap();
    for id in [c.transaction_id, r.transaction_id] {
        let e = refund(&p, &id, &format!("again-{id}")).await.unwrap_err();
        assert_eq!(e.code, Code::FailedPrecondition);
    }
    let e = refund(&p, "txn_00000000000fffff", "r9").await.unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(balance(&p, "p1", "GOLD").await, 105);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn replays_return_the_first_result_and_change_nothing() {
    let (p, clock) = domain(|_| {});
    define(&p, "sword", &[("GOLD", 10)]).await;
    let c = credit(&p, "p1", "GOLD", 100, "op-1").await.unwrap();
    let d = debit(&p, "p1", "GOLD", 5, "op-2").await.unwrap();
    let t = p
        .transfer(trusted(transfer_req("p1", "p2", "GOLD", 5, "op-3")))
        .await
        .unwrap();
    let b = purchase(&p, "p1", "sword", "GOLD", 1, "op-4")
        .await
        .unwrap();
    let r = refund(&p, &b.transaction_id, "op-5").await.unwrap();
    let snapshot = |p: &Payment| {
        (
            ledger(&p.ctx.store),
            outbox(&p.ctx.store),
            wallets(&p.ctx.store),
        )
    };
    let before = snapshot(&p);
    // Records are kept at least a day: still replayed after 23 hours.
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(credit(&p, "p1", "GOLD", 100, "op-1").await.unwrap(), c);
    assert_eq!(debit(&p, "p1", "GOLD", 5, "op-2").await.unwrap(), d);
    let t2 = p
        .transfer(trusted(transfer_req("p1", "p2", "GOLD", 5, "op-3")))
        .await
        .unwrap();
    assert_eq!(t2, t);
    assert_eq!(
        purchase(&p, "p1", "sword", "GOLD", 1, "op-4")
            .await
            .unwrap(),
        b
    );
    // Quantity 0 and 1 are the same request.
    assert_eq!(
        purchase(&p, "p1", "sword", "GOLD", 0, "op-4")
            .await
            .unwrap(),
        b
    );
    assert_eq!(refund(&p, &b.transaction_id, "op-5").await.unwrap(), r);
    assert!(snapshot(&p) == before, "a replay changed state");
    // The same key with other parameters, or for another RPC on the wallet: Conflict.
    let conflicts = [
        credit(&p, "p1", "GOLD", 101, "op-1").await.unwrap_err(),
        debit(&p, "p1", "GOLD", 100, "op-1").await.unwrap_err(),
        p.transfer(trusted(transfer_req("p1", "p3", "GOLD", 5, "op-3")))
            .await
            .unwrap_err(),
        purchase(&p, "p1", "sword", "GOLD", 2, "op-4")
            .await
            .unwrap_err(),
        refund(&p, &d.transaction_id, "op-5").await.unwrap_err(),
    ];
    for e in conflicts {
        assert_eq!(e.code, Code::Conflict, "{e}");
    }
    assert!(snapshot(&p) == before, "a conflicting reuse changed state");
    // Keys are per wallet: another player's identical key is another operation.
    assert_ne!(credit(&p, "p2", "GOLD", 100, "op-1").await.unwrap(), c);
    // After the retention time the key names a new operation.
    clock.advance(Duration::from_secs(2 * 3600));
    assert_ne!(credit(&p, "p1", "GOLD", 100, "op-1").await.unwrap(), c);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn players_act_only_on_their_own_wallet() {
    let (p, _) = domain(|_| {});
    credit(&p, "alice", "GOLD", 100, "c1").await.unwrap();
    define(&p, "sword", &[("GOLD", 10)]).await;
    let denied = |r: Result<(), Status>| assert_eq!(r.unwrap_err().code, Code::PermissionDenied);
    let m = "mallory";
    denied(
        p.transfer(as_player(m, transfer_req("alice", m, "GOLD", 1, "k")))
            .await
            .map(drop),
    );
    denied(
        p.purchase(as_player(m, purchase_req("alice", "sword", "GOLD", 1, "k")))
            .await
            .map(drop),
    );
    denied(
        p.get_wallet(as_player(
            m,
            GetWalletRequest {
                player_id: "alice".into(),
                currency: String::new(),
            },
        ))
        .await
        .map(drop),
    );
    denied(
        p.list_transactions(as_player(
            m,
            ListTransactionsRequest {
                player_id: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .map(drop),
    );
    assert_eq!(balance(&p, "alice", "GOLD").await, 100);
    assert_eq!(ledger(&p.ctx.store).len(), 1);
    // The owner reads, transfers and buys; a service principal may act for anyone.
    let a = "alice";
    p.get_wallet(as_player(
        a,
        GetWalletRequest {
            player_id: a.into(),
            currency: "GOLD".into(),
        },
    ))
    .await
    .unwrap();
    p.list_transactions(as_player(
        a,
        ListTransactionsRequest {
            player_id: a.into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    p.transfer(as_player(a, transfer_req(a, "bob", "GOLD", 10, "t1")))
        .await
        .unwrap();
    p.purchase(as_player(a, purchase_req(a, "sword", "GOLD", 1, "b1")))
        .await
        .unwrap();
    let svc = |body| Request::new(body).on_behalf_of("quests", &["service"]);
    p.credit(svc(credit_req("bob", "GOLD", 5, "q1")))
        .await
        .unwrap();
    assert_eq!(balance(&p, "alice", "GOLD").await, 80);
    assert_eq!(balance(&p, "bob", "GOLD").await, 15);
    check_invariants(&p.ctx.store);
}

#[tokio::test]
async fn list_transactions_pages_newest_first_and_filters_by_currency() {
    let (p, _) = domain(|_| {});
    for i in 1..=7 {
        credit(&p, "p1", "GOLD", i, &format!("g{i}")).await.unwrap();
        credit(&p, "p1", "GEMS", 100 + i, &format!("m{i}"))
            .await
            .unwrap();
    }
    credit(&p, "p10", "GOLD", 999, "other").await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = list(&p, "p1", "GOLD", 3, &token).await;
        pages += 1;
        assert!(r.transactions.len() <= 3);
        assert!(
            r.transactions
                .iter()
                .all(|t| t.currency == "GOLD" && t.player_id == "p1")
        );
        seen.extend(r.transactions.iter().map(|t| t.amount));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    let all = list(&p, "p1", "", 0, "").await;
    assert_eq!(all.transactions.len(), 14);
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.transactions[0].amount, 107);
    let ids: Vec<u64> = all
        .transactions
        .iter()
        .map(|t| parse_transaction_id(&t.transaction_id).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let e = p
        .list_transactions(trusted(ListTransactionsRequest {
            player_id: "p1".into(),
            page_token: "garbage!".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "page_token");
    let e = p
        .list_transactions(trusted(ListTransactionsRequest {
            player_id: "p1".into(),
            currency: "gold".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.field_violations[0].field, "currency");
}

#[tokio::test]
async fn define_item_versions_validates_and_honours_expected_version() {
    let (p, _) = domain(|_| {});
    let mut req = item_req("sword", &[("GOLD", 30), ("GEMS", 2)]);
    req.expected_version = Some(0);
    let item = p
        .define_item(trusted(req.clone()))
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item.version, 1);
    // Prices are stored ordered by currency.
    assert_eq!(
        item.prices
            .iter()
            .map(|p| p.currency.as_str())
            .collect::<Vec<_>>(),
        vec!["GEMS", "GOLD"]
    );
    assert_eq!(
        p.define_item(trusted(req.clone())).await.unwrap_err().code,
        Code::Conflict
    );
    req.expected_version = Some(1);
    assert_eq!(
        p.define_item(trusted(req.clone()))
            .await
            .unwrap()
            .item
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        p.define_item(trusted(req.clone())).await.unwrap_err().code,
        Code::Conflict
    );
    req.expected_version = None;
    req.idempotency_key = "def-1".into();
    let first = p.define_item(trusted(req.clone())).await.unwrap();
    assert_eq!(p.define_item(trusted(req.clone())).await.unwrap(), first);
    assert_eq!(first.item.unwrap().version, 3);
    let bad = [
        (item_req("Sword", &[("GOLD", 1)]), "item_id"),
        (item_req("sword", &[]), "prices"),
        (item_req("sword", &[("GOLD", 0)]), "prices[0].amount"),
        (
            item_req("sword", &[("GOLD", 1), ("gems", 1)]),
            "prices[1].currency",
        ),
        (
            item_req("sword", &[("GOLD", 1), ("GOLD", 2)]),
            "prices[1].currency",
        ),
        (
            DefineItemRequest {
                name: String::new(),
                ..item_req("sword", &[("GOLD", 1)])
            },
            "name",
        ),
    ];
    for (req, field) in bad {
        let e = p.define_item(trusted(req)).await.unwrap_err();
        assert_eq!(
            (e.code, e.field_violations[0].field.as_str()),
            (Code::InvalidArgument, field)
        );
    }
}

#[tokio::test]
async fn list_items_pages_by_id_and_hides_withdrawn_items_from_players() {
    let (p, _) = domain(|_| {});
    for i in 0..9 {
        let mut req = item_req(&format!("item{i}"), &[("GOLD", 1)]);
        req.disabled = i % 3 == 0;
        p.define_item(trusted(req)).await.unwrap();
    }
    let page = |player: bool, include: bool, token: String| {
        let body = ListItemsRequest {
            include_disabled: include,
            page_size: 2,
            page_token: token,
        };
        let req = if player {
            as_player("p1", body)
        } else {
            trusted(body)
        };
        let p = p.clone();
        async move { p.list_items(req).await.unwrap() }
    };
    for (player, include, expected) in [
        (true, true, vec![1, 2, 4, 5, 7, 8]),
        (false, false, vec![1, 2, 4, 5, 7, 8]),
        (false, true, (0..9).collect()),
    ] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = page(player, include, token).await;
            assert!(r.items.len() <= 2);
            seen.extend(r.items.iter().map(|i| i.item_id.clone()));
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let expected: Vec<String> = expected.iter().map(|i| format!("item{i}")).collect();
        assert_eq!(seen, expected, "player={player} include={include}");
    }
}

#[tokio::test]
async fn every_change_queues_its_audit_event_in_the_same_transaction() {
    let (p, _) = domain(|_| {});
    fn svc<T>(body: T) -> Request<T> {
        let mut r = Request::new(body).on_behalf_of("quests", &["service"]);
        r.meta.request_id = Some("req-7".into());
        r
    }
    p.define_item(svc(item_req("sword", &[("GOLD", 10)])))
        .await
        .unwrap();
    p.credit(svc(credit_req("p1", "GOLD", 100, "c1")))
        .await
        .unwrap();
    debit(&p, "p1", "GOLD", 1, "d1").await.unwrap();
    p.transfer(trusted(transfer_req("p1", "p2", "GOLD", 2, "t1")))
        .await
        .unwrap();
    let b = purchase(&p, "p1", "sword", "GOLD", 1, "b1").await.unwrap();
    refund(&p, &b.transaction_id, "r1").await.unwrap();
    // Refusals and replays queue nothing.
    debit(&p, "p1", "GOLD", 1_000, "d2").await.unwrap_err();
    debit(&p, "p1", "GOLD", 1, "d1").await.unwrap();
    let events = outbox(&p.ctx.store);
    let subjects: Vec<&str> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        subjects,
        vec![
            "audit.payment.item_defined",
            "audit.payment.credit",
            "audit.payment.debit",
            "audit.payment.transfer",
            "audit.payment.purchase",
            "evt.payment.purchased",
            "audit.payment.refund",
            "evt.payment.refunded",
        ]
    );
    let audit = |i: usize| PaymentAuditEvent::decode(events[i].payload.as_slice()).unwrap();
    let item = audit(0);
    assert_eq!(item.item.unwrap().item_id, "sword");
    let credit = audit(1);
    assert_eq!(
        (credit.kind.as_str(), credit.actor_account_id.as_str()),
        ("credit", "quests")
    );
    assert_eq!(credit.actor_roles, vec!["service".to_string()]);
    assert_eq!(
        (credit.request_id.as_str(), credit.idempotency_key.as_str()),
        ("req-7", "c1")
    );
    assert_eq!(credit.transactions[0].amount, 100);
    assert_eq!(audit(3).transactions.len(), 2);
    let purchased = Transaction::decode(events[5].payload.as_slice()).unwrap();
    assert_eq!(purchased, b);
    // Every ledger entry appears in exactly one audit event.
    let audited: Vec<String> = (0..events.len())
        .filter(|i| events[*i].subject.starts_with("audit."))
        .flat_map(|i| audit(i).transactions.into_iter().map(|t| t.transaction_id))
        .collect();
    let ledger_ids: Vec<String> = ledger(&p.ctx.store)
        .into_iter()
        .map(|t| t.transaction_id)
        .collect();
    assert_eq!(audited, ledger_ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_ledger_balanced() {
    let (p, _) = domain(|_| {});
    let players = ["a", "b", "c", "d"];
    for pl in players {
        credit(&p, pl, "GOLD", 100, &format!("seed-{pl}"))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let from = players[i % 4];
            let to = players[(i / 4 + 1 + i) % 4];
            let to = if to == from { players[(i + 1) % 4] } else { to };
            p.transfer(trusted(transfer_req(
                from,
                to,
                "GOLD",
                (i % 37 + 1) as i64,
                &format!("t{i}"),
            )))
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code, Code::FailedPrecondition),
        }
    }
    assert!(ok > 0);
    assert_eq!(ledger(&p.ctx.store).len(), 4 + 2 * ok);
    let total: i64 = wallets(&p.ctx.store).values().sum();
    assert_eq!(total, 400);
    check_invariants(&p.ctx.store);
}

// ---------------------------------------------------------------- property test

const PLAYERS: [&str; 3] = ["p0", "p1", "p2"];
const CURRENCIES: [&str; 2] = ["GOLD", "GEMS"];
/// Catalog of the property test; index 3 is an item that does not exist.
const ITEMS_UNDER_TEST: [&str; 4] = ["sword", "shield", "relic", "ghost"];

/// One step of a random session.
#[derive(Debug, Clone)]
enum Op {
    Credit(usize, usize, i64),
    Debit(usize, usize, i64),
    Transfer(usize, usize, usize, i64),
    Purchase(usize, usize, usize, u32),
    /// Refund the n-th ledger entry (modulo its length), whatever its kind.
    Refund(usize),
    /// Send an earlier successful request again, unchanged.
    Replay(usize),
    /// Send an earlier successful request's key with other parameters.
    Reuse(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let amount = prop_oneof![
        3 => 1i64..200,
        1 => -2i64..=0,
        1 => Just(i64::MAX),
        1 => (i64::MAX - 100)..i64::MAX,
    ];
    let (pl, cur) = (0..PLAYERS.len(), 0..CURRENCIES.len());
    prop_oneof![
        3 => (pl.clone(), cur.clone(), amount.clone()).prop_map(|(p, c, a)| Op::Credit(p, c, a)),
        2 => (pl.clone(), cur.clone(), amount.clone()).prop_map(|(p, c, a)| Op::Debit(p, c, a)),
        3 => (pl.clone(), pl.clone(), cur.clone(), amount).prop_map(|(f, t, c, a)| Op::Transfer(f, t, c, a)),
        2 => (pl, 0..ITEMS_UNDER_TEST.len(), cur, 0u32..8).prop_map(|(p, i, c, q)| Op::Purchase(p, i, c, q)),
        1 => any::<usize>().prop_map(Op::Refund),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => any::<usize>().prop_map(Op::Reuse),
    ]
}

/// A money request of any kind.
#[derive(Debug, Clone)]
enum Call {
    Credit(CreditRequest),
    Debit(DebitRequest),
    Transfer(TransferRequest),
    Purchase(PurchaseRequest),
    Refund(RefundRequest),
}

impl Call {
    /// The same key with other, still valid, parameters.
    fn altered(&self) -> Call {
        let mut c = self.clone();
        match &mut c {
            Call::Credit(r) => r.reason.push('!'),
            Call::Debit(r) => r.reason.push('!'),
            Call::Transfer(r) => r.reason.push('!'),
            Call::Purchase(r) => {
                r.currency = if r.currency == "GOLD" { "GEMS" } else { "GOLD" }.into()
            }
            Call::Refund(r) => r.reason.push('!'),
        }
        c
    }
}

/// Sends a call; the ledger entries it answered with.
async fn send(p: &Payment, call: &Call) -> Result<Vec<Transaction>, Status> {
    Ok(match call.clone() {
        Call::Credit(r) => p
            .credit(trusted(r))
            .await?
            .transaction
            .into_iter()
            .collect(),
        Call::Debit(r) => p.debit(trusted(r)).await?.transaction.into_iter().collect(),
        Call::Transfer(r) => {
            let t = p.transfer(trusted(r)).await?;
            t.debit.into_iter().chain(t.credit).collect()
        }
        Call::Purchase(r) => p
            .purchase(trusted(r))
            .await?
            .transaction
            .into_iter()
            .collect(),
        Call::Refund(r) => p
            .refund(trusted(r))
            .await?
            .transaction
            .into_iter()
            .collect(),
    })
}

/// What the test expects of the domain: balances, refunded entries, prices.
#[derive(Default)]
struct Model {
    balances: HashMap<(String, String), i64>,
    refunded: HashSet<String>,
}

impl Model {
    fn balance(&self, player: &str, currency: &str) -> i64 {
        self.balances
            .get(&(player.to_string(), currency.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The outcome a fresh call should have: Ok(changes) or the error code.
    fn predict(
        &self,
        call: &Call,
        ledger: &[Transaction],
        max_quantity: u32,
    ) -> Result<Vec<(String, String, i64)>, Code> {
        let add =
            |player: &str, currency: &str, amount: i64| -> Result<(String, String, i64), Code> {
                let after = self
                    .balance(player, currency)
                    .checked_add(amount)
                    .filter(|b| *b >= 0)
                    .ok_or(Code::FailedPrecondition)?;
                Ok((player.to_string(), currency.to_string(), after))
            };
        match call {
            Call::Credit(r) if r.amount <= 0 => Err(Code::InvalidArgument),
            Call::Credit(r) => Ok(vec![add(&r.player_id, &r.currency, r.amount)?]),
            Call::Debit(r) if r.amount <= 0 => Err(Code::InvalidArgument),
            Call::Debit(r) => Ok(vec![add(&r.player_id, &r.currency, -r.amount)?]),
            Call::Transfer(r) if r.from_player_id == r.to_player_id || r.amount <= 0 => {
                Err(Code::InvalidArgument)
            }
            Call::Transfer(r) => Ok(vec![
                add(&r.from_player_id, &r.currency, -r.amount)?,
                add(&r.to_player_id, &r.currency, r.amount)?,
            ]),
            Call::Purchase(r) => {
                if r.quantity > max_quantity {
                    return Err(Code::InvalidArgument);
                }
                let price = match (r.item_id.as_str(), r.currency.as_str()) {
                    ("ghost", _) => return Err(Code::NotFound),
                    ("relic", _) => return Err(Code::FailedPrecondition),
                    ("sword", "GOLD") => 30,
                    ("sword", "GEMS") => 2,
                    ("shield", "GOLD") => 45,
                    _ => return Err(Code::FailedPrecondition),
                };
                Ok(vec![add(
                    &r.player_id,
                    &r.currency,
                    -price * i64::from(r.quantity.max(1)),
                )?])
            }
            Call::Refund(r) => {
                let Some(t) = ledger.iter().find(|t| t.transaction_id == r.transaction_id) else {
                    return Err(Code::NotFound);
                };
                let refundable = [
                    TransactionKind::Purchase as i32,
                    TransactionKind::Debit as i32,
                ];
                if !refundable.contains(&t.kind) || self.refunded.contains(&t.transaction_id) {
                    return Err(Code::FailedPrecondition);
                }
                Ok(vec![add(&t.player_id, &t.currency, -t.amount)?])
            }
        }
    }
}

async fn run_session(ops: Vec<Op>) {
    const MAX_QUANTITY: u32 = 5;
    let (p, _) = domain(|c| {
        c.max_amount = i64::MAX;
        c.max_quantity = MAX_QUANTITY;
    });
    define(&p, "sword", &[("GOLD", 30), ("GEMS", 2)]).await;
    define(&p, "shield", &[("GOLD", 45)]).await;
    let mut relic = item_req("relic", &[("GOLD", 5)]);
    relic.disabled = true;
    p.define_item(trusted(relic)).await.unwrap();
    let store = p.ctx.store.clone();
    let mut model = Model::default();
    let mut done: Vec<(Call, Vec<Transaction>)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let key = format!("k{step}");
        let (pl, cur) = (
            |i: usize| PLAYERS[i].to_string(),
            |i: usize| CURRENCIES[i].to_string(),
        );
        let ledger_before = ledger(&store);
        let fresh = match op {
            Op::Credit(p, c, a) => Some(Call::Credit(credit_req(&pl(p), &cur(c), a, &key))),
            Op::Debit(p, c, a) => Some(Call::Debit(debit_req(&pl(p), &cur(c), a, &key))),
            Op::Transfer(f, t, c, a) => Some(Call::Transfer(transfer_req(
                &pl(f),
                &pl(t),
                &cur(c),
                a,
                &key,
            ))),
            Op::Purchase(p, i, c, q) => Some(Call::Purchase(purchase_req(
                &pl(p),
                ITEMS_UNDER_TEST[i],
                &cur(c),
                q,
                &key,
            ))),
            Op::Refund(n) => {
                let id = match ledger_before.len() {
                    0 => "txn_00000000000000ff".to_string(),
                    len => ledger_before[n % len].transaction_id.clone(),
                };
                Some(Call::Refund(refund_req(&id, &key)))
            }
            Op::Replay(_) | Op::Reuse(_) if done.is_empty() => None,
            Op::Replay(n) => {
                let (call, first) = &done[n % done.len()];
                let again = send(&p, call).await.unwrap();
                assert_eq!(&again, first, "a replay answers as the first call did");
                assert_eq!(ledger(&store), ledger_before, "a replay writes nothing");
                None
            }
            Op::Reuse(n) => {
                let e = send(&p, &done[n % done.len()].0.altered())
                    .await
                    .unwrap_err();
                assert_eq!(e.code, Code::Conflict);
                assert_eq!(
                    ledger(&store),
                    ledger_before,
                    "a conflicting reuse writes nothing"
                );
                None
            }
        };
        if let Some(call) = fresh {
            let predicted = model.predict(&call, &ledger_before, MAX_QUANTITY);
            match (send(&p, &call).await, predicted) {
                (Ok(entries), Ok(changes)) => {
                    assert_eq!(entries.len(), changes.len());
                    for ((player, currency, after), t) in changes.into_iter().zip(&entries) {
                        assert_eq!(t.balance_after, after, "{call:?}");
                        model.balances.insert((player, currency), after);
                    }
                    if let Call::Refund(r) = &call {
                        model.refunded.insert(r.transaction_id.clone());
                    }
                    assert_eq!(ledger(&store).len(), ledger_before.len() + entries.len());
                    done.push((call, entries));
                }
                (Err(e), Err(code)) => {
                    assert_eq!(e.code, code, "{call:?}: {e}");
                    assert_eq!(ledger(&store), ledger_before, "a refusal writes nothing");
                }
                (got, want) => panic!("{call:?}: got {got:?}, the model expected {want:?}"),
            }
        }
        check_invariants(&store);
        for ((player, currency), b) in wallets(&store) {
            assert_eq!(b, model.balance(&player, &currency));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random sessions of credits, debits, transfers, purchases and refunds — refused ones,
    /// replays and conflicting key reuses included — agree with a simple model after every
    /// step, and never break the ledger invariant.
    #[test]
    fn random_sessions_keep_the_ledger_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_session(ops));
    }
}

#[tokio::test]
async fn money_goes_only_to_accounts_that_exist() {
    let (p, _, accounts) = domain_with_accounts(|_| {});
    credit(&p, "p1", "GOLD", 100, "seed").await.unwrap();
    let (ledger_before, outbox_before) = (ledger(&p.ctx.store).len(), outbox(&p.ctx.store).len());
    let e = p
        .credit(trusted(credit_req("acc_doesnotexist", "GOLD", 5, "c1")))
        .await
        .unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::NotFound, "player_id"));
    let e = p
        .transfer(trusted(transfer_req(
            "p1",
            "acc_doesnotexist",
            "GOLD",
            5,
            "t1",
        )))
        .await
        .unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::NotFound, "to_player_id"));
    // Nothing moved, nothing was written.
    assert_eq!(balance(&p, "p1", "GOLD").await, 100);
    assert_eq!(ledger(&p.ctx.store).len(), ledger_before);
    assert_eq!(outbox(&p.ctx.store).len(), outbox_before);
    // "No" is not remembered: once the account exists, it can be paid.
    accounts.insert("acc_doesnotexist");
    p.transfer(trusted(transfer_req(
        "p1",
        "acc_doesnotexist",
        "GOLD",
        5,
        "t1",
    )))
    .await
    .unwrap();
    assert_eq!(balance(&p, "acc_doesnotexist", "GOLD").await, 5);

    // A refund pays the refunded entry's player, who must exist too.
    define(&p, "sword", &[("GOLD", 30)]).await;
    let bought = purchase(&p, "p1", "sword", "GOLD", 1, "b1").await.unwrap();
    let without_p1 = Payment::with_accounts(
        p.ctx.clone(),
        p.config.clone(),
        Arc::new(KnownAccounts::new(["acc_doesnotexist"])),
    );
    let e = without_p1
        .refund(trusted(RefundRequest {
            transaction_id: bought.transaction_id,
            idempotency_key: "r1".into(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!((e.code, field(&e)), (Code::NotFound, "transaction_id"));
    assert_eq!(balance(&p, "p1", "GOLD").await, 65);
}

#[tokio::test]
async fn existing_accounts_are_remembered_and_unknown_ones_asked_again() {
    #[derive(Default)]
    struct Counting(std::sync::Mutex<Vec<String>>);
    impl Accounts for Counting {
        fn exists(
            &self,
            account_id: String,
            options: aicore_proto::CallOptions,
        ) -> futures::future::BoxFuture<'_, Result<bool, Status>> {
            // Asked on payment's own authority, never as the end user.
            assert!(options.caller.is_none());
            let known = account_id.starts_with('p');
            self.0.lock().unwrap().push(account_id);
            Box::pin(async move { Ok(known) })
        }
    }
    let (ctx, _) = Ctx::for_tests();
    let asked = Arc::new(Counting::default());
    let p = Payment::with_accounts(ctx, PaymentConfig::default(), asked.clone());
    for key in ["k1", "k2", "k3"] {
        credit(&p, "p1", "GOLD", 1, key).await.unwrap();
    }
    p.transfer(as_player("p1", transfer_req("p1", "p2", "GOLD", 1, "t")))
        .await
        .unwrap();
    for key in ["k4", "k5"] {
        credit(&p, "x9", "GOLD", 1, key).await.unwrap_err();
    }
    assert_eq!(*asked.0.lock().unwrap(), ["p1", "p2", "x9", "x9"]);
}

#[tokio::test]
async fn without_a_way_to_ask_auth_no_money_moves() {
    // Ctx::for_tests has no NATS client: the production directory cannot answer, and the
    // credit is refused rather than let through.
    let (ctx, _) = Ctx::for_tests();
    let p = Payment::new(ctx, PaymentConfig::default());
    let e = credit(&p, "p1", "GOLD", 1, "k").await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable);
    assert!(ledger(&p.ctx.store).is_empty());
}

/// The field a refusal names ("" when none).
fn field(e: &Status) -> &str {
    e.field_violations.first().map_or("", |v| v.field.as_str())
}
