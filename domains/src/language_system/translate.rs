//! Translate's resolution of one item: the first string along the fallback chain (a
//! machine translation only when the caller allows it), its plural or select form, and
//! its `{placeholder}`s filled with the item's arguments, formatted per locale.

use aicore_proto::aicore::language_system::v1::{
    LocalizedString, TranslateItem, Translation, argument,
};
use aicore_proto::{Code, Status};

use super::check::check_key;
use super::format::{self, FillError, LocaleData, Segment};
use super::records::string_key;
use super::{LanguageSystem, STRINGS};

impl LanguageSystem {
    /// Resolves one item: the first string along the chain, its form, its arguments.
    pub(super) fn translate_one(
        &self,
        chain: &[String],
        item: &TranslateItem,
        field: &str,
        allow_machine: bool,
    ) -> Result<Translation, Status> {
        let key_field = format!("{field}.key");
        check_key(&item.key, &key_field)?;
        let (resolved, s) = self.lookup(chain, &item.key, &key_field, allow_machine)?;
        let data = self.cldr(&resolved)?;
        let (text, plural_category) = form(&s, item, field, &data)?;
        let segments: Vec<Segment> =
            format::parse(&text).map_err(|e| Status::internal(format!("stored template: {e}")))?;
        let text = format::fill(&segments, &item.args, item.count, &data)
            .map_err(|e| fill_error(e, field, &item.key))?;
        Ok(Translation {
            key: item.key.clone(),
            text,
            resolved_locale: resolved,
            machine_translated: s.machine_translated,
            plural_category,
        })
    }

    /// The first string of `key` along `chain` with the locale it was found in;
    /// NotFound naming `key_field` when no locale of the chain has it.
    fn lookup(
        &self,
        chain: &[String],
        key: &str,
        key_field: &str,
        allow_machine: bool,
    ) -> Result<(String, LocalizedString), Status> {
        let mut found = None;
        for tag in chain {
            if let Some(s) = self
                .ctx
                .store
                .get_msg_cached::<LocalizedString>(STRINGS, &string_key(tag, key))?
                && (allow_machine || !s.machine_translated)
            {
                found = Some((tag.clone(), s));
                break;
            }
        }
        let Some((resolved, s)) = found else {
            return Err(Status::with_field(
                Code::NotFound,
                key_field,
                format!("no string `{key}` in {}", chain.join(" → ")),
            ));
        };
        Ok((resolved, s))
    }
}

/// The form of `s` the item picks (by its count or its select argument) and the plural
/// category used (empty unless `s` has plural forms).
fn form(
    s: &LocalizedString,
    item: &TranslateItem,
    field: &str,
    data: &LocaleData,
) -> Result<(String, String), Status> {
    let (text, plural_category) = if !s.plural_forms.is_empty() {
        let n = item.count.ok_or_else(|| {
            Status::invalid(
                &format!("{field}.count"),
                format!("`{}` has plural forms: give a count", item.key),
            )
        })?;
        let c = format::category_name(data.plural(n));
        (
            s.plural_forms.get(c).unwrap_or(&s.text).clone(),
            c.to_string(),
        )
    } else if !s.select.is_empty() {
        let arg_field = format!("{field}.args.{}", s.select);
        let v = match item.args.get(&s.select).and_then(|a| a.value.as_ref()) {
            Some(argument::Value::Text(v)) => v,
            Some(_) => return Err(Status::invalid(&arg_field, "selects a form: must be text")),
            None => {
                return Err(Status::invalid(
                    &arg_field,
                    format!("`{}` selects its form by this argument: give it", item.key),
                ));
            }
        };
        (
            s.select_forms.get(v).unwrap_or(&s.text).clone(),
            String::new(),
        )
    } else {
        (s.text.clone(), String::new())
    };
    Ok((text, plural_category))
}

/// A failure to fill a template, as InvalidArgument naming the argument of item `field`
/// (whose key is `key`).
fn fill_error(e: FillError, field: &str, key: &str) -> Status {
    match e {
        FillError::Missing(n) => Status::invalid(
            &format!("{field}.args.{n}"),
            format!("`{key}` needs the argument `{n}`"),
        ),
        FillError::WrongType(n, want) => Status::invalid(
            &format!("{field}.args.{n}"),
            format!("`{{{n}:{want}}}` needs a {want} argument"),
        ),
        FillError::Unformattable(n) => Status::invalid(
            &format!("{field}.args.{n}"),
            "cannot be formatted (not a finite number, or a time out of range)",
        ),
    }
}
