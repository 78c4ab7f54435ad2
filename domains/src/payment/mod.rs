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
pub use aicore_proto::internal::payment::{LedgerMeta, Wallet};
use aicore_proto::{Code, Metadata, Request, Status};
use prost::Message;

use aicore_runtime::idempotency::{self, Idempotency};
use aicore_runtime::outbox::Emit;

pub mod accounts;

use accounts::{AccountCheck, Accounts, AuthAccounts};
use aicore_runtime::store::{Tx, decode};
use aicore_runtime::{Ctx, paging, validate};

mod handlers;
mod ledger;

use ledger::*;

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
