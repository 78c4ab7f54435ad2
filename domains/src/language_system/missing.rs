//! What a locale lacks: MissingKeys' page of the base locale's keys with no reviewed
//! string in the locale, and ListLocales' coverage (the share of the base locale's
//! reviewed keys the locale has reviewed strings for).

use std::collections::HashSet;

use aicore_proto::Status;
use aicore_proto::aicore::language_system::v1::LocalizedString;
use aicore_runtime::paging;

use super::records::{key_of, locale_prefix, string_key};
use super::{LanguageSystem, MISSING_TOKEN, STRINGS};

impl LanguageSystem {
    /// Keys of `base` with no reviewed string in `locale`, from `from` on: at most
    /// `limit` of them, examining at most `max_scan` base rows. Returns them with whether
    /// each has a machine translation, and the key to resume from (empty at the end).
    pub(super) fn missing(
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
    pub(super) fn coverage(&self, locale: &str, base: &str) -> Result<f64, Status> {
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
