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
//!
//! This file holds the domain type and its handlers; beside it are `config` (the
//! configuration), `records` (the locale rows and the string keys), `check` (input
//! checks), `strings` (PutStrings' write), `translate` (resolving one item), `missing`
//! (MissingKeys and coverage), `machine` (MachineTranslate) and [`format`] (CLDR plural
//! rules and placeholders).

mod check;
mod config;
pub mod format;
mod machine;
mod missing;
mod records;
mod strings;
mod translate;

pub use config::LanguageSystemConfig;
pub use machine::{MachineText, OverNats, Translator};
pub use records::LocaleRow;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aicore_proto::aicore::language_system::v1::{
    LanguageSystemHandler, ListLocalesRequest, ListLocalesResponse, Locale,
    MachineTranslateRequest, MachineTranslateResponse, MissingKeysRequest, MissingKeysResponse,
    PutStringsRequest, PutStringsResponse, TranslateRequest, TranslateResponse,
};
use aicore_proto::{CallOptions, Metadata, Request, Status};

use aicore_runtime::{Ctx, paging};

use config::config_error;
use format::LocaleCache;

const STRINGS: &str = "language_system.strings";
const LOCALES: &str = "language_system.locales";
const LOCALES_TOKEN: u8 = b'L';
const MISSING_TOKEN: u8 = b'M';
/// Machine translations asked of ai-integration at once.
const TRANSLATE_CONCURRENCY: usize = 4;

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
            .write(move |tx| strings::write_strings(tx, &locale, &strings, replace_all, now, max))
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
