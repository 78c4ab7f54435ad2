//! Pagination shared by every list RPC: the page size a request asks for (0 = the
//! domain's default, capped at its maximum, negative refused) and opaque page tokens.
//! A token is base64url of a one-byte kind tag and a position (usually the next key), so
//! a token of one listing is refused by another instead of being misread.

use aicore_proto::Status;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

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

/// A filtered listing of the rows of `table` under `prefix`, for [`Page`].
pub struct Listing<'a> {
    /// The store to read.
    pub store: &'a crate::Store,
    /// The table.
    pub table: &'static str,
    /// The key prefix every listed row has (empty for the whole table).
    pub prefix: &'a [u8],
    /// The token kind of this listing (a token of another is refused).
    pub kind: u8,
    /// Most rows a page returns.
    pub limit: usize,
    /// Most rows one page looks at: a filter that keeps few rows cannot make one request
    /// read the whole table; the page then comes back short, with a token to go on.
    pub max_scan: usize,
}

/// One page of a filtered listing being collected: rows come from [`Page::next_row`]
/// (which reads the table a chunk at a time), the caller keeps what it wants with
/// [`Page::keep`], and [`Page::finish`] gives the page and the token resuming at the first
/// row not examined (empty when there is none). The page ends after `limit` kept rows or
/// `max_scan` examined ones. Every filtered list RPC pages through this, async filters
/// included (a loop, not a callback).
pub struct Page<'a, T> {
    listing: Listing<'a>,
    from: Vec<u8>,
    rows: std::vec::IntoIter<(Vec<u8>, Bytes)>,
    exhausted: bool,
    scanned: usize,
    kept: Vec<T>,
    token: String,
}

impl<'a, T> Page<'a, T> {
    /// Starts a page of `listing` at `page_token` (empty = the start).
    pub fn start(listing: Listing<'a>, page_token: &str) -> Result<Self, Status> {
        let mut from = listing.prefix.to_vec();
        if !page_token.is_empty() {
            from.extend(decode_token(listing.kind, page_token)?);
        }
        Ok(Page {
            listing,
            from,
            rows: Vec::new().into_iter(),
            exhausted: false,
            scanned: 0,
            kept: Vec::new(),
            token: String::new(),
        })
    }

    /// The next row to examine, or `None` when the page is complete.
    pub fn next_row(&mut self) -> Result<Option<(Vec<u8>, Bytes)>, Status> {
        let l = &self.listing;
        let row = match self.rows.next() {
            Some(r) => r,
            None if self.exhausted => return Ok(None),
            None => {
                let chunk = l.limit.saturating_add(1).clamp(2, 1024);
                let rows = l.store.scan(l.table, l.prefix, &self.from, chunk)?;
                self.exhausted = rows.len() < chunk;
                self.rows = rows.into_iter();
                match self.rows.next() {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };
        if self.kept.len() >= l.limit || self.scanned >= l.max_scan.max(1) {
            let position = row.0.get(l.prefix.len()..).unwrap_or_default();
            self.token = encode_token(l.kind, position);
            self.exhausted = true;
            self.rows = Vec::new().into_iter();
            return Ok(None);
        }
        self.scanned += 1;
        self.from = row.0.clone();
        self.from.push(0);
        Ok(Some(row))
    }

    /// Lists `item` on this page.
    pub fn keep(&mut self, item: T) {
        self.kept.push(item);
    }

    /// The page and the token of the next one.
    pub fn finish(self) -> (Vec<T>, String) {
        (self.kept, self.token)
    }
}

/// The error for a token this listing did not return.
pub fn bad_token() -> Status {
    Status::invalid("page_token", "is not a token this listing returned")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(store: &crate::Store, limit: usize, max_scan: usize) -> Listing<'_> {
        Listing {
            store,
            table: "t",
            prefix: b"p/",
            kind: b'E',
            limit,
            max_scan,
        }
    }

    /// Lists the even values of rows `p/00`..`p/19` (and one row outside the prefix).
    fn evens(
        store: &crate::Store,
        limit: usize,
        max_scan: usize,
        token: &str,
    ) -> (Vec<u8>, String) {
        let mut page = Page::start(listing(store, limit, max_scan), token).unwrap();
        while let Some((_, v)) = page.next_row().unwrap() {
            if v[0] % 2 == 0 {
                page.keep(v[0]);
            }
        }
        page.finish()
    }

    #[tokio::test]
    async fn filtered_pages_resume_where_they_stopped_and_end_with_no_token() {
        let store = crate::Store::in_memory();
        store
            .write(|tx| {
                for i in 0..20u8 {
                    tx.put("t", format!("p/{i:02}").as_bytes(), vec![i]);
                }
                tx.put("t", b"q/00", vec![0]);
                Ok(())
            })
            .await
            .unwrap();
        let (mut all, mut token) = (Vec::new(), String::new());
        let mut pages = 0;
        loop {
            let (page, next) = evens(&store, 3, 100, &token);
            assert!(page.len() <= 3);
            all.extend(page);
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(all, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
        assert_eq!(pages, 4);
        // A scan bound returns a short page with a token to go on.
        let (page, next) = evens(&store, 10, 5, "");
        assert_eq!(page, [0, 2, 4]);
        let (page, _) = evens(&store, 10, 100, &next);
        assert_eq!(page, [6, 8, 10, 12, 14, 16, 18]);
        // Another listing's token is refused.
        let other = encode_token(b'X', b"05");
        let e = Page::<u8>::start(listing(&store, 3, 10), &other)
            .err()
            .unwrap();
        assert_eq!(e.field_violations[0].field, "page_token");
    }

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
