//! The checks of language-system's input, each refusal naming the field: a string key,
//! and a string as PutStrings receives it (its forms' length and templates, plural
//! categories the locale uses, select forms). Nothing here reads or writes the store.

use aicore_proto::Status;
use aicore_proto::aicore::language_system::v1::LocalizedString;

use super::{LanguageSystem, format};

const MAX_KEY_CHARS: usize = 256;
const PLURAL_CATEGORIES: [&str; 5] = ["zero", "one", "two", "few", "many"];

pub(super) fn check_key(key: &str, field: &str) -> Result<(), Status> {
    let n = key.chars().count();
    if n == 0 || n > MAX_KEY_CHARS {
        return Err(Status::invalid(
            field,
            format!("must be 1 to {MAX_KEY_CHARS} characters"),
        ));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Every form of a stored string with the field path it came from.
fn forms<'a>(s: &'a LocalizedString, field: &str) -> Vec<(String, &'a str)> {
    let mut out = vec![(format!("{field}.text"), s.text.as_str())];
    for (c, t) in &s.plural_forms {
        out.push((format!("{field}.plural_forms.{c}"), t.as_str()));
    }
    for (v, t) in &s.select_forms {
        out.push((format!("{field}.select_forms.{v}"), t.as_str()));
    }
    out
}

impl LanguageSystem {
    /// Checks one string of a PutStrings for `locale`.
    pub(super) fn check_string(
        &self,
        s: &LocalizedString,
        field: &str,
        locale: &format::LocaleData,
    ) -> Result<(), Status> {
        check_key(&s.key, &format!("{field}.key"))?;
        for (f, text) in forms(s, field) {
            if text.chars().count() > self.config.max_text_chars {
                return Err(Status::invalid(
                    &f,
                    format!("must be at most {} characters", self.config.max_text_chars),
                ));
            }
            format::parse(text).map_err(|e| Status::invalid(&f, e))?;
        }
        let used: Vec<&str> = locale.categories().map(format::category_name).collect();
        for c in s.plural_forms.keys() {
            let f = format!("{field}.plural_forms.{c}");
            if !PLURAL_CATEGORIES.contains(&c.as_str()) {
                return Err(Status::invalid(
                    &f,
                    "must be a CLDR plural category: zero, one, two, few or many (`other` is `text`)",
                ));
            }
            if !used.contains(&c.as_str()) {
                return Err(Status::invalid(
                    &f,
                    format!("this locale's plural rules have no `{c}` (it uses {used:?})"),
                ));
            }
        }
        if s.select.is_empty() != s.select_forms.is_empty() {
            return Err(Status::invalid(
                &format!("{field}.select"),
                "`select` and `select_forms` go together",
            ));
        }
        if !s.select.is_empty() {
            if !s.plural_forms.is_empty() {
                return Err(Status::invalid(
                    &format!("{field}.select"),
                    "a string has plural forms or select forms, not both",
                ));
            }
            if !format::is_name(&s.select) {
                return Err(Status::invalid(
                    &format!("{field}.select"),
                    "must be an argument name of letters, digits and `_`",
                ));
            }
            if let Some(v) = s.select_forms.keys().find(|v| v.is_empty() || v.len() > 64) {
                return Err(Status::invalid(
                    &format!("{field}.select_forms.{v}"),
                    "a select value must be 1 to 64 bytes",
                ));
            }
        }
        Ok(())
    }
}
