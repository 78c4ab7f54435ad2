//! The ledger: transaction ids and sequence numbers, the keys of wallets and of the
//! per-player and per-currency indexes, appending a transaction with its index rows, and the
//! actor and audit fields every entry carries.

use super::*;

pub(super) fn transaction_id(seq: u64) -> String {
    format!("txn_{seq:016x}")
}

/// The sequence number in a transaction id; anything malformed is InvalidArgument.
pub(super) fn parse_transaction_id(id: &str) -> Result<u64, Status> {
    id.strip_prefix("txn_")
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| Status::invalid("transaction_id", "is not a transaction id"))
}

pub(super) fn wallet_prefix(player_id: &str) -> Vec<u8> {
    let mut k = player_id.as_bytes().to_vec();
    k.push(0);
    k
}

pub(super) fn wallet_key(player_id: &str, currency: &str) -> Vec<u8> {
    let mut k = wallet_prefix(player_id);
    k.extend_from_slice(currency.as_bytes());
    k
}

pub(super) fn index_prefix(player_id: &str, currency: &str) -> Vec<u8> {
    let mut k = wallet_prefix(player_id);
    if !currency.is_empty() {
        k.extend_from_slice(currency.as_bytes());
        k.push(0);
    }
    k
}

pub(super) fn index_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(u64::MAX - seq).to_be_bytes());
    k
}

pub(super) fn seq_of_index(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::MAX - u64::from_be_bytes(tail))
}

/// Allocates `n` consecutive ledger sequence numbers and returns the first.
pub(super) fn allocate(tx: &mut Tx<'_>, n: u64) -> Result<u64, Status> {
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
pub(super) fn append(
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
pub(super) fn append_next(
    tx: &mut Tx<'_>,
    t: Transaction,
    field: &str,
) -> Result<Transaction, Status> {
    let seq = allocate(tx, 1)?;
    append(tx, seq, t, field)
}

/// Who made a call, for the audit trail.
pub(super) struct Actor {
    pub(super) account_id: String,
    pub(super) roles: Vec<String>,
    pub(super) request_id: String,
    pub(super) idempotency_key: String,
    pub(super) at: prost_types::Timestamp,
}

impl Actor {
    pub(super) fn new(meta: &Metadata, idempotency_key: &str, at: prost_types::Timestamp) -> Self {
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
    pub(super) fn audit(
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
pub(super) fn entry(
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
