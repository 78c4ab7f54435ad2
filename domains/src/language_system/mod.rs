//! language-system: localised string tables per locale, resolved through a fallback chain
//! (`fr-CA → fr → en`, configurable per locale), with CLDR plural categories, select forms
//! and typed `{placeholder}`s formatted per locale (ICU4X's compiled CLDR data; see
//! [`format`]). An unknown key or a missing argument is an error naming it, never an
//! empty string. Machine translations (MachineTranslate, through ai-integration over
//! NATS) are stored beside reviewed strings but marked, counted apart, listed by
//! MissingKeys as still missing, and used by Translate only when the caller asks.
//!
//! Tables (keys have no control characters, so `\0` separates key parts):
//! - `language_system.strings`: locale `\0` key → [`LocalizedString`] (with its
//!   `machine_translated` mark and `updated_at`).
//! - `language_system.locales`: locale → [`LocaleRow`]: version and counts, kept in the
//!   transaction that changes the locale's strings.
//!
//! Translate and the listings read committed rows (Translate through the store's cache);
//! the CLDR data of each locale is loaded once and kept ([`format::LocaleCache`]).

pub mod format;
mod machine;

pub use machine::{MachineText, OverNats, Translator};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aicore_proto::aicore::language_system::v1::{
    LanguageSystemHandler, ListLocalesRequest, ListLocalesResponse, Locale, LocalizedString,
    MachineTranslateRequest, MachineTranslateResponse, MissingKeysRequest, MissingKeysResponse,
    PutStringsRequest, PutStringsResponse, TranslateRequest, TranslateResponse, Translation,
    argument,
};
use aicore_proto::{CallOptions, Code, Metadata, Request, Status};

use aicore_runtime::{Ctx, paging};

use format::{FillError, LocaleCache, Segment};

const STRINGS: &str = "language_system.strings";
const LOCALES: &str = "language_system.locales";
const MAX_KEY_CHARS: usize = 256;
const PLURAL_CATEGORIES: [&str; 5] = ["zero", "one", "two", "few", "many"];
const LOCALES_TOKEN: u8 = b'L';
const MISSING_TOKEN: u8 = b'M';
/// Machine translations asked of ai-integration at once.
const TRANSLATE_CONCURRENCY: usize = 4;

/// Configuration of language-system (`[domains.language_system]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageSystemConfig {
    /// The default locale (a BCP 47 tag): the end of every fallback chain and the base
    /// of MissingKeys and coverage.
    pub default_locale: String,
    /// Fallback chains that differ from dropping subtags, by locale: `"pt-BR" = ["pt-PT",
    /// "pt"]` tries pt-BR, pt-PT, pt, then the default locale.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Most strings one locale holds; a PutStrings past it is ResourceExhausted.
    pub max_strings_per_locale: usize,
    /// Longest text (of any form), in characters.
    pub max_text_chars: usize,
    /// Page size of ListLocales when the request asks for none.
    pub default_locales_page_size: u32,
    /// Largest page of ListLocales.
    pub max_locales_page_size: u32,
    /// Page size of MissingKeys when the request asks for none.
    pub default_missing_page_size: u32,
    /// Largest page of MissingKeys.
    pub max_missing_page_size: u32,
    /// Most keys one MachineTranslate call translates.
    pub machine_translate_max_keys: u32,
}

impl Default for LanguageSystemConfig {
    fn default() -> Self {
        LanguageSystemConfig {
            default_locale: "en".into(),
            fallbacks: BTreeMap::new(),
            max_strings_per_locale: 50_000,
            max_text_chars: 4000,
            default_locales_page_size: 100,
            max_locales_page_size: 500,
            default_missing_page_size: 100,
            max_missing_page_size: 1000,
            machine_translate_max_keys: 100,
        }
    }
}

/// A locale's version and counts (value of `language_system.locales`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocaleRow {
    /// One more per write that changed the locale.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Strings of the locale, machine translations included.
    #[prost(uint32, tag = "2")]
    pub string_count: u32,
    /// Of those, unreviewed machine translations.
    #[prost(uint32, tag = "3")]
    pub machine_count: u32,
    /// Last write.
    #[prost(message, optional, tag = "4")]
    pub updated_at: Option<prost_types::Timestamp>,
}

/// The language-system domain.
pub struct LanguageSystem {
    ctx: Ctx,
    config: LanguageSystemConfig,
    /// The configured default locale, canonical.
    default_locale: String,
    /// The configured fallbacks, canonical.
    fallbacks: HashMap<String, Vec<String>>,
    cldr: LocaleCache,
    translator: Arc<dyn Translator>,
}

impl aicore_runtime::Domain for LanguageSystem {
    type Config = LanguageSystemConfig;

    fn build(
        ctx: &Ctx,
        config: &LanguageSystemConfig,
    ) -> Result<Arc<dyn aicore_proto::Dispatch>, Status> {
        let translator = Arc::new(OverNats::new(ctx.clone()));
        Ok(Arc::new(
            aicore_proto::aicore::language_system::v1::LanguageSystemServer(Arc::new(
                LanguageSystem::new(ctx.clone(), config.clone(), translator)?,
            )),
        ))
    }
}

/// A configuration error, for the operator.
fn config_error(what: String) -> Status {
    Status::new(
        Code::InvalidArgument,
        format!("[domains.language_system] {what}"),
    )
}

fn string_key(locale: &str, key: &str) -> Vec<u8> {
    [locale.as_bytes(), b"\0", key.as_bytes()].concat()
}

fn locale_prefix(locale: &str) -> Vec<u8> {
    [locale.as_bytes(), b"\0"].concat()
}

/// The key part of a `language_system.strings` row key.
fn key_of(row_key: &[u8]) -> String {
    let at = row_key.iter().position(|b| *b == 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&row_key[at..]).into_owned()
}

fn check_key(key: &str, field: &str) -> Result<(), Status> {
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

/// The string with its output-only fields cleared, to tell a real change from a rewrite.
fn content(s: &LocalizedString) -> LocalizedString {
    LocalizedString {
        machine_translated: false,
        updated_at: None,
        ..s.clone()
    }
}

impl LanguageSystem {
    /// The domain on a context, with machine translations from `translator`. Fails when
    /// the configuration names a locale that is not a BCP 47 tag.
    pub fn new(
        ctx: Ctx,
        config: LanguageSystemConfig,
        translator: Arc<dyn Translator>,
    ) -> Result<Self, Status> {
        let default_locale = format::canonical_tag(&config.default_locale).ok_or_else(|| {
            config_error(format!(
                "default_locale {:?} is not a BCP 47 tag",
                config.default_locale
            ))
        })?;
        let mut fallbacks = HashMap::new();
        for (tag, list) in &config.fallbacks {
            let canon = |t: &String| {
                format::canonical_tag(t)
                    .ok_or_else(|| config_error(format!("fallbacks: {t:?} is not a BCP 47 tag")))
            };
            fallbacks.insert(
                canon(tag)?,
                list.iter().map(canon).collect::<Result<_, _>>()?,
            );
        }
        Ok(LanguageSystem {
            ctx,
            config,
            default_locale,
            fallbacks,
            cldr: LocaleCache::default(),
            translator,
        })
    }

    fn chain(&self, tag: &str) -> Vec<String> {
        format::chain(
            tag,
            self.fallbacks.get(tag).map(Vec::as_slice),
            &self.default_locale,
        )
    }

    /// A locale field: canonical tag, or the default when empty and `allow_empty`.
    fn locale(&self, tag: &str, field: &str, allow_empty: bool) -> Result<String, Status> {
        if tag.is_empty() && allow_empty {
            return Ok(self.default_locale.clone());
        }
        format::canonical_tag(tag)
            .ok_or_else(|| Status::invalid(field, "must be a BCP 47 language tag such as `fr-CA`"))
    }

    fn cldr(&self, tag: &str) -> Result<Arc<format::LocaleData>, Status> {
        self.cldr
            .get(tag)
            .map_err(|e| Status::internal(format!("CLDR data for {tag}: {e}")))
    }

    /// Checks one string of a PutStrings for `locale`.
    fn check_string(
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

    /// Resolves one item: the first string along the chain, its form, its arguments.
    fn translate_one(
        &self,
        chain: &[String],
        item: &aicore_proto::aicore::language_system::v1::TranslateItem,
        field: &str,
        allow_machine: bool,
    ) -> Result<Translation, Status> {
        let key_field = format!("{field}.key");
        check_key(&item.key, &key_field)?;
        let mut found = None;
        for tag in chain {
            if let Some(s) = self
                .ctx
                .store
                .get_msg_cached::<LocalizedString>(STRINGS, &string_key(tag, &item.key))?
                && (allow_machine || !s.machine_translated)
            {
                found = Some((tag.clone(), s));
                break;
            }
        }
        let Some((resolved, s)) = found else {
            return Err(Status::with_field(
                Code::NotFound,
                &key_field,
                format!("no string `{}` in {}", item.key, chain.join(" → ")),
            ));
        };
        let data = self.cldr(&resolved)?;
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
        let segments: Vec<Segment> =
            format::parse(&text).map_err(|e| Status::internal(format!("stored template: {e}")))?;
        let text = format::fill(&segments, &item.args, item.count, &data).map_err(|e| match e {
            FillError::Missing(n) => Status::invalid(
                &format!("{field}.args.{n}"),
                format!("`{}` needs the argument `{n}`", item.key),
            ),
            FillError::WrongType(n, want) => Status::invalid(
                &format!("{field}.args.{n}"),
                format!("`{{{n}:{want}}}` needs a {want} argument"),
            ),
            FillError::Unformattable(n) => Status::invalid(
                &format!("{field}.args.{n}"),
                "cannot be formatted (not a finite number, or a time out of range)",
            ),
        })?;
        Ok(Translation {
            key: item.key.clone(),
            text,
            resolved_locale: resolved,
            machine_translated: s.machine_translated,
            plural_category,
        })
    }

    /// Keys of `base` with no reviewed string in `locale`, from `from` on: at most
    /// `limit` of them, examining at most `max_scan` base rows. Returns them with whether
    /// each has a machine translation, and the key to resume from (empty at the end).
    fn missing(
        &self,
        locale: &str,
        base: &str,
        page_token: &str,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<(String, bool)>, String), Status> {
        let prefix = locale_prefix(base);
        let mut page = paging::Page::start(
            paging::Listing {
                store: &self.ctx.store,
                table: STRINGS,
                prefix: &prefix,
                kind: MISSING_TOKEN,
                limit,
                max_scan,
            },
            page_token,
        )?;
        while let Some((k, v)) = page.next_row()? {
            let s: LocalizedString = aicore_runtime::store::decode(STRINGS, v)?;
            if s.machine_translated {
                continue;
            }
            let key = key_of(&k);
            match self
                .ctx
                .store
                .get_msg::<LocalizedString>(STRINGS, &string_key(locale, &key))?
            {
                Some(t) if !t.machine_translated => {}
                Some(_) => page.keep((key, true)),
                None => page.keep((key, false)),
            }
        }
        Ok(page.finish())
    }

    /// How many of `base`'s reviewed keys `locale` has reviewed strings for, over how
    /// many `base` has.
    fn coverage(&self, locale: &str, base: &str) -> Result<f64, Status> {
        let reviewed = |tag: &str| -> Result<HashSet<String>, Status> {
            let rows = self.ctx.store.scan(
                STRINGS,
                &locale_prefix(tag),
                &locale_prefix(tag),
                self.config.max_strings_per_locale + 1,
            )?;
            let mut out = HashSet::new();
            for (k, v) in rows {
                let s: LocalizedString = aicore_runtime::store::decode(STRINGS, v)?;
                if !s.machine_translated {
                    out.insert(key_of(&k));
                }
            }
            Ok(out)
        };
        let base_keys = reviewed(base)?;
        if base_keys.is_empty() {
            return Ok(0.0);
        }
        let have = if locale == base {
            base_keys.len()
        } else {
            let mine = reviewed(locale)?;
            base_keys.iter().filter(|k| mine.contains(*k)).count()
        };
        Ok(have as f64 / base_keys.len() as f64)
    }
}

impl LanguageSystemHandler for LanguageSystem {
    async fn put_strings(
        &self,
        request: Request<PutStringsRequest>,
    ) -> Result<PutStringsResponse, Status> {
        let req = request.body;
        let locale = self.locale(&req.locale, "locale", false)?;
        if req.strings.is_empty() || req.strings.len() > 5000 {
            return Err(Status::invalid("strings", "must hold 1 to 5000 strings"));
        }
        let data = self.cldr(&locale)?;
        let mut seen = HashSet::new();
        for (i, s) in req.strings.iter().enumerate() {
            let field = format!("strings[{i}]");
            self.check_string(s, &field, &data)?;
            if !seen.insert(s.key.as_str()) {
                return Err(Status::invalid(
                    &format!("{field}.key"),
                    format!("`{}` appears twice", s.key),
                ));
            }
        }
        let now = self.ctx.now_ts();
        let max = self.config.max_strings_per_locale;
        let (strings, replace_all) = (req.strings, req.replace_all);
        self.ctx
            .store
            .write(move |tx| {
                let prefix = locale_prefix(&locale);
                let existing: HashMap<String, LocalizedString> = tx
                    .scan(STRINGS, &prefix, &prefix, max + 1)?
                    .into_iter()
                    .map(|(k, v)| Ok((key_of(&k), aicore_runtime::store::decode(STRINGS, v)?)))
                    .collect::<Result<_, Status>>()?;
                let mut row = tx
                    .get_msg::<LocaleRow>(LOCALES, locale.as_bytes())?
                    .unwrap_or_default();
                let (mut written, mut removed) = (0u32, 0u32);
                let mut count = existing.len();
                let mut machine = existing.values().filter(|s| s.machine_translated).count();
                let wanted: HashSet<&str> = strings.iter().map(|s| s.key.as_str()).collect();
                for s in &strings {
                    let old = existing.get(&s.key);
                    if old.is_some_and(|o| !o.machine_translated && content(o) == content(s)) {
                        continue;
                    }
                    match old {
                        None => count += 1,
                        Some(o) if o.machine_translated => machine -= 1,
                        Some(_) => {}
                    }
                    let stored = LocalizedString {
                        machine_translated: false,
                        updated_at: Some(now),
                        ..s.clone()
                    };
                    tx.put_msg(STRINGS, &string_key(&locale, &s.key), &stored);
                    written += 1;
                }
                if replace_all {
                    for (k, o) in &existing {
                        if !wanted.contains(k.as_str()) {
                            tx.delete(STRINGS, &string_key(&locale, k));
                            removed += 1;
                            count -= 1;
                            if o.machine_translated {
                                machine -= 1;
                            }
                        }
                    }
                }
                if count > max {
                    return Err(Status::with_field(
                        Code::ResourceExhausted,
                        "strings",
                        format!("the locale would hold {count} strings; the limit is {max}"),
                    ));
                }
                if written + removed > 0 {
                    row.version += 1;
                    row.string_count = count as u32;
                    row.machine_count = machine as u32;
                    row.updated_at = Some(now);
                    tx.put_msg(LOCALES, locale.as_bytes(), &row);
                }
                Ok(PutStringsResponse {
                    written,
                    removed,
                    version: row.version,
                })
            })
            .await
    }

    async fn translate(
        &self,
        request: Request<TranslateRequest>,
    ) -> Result<TranslateResponse, Status> {
        let req = request.body;
        let locale = self.locale(&req.locale, "locale", true)?;
        if req.items.is_empty() || req.items.len() > 500 {
            return Err(Status::invalid("items", "must hold 1 to 500 items"));
        }
        let chain = self.chain(&locale);
        let translations = req
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.translate_one(&chain, item, &format!("items[{i}]"), req.allow_machine)
            })
            .collect::<Result<_, _>>()?;
        Ok(TranslateResponse { translations })
    }

    async fn list_locales(
        &self,
        request: Request<ListLocalesRequest>,
    ) -> Result<ListLocalesResponse, Status> {
        let req = request.body;
        let limit = paging::page_size(
            req.page_size,
            self.config.default_locales_page_size,
            self.config.max_locales_page_size,
        )?;
        let from = if req.page_token.is_empty() {
            Vec::new()
        } else {
            paging::decode_token(LOCALES_TOKEN, &req.page_token)?
        };
        let mut rows = self.ctx.store.scan(LOCALES, b"", &from, limit + 1)?;
        let next_page_token =
            paging::next_token(&mut rows, limit, LOCALES_TOKEN, |(k, _)| Some(k.clone()));
        let mut locales = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let row: LocaleRow = aicore_runtime::store::decode(LOCALES, v)?;
            if row.string_count == 0 {
                continue;
            }
            let tag = String::from_utf8_lossy(&k).into_owned();
            let mut chain = self.chain(&tag);
            chain.remove(0);
            locales.push(Locale {
                coverage: self.coverage(&tag, &self.default_locale)?,
                tag,
                fallback_chain: chain,
                string_count: row.string_count,
                updated_at: row.updated_at,
                machine_count: row.machine_count,
                version: row.version,
            });
        }
        Ok(ListLocalesResponse {
            locales,
            default_locale: self.default_locale.clone(),
            next_page_token,
        })
    }

    async fn missing_keys(
        &self,
        request: Request<MissingKeysRequest>,
    ) -> Result<MissingKeysResponse, Status> {
        let req = request.body;
        let locale = self.locale(&req.locale, "locale", false)?;
        let base = self.locale(&req.base_locale, "base_locale", true)?;
        if base == locale {
            return Err(Status::invalid("base_locale", "must differ from `locale`"));
        }
        let limit = paging::page_size(
            req.page_size,
            self.config.default_missing_page_size,
            self.config.max_missing_page_size,
        )?;
        let (found, next_page_token) = self.missing(
            &locale,
            &base,
            &req.page_token,
            limit,
            limit.saturating_mul(10),
        )?;
        Ok(MissingKeysResponse {
            machine_translated_keys: found
                .iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| k.clone())
                .collect(),
            keys: found.into_iter().map(|(k, _)| k).collect(),
            next_page_token,
        })
    }

    async fn machine_translate(
        &self,
        request: Request<MachineTranslateRequest>,
    ) -> Result<MachineTranslateResponse, Status> {
        let Request { body, meta } = request;
        self.machine_translate_request(body, &meta).await
    }
}

/// Calls on the domain's own authority, with the caller's deadline and trace.
fn own_authority(meta: &Metadata) -> CallOptions {
    CallOptions {
        caller: None,
        ..CallOptions::from_meta(meta)
    }
}

#[cfg(test)]
mod tests;
