//! payment's handlers: wallets, credits and debits, transfers, purchases and refunds, the
//! transaction listing and the item catalogue.

use super::*;

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
                let original = refundable(tx, seq, &id)?;
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
                let what = format!("item {}", req.item_id);
                validate::expected_version(req.expected_version, current, &what)?;
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

/// The transaction `id` (sequence `seq`) when it may be refunded: NotFound when there is
/// none, FailedPrecondition when it is neither a purchase nor a debit or was refunded.
fn refundable(tx: &mut Tx<'_>, seq: u64, id: &str) -> Result<Transaction, Status> {
    let original = tx
        .get_msg::<Transaction>(LEDGER, &seq.to_be_bytes())?
        .ok_or_else(|| Status::not_found(format!("transaction_id: no transaction {id}")))?;
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
    Ok(original)
}
