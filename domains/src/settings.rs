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
use aicore_proto::{Code, Metadata, Request, Status};

use aicore_runtime::{Ctx, paging, validate};

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

/// The stored value of one key in one scope (value of `settings.values`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredValue {
    /// The value; absent after a Reset.
    #[prost(message, optional, tag = "1")]
    pub value: Option<Value>,
    /// Writes (Set and Reset) so far.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Time of the last write.
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<prost_types::Timestamp>,
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

/// Where a request reads or writes: a scope and, for PLAYER, the player.
struct Target {
    scope: Scope,
    player_id: String,
}

impl Target {
    fn parse(scope: i32, player_id: String) -> Result<Target, Status> {
        let scope = match Scope::try_from(scope) {
            Ok(s @ (Scope::Global | Scope::Player)) => s,
            _ => {
                return Err(Status::invalid(
                    "scope",
                    "must be SCOPE_GLOBAL or SCOPE_PLAYER",
                ));
            }
        };
        match scope {
            Scope::Player => validate::player_id(&player_id, "player_id")?,
            _ if !player_id.is_empty() => {
                return Err(Status::invalid(
                    "player_id",
                    "must be empty for SCOPE_GLOBAL",
                ));
            }
            _ => {}
        }
        Ok(Target { scope, player_id })
    }

    fn authorize_read(&self, meta: &Metadata) -> Result<(), Status> {
        match self.scope {
            Scope::Player => meta.authorize_owner(&self.player_id, PRIVILEGED),
            _ => Ok(()),
        }
    }

    fn authorize_write(&self, meta: &Metadata) -> Result<(), Status> {
        match self.scope {
            Scope::Player => meta.authorize_owner(&self.player_id, PRIVILEGED),
            _ => meta.authorize_roles(PRIVILEGED),
        }
    }

    fn value_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.player_id.len() + 1 + key.len());
        k.extend_from_slice(self.player_id.as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }

    fn check_allowed(&self, schema: &Schema) -> Result<(), Status> {
        if schema.scopes.contains(&(self.scope as i32)) {
            Ok(())
        } else {
            Err(Status::invalid(
                "scope",
                format!(
                    "the key `{}` may not be stored in {}",
                    schema.key,
                    self.scope.as_str_name()
                ),
            ))
        }
    }

    /// The effective setting: the stored value if it satisfies the schema, else the default.
    fn setting(
        &self,
        schema: &Schema,
        stored: Option<StoredValue>,
        config: &SettingsConfig,
    ) -> Setting {
        let stored = stored.unwrap_or_default();
        let valid = stored
            .value
            .as_ref()
            .filter(|v| check_value(schema, Some(v), "value", config).is_ok());
        Setting {
            key: schema.key.clone(),
            scope: self.scope as i32,
            player_id: self.player_id.clone(),
            is_default: valid.is_none(),
            value: valid.cloned().or_else(|| schema.default_value.clone()),
            version: stored.version,
            updated_at: stored.updated_at,
        }
    }
}

fn key_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-')
}

/// Checks that `value` has the case the schema's type needs and satisfies its rules.
fn check_value(
    schema: &Schema,
    value: Option<&Value>,
    field: &str,
    config: &SettingsConfig,
) -> Result<(), Status> {
    let ty = SettingType::try_from(schema.r#type).unwrap_or(SettingType::Unspecified);
    let Some(kind) = value.and_then(|v| v.kind.as_ref()) else {
        return Err(Status::invalid(field, "is required"));
    };
    let in_range = |x: f64| {
        if let Some(min) = schema.min
            && x < min
        {
            return Err(Status::invalid(field, format!("must be at least {min}")));
        }
        if let Some(max) = schema.max
            && x > max
        {
            return Err(Status::invalid(field, format!("must be at most {max}")));
        }
        Ok(())
    };
    match (ty, kind) {
        (SettingType::Bool, Kind::BoolValue(_)) => Ok(()),
        (SettingType::Int, Kind::IntValue(i)) => in_range(*i as f64),
        (SettingType::Float, Kind::FloatValue(f)) if !f.is_finite() => {
            Err(Status::invalid(field, "must be a finite number"))
        }
        (SettingType::Float, Kind::FloatValue(f)) => in_range(*f),
        (SettingType::String, Kind::StringValue(s)) if s.len() > config.max_string_bytes => {
            Err(Status::invalid(
                field,
                format!("must be at most {} bytes", config.max_string_bytes),
            ))
        }
        (SettingType::String, Kind::StringValue(_)) => Ok(()),
        (SettingType::Enum, Kind::StringValue(s)) if schema.allowed_values.contains(s) => Ok(()),
        (SettingType::Enum, Kind::StringValue(_)) => Err(Status::invalid(
            field,
            format!("must be one of {:?}", schema.allowed_values),
        )),
        _ => {
            let case = match ty {
                SettingType::Bool => "bool_value",
                SettingType::Int => "int_value",
                SettingType::Float => "float_value",
                _ => "string_value",
            };
            Err(Status::invalid(
                field,
                format!("a {} setting takes `{case}`", ty.as_str_name()),
            ))
        }
    }
}

/// Checks that a version counter is at `expected` (if given); 0 means never written.
fn check_expected(current: u64, expected: Option<u64>, what: &str) -> Result<(), Status> {
    match expected {
        Some(n) if n != current => Err(Status::conflict(format!(
            "the {what} is at version {current}, not the expected {n}"
        ))),
        _ => Ok(()),
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

    /// Validates a DefineSchema request into the schema it defines (version and time unset).
    fn schema_of(&self, req: DefineSchemaRequest) -> Result<Schema, Status> {
        let c = self.config();
        self.check_key(&req.key)?;
        let ty = match SettingType::try_from(req.r#type) {
            Ok(SettingType::Unspecified) | Err(_) => {
                return Err(Status::invalid(
                    "type",
                    "must be a SETTING_TYPE_* other than UNSPECIFIED",
                ));
            }
            Ok(t) => t,
        };
        if req.description.len() > c.max_description_bytes {
            return Err(Status::invalid(
                "description",
                format!("must be at most {} bytes", c.max_description_bytes),
            ));
        }
        let numeric = matches!(ty, SettingType::Int | SettingType::Float);
        for (field, bound) in [("min", req.min), ("max", req.max)] {
            match bound {
                Some(_) if !numeric => {
                    return Err(Status::invalid(
                        field,
                        "applies to INT and FLOAT settings only",
                    ));
                }
                Some(b) if !b.is_finite() => {
                    return Err(Status::invalid(field, "must be a finite number"));
                }
                _ => {}
            }
        }
        if let (Some(min), Some(max)) = (req.min, req.max)
            && max < min
        {
            return Err(Status::invalid("max", "must be at least `min`"));
        }
        if ty == SettingType::Enum {
            if req.allowed_values.is_empty() || req.allowed_values.len() > c.max_enum_values {
                return Err(Status::invalid(
                    "allowed_values",
                    format!("an ENUM needs 1 to {} allowed values", c.max_enum_values),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for v in &req.allowed_values {
                if v.is_empty() || v.len() > c.max_string_bytes {
                    return Err(Status::invalid(
                        "allowed_values",
                        format!("each must be 1 to {} bytes", c.max_string_bytes),
                    ));
                }
                if !seen.insert(v) {
                    return Err(Status::invalid(
                        "allowed_values",
                        format!("`{v}` appears twice"),
                    ));
                }
            }
        } else if !req.allowed_values.is_empty() {
            return Err(Status::invalid(
                "allowed_values",
                "applies to ENUM settings only",
            ));
        }
        let mut scopes = req.scopes;
        if scopes.is_empty()
            || scopes
                .iter()
                .any(|s| !matches!(Scope::try_from(*s), Ok(Scope::Global | Scope::Player)))
        {
            return Err(Status::invalid(
                "scopes",
                "needs at least one of SCOPE_GLOBAL and SCOPE_PLAYER, and nothing else",
            ));
        }
        scopes.sort_unstable();
        scopes.dedup();
        let schema = Schema {
            key: req.key,
            r#type: ty as i32,
            description: req.description,
            default_value: req.default_value,
            min: req.min,
            max: req.max,
            allowed_values: req.allowed_values,
            scopes,
            version: 0,
            updated_at: None,
        };
        check_value(&schema, schema.default_value.as_ref(), "default_value", c)?;
        Ok(schema)
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
                // The schema is read in the transaction so a concurrent redefinition cannot
                // slip a value past the rules it is stored under.
                let schema = tx
                    .get_msg::<Schema>(SCHEMAS, key.as_bytes())?
                    .ok_or_else(|| Status::not_found(format!("no schema for the key `{key}`")))?;
                target.check_allowed(&schema)?;
                check_value(&schema, value.as_ref(), "value", &config)?;
                let vkey = target.value_key(&key);
                let current = tx
                    .get_msg::<StoredValue>(VALUES, &vkey)?
                    .unwrap_or_default();
                check_expected(current.version, expected, "setting")?;
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
                let schema = tx
                    .get_msg::<Schema>(SCHEMAS, key.as_bytes())?
                    .ok_or_else(|| Status::not_found(format!("no schema for the key `{key}`")))?;
                target.check_allowed(&schema)?;
                let vkey = target.value_key(&key);
                let current = tx.get_msg::<StoredValue>(VALUES, &vkey)?;
                let version = current.as_ref().map_or(0, |c| c.version);
                check_expected(version, expected, "setting")?;
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
                check_expected(version, expected, "schema")?;
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
mod tests {

    use super::*;

    fn domain() -> Settings {
        Settings::new(Ctx::for_tests().0, SettingsConfig::default())
    }

    fn trusted<T>(body: T) -> Request<T> {
        Request::new(body)
    }

    fn as_player<T>(player: &str, body: T) -> Request<T> {
        Request::new(body).on_behalf_of(player, &["player"])
    }

    fn v(kind: Kind) -> Option<Value> {
        Some(Value { kind: Some(kind) })
    }

    fn schema(key: &str, ty: SettingType, default: Kind) -> DefineSchemaRequest {
        DefineSchemaRequest {
            key: key.into(),
            r#type: ty as i32,
            default_value: v(default),
            scopes: vec![Scope::Global as i32, Scope::Player as i32],
            ..Default::default()
        }
    }

    /// Defines one schema per type: `b` bool, `i` int in [0, 10], `f` float in [0, 1],
    /// `s` string, `e` enum of low/high.
    async fn with_schemas() -> Settings {
        let s = domain();
        let mut int = schema("audio.i", SettingType::Int, Kind::IntValue(5));
        (int.min, int.max) = (Some(0.0), Some(10.0));
        let mut float = schema("audio.f", SettingType::Float, Kind::FloatValue(0.5));
        (float.min, float.max) = (Some(0.0), Some(1.0));
        let mut en = schema("gfx.e", SettingType::Enum, Kind::StringValue("low".into()));
        en.allowed_values = vec!["low".into(), "high".into()];
        for req in [
            schema("audio.b", SettingType::Bool, Kind::BoolValue(true)),
            int,
            float,
            schema("ui.s", SettingType::String, Kind::StringValue("en".into())),
            en,
        ] {
            let r = s.define_schema(trusted(req)).await.unwrap();
            assert_eq!(r.schema.unwrap().version, 1);
        }
        s
    }

    fn set_req(scope: Scope, player: &str, key: &str, value: Kind) -> SetRequest {
        SetRequest {
            scope: scope as i32,
            player_id: player.into(),
            key: key.into(),
            value: v(value),
            expected_version: None,
        }
    }

    async fn get(s: &Settings, scope: Scope, player: &str, key: &str) -> Result<Setting, Status> {
        let r = s
            .get(trusted(GetRequest {
                scope: scope as i32,
                player_id: player.into(),
                key: key.into(),
            }))
            .await?;
        Ok(r.setting.unwrap_or_default())
    }

    async fn set(s: &Settings, key: &str, value: Kind) -> Result<Setting, Status> {
        let r = s
            .set(trusted(set_req(Scope::Global, "", key, value)))
            .await?;
        Ok(r.setting.unwrap_or_default())
    }

    #[tokio::test]
    async fn typed_values_are_set_and_read_back() {
        let s = with_schemas().await;
        let d = get(&s, Scope::Global, "", "audio.i").await.unwrap();
        assert_eq!(
            (d.value.clone(), d.is_default, d.version),
            (v(Kind::IntValue(5)), true, 0)
        );
        assert!(d.updated_at.is_none());
        for (key, value) in [
            ("audio.b", Kind::BoolValue(false)),
            ("audio.i", Kind::IntValue(10)),
            ("audio.f", Kind::FloatValue(0.25)),
            ("ui.s", Kind::StringValue("fr".into())),
            ("gfx.e", Kind::StringValue("high".into())),
        ] {
            let w = set(&s, key, value.clone()).await.unwrap();
            assert_eq!((w.version, w.is_default), (1, false));
            let r = get(&s, Scope::Global, "", key).await.unwrap();
            assert_eq!(r.value, v(value));
            assert!(!r.is_default && r.version == 1 && r.updated_at.is_some());
        }
        assert_eq!(
            set(&s, "audio.i", Kind::IntValue(0)).await.unwrap().version,
            2
        );
    }

    #[tokio::test]
    async fn wrong_type_range_and_enum_violations_name_value_and_write_nothing() {
        let s = with_schemas().await;
        for (key, bad) in [
            ("audio.b", Kind::IntValue(1)),
            ("audio.i", Kind::FloatValue(1.0)),
            ("audio.i", Kind::IntValue(11)),
            ("audio.i", Kind::IntValue(-1)),
            ("audio.f", Kind::StringValue("0.5".into())),
            ("audio.f", Kind::FloatValue(1.5)),
            ("audio.f", Kind::FloatValue(f64::NAN)),
            ("ui.s", Kind::BoolValue(true)),
            ("ui.s", Kind::StringValue("x".repeat(4097))),
            ("gfx.e", Kind::StringValue("ultra".into())),
            ("gfx.e", Kind::IntValue(0)),
        ] {
            let e = set(&s, key, bad.clone()).await.unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{key} {bad:?}");
            assert_eq!(e.field_violations[0].field, "value", "{key} {bad:?}");
            let r = get(&s, Scope::Global, "", key).await.unwrap();
            assert!(r.is_default && r.version == 0, "{key} {bad:?} was written");
        }
        let mut missing = set_req(Scope::Global, "", "audio.b", Kind::BoolValue(true));
        missing.value = None;
        let e = s.set(trusted(missing)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "value");
    }

    #[tokio::test]
    async fn unknown_keys_and_bad_keys_are_refused() {
        let s = with_schemas().await;
        assert_eq!(
            get(&s, Scope::Global, "", "no.such")
                .await
                .unwrap_err()
                .code,
            Code::NotFound
        );
        assert_eq!(
            set(&s, "no.such", Kind::BoolValue(true))
                .await
                .unwrap_err()
                .code,
            Code::NotFound
        );
        for bad in ["", "Audio.b", "a..b", ".a", "a b", &"a".repeat(129)] {
            let e = get(&s, Scope::Global, "", bad).await.unwrap_err();
            assert_eq!(e.field_violations[0].field, "key", "{bad:?}");
        }
        let e = get(&s, Scope::Unspecified, "", "audio.b")
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "scope");
        let e = get(&s, Scope::Player, "", "audio.b").await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "player_id");
        let e = get(&s, Scope::Global, "p1", "audio.b").await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "player_id");
    }

    #[tokio::test]
    async fn expected_version_mismatch_conflicts() {
        let s = with_schemas().await;
        let mut req = set_req(Scope::Global, "", "audio.i", Kind::IntValue(1));
        req.expected_version = Some(0);
        assert_eq!(
            s.set(trusted(req.clone()))
                .await
                .unwrap()
                .setting
                .unwrap()
                .version,
            1
        );
        let e = s.set(trusted(req.clone())).await.unwrap_err();
        assert_eq!(e.code, Code::Conflict);
        req.expected_version = Some(1);
        req.value = v(Kind::IntValue(2));
        assert_eq!(
            s.set(trusted(req.clone()))
                .await
                .unwrap()
                .setting
                .unwrap()
                .version,
            2
        );
        req.value = v(Kind::IntValue(3));
        assert_eq!(s.set(trusted(req)).await.unwrap_err().code, Code::Conflict);
        assert_eq!(
            get(&s, Scope::Global, "", "audio.i").await.unwrap().value,
            v(Kind::IntValue(2))
        );
    }

    #[tokio::test]
    async fn reset_returns_to_default_and_keeps_counting_versions() {
        let s = with_schemas().await;
        set(&s, "ui.s", Kind::StringValue("fr".into()))
            .await
            .unwrap();
        let reset = |expected| {
            s.reset(trusted(ResetRequest {
                scope: Scope::Global as i32,
                player_id: String::new(),
                key: "ui.s".into(),
                expected_version: expected,
            }))
        };
        assert_eq!(reset(Some(7)).await.unwrap_err().code, Code::Conflict);
        let r = reset(Some(1)).await.unwrap().setting.unwrap();
        assert_eq!(r.value, v(Kind::StringValue("en".into())));
        assert!(r.is_default && r.version == 2);
        let g = get(&s, Scope::Global, "", "ui.s").await.unwrap();
        assert_eq!((g.value, g.is_default, g.version), (r.value, true, 2));
        // Resetting a key already at its default changes nothing.
        assert_eq!(reset(None).await.unwrap().setting.unwrap().version, 2);
        // The version never goes back.
        assert_eq!(
            set(&s, "ui.s", Kind::StringValue("de".into()))
                .await
                .unwrap()
                .version,
            3
        );
    }

    #[tokio::test]
    async fn player_and_global_scopes_are_independent() {
        let s = with_schemas().await;
        set(&s, "audio.i", Kind::IntValue(9)).await.unwrap();
        s.set(trusted(set_req(
            Scope::Player,
            "p1",
            "audio.i",
            Kind::IntValue(2),
        )))
        .await
        .unwrap();
        assert_eq!(
            get(&s, Scope::Global, "", "audio.i").await.unwrap().value,
            v(Kind::IntValue(9))
        );
        assert_eq!(
            get(&s, Scope::Player, "p1", "audio.i").await.unwrap().value,
            v(Kind::IntValue(2))
        );
        // Another player reads the schema default, not the GLOBAL value.
        let other = get(&s, Scope::Player, "p2", "audio.i").await.unwrap();
        assert_eq!(
            (other.value, other.is_default),
            (v(Kind::IntValue(5)), true)
        );
        // A key allowed only globally is refused in PLAYER scope.
        let mut global_only = schema(
            "server.motd",
            SettingType::String,
            Kind::StringValue(String::new()),
        );
        global_only.scopes = vec![Scope::Global as i32];
        s.define_schema(trusted(global_only)).await.unwrap();
        let e = s
            .set(trusted(set_req(
                Scope::Player,
                "p1",
                "server.motd",
                Kind::StringValue("hi".into()),
            )))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "scope");
    }

    #[tokio::test]
    async fn list_pages_through_effective_settings_of_a_scope() {
        let s = domain();
        let mut expected = Vec::new();
        for i in 0..12 {
            let key = format!("game.k{i:02}");
            let mut req = schema(&key, SettingType::Int, Kind::IntValue(i));
            if i % 4 == 3 {
                // Global-only keys are skipped in a PLAYER listing.
                req.scopes = vec![Scope::Global as i32];
            } else {
                expected.push(key);
            }
            s.define_schema(trusted(req)).await.unwrap();
        }
        s.define_schema(trusted(schema(
            "other.k",
            SettingType::Bool,
            Kind::BoolValue(true),
        )))
        .await
        .unwrap();
        s.set(trusted(set_req(
            Scope::Player,
            "p1",
            "game.k01",
            Kind::IntValue(100),
        )))
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = s
                .list(trusted(ListRequest {
                    scope: Scope::Player as i32,
                    player_id: "p1".into(),
                    prefix: "game.".into(),
                    page_size: 4,
                    page_token: token,
                }))
                .await
                .unwrap();
            assert!(r.settings.len() <= 4);
            for st in r.settings {
                let stored = st.key == "game.k01";
                assert_eq!(st.is_default, !stored, "{}", st.key);
                if stored {
                    assert_eq!(st.value, v(Kind::IntValue(100)));
                }
                seen.push(st.key);
            }
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, expected);
        let all = s
            .list_schemas(trusted(ListSchemasRequest {
                prefix: String::new(),
                page_size: 10,
                page_token: String::new(),
            }))
            .await
            .unwrap();
        assert_eq!(all.schemas.len(), 10);
        let rest = s
            .list_schemas(trusted(ListSchemasRequest {
                prefix: String::new(),
                page_size: 10,
                page_token: all.next_page_token,
            }))
            .await
            .unwrap();
        assert_eq!(rest.schemas.len(), 3);
        assert_eq!(rest.schemas[2].key, "other.k");
        assert!(rest.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn players_cannot_write_global_or_other_players_settings() {
        let s = with_schemas().await;
        let e = s
            .set(as_player(
                "alice",
                set_req(Scope::Global, "", "audio.i", Kind::IntValue(1)),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let e = s
            .set(as_player(
                "alice",
                set_req(Scope::Player, "bob", "audio.i", Kind::IntValue(1)),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        let e = s
            .get(as_player(
                "alice",
                GetRequest {
                    scope: Scope::Player as i32,
                    player_id: "bob".into(),
                    key: "audio.i".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        // Nothing was written; alice may set her own and read the global value.
        assert_eq!(
            get(&s, Scope::Global, "", "audio.i").await.unwrap().version,
            0
        );
        assert_eq!(
            get(&s, Scope::Player, "bob", "audio.i")
                .await
                .unwrap()
                .version,
            0
        );
        s.set(as_player(
            "alice",
            set_req(Scope::Player, "alice", "audio.i", Kind::IntValue(1)),
        ))
        .await
        .unwrap();
        let g = s
            .get(as_player(
                "alice",
                GetRequest {
                    scope: Scope::Global as i32,
                    player_id: String::new(),
                    key: "audio.i".into(),
                },
            ))
            .await
            .unwrap();
        assert!(g.setting.unwrap().is_default);
    }

    #[tokio::test]
    async fn redefining_a_schema_checks_default_type_and_revalidates_values() {
        let s = with_schemas().await;
        set(&s, "audio.i", Kind::IntValue(8)).await.unwrap();
        let mut narrower = schema("audio.i", SettingType::Int, Kind::IntValue(5));
        (narrower.min, narrower.max) = (Some(0.0), Some(6.0));
        // The new default must satisfy the new schema.
        let mut bad_default = narrower.clone();
        bad_default.default_value = v(Kind::IntValue(7));
        let e = s.define_schema(trusted(bad_default)).await.unwrap_err();
        assert_eq!(e.field_violations[0].field, "default_value");
        // The type cannot change.
        let e = s
            .define_schema(trusted(schema(
                "audio.i",
                SettingType::Float,
                Kind::FloatValue(1.0),
            )))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::FailedPrecondition);
        let mut stale = narrower.clone();
        stale.expected_version = Some(0);
        assert_eq!(
            s.define_schema(trusted(stale)).await.unwrap_err().code,
            Code::Conflict
        );
        let r = s.define_schema(trusted(narrower.clone())).await.unwrap();
        assert_eq!(r.schema.unwrap().version, 2);
        // The stored 8 no longer fits: it reads as the default until set again.
        let g = get(&s, Scope::Global, "", "audio.i").await.unwrap();
        assert_eq!(
            (g.value, g.is_default, g.version),
            (v(Kind::IntValue(5)), true, 1)
        );
        // Redefining an identical schema changes nothing.
        let r = s.define_schema(trusted(narrower)).await.unwrap();
        assert_eq!(r.schema.unwrap().version, 2);
        // Schema shape checks name their field.
        let mut e1 = schema("gfx.q", SettingType::Enum, Kind::StringValue("a".into()));
        e1.allowed_values = vec!["a".into(), "a".into()];
        let mut e2 = schema("gfx.q", SettingType::Bool, Kind::BoolValue(true));
        e2.min = Some(1.0);
        let mut e3 = schema("gfx.q", SettingType::Int, Kind::IntValue(1));
        (e3.min, e3.max) = (Some(2.0), Some(1.0));
        let mut e4 = schema("gfx.q", SettingType::Int, Kind::IntValue(1));
        e4.scopes.clear();
        let e5 = schema("gfx.q", SettingType::Unspecified, Kind::IntValue(1));
        for (req, field) in [
            (e1, "allowed_values"),
            (e2, "min"),
            (e3, "max"),
            (e4, "scopes"),
            (e5, "type"),
        ] {
            let e = s.define_schema(trusted(req)).await.unwrap_err();
            assert_eq!(e.field_violations[0].field, field);
        }
    }

    #[tokio::test]
    async fn config_limits_apply() {
        let (ctx, _) = Ctx::for_tests();
        let config = SettingsConfig {
            max_string_bytes: 4,
            ..SettingsConfig::default()
        };
        let s = Settings::new(ctx, config);
        s.define_schema(trusted(schema(
            "ui.s",
            SettingType::String,
            Kind::StringValue("ok".into()),
        )))
        .await
        .unwrap();
        let e = set(&s, "ui.s", Kind::StringValue("12345".into()))
            .await
            .unwrap_err();
        assert_eq!(e.field_violations[0].field, "value");
        set(&s, "ui.s", Kind::StringValue("1234".into()))
            .await
            .unwrap();
    }
}
