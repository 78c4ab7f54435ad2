//! PutStrings' write, in one transaction: the locale's strings written (a reviewed string
//! unchanged but for its output-only fields is not rewritten), the others removed when
//! the caller replaces all, the locale's row counted again, and the limit of strings per
//! locale enforced.

use std::collections::{HashMap, HashSet};

use aicore_proto::aicore::language_system::v1::{LocalizedString, PutStringsResponse};
use aicore_proto::{Code, Status};
use aicore_runtime::store::Tx;

use super::records::{LocaleRow, key_of, locale_prefix, string_key};
use super::{LOCALES, STRINGS};

/// The string with its output-only fields cleared, to tell a real change from a rewrite.
fn content(s: &LocalizedString) -> LocalizedString {
    LocalizedString {
        machine_translated: false,
        updated_at: None,
        ..s.clone()
    }
}

/// Writes `strings` to `locale` (removing its other strings when `replace_all`), at most
/// `max` strings in the locale; its row gets a new version when anything changed.
pub(super) fn write_strings(
    tx: &mut Tx<'_>,
    locale: &str,
    strings: &[LocalizedString],
    replace_all: bool,
    now: prost_types::Timestamp,
    max: usize,
) -> Result<PutStringsResponse, Status> {
    let prefix = locale_prefix(locale);
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
    for s in strings {
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
        tx.put_msg(STRINGS, &string_key(locale, &s.key), &stored);
        written += 1;
    }
    if replace_all {
        for (k, o) in &existing {
            if !wanted.contains(k.as_str()) {
                tx.delete(STRINGS, &string_key(locale, k));
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
}
