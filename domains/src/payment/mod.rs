//! payment: multi-currency wallets over an append-only ledger, and the item catalog they
//! buy from. It owns balances, ledger entries, refund markers, catalog items and the
//! idempotency records of its writes. Every balance change is exactly one ledger entry
//! written in the same store closure as the balance (a Transfer is two entries in one
//! closure), together with its audit event in the outbox, so balances, ledger and audit
//! trail never disagree and the sum of all balances always equals the sum of the ledger.
//! It does not grant purchased items in game (a consumer of `evt.payment.purchased` or the
//! caller does), talk to real-money providers, or convert between currencies.
//!
//! Tables (keys are bytes; player ids have no control characters and currencies are
//! `[A-Z0-9_]`, so `\0` separates unambiguously; `!seq` is `u64::MAX - seq` big-endian so a
//! forward scan yields newest first):
//! - `payment.wallets`: `player_id \0 currency` → [`Wallet`] (the balance).
//! - `payment.ledger`: `seq` (big-endian) → the contract's `Transaction`; never changed or
//!   removed. `seq` is one ledger-wide sequence, allocated from `payment.meta`, and the
//!   transaction id is `txn_` + its 16 hex digits (opaque to clients).
//! - `payment.ledger_by_player`: `player_id \0 !seq` → empty (ListTransactions).
//! - `payment.ledger_by_currency`: `player_id \0 currency \0 !seq` → empty (ListTransactions
//!   filtered by currency).
//! - `payment.refunds`: `seq` of a refunded entry → the id of its REFUND entry (refund once).
//! - `payment.items`: `item_id` → the contract's `Item`.
//! - `payment.meta`: `ledger` → [`LedgerMeta`] (the next sequence number).
//! - `payment.idempotency`: see [`aicore_runtime::idempotency`].
//!
//! Idempotency keys of money writes are scoped by the wallet they act on (Credit, Debit and
//! Purchase: `player_id`; Transfer: `from_player_id`) and shared across those RPCs, with the
//! RPC in the fingerprint: one key names one logical operation on a wallet, so reusing it
//! for another RPC is Conflict, and one player cannot block another player's keys. Refund
//! and DefineItem (staff only) use scopes of their own.
//!
//! Money goes only to accounts that exist: Credit (`player_id`), Transfer
//! (`to_player_id`) and Refund (the refunded entry's player, `transaction_id`) ask auth
//! first, through [`accounts`] (a cache of known accounts in front of `auth.GetAccount`),
//! and answer NotFound naming the field otherwise. Debit and Purchase only take money
//! from a wallet that already holds some.
//!
//! Events, queued in the transaction of the change: `audit.payment.<kind>` with a
//! `PaymentAuditEvent` for every change (kinds `credit`, `debit`, `transfer`, `purchase`,
//! `refund`, `item_defined`); `evt.payment.purchased` and `evt.payment.refunded` with the
//! `Transaction`, for game code that grants or revokes items.

use std::sync::Arc;
use std::time::Duration;

use aicore_proto::aicore::payment::v1::{
    CreditRequest, CreditResponse, DebitRequest, DebitResponse, DefineItemRequest,
    DefineItemResponse, GetWalletRequest, GetWalletResponse, Item, ListItemsRequest,
    ListItemsResponse, ListTransactionsRequest, ListTransactionsResponse, Money, PaymentAuditEvent,
    PaymentHandler, PurchaseRequest, PurchaseResponse, RefundRequest, RefundResponse, Transaction,
    TransactionKind, TransferRequest, TransferResponse,
};
use aicore_proto::{Code, Metadata, Request, Status};
use prost::Message;

use aicore_runtime::idempotency::{self, Idempotency};
use aicore_runtime::outbox::Emit;

pub mod accounts;

use accounts::{AccountCheck, Accounts, AuthAccounts};
use aicore_runtime::store::{Tx, decode};
use aicore_runtime::{Ctx, paging, validate};

const WALLETS: &str = "payment.wallets";
const LEDGER: &str = "payment.ledger";
const BY_PLAYER: &str = "payment.ledger_by_player";
const BY_CURRENCY: &str = "payment.ledger_by_currency";
const REFUNDS: &str = "payment.refunds";
const ITEMS: &str = "payment.items";
const META: &str = "payment.meta";
const IDEMPOTENCY_TABLE: &str = "payment.idempotency";
/// Where a purchase's ledger entry is published (a `Transaction`, which also serves
/// refunds, so its subject is named here rather than on the message).
pub const PURCHASED_SUBJECT: &str = "evt.payment.purchased";
/// Where a refund's ledger entry is published (a `Transaction`).
pub const REFUNDED_SUBJECT: &str = "evt.payment.refunded";

/// Roles that may credit, debit, refund, define items and act on any wallet.
const STAFF: &[&str] = &["admin", "service"];
/// Longest currency code (`[A-Z0-9_]`, the contract's limit).
const MAX_CURRENCY_CHARS: usize = 16;
/// Longest `reason`, in characters (the contract's limit).
const MAX_REASON_CHARS: usize = 256;
/// Longest `item_id` (`[a-z0-9_.-]`, the contract's limit).
const MAX_ITEM_ID_CHARS: usize = 64;
/// Longest item `name`, in characters (the contract's limit).
const MAX_ITEM_NAME_CHARS: usize = 128;
/// Most currencies one GetWallet lists (far above any real game's).
const MAX_WALLET_CURRENCIES: usize = 10_000;
/// Idempotency scopes of the staff-only writes; player ids are never empty and never hold
/// `\0`, so these cannot collide with a wallet's scope.
const REFUND_SCOPE: &str = "\0refund";
const ITEM_SCOPE: &str = "\0item";
/// Page token kinds.
const TRANSACTIONS_TOKEN: u8 = b'T';
const ITEMS_TOKEN: u8 = b'I';

/// Configuration of payment (`[domains.payment]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// Largest amount one Credit, Debit or Transfer moves, largest catalog price, and
    /// largest total (price × quantity) of one Purchase; more is InvalidArgument.
    pub max_amount: i64,
    /// Most units one Purchase buys; more is InvalidArgument.
    pub max_quantity: u32,
    /// The currencies accepted (codes of 1–16 characters `[A-Z0-9_]`); empty accepts any
    /// well-formed code. Listing them turns a typo into an error instead of a new currency.
    pub currencies: Vec<String>,
    /// Longest item description, in characters.
    pub max_description_chars: usize,
    /// Page size of ListTransactions when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of ListTransactions; larger requests are capped to it.
    pub max_page_size: u32,
    /// Page size of ListItems when the request asks for none.
    pub items_default_page_size: u32,
    /// Largest page of ListItems; larger requests are capped to it.
    pub items_max_page_size: u32,
    /// How long an account auth confirmed is remembered as existing, in seconds (only
    /// "exists" answers are remembered).
    pub account_cache_secs: u64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            max_amount: 1_000_000_000_000,
            max_quantity: 1000,
            currencies: Vec::new(),
            max_description_chars: 1024,
            default_page_size: 50,
            max_page_size: 500,
            items_default_page_size: 100,
            items_max_page_size: 500,
            account_cache_secs: 60,
        }
    }
}

/// One balance (value of `payment.wallets`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Wallet {
    /// In the currency's smallest unit; never negative.
    #[prost(int64, tag = "1")]
    pub balance: i64,
    /// When the last entry changed it.
    #[prost(message, optional, tag = "2")]
    pub updated_at: Option<prost_types::Timestamp>,
}

/// The ledger's counters (value of `payment.meta` / `ledger`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LedgerMeta {
    /// The sequence number the next entry gets (0 = none written yet, start at 1).
    #[prost(uint64, tag = "1")]
    pub next_seq: u64,
}

/// The payment domain.
pub struct Payment {
    ctx: Ctx,
    config: PaymentConfig,
    idempotency: Idempotency,
    accounts: AccountCheck,
}

impl Payment {
    /// The domain on a context, asking auth over NATS which accounts exist.
    pub fn new(ctx: Ctx, config: PaymentConfig) -> Self {
        let accounts = Arc::new(AuthAccounts::new(ctx.clone()));
        Payment::with_accounts(ctx, config, accounts)
    }

    /// The domain with another directory of accounts (tests).
    pub fn with_accounts(ctx: Ctx, config: PaymentConfig, accounts: Arc<dyn Accounts>) -> Self {
        let known_for = Duration::from_secs(config.account_cache_secs);
        Payment {
            idempotency: Idempotency::new(IDEMPOTENCY_TABLE),
            accounts: AccountCheck::new(accounts, known_for),
            config,
            ctx,
        }
    }

    fn config(&self) -> &PaymentConfig {
        &self.config
    }

    fn check_currency(&self, currency: &str, field: &str) -> Result<(), Status> {
        if currency.is_empty()
            || currency.len() > MAX_CURRENCY_CHARS
            || !currency
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Status::invalid(
                field,
                format!(
                    "must be 1 to {MAX_CURRENCY_CHARS} characters of A-Z, 0-9 and _ (e.g. GOLD)"
                ),
            ));
        }
        let allowed = &self.config().currencies;
        if !allowed.is_empty() && !allowed.iter().any(|c| c == currency) {
            return Err(Status::invalid(
                field,
                format!("{currency} is not a currency of this game ({allowed:?})"),
            ));
        }
        Ok(())
    }

    fn check_amount(&self, amount: i64, field: &str) -> Result<(), Status> {
        let max = self.config().max_amount;
        if amount <= 0 {
            return Err(Status::invalid(field, "must be positive"));
        }
        if amount > max {
            return Err(Status::invalid(
                field,
                format!("must be at most {max} per operation"),
            ));
        }
        Ok(())
    }

    /// Credit and Debit: one staff-made entry of `kind` on one wallet.
    async fn adjust(
        &self,
        kind: TransactionKind,
        request: Request<CreditRequest>,
    ) -> Result<Transaction, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        self.check_currency(&req.currency, "currency")?;
        self.check_amount(req.amount, "amount")?;
        check_reason(&req.reason)?;
        require_key(&req.idempotency_key)?;
        let (rpc, signed) = match kind {
            TransactionKind::Debit => ("debit", -req.amount),
            _ => ("credit", req.amount),
        };
        if kind != TransactionKind::Debit {
            self.accounts
                .require(&req.player_id, "player_id", &meta)
                .await?;
        }
        let keyed = self
            .idempotency
            .prepare(&self.ctx, rpc, &req.player_id, &req)?;
        let actor = Actor::new(&meta, &req.idempotency_key, self.ctx.now_ts());
        let t = entry(
            kind,
            &req.player_id,
            &req.currency,
            signed,
            &req.reason,
            actor.at,
        );
        let reply = keyed
            .write(move |tx| {
                let t = append_next(tx, t, "amount")?;
                actor.audit(tx, rpc, vec![t.clone()], None)?;
                Ok(CreditResponse {
                    transaction: Some(t),
                })
            })
            .await?;
        reply
            .transaction
            .ok_or_else(|| Status::internal("a stored reply lacks its transaction"))
    }
}

fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(Status::invalid(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// Money writes exist to be exactly-once, so their key is required.
fn require_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid(
            "idempotency_key",
            "is required: a money write must be safe to retry",
        ));
    }
    idempotency::check_key(key)
}

fn transaction_id(seq: u64) -> String {
    format!("txn_{seq:016x}")
}

/// The sequence number in a transaction id; anything malformed is InvalidArgument.
fn parse_transaction_id(id: &str) -> Result<u64, Status> {
    id.strip_prefix("txn_")
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| Status::invalid("transaction_id", "is not a transaction id"))
}

fn wallet_prefix(player_id: &str) -> Vec<u8> {
    let mut k = player_id.as_bytes().to_vec();
    k.push(0);
    k
}

fn wallet_key(player_id: &str, currency: &str) -> Vec<u8> {
    let mut k = wallet_prefix(player_id);
    k.extend_from_slice(currency.as_bytes());
    k
}

fn index_prefix(player_id: &str, currency: &str) -> Vec<u8> {
    let mut k = wallet_prefix(player_id);
    if !currency.is_empty() {
        k.extend_from_slice(currency.as_bytes());
        k.push(0);
    }
    k
}

fn index_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(u64::MAX - seq).to_be_bytes());
    k
}

fn seq_of_index(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::MAX - u64::from_be_bytes(tail))
}

/// Allocates `n` consecutive ledger sequence numbers and returns the first.
fn allocate(tx: &mut Tx<'_>, n: u64) -> Result<u64, Status> {
    let mut meta = tx
        .get_msg::<LedgerMeta>(META, b"ledger")?
        .unwrap_or_default();
    let first = meta.next_seq.max(1);
    meta.next_seq = first
        .checked_add(n)
        .ok_or_else(|| Status::internal("the ledger sequence is exhausted"))?;
    tx.put_msg(META, b"ledger", &meta);
    Ok(first)
}

/// Applies ledger entry `t` (numbered `seq`) to its wallet and writes both, with the
/// indexes. A balance that would go negative or overflow is FailedPrecondition naming
/// `field`, and the caller's closure fails, so nothing of the request is written.
fn append(
    tx: &mut Tx<'_>,
    seq: u64,
    mut t: Transaction,
    field: &str,
) -> Result<Transaction, Status> {
    let wkey = wallet_key(&t.player_id, &t.currency);
    let before = tx
        .get_msg::<Wallet>(WALLETS, &wkey)?
        .unwrap_or_default()
        .balance;
    let after = before.checked_add(t.amount).ok_or_else(|| {
        Status::with_field(
            Code::FailedPrecondition,
            field,
            format!(
                "would take the {} balance past the largest amount",
                t.currency
            ),
        )
    })?;
    if after < 0 {
        return Err(Status::with_field(
            Code::FailedPrecondition,
            field,
            format!(
                "insufficient funds: the {} balance is {before}, {} is needed",
                t.currency, -t.amount
            ),
        ));
    }
    t.transaction_id = transaction_id(seq);
    t.balance_after = after;
    tx.put_msg(
        WALLETS,
        &wkey,
        &Wallet {
            balance: after,
            updated_at: t.created_at,
        },
    );
    tx.put_msg(LEDGER, &seq.to_be_bytes(), &t);
    tx.put(
        BY_PLAYER,
        &index_key(&index_prefix(&t.player_id, ""), seq),
        Vec::new(),
    );
    tx.put(
        BY_CURRENCY,
        &index_key(&index_prefix(&t.player_id, &t.currency), seq),
        Vec::new(),
    );
    Ok(t)
}

/// [`append`] under the next sequence number.
fn append_next(tx: &mut Tx<'_>, t: Transaction, field: &str) -> Result<Transaction, Status> {
    let seq = allocate(tx, 1)?;
    append(tx, seq, t, field)
}

/// Who made a call, for the audit trail.
struct Actor {
    account_id: String,
    roles: Vec<String>,
    request_id: String,
    idempotency_key: String,
    at: prost_types::Timestamp,
}

impl Actor {
    fn new(meta: &Metadata, idempotency_key: &str, at: prost_types::Timestamp) -> Self {
        let (account_id, roles) = meta
            .caller
            .as_ref()
            .map(|c| (c.account_id.clone(), c.roles.clone()))
            .unwrap_or_default();
        Actor {
            account_id,
            roles,
            request_id: meta.request_id.clone().unwrap_or_default(),
            idempotency_key: idempotency_key.to_string(),
            at,
        }
    }

    /// Queues the audit event of a change in its transaction.
    fn audit(
        self,
        tx: &mut Tx<'_>,
        kind: &str,
        transactions: Vec<Transaction>,
        item: Option<Item>,
    ) -> Result<(), Status> {
        let event = PaymentAuditEvent {
            kind: kind.to_string(),
            actor_account_id: self.account_id,
            actor_roles: self.roles,
            request_id: self.request_id,
            idempotency_key: self.idempotency_key,
            transactions,
            item,
            at: Some(self.at),
        };
        tx.emit(&event)
    }
}

/// A new ledger entry of `kind`, before it is numbered and applied.
fn entry(
    kind: TransactionKind,
    player_id: &str,
    currency: &str,
    amount: i64,
    reason: &str,
    at: prost_types::Timestamp,
) -> Transaction {
    Transaction {
        kind: kind as i32,
        player_id: player_id.to_string(),
        currency: currency.to_string(),
        amount,
        reason: reason.to_string(),
        created_at: Some(at),
        ..Default::default()
    }
}

impl PaymentHandler for Payment {
    async fn get_wallet(
        &self,
        request: Request<GetWalletRequest>,
    ) -> Result<GetWalletResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, STAFF)?;
        let store = &self.ctx.store;
        let balances = if req.currency.is_empty() {
            let prefix = wallet_prefix(&req.player_id);
            store
                .scan(WALLETS, &prefix, &prefix, MAX_WALLET_CURRENCIES)?
                .into_iter()
                .map(|(k, v)| {
                    let w: Wallet = decode(WALLETS, v)?;
                    Ok(Money {
                        currency: String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                        amount: w.balance,
                    })
                })
                .collect::<Result<_, Status>>()?
        } else {
            self.check_currency(&req.currency, "currency")?;
            let w = store
                .get_msg_cached::<Wallet>(WALLETS, &wallet_key(&req.player_id, &req.currency))?
                .unwrap_or_default();
            vec![Money {
                currency: req.currency,
                amount: w.balance,
            }]
        };
        Ok(GetWalletResponse {
            player_id: req.player_id,
            balances,
        })
    }

    async fn credit(&self, request: Request<CreditRequest>) -> Result<CreditResponse, Status> {
        let transaction = self.adjust(TransactionKind::Credit, request).await?;
        Ok(CreditResponse {
            transaction: Some(transaction),
        })
    }

    async fn debit(&self, request: Request<DebitRequest>) -> Result<DebitResponse, Status> {
        let Request { body: r, meta } = request;
        // The same fields as a credit; `adjust` signs the amount by kind.
        let body = CreditRequest {
            player_id: r.player_id,
            currency: r.currency,
            amount: r.amount,
            reason: r.reason,
            idempotency_key: r.idempotency_key,
        };
        let transaction = self
            .adjust(TransactionKind::Debit, Request { body, meta })
            .await?;
        Ok(DebitResponse {
            transaction: Some(transaction),
        })
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<TransferResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.from_player_id, "from_player_id")?;
        meta.authorize_owner(&req.from_player_id, STAFF)?;
        validate::player_id(&req.to_player_id, "to_player_id")?;
        if req.to_player_id == req.from_player_id {
            return Err(Status::invalid(
                "to_player_id",
                "must differ from from_player_id",
            ));
        }
        self.check_currency(&req.currency, "currency")?;
        self.check_amount(req.amount, "amount")?;
        check_reason(&req.reason)?;
        require_key(&req.idempotency_key)?;
        self.accounts
            .require(&req.to_player_id, "to_player_id", &meta)
            .await?;
        let keyed = self
            .idempotency
            .prepare(&self.ctx, "transfer", &req.from_player_id, &req)?;
        let actor = Actor::new(&meta, &req.idempotency_key, self.ctx.now_ts());
        let mut out = entry(
            TransactionKind::TransferOut,
            &req.from_player_id,
            &req.currency,
            -req.amount,
            &req.reason,
            actor.at,
        );
        out.counterparty_player_id = req.to_player_id.clone();
        let mut inn = entry(
            TransactionKind::TransferIn,
            &req.to_player_id,
            &req.currency,
            req.amount,
            &req.reason,
            actor.at,
        );
        inn.counterparty_player_id = req.from_player_id.clone();
        keyed
            .write(move |tx| {
                let seq = allocate(tx, 2)?;
                out.related_transaction_id = transaction_id(seq + 1);
                inn.related_transaction_id = transaction_id(seq);
                let debit = append(tx, seq, out, "amount")?;
                let credit = append(tx, seq + 1, inn, "amount")?;
                actor.audit(tx, "transfer", vec![debit.clone(), credit.clone()], None)?;
                Ok(TransferResponse {
                    debit: Some(debit),
                    credit: Some(credit),
                })
            })
            .await
    }

    async fn purchase(
        &self,
        request: Request<PurchaseRequest>,
    ) -> Result<PurchaseResponse, Status> {
        let Request {
            body: mut req,
            meta,
        } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, STAFF)?;
        validate::slug(&req.item_id, "item_id", MAX_ITEM_ID_CHARS)?;
        self.check_currency(&req.currency, "currency")?;
        let max_quantity = self.config().max_quantity;
        // 0 means 1; normalised before the fingerprint so both spellings are one request.
        req.quantity = req.quantity.max(1);
        if req.quantity > max_quantity {
            return Err(Status::invalid(
                "quantity",
                format!("must be at most {max_quantity}"),
            ));
        }
        require_key(&req.idempotency_key)?;
        let keyed = self
            .idempotency
            .prepare(&self.ctx, "purchase", &req.player_id, &req)?;
        let actor = Actor::new(&meta, &req.idempotency_key, self.ctx.now_ts());
        let max_amount = self.config().max_amount;
        let mut t = entry(
            TransactionKind::Purchase,
            &req.player_id,
            &req.currency,
            0,
            &format!("purchase:{}", req.item_id),
            actor.at,
        );
        t.item_id = req.item_id.clone();
        t.quantity = req.quantity;
        keyed
            .write(move |tx| {
                let item = tx
                    .get_msg::<Item>(ITEMS, t.item_id.as_bytes())?
                    .ok_or_else(|| Status::not_found(format!("item_id: no item {}", t.item_id)))?;
                if item.disabled {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "item_id",
                        format!("{} is not for sale", t.item_id),
                    ));
                }
                let price = item
                    .prices
                    .iter()
                    .find(|p| p.currency == t.currency)
                    .ok_or_else(|| {
                        Status::with_field(
                            Code::FailedPrecondition,
                            "currency",
                            format!("{} has no price in {}", t.item_id, t.currency),
                        )
                    })?;
                let total = price
                    .amount
                    .checked_mul(i64::from(t.quantity))
                    .filter(|total| *total <= max_amount)
                    .ok_or_else(|| {
                        Status::invalid(
                            "quantity",
                            format!("the total exceeds {max_amount} per operation"),
                        )
                    })?;
                t.amount = -total;
                let t = append_next(tx, t, "quantity")?;
                actor.audit(tx, "purchase", vec![t.clone()], None)?;
                tx.emit_raw(PURCHASED_SUBJECT, t.encode_to_vec())?;
                Ok(PurchaseResponse {
                    transaction: Some(t),
                })
            })
            .await
    }

    async fn refund(&self, request: Request<RefundRequest>) -> Result<RefundResponse, Status> {
        let Request { body: req, meta } = request;
        let seq = parse_transaction_id(&req.transaction_id)?;
        check_reason(&req.reason)?;
        require_key(&req.idempotency_key)?;
        let keyed = self
            .idempotency
            .prepare(&self.ctx, "refund", REFUND_SCOPE, &req)?;
        // The ledger never changes an entry, so its player read here is the one credited.
        if let Some(original) = self
            .ctx
            .store
            .get_msg::<Transaction>(LEDGER, &seq.to_be_bytes())?
        {
            self.accounts
                .require(&original.player_id, "transaction_id", &meta)
                .await?;
        }
        let actor = Actor::new(&meta, &req.idempotency_key, self.ctx.now_ts());
        let (id, reason) = (req.transaction_id, req.reason);
        keyed
            .write(move |tx| {
                let original = tx
                    .get_msg::<Transaction>(LEDGER, &seq.to_be_bytes())?
                    .ok_or_else(|| {
                        Status::not_found(format!("transaction_id: no transaction {id}"))
                    })?;
                let kind = TransactionKind::try_from(original.kind).unwrap_or_default();
                if !matches!(kind, TransactionKind::Purchase | TransactionKind::Debit) {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "transaction_id",
                        format!(
                            "{id} is a {}; only purchases and debits are refunded",
                            kind.as_str_name()
                        ),
                    ));
                }
                if let Some(by) = tx.get(REFUNDS, &seq.to_be_bytes())? {
                    return Err(Status::with_field(
                        Code::FailedPrecondition,
                        "transaction_id",
                        format!(
                            "{id} was already refunded by {}",
                            String::from_utf8_lossy(&by)
                        ),
                    ));
                }
                let amount = original
                    .amount
                    .checked_neg()
                    .ok_or_else(|| Status::internal("unrefundable amount"))?;
                let reason = if reason.is_empty() {
                    format!("refund:{id}")
                } else {
                    reason
                };
                let mut t = entry(
                    TransactionKind::Refund,
                    &original.player_id,
                    &original.currency,
                    amount,
                    &reason,
                    actor.at,
                );
                t.item_id = original.item_id;
                t.quantity = original.quantity;
                t.related_transaction_id = id;
                let t = append_next(tx, t, "transaction_id")?;
                tx.put(
                    REFUNDS,
                    &seq.to_be_bytes(),
                    t.transaction_id.clone().into_bytes(),
                );
                actor.audit(tx, "refund", vec![t.clone()], None)?;
                tx.emit_raw(REFUNDED_SUBJECT, t.encode_to_vec())?;
                Ok(RefundResponse {
                    transaction: Some(t),
                })
            })
            .await
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<ListTransactionsResponse, Status> {
        let Request { body: req, meta } = request;
        validate::player_id(&req.player_id, "player_id")?;
        meta.authorize_owner(&req.player_id, STAFF)?;
        let (table, prefix) = if req.currency.is_empty() {
            (BY_PLAYER, index_prefix(&req.player_id, ""))
        } else {
            self.check_currency(&req.currency, "currency")?;
            (BY_CURRENCY, index_prefix(&req.player_id, &req.currency))
        };
        let c = self.config();
        let limit = paging::page_size(req.page_size, c.default_page_size, c.max_page_size)?;
        let from = if req.page_token.is_empty() {
            prefix.clone()
        } else {
            let raw = paging::decode_token(TRANSACTIONS_TOKEN, &req.page_token)?;
            let next: [u8; 8] = raw.try_into().map_err(|_| paging::bad_token())?;
            index_key(&prefix, u64::from_be_bytes(next))
        };
        let store = &self.ctx.store;
        let mut rows = store.scan(table, &prefix, &from, limit + 1)?;
        let next_page_token = paging::next_token(&mut rows, limit, TRANSACTIONS_TOKEN, |(k, _)| {
            seq_of_index(k).map(|seq| seq.to_be_bytes().to_vec())
        });
        let transactions = rows
            .into_iter()
            .map(|(k, _)| {
                let seq = seq_of_index(&k).ok_or_else(|| Status::internal("bad ledger index"))?;
                store
                    .get_msg::<Transaction>(LEDGER, &seq.to_be_bytes())?
                    .ok_or_else(|| Status::internal("a ledger index points at no entry"))
            })
            .collect::<Result<_, Status>>()?;
        Ok(ListTransactionsResponse {
            transactions,
            next_page_token,
        })
    }

    async fn define_item(
        &self,
        request: Request<DefineItemRequest>,
    ) -> Result<DefineItemResponse, Status> {
        let Request {
            body: mut req,
            meta,
        } = request;
        validate::slug(&req.item_id, "item_id", MAX_ITEM_ID_CHARS)?;
        let name_chars = req.name.chars().count();
        if name_chars == 0 || name_chars > MAX_ITEM_NAME_CHARS {
            return Err(Status::invalid(
                "name",
                format!("must be 1 to {MAX_ITEM_NAME_CHARS} characters"),
            ));
        }
        let max_description = self.config().max_description_chars;
        if req.description.chars().count() > max_description {
            return Err(Status::invalid(
                "description",
                format!("must be at most {max_description} characters"),
            ));
        }
        if req.prices.is_empty() {
            return Err(Status::invalid("prices", "must hold at least one price"));
        }
        for (i, p) in req.prices.iter().enumerate() {
            self.check_currency(&p.currency, &format!("prices[{i}].currency"))?;
            self.check_amount(p.amount, &format!("prices[{i}].amount"))?;
            if req.prices[..i].iter().any(|q| q.currency == p.currency) {
                return Err(Status::invalid(
                    &format!("prices[{i}].currency"),
                    format!("{} has a price already; one price per currency", p.currency),
                ));
            }
        }
        idempotency::check_key(&req.idempotency_key)?;
        req.prices.sort_by(|a, b| a.currency.cmp(&b.currency));
        let keyed = self
            .idempotency
            .prepare(&self.ctx, "define_item", ITEM_SCOPE, &req)?;
        let actor = Actor::new(&meta, &req.idempotency_key, self.ctx.now_ts());
        keyed
            .write(move |tx| {
                let existing = tx.get_msg::<Item>(ITEMS, req.item_id.as_bytes())?;
                let current = existing.as_ref().map_or(0, |i| i.version);
                match req.expected_version {
                    Some(n) if n != current && current == 0 => {
                        return Err(Status::conflict(format!(
                            "item {} does not exist (expected version {n})",
                            req.item_id
                        )));
                    }
                    Some(n) if n != current => {
                        return Err(Status::conflict(format!(
                            "item {} is at version {current}, not the expected {n}",
                            req.item_id
                        )));
                    }
                    _ => {}
                }
                let item = Item {
                    item_id: req.item_id,
                    name: req.name,
                    description: req.description,
                    prices: req.prices,
                    disabled: req.disabled,
                    version: current + 1,
                    updated_at: Some(actor.at),
                };
                tx.put_msg(ITEMS, item.item_id.as_bytes(), &item);
                actor.audit(tx, "item_defined", Vec::new(), Some(item.clone()))?;
                Ok(DefineItemResponse { item: Some(item) })
            })
            .await
    }

    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<ListItemsResponse, Status> {
        let Request { body: req, meta } = request;
        // Players never see withdrawn items, whatever they ask.
        let show_disabled = req.include_disabled && meta.authorize_roles(STAFF).is_ok();
        let c = self.config();
        let limit = paging::page_size(
            req.page_size,
            c.items_default_page_size,
            c.items_max_page_size,
        )?;
        let listing = paging::Listing {
            store: &self.ctx.store,
            table: ITEMS,
            prefix: b"",
            kind: ITEMS_TOKEN,
            limit,
            // Hidden (disabled) items are few; a page reads past them all.
            max_scan: usize::MAX,
        };
        let mut page = paging::Page::start(listing, &req.page_token)?;
        while let Some((_, v)) = page.next_row()? {
            let item: Item = decode(ITEMS, v)?;
            if !item.disabled || show_disabled {
                page.keep(item);
            }
        }
        let (items, next_page_token) = page.finish();
        Ok(ListItemsResponse {
            items,
            next_page_token,
        })
    }
}

impl aicore_runtime::Domain for Payment {
    type Config = PaymentConfig;

    fn build(
        ctx: &Ctx,
        config: &PaymentConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::payment::v1::PaymentServer(std::sync::Arc::new(Payment::new(
                ctx.clone(),
                config.clone(),
            ))),
        ))
    }
}

#[cfg(test)]
mod tests;
