//! The `{placeholder}` template syntax shared by the domains that fill text (localised
//! strings, narration templates): literal text, `{name}` or `{name:kind}` (kind `text`,
//! `number`, `date` or `datetime`), and `{{` / `}}` for braces. Parsing only; what a
//! placeholder is filled with is each domain's business.

use std::collections::BTreeSet;

/// What a placeholder requires of its argument (`{name:kind}`); none accepts any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `:text`: a text argument.
    Text,
    /// `:number`: an integer or a number.
    Number,
    /// `:date`: a time, shown as its date.
    Date,
    /// `:datetime`: a time, shown as date and time.
    DateTime,
}

impl Kind {
    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "text" => Kind::Text,
            "number" => Kind::Number,
            "date" => Kind::Date,
            "datetime" => Kind::DateTime,
            _ => return None,
        })
    }

    /// Its name in templates.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "number",
            Kind::Date => "date",
            Kind::DateTime => "datetime",
        }
    }
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Text copied as is.
    Literal(String),
    /// `{name}` or `{name:kind}`.
    Placeholder {
        /// The argument's name.
        name: String,
        /// What it requires, if anything.
        kind: Option<Kind>,
    },
}

/// Whether `s` is a placeholder or select argument name: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// 64 characters.
pub fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && s.len() <= 64
}

/// Parses a template; the error says what is wrong, for a field violation.
pub fn parse(template: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err(format!(
                    "a lone `}}` at byte {at}; write `}}}}` for a brace"
                ));
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) => break,
                        Some((_, ch)) => inner.push(ch),
                        None => return Err(format!("the `{{` at byte {at} is never closed")),
                    }
                }
                let (name, kind) = match inner.split_once(':') {
                    Some((n, k)) => {
                        let kind = Kind::parse(k.trim()).ok_or_else(|| {
                            format!(
                                "placeholder `{{{inner}}}` has an unknown type; use text, number, date or datetime"
                            )
                        })?;
                        (n.trim(), Some(kind))
                    }
                    None => (inner.trim(), None),
                };
                if !is_name(name) {
                    return Err(format!(
                        "placeholder `{{{inner}}}` needs a name of letters, digits and `_`"
                    ));
                }
                if !lit.is_empty() {
                    out.push(Segment::Literal(std::mem::take(&mut lit)));
                }
                out.push(Segment::Placeholder {
                    name: name.to_string(),
                    kind,
                });
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Segment::Literal(lit));
    }
    Ok(out)
}

/// The placeholders of a parsed template, with what they require.
pub fn placeholders(segments: &[Segment]) -> BTreeSet<(String, Option<Kind>)> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Placeholder { name, kind } => Some((name.clone(), *kind)),
            Segment::Literal(_) => None,
        })
        .collect()
}
