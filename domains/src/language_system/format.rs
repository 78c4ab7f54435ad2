//! language-system's text machinery, free of storage: filling templates (their syntax,
//! `{name}`, `{name:number}`, `{{` for a brace, is [`aicore_runtime::template`]'s), BCP 47
//! tags and their fallback chains, and the
//! per-locale CLDR data from ICU4X (plural rules, number and date formatting). Plural
//! categories and number/date shapes come from ICU4X's compiled CLDR data, never from a
//! table written here; what is ours is the template syntax and how an argument is checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aicore_proto::aicore::language_system::v1::{Argument, argument};
use icu_datetime::DateTimeFormatter;
use icu_datetime::fieldsets::{YMD, YMDT};
use icu_datetime::input::{Date, DateTime, Time};
use icu_decimal::DecimalFormatter;
use icu_decimal::input::{Decimal, FloatPrecision};
use icu_locale_core::Locale;
use icu_plurals::{PluralCategory, PluralRules};

pub use aicore_runtime::template::{Kind, Segment, is_name, parse, placeholders};

/// Parses and canonicalises a BCP 47 tag (`fr-ca` → `fr-CA`); `None` when it is not one.
pub fn canonical_tag(tag: &str) -> Option<String> {
    if tag.is_empty() || tag.len() > 64 {
        return None;
    }
    Locale::try_from_str(tag).ok().map(|l| l.to_string())
}

/// The fallback chain of a canonical tag: itself, then `configured` (if any) or the tag
/// with its variants, region and script dropped in turn, then `default`, without repeats.
pub fn chain(tag: &str, configured: Option<&[String]>, default: &str) -> Vec<String> {
    let mut out = vec![tag.to_string()];
    let mut push = |t: String| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    match configured {
        Some(list) => list.iter().for_each(|t| push(t.clone())),
        None => {
            if let Ok(locale) = Locale::try_from_str(tag) {
                let mut id = locale.id;
                if !id.variants.is_empty() {
                    id.variants = Default::default();
                    push(id.to_string());
                }
                if id.region.take().is_some() {
                    push(id.to_string());
                }
                if id.script.take().is_some() {
                    push(id.to_string());
                }
            }
        }
    }
    push(default.to_string());
    out
}

/// The CLDR name of a plural category.
pub fn category_name(c: PluralCategory) -> &'static str {
    match c {
        PluralCategory::Zero => "zero",
        PluralCategory::One => "one",
        PluralCategory::Two => "two",
        PluralCategory::Few => "few",
        PluralCategory::Many => "many",
        PluralCategory::Other => "other",
    }
}

/// One locale's CLDR data: plural rules and number and date formatters.
pub struct LocaleData {
    plurals: PluralRules,
    decimal: DecimalFormatter,
    date: DateTimeFormatter<YMD>,
    datetime: DateTimeFormatter<YMDT>,
}

impl LocaleData {
    fn load(tag: &str) -> Result<LocaleData, String> {
        let locale = Locale::try_from_str(tag).map_err(|e| format!("{tag}: {e}"))?;
        let plurals =
            PluralRules::try_new_cardinal((&locale).into()).map_err(|e| format!("{tag}: {e}"))?;
        let decimal = DecimalFormatter::try_new((&locale).into(), Default::default())
            .map_err(|e| format!("{tag}: {e}"))?;
        let date = DateTimeFormatter::try_new((&locale).into(), YMD::medium())
            .map_err(|e| format!("{tag}: {e}"))?;
        let datetime = DateTimeFormatter::try_new((&locale).into(), YMD::medium().with_time_hm())
            .map_err(|e| format!("{tag}: {e}"))?;
        Ok(LocaleData {
            plurals,
            decimal,
            date,
            datetime,
        })
    }

    /// The plural category of `n` (cardinal).
    pub fn plural(&self, n: i64) -> PluralCategory {
        self.plurals.category_for(n)
    }

    /// The plural categories the locale uses (always including `other`).
    pub fn categories(&self) -> impl Iterator<Item = PluralCategory> + '_ {
        self.plurals.categories()
    }

    /// An integer formatted per locale.
    pub fn integer(&self, n: i64) -> String {
        self.decimal.format(&Decimal::from(n)).to_string()
    }

    /// A number formatted per locale with the decimals it needs; `None` when not finite.
    pub fn number(&self, x: f64) -> Option<String> {
        let d = Decimal::try_from_f64(x, FloatPrecision::RoundTrip).ok()?;
        Some(self.decimal.format(&d).to_string())
    }

    /// A UTC time formatted per locale, as a date or a date and time; `None` out of range.
    pub fn time(&self, t: &prost_types::Timestamp, with_time: bool) -> Option<String> {
        let odt = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
        let date = Date::try_new_iso(odt.year(), odt.month() as u8, odt.day()).ok()?;
        Some(if with_time {
            let time = Time::try_new(odt.hour(), odt.minute(), odt.second(), 0).ok()?;
            self.datetime.format(&DateTime { date, time }).to_string()
        } else {
            self.date.format(&date).to_string()
        })
    }
}

/// The CLDR data of the locales in use, loaded once each. Tags come from the stored
/// tables (canonical, validated), so the set stays as small as the locales with strings.
#[derive(Default)]
pub struct LocaleCache(Mutex<HashMap<String, Arc<LocaleData>>>);

impl LocaleCache {
    /// The data of canonical tag `tag`.
    pub fn get(&self, tag: &str) -> Result<Arc<LocaleData>, String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(tag) {
            return Ok(d.clone());
        }
        let d = Arc::new(LocaleData::load(tag)?);
        map.insert(tag.to_string(), d.clone());
        Ok(d)
    }
}

/// Why a template could not be filled; the caller names the field.
#[derive(Debug, PartialEq)]
pub enum FillError {
    /// No value for this placeholder.
    Missing(String),
    /// The value does not have the type the placeholder declares (name, what it wants).
    WrongType(String, &'static str),
    /// The value cannot be formatted (a non-finite number, a time out of range).
    Unformattable(String),
}

/// Fills `segments` with `args` (and `count`, which `{count}` shows unless an argument
/// named `count` is given), formatting per `data`.
pub fn fill(
    segments: &[Segment],
    args: &std::collections::HashMap<String, Argument>,
    count: Option<i64>,
    data: &LocaleData,
) -> Result<String, FillError> {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Literal(t) => out.push_str(t),
            Segment::Placeholder { name, kind } => {
                let value = match args.get(name).and_then(|a| a.value.as_ref()) {
                    Some(v) => v.clone(),
                    None if name == "count" && count.is_some() => {
                        argument::Value::Integer(count.unwrap_or_default())
                    }
                    None => return Err(FillError::Missing(name.clone())),
                };
                out.push_str(&format_value(name, *kind, &value, data)?);
            }
        }
    }
    Ok(out)
}

fn format_value(
    name: &str,
    kind: Option<Kind>,
    value: &argument::Value,
    data: &LocaleData,
) -> Result<String, FillError> {
    use argument::Value as V;
    let wrong = |k: Kind| FillError::WrongType(name.to_string(), k.name());
    let bad = || FillError::Unformattable(name.to_string());
    match (value, kind) {
        (V::Text(t), None | Some(Kind::Text)) => Ok(t.clone()),
        (V::Integer(n), None | Some(Kind::Number)) => Ok(data.integer(*n)),
        (V::Number(x), None | Some(Kind::Number)) => data.number(*x).ok_or_else(bad),
        (V::Time(t), None | Some(Kind::Date)) => data.time(t, false).ok_or_else(bad),
        (V::Time(t), Some(Kind::DateTime)) => data.time(t, true).ok_or_else(bad),
        (_, Some(k)) => Err(wrong(k)),
    }
}
