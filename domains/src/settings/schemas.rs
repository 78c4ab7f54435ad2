//! DefineSchema's validation: a request into the [`Schema`] it defines, each rule naming
//! the field it checks.

use super::*;

impl Settings {
    /// Validates a DefineSchema request into the schema it defines (version and time unset).
    pub(super) fn schema_of(&self, req: DefineSchemaRequest) -> Result<Schema, Status> {
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
        check_bounds(ty, req.min, req.max)?;
        check_allowed_values(ty, &req.allowed_values, c)?;
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

/// `min` and `max`: finite, in order, and only for numeric types.
fn check_bounds(ty: SettingType, min: Option<f64>, max: Option<f64>) -> Result<(), Status> {
    let numeric = matches!(ty, SettingType::Int | SettingType::Float);
    for (field, bound) in [("min", min), ("max", max)] {
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
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        return Err(Status::invalid("max", "must be at least `min`"));
    }
    Ok(())
}

/// `allowed_values`: for ENUM only, 1 to `max_enum_values` distinct non-empty values.
fn check_allowed_values(
    ty: SettingType,
    allowed_values: &[String],
    c: &SettingsConfig,
) -> Result<(), Status> {
    if ty == SettingType::Enum {
        if allowed_values.is_empty() || allowed_values.len() > c.max_enum_values {
            return Err(Status::invalid(
                "allowed_values",
                format!("an ENUM needs 1 to {} allowed values", c.max_enum_values),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for v in allowed_values {
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
    } else if !allowed_values.is_empty() {
        return Err(Status::invalid(
            "allowed_values",
            "applies to ENUM settings only",
        ));
    }
    Ok(())
}
