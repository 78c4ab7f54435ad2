//! Where a request applies and what it may write: the [`Target`] of a call (a scope and,
//! for PLAYER, the player; who may read and write it; the row it names) and the checks of a
//! value against its schema and of a version against the caller's expectation.

use super::*;

/// Where a request reads or writes: a scope and, for PLAYER, the player.
pub(super) struct Target {
    pub(super) scope: Scope,
    pub(super) player_id: String,
}

impl Target {
    pub(super) fn parse(scope: i32, player_id: String) -> Result<Target, Status> {
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

    pub(super) fn authorize_read(&self, meta: &Metadata) -> Result<(), Status> {
        match self.scope {
            Scope::Player => meta.authorize_owner(&self.player_id, PRIVILEGED),
            _ => Ok(()),
        }
    }

    pub(super) fn authorize_write(&self, meta: &Metadata) -> Result<(), Status> {
        match self.scope {
            Scope::Player => meta.authorize_owner(&self.player_id, PRIVILEGED),
            _ => meta.authorize_roles(PRIVILEGED),
        }
    }

    pub(super) fn value_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.player_id.len() + 1 + key.len());
        k.extend_from_slice(self.player_id.as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }

    pub(super) fn check_allowed(&self, schema: &Schema) -> Result<(), Status> {
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
    /// The schema of `key` read in a write, checked to allow this target's scope (read in
    /// the transaction so a concurrent redefinition cannot slip a value past the rules it
    /// is stored under).
    pub(super) fn schema_in(&self, tx: &Tx<'_>, key: &str) -> Result<Schema, Status> {
        let schema = tx
            .get_msg::<Schema>(SCHEMAS, key.as_bytes())?
            .ok_or_else(|| Status::not_found(format!("no schema for the key `{key}`")))?;
        self.check_allowed(&schema)?;
        Ok(schema)
    }

    pub(super) fn setting(
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

pub(super) fn key_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '-')
}

/// Checks that `value` has the case the schema's type needs and satisfies its rules.
pub(super) fn check_value(
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
