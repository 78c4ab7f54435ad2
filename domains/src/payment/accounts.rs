//! Which accounts exist, as payment needs to know: money goes only to an account that
//! exists, or it would sit in a wallet nobody can ever log into (a Transfer to a typo
//! was answered 200 and the money was gone). Accounts belong to auth, and a domain never
//! uses another domain's code, so payment asks auth (`auth.GetAccount`) over NATS on its
//! own authority ([`AuthAccounts`]), behind the small [`Accounts`] trait so unit tests run
//! on an in-memory directory ([`KnownAccounts`]) instead of skipping the check.
//!
//! [`AccountCheck`] keeps the positive answers in a small moka cache for a short TTL:
//! accounts are never deleted today, so a "yes" stays true, and a "no" is never cached
//! (a player who registers a second later can be paid at once). When auth cannot be asked
//! the check fails (Unavailable): there is no silent pass.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aicore_proto::aicore::auth::v1::{AuthClient, GetAccountRequest};
use aicore_proto::{CallOptions, Code, Metadata, Status};
use futures::future::BoxFuture;
use moka::sync::Cache;

use aicore_runtime::Ctx;

/// Accounts remembered as existing, at most.
const CACHE_CAPACITY: u64 = 100_000;

/// A directory of accounts.
pub trait Accounts: Send + Sync + 'static {
    /// Whether `account_id` names an account; an error when that cannot be told.
    fn exists(
        &self,
        account_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<bool, Status>>;
}

/// auth over NATS, through the context's client.
pub struct AuthAccounts {
    ctx: Ctx,
}

impl AuthAccounts {
    /// The directory served by auth, reached with `ctx`'s client.
    pub fn new(ctx: Ctx) -> Self {
        AuthAccounts { ctx }
    }
}

impl Accounts for AuthAccounts {
    fn exists(
        &self,
        account_id: String,
        options: CallOptions,
    ) -> BoxFuture<'_, Result<bool, Status>> {
        Box::pin(async move {
            let auth = AuthClient::new(self.ctx.client()?.clone());
            match auth
                .get_account(GetAccountRequest { account_id }, &options)
                .await
            {
                Ok(r) => Ok(r.account.is_some()),
                Err(e) if e.code == Code::NotFound => Ok(false),
                Err(e) if matches!(e.code, Code::Unavailable | Code::DeadlineExceeded) => {
                    Err(Status::new(
                        e.code,
                        format!("cannot check the account with auth: {}", e.message),
                    ))
                }
                // auth refusing payment's own call is a deployment fault, not the caller's.
                Err(e) => {
                    tracing::error!(error = %e, "auth refused payment's account check");
                    Err(Status::internal("the account could not be checked"))
                }
            }
        })
    }
}

/// A fixed, in-memory directory (tests, or an embedding without auth).
#[derive(Default)]
pub struct KnownAccounts(RwLock<HashSet<String>>);

impl KnownAccounts {
    /// A directory holding `ids`.
    pub fn new<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Self {
        KnownAccounts(RwLock::new(ids.into_iter().map(Into::into).collect()))
    }

    /// Adds an account.
    pub fn insert(&self, id: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
    }
}

impl Accounts for KnownAccounts {
    fn exists(
        &self,
        account_id: String,
        _options: CallOptions,
    ) -> BoxFuture<'_, Result<bool, Status>> {
        let known = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&account_id);
        Box::pin(async move { Ok(known) })
    }
}

/// The check payment runs before money reaches a wallet: a directory and a cache of its
/// "yes" answers.
pub struct AccountCheck {
    accounts: Arc<dyn Accounts>,
    known: Cache<String, ()>,
}

impl AccountCheck {
    /// Asks `accounts`, remembering accounts that exist for `ttl`.
    pub fn new(accounts: Arc<dyn Accounts>, ttl: Duration) -> Self {
        AccountCheck {
            accounts,
            known: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Refuses with NotFound naming `field` unless `account_id` is an account. Asked on
    /// payment's own authority (the end user may not read another account), within the
    /// request's deadline.
    pub async fn require(
        &self,
        account_id: &str,
        field: &str,
        meta: &Metadata,
    ) -> Result<(), Status> {
        if self.known.contains_key(account_id) {
            return Ok(());
        }
        let options = CallOptions {
            caller: None,
            caller_session: None,
            ..CallOptions::from_meta(meta)
        };
        if self
            .accounts
            .exists(account_id.to_string(), options)
            .await?
        {
            self.known.insert(account_id.to_string(), ());
            return Ok(());
        }
        Err(Status::with_field(
            Code::NotFound,
            field,
            format!("no account {account_id}"),
        ))
    }
}
