//! Stored rows and their keys: a locale's version and counts ([`LocaleRow`]) and the keys
//! of `language_system.strings` (locale `\0` key).

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

pub(super) fn string_key(locale: &str, key: &str) -> Vec<u8> {
    [locale.as_bytes(), b"\0", key.as_bytes()].concat()
}

pub(super) fn locale_prefix(locale: &str) -> Vec<u8> {
    [locale.as_bytes(), b"\0"].concat()
}

/// The key part of a `language_system.strings` row key.
pub(super) fn key_of(row_key: &[u8]) -> String {
    let at = row_key.iter().position(|b| *b == 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&row_key[at..]).into_owned()
}
