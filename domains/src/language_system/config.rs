//! language-system's configuration (`[domains.language_system]`): the default locale,
//! fallback chains that differ from dropping subtags, and the bounds of strings, pages
//! and MachineTranslate calls.

use std::collections::BTreeMap;

use aicore_proto::{Code, Status};

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

/// A configuration error, for the operator.
pub(super) fn config_error(what: String) -> Status {
    Status::new(
        Code::InvalidArgument,
        format!("[domains.language_system] {what}"),
    )
}
