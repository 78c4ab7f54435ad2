//! Pagination shared by every list RPC: the page size a request asks for (0 = the
//! domain's default, capped at its maximum, negative refused) and opaque page tokens.
//! A token is base64url of a one-byte kind tag and a position (usually the next key), so
//! a token of one listing is refused by another instead of being misread.

use aicore_proto::Status;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The page size to use for `requested`.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<usize, Status> {
    let max = max.max(1);
    match requested {
        n if n < 0 => Err(Status::invalid("page_size", "must not be negative")),
        0 => Ok(default.clamp(1, max) as usize),
        n => Ok((n as u32).min(max) as usize),
    }
}

/// A token resuming listing `kind` at `position`.
pub fn encode_token(kind: u8, position: &[u8]) -> String {
    let mut raw = Vec::with_capacity(position.len() + 1);
    raw.push(kind);
    raw.extend_from_slice(position);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The position in a token of listing `kind`; anything else is InvalidArgument naming
/// `page_token`.
pub fn decode_token(kind: u8, token: &str) -> Result<Vec<u8>, Status> {
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?;
    match raw.split_first() {
        Some((k, rest)) if *k == kind => Ok(rest.to_vec()),
        _ => Err(bad_token()),
    }
}

/// For a page read with one row more than `limit`: drops the extra row and returns the
/// token of listing `kind` that resumes at it (`position` gives its position), or an
/// empty token when there was no extra row (the last page).
pub fn next_token<T>(
    rows: &mut Vec<T>,
    limit: usize,
    kind: u8,
    position: impl FnOnce(&T) -> Option<Vec<u8>>,
) -> String {
    if rows.len() <= limit {
        return String::new();
    }
    rows.truncate(limit + 1);
    rows.pop()
        .and_then(|r| position(&r))
        .map(|p| encode_token(kind, &p))
        .unwrap_or_default()
}

/// The error for a token this listing did not return.
pub fn bad_token() -> Status {
    Status::invalid("page_token", "is not a token this listing returned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_cap_and_refuse_negative() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(page_size(10_000, 50, 500).unwrap(), 500);
        assert_eq!(page_size(7, 50, 500).unwrap(), 7);
        assert_eq!(
            page_size(-1, 50, 500).unwrap_err().field_violations[0].field,
            "page_size"
        );
    }

    #[test]
    fn next_token_drops_the_extra_row() {
        let mut rows = vec![1u8, 2, 3];
        let t = next_token(&mut rows, 2, b'L', |r| Some(vec![*r]));
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(decode_token(b'L', &t).unwrap(), vec![3]);
        let mut last = vec![1u8];
        assert_eq!(next_token(&mut last, 2, b'L', |r| Some(vec![*r])), "");
        assert_eq!(last, vec![1]);
    }

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_listing() {
        let t = encode_token(b'L', b"p1\0save/2");
        assert_eq!(decode_token(b'L', &t).unwrap(), b"p1\0save/2");
        assert!(decode_token(b'H', &t).is_err());
        assert!(decode_token(b'L', "!!not base64").is_err());
        assert!(decode_token(b'L', "").is_err());
    }
}
