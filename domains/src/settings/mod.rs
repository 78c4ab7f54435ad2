//! settings: typed settings with schemas and defaults, global or per player. It owns the
//! schema of every key (type, range, allowed values, default, allowed scopes) and the
//! stored values, each versioned per key and scope; every write is checked against the
//! schema it is stored under. It does not fall back across scopes (a PLAYER read with no
//! stored value answers the schema default, never the GLOBAL value) and does not push
//! changes to anyone.
//!
//! Tables (keys are bytes; setting keys are `[a-z0-9_.-]` and player ids have no control
//! characters, so `\0` separates unambiguously):
//! - `settings.schemas`: `key` → the contract's [`Schema`] message.
//! - `settings.values`: `player_id \0 key` (`player_id` empty for GLOBAL) → [`StoredValue`].
//!   A Reset keeps the record with no value so the version never goes back.
//!
//! A changed schema does not rewrite stored values (that would be an unbounded write over
//! every player): values are checked against the current schema when read, and one that no
//! longer fits reads as the default (`is_default`) until set again. Should a later schema
//! accept it again, it reads again; Reset removes it for good.

use aicore_proto::aicore::common::v1::{Value, value::Kind};
use aicore_proto::aicore::settings::v1::{
    DefineSchemaRequest, DefineSchemaResponse, GetRequest, GetResponse, ListRequest, ListResponse,
    ListSchemasRequest, ListSchemasResponse, ResetRequest, ResetResponse, Schema, Scope,
    SetRequest, SetResponse, Setting, SettingType, SettingsHandler,
};
pub use aicore_proto::internal::settings::StoredValue;
use aicore_proto::{Code, Metadata, Request, Status};

use aicore_runtime::store::Tx;
use aicore_runtime::{Ctx, paging, validate};

mod checks;
mod schemas;

use checks::*;

const SCHEMAS: &str = "settings.schemas";
const VALUES: &str = "settings.values";

/// Longest key the contract allows (`Schema.key`: 1–128 characters).
const CONTRACT_MAX_KEY_CHARS: usize = 128;
/// Roles that may write GLOBAL settings, schemas and any player's settings.
const PRIVILEGED: &[&str] = &["admin", "service"];

/// Configuration of settings (`[domains.settings]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsConfig {
    /// Longest setting key in characters; at most 128 (the contract's limit), larger is
    /// capped.
    pub max_key_chars: usize,
    /// Longest STRING value, ENUM allowed value or default, in bytes.
    pub max_string_bytes: usize,
    /// Longest schema description, in bytes.
    pub max_description_bytes: usize,
    /// Most allowed values of one ENUM schema.
    pub max_enum_values: usize,
    /// Page size of List and ListSchemas when the request asks for none.
    pub default_page_size: u32,
    /// Largest page of List and ListSchemas; larger requests are capped to it.
    pub max_page_size: u32,
}

impl Default for SettingsConfig {
    fn default() -> Self {
        SettingsConfig {
            max_key_chars: CONTRACT_MAX_KEY_CHARS,
            max_string_bytes: 4096,
            max_description_bytes: 1024,
            max_enum_values: 256,
            default_page_size: 100,
            max_page_size: 500,
        }
    }
}

/// The settings domain.
pub struct Settings {
    ctx: Ctx,
    config: SettingsConfig,
}

impl aicore_runtime::Domain for Settings {
    type Config = SettingsConfig;

    fn build(
        ctx: &Ctx,
        config: &SettingsConfig,
    ) -> Result<std::sync::Arc<dyn aicore_proto::Dispatch>, Status> {
        Ok(std::sync::Arc::new(
            aicore_proto::aicore::settings::v1::SettingsServer(std::sync::Arc::new(Settings::new(
                ctx.clone(),
                config.clone(),
            ))),
        ))
    }
}

// Page tokens are opaque to clients: base64url of a one-byte kind tag and the next key,
// so a token of one RPC is refused by another.
const LIST_TOKEN: u8 = b'L';
const SCHEMAS_TOKEN: u8 = b'S';

/// The key a page starts at: the token's key, which must lie under `prefix`.
fn decode_token(kind: u8, token: &str, prefix: &str) -> Result<String, Status> {
    let key =
        String::from_utf8(paging::decode_token(kind, token)?).map_err(|_| paging::bad_token())?;
    if key.starts_with(prefix) {
        Ok(key)
    } else {
        Err(paging::bad_token())
    }
}

impl Settings {
    /// The domain on a context.
    pub fn new(ctx: Ctx, config: SettingsConfig) -> Self {
        Settings { ctx, config }
    }

    fn config(&self) -> &SettingsConfig {
        &self.config
    }

    fn check_key(&self, key: &str) -> Result<(), Status> {
        let max = self.config().max_key_chars.min(CONTRACT_MAX_KEY_CHARS);
        if key.is_empty() || key.chars().count() > max {
            return Err(Status::invalid(
                "key",
                format!("must be 1 to {max} characters"),
            ));
        }
        if !key.chars().all(key_char) {
            return Err(Status::invalid("key", "may only contain `a-z 0-9 _ . -`"));
        }
        if key.split('.').any(str::is_empty) {
            return Err(Status::invalid(
                "key",
                "must be dot-separated words (no leading, trailing or double dots)",
            ));
        }
        Ok(())
    }

    fn check_prefix(&self, prefix: &str) -> Result<(), Status> {
        let max = self.config().max_key_chars.min(CONTRACT_MAX_KEY_CHARS);
        if prefix.chars().count() > max || !prefix.chars().all(key_char) {
            return Err(Status::invalid(
                "prefix",
                format!("must be at most {max} characters of `a-z 0-9 _ . -`"),
            ));
        }
        Ok(())
    }

    fn page_size(&self, requested: i32) -> Result<usize, Status> {
        let c = self.config();
        paging::page_size(requested, c.default_page_size, c.max_page_size)
    }
}

impl SettingsHandler for Settings {
    async fn get(&self, request: Request<GetRequest>) -> Result<GetResponse, Status> {
        let Request { body: req, meta } = request;
        let target = Target::parse(req.scope, req.player_id)?;
        self.check_key(&req.key)?;
        target.authorize_read(&meta)?;
        let store = &self.ctx.store;
        let schema = store
            .get_msg_cached::<Schema>(SCHEMAS, req.key.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no schema for the key `{}`", req.key)))?;
        target.check_allowed(&schema)?;
        let stored = store.get_msg_cached::<StoredValue>(VALUES, &target.value_key(&req.key))?;
        Ok(GetResponse {
            setting: Some(target.setting(&schema, stored, self.config())),
        })
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<SetResponse, Status> {
        let Request { body: req, meta } = request;
        let target = Target::parse(req.scope, req.player_id)?;
        self.check_key(&req.key)?;
        target.authorize_write(&meta)?;
        let config = self.config().clone();
        let now = self.ctx.now_ts();
        let (key, value, expected) = (req.key, req.value, req.expected_version);
        self.ctx
            .store
            .write(move |tx| {
                let schema = target.schema_in(tx, &key)?;
                check_value(&schema, value.as_ref(), "value", &config)?;
                let vkey = target.value_key(&key);
                let current = tx
                    .get_msg::<StoredValue>(VALUES, &vkey)?
                    .unwrap_or_default();
                validate::expected_version(expected, current.version, "setting")?;
                let stored = StoredValue {
                    value,
                    version: current.version + 1,
                    updated_at: Some(now),
                };
                tx.put_msg(VALUES, &vkey, &stored);
                Ok(SetResponse {
                    setting: Some(target.setting(&schema, Some(stored), &config)),
                })
            })
            .await
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<ListResponse, Status> {
        let Request { body: req, meta } = request;
        let target = Target::parse(req.scope, req.player_id)?;
        self.check_prefix(&req.prefix)?;
        let limit = self.page_size(req.page_size)?;
        target.authorize_read(&meta)?;
        let store = &self.ctx.store;
        let mut from = if req.page_token.is_empty() {
            req.prefix.clone()
        } else {
            decode_token(LIST_TOKEN, &req.page_token, &req.prefix)?
        }
        .into_bytes();
        // Schemas of the other scope are skipped, so scan until a page (plus one, to know
        // whether another follows) is full or the prefix is exhausted.
        let mut schemas = Vec::with_capacity(limit + 1);
        while schemas.len() <= limit {
            let rows = store.scan(SCHEMAS, req.prefix.as_bytes(), &from, limit + 1)?;
            let exhausted = rows.len() <= limit;
            for (k, v) in rows {
                let schema: Schema = aicore_runtime::store::decode(SCHEMAS, v)?;
                if schema.scopes.contains(&(target.scope as i32)) && schemas.len() <= limit {
                    schemas.push(schema);
                }
                from = k;
                from.push(0);
            }
            if exhausted {
                break;
            }
        }
        let next_page_token = paging::next_token(&mut schemas, limit, LIST_TOKEN, |s| {
            Some(s.key.as_bytes().to_vec())
        });
        let settings = schemas
            .iter()
            .map(|schema| {
                let stored =
                    store.get_msg::<StoredValue>(VALUES, &target.value_key(&schema.key))?;
                Ok(target.setting(schema, stored, self.config()))
            })
            .collect::<Result<_, Status>>()?;
        Ok(ListResponse {
            settings,
            next_page_token,
        })
    }

    async fn reset(&self, request: Request<ResetRequest>) -> Result<ResetResponse, Status> {
        let Request { body: req, meta } = request;
        let target = Target::parse(req.scope, req.player_id)?;
        self.check_key(&req.key)?;
        target.authorize_write(&meta)?;
        let config = self.config().clone();
        let now = self.ctx.now_ts();
        let (key, expected) = (req.key, req.expected_version);
        self.ctx
            .store
            .write(move |tx| {
                let schema = target.schema_in(tx, &key)?;
                let vkey = target.value_key(&key);
                let current = tx.get_msg::<StoredValue>(VALUES, &vkey)?;
                let version = current.as_ref().map_or(0, |c| c.version);
                validate::expected_version(expected, version, "setting")?;
                let stored = match current {
                    // Nothing stored: already the default, nothing changes.
                    None | Some(StoredValue { value: None, .. }) => current,
                    Some(_) => {
                        let reset = StoredValue {
                            value: None,
                            version: version + 1,
                            updated_at: Some(now),
                        };
                        tx.put_msg(VALUES, &vkey, &reset);
                        Some(reset)
                    }
                };
                Ok(ResetResponse {
                    setting: Some(target.setting(&schema, stored, &config)),
                })
            })
            .await
    }

    async fn define_schema(
        &self,
        request: Request<DefineSchemaRequest>,
    ) -> Result<DefineSchemaResponse, Status> {
        let req = request.body;
        let expected = req.expected_version;
        let mut schema = self.schema_of(req)?;
        let now = self.ctx.now_ts();
        self.ctx
            .store
            .write(move |tx| {
                let existing = tx.get_msg::<Schema>(SCHEMAS, schema.key.as_bytes())?;
                let version = existing.as_ref().map_or(0, |e| e.version);
                validate::expected_version(expected, version, "schema")?;
                if let Some(e) = existing {
                    if e.r#type != schema.r#type {
                        return Err(Status::new(
                            Code::FailedPrecondition,
                            format!(
                                "the key `{}` is a {}; its type cannot change",
                                e.key,
                                SettingType::try_from(e.r#type)
                                    .unwrap_or(SettingType::Unspecified)
                                    .as_str_name()
                            ),
                        ));
                    }
                    let unchanged = Schema {
                        version: 0,
                        updated_at: None,
                        ..e.clone()
                    };
                    if unchanged == schema {
                        return Ok(DefineSchemaResponse { schema: Some(e) });
                    }
                }
                schema.version = version + 1;
                schema.updated_at = Some(now);
                tx.put_msg(SCHEMAS, schema.key.as_bytes(), &schema);
                Ok(DefineSchemaResponse {
                    schema: Some(schema),
                })
            })
            .await
    }

    async fn list_schemas(
        &self,
        request: Request<ListSchemasRequest>,
    ) -> Result<ListSchemasResponse, Status> {
        let req = request.body;
        self.check_prefix(&req.prefix)?;
        let limit = self.page_size(req.page_size)?;
        let from = if req.page_token.is_empty() {
            req.prefix.clone()
        } else {
            decode_token(SCHEMAS_TOKEN, &req.page_token, &req.prefix)?
        };
        let rows =
            self.ctx
                .store
                .scan(SCHEMAS, req.prefix.as_bytes(), from.as_bytes(), limit + 1)?;
        let mut schemas = rows
            .into_iter()
            .map(|(_, v)| aicore_runtime::store::decode::<Schema>(SCHEMAS, v))
            .collect::<Result<Vec<_>, Status>>()?;
        let next_page_token = paging::next_token(&mut schemas, limit, SCHEMAS_TOKEN, |s| {
            Some(s.key.as_bytes().to_vec())
        });
        Ok(ListSchemasResponse {
            schemas,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests;
