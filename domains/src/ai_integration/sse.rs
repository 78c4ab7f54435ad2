//! Server-Sent Events as OpenAI-compatible servers send them: `data:` lines (several
//! joined by `\n`) closed by a blank line, `\r\n` or `\n` line ends, comments (`:`) and
//! other fields ignored, events split anywhere across reads. Only the reading; what the
//! data means is [`super::openai`]'s.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

/// Largest single SSE event accepted (a chunk is a few hundred bytes).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The innermost error's message (reqwest's own message says little).
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Server-Sent Events out of a byte stream: the `data` of each event (lines joined by
/// `\n`), ignoring comments and other fields.
pub(super) struct SseReader {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    eof: bool,
}

impl SseReader {
    pub(super) fn new(body: BoxStream<'static, reqwest::Result<Bytes>>) -> Self {
        SseReader {
            body,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next event's data; `Ok(None)` at the end of the body.
    pub(super) async fn next_event(&mut self) -> Result<Option<String>, String> {
        let mut data: Option<String> = None;
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).map_err(|_| "an event is not UTF-8")?;
                if line.is_empty() {
                    if data.is_some() {
                        return Ok(data);
                    }
                    continue;
                }
                if let Some(rest) = line.strip_prefix("data:") {
                    let rest = rest.strip_prefix(' ').unwrap_or(rest);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(rest);
                        }
                        None => data = Some(rest.to_string()),
                    }
                }
                // `:` comments (keep-alives), `event:`, `id:` and `retry:` carry nothing
                // these servers need.
                continue;
            }
            if self.eof {
                // An event not closed by a blank line still counts once the body ends.
                let tail = std::mem::take(&mut self.buf);
                let tail = String::from_utf8(tail).map_err(|_| "an event is not UTF-8")?;
                if let Some(rest) = tail.trim_end().strip_prefix("data:") {
                    return Ok(Some(rest.trim_start().to_string()));
                }
                return Ok(data);
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                return Err(format!("an event is larger than {MAX_EVENT_BYTES} bytes"));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(format!("the stream was cut: {}", root_cause(&e))),
                None => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(parts: &[&'static str]) -> SseReader {
        let chunks: Vec<reqwest::Result<Bytes>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        SseReader::new(futures::stream::iter(chunks).boxed())
    }

    #[tokio::test]
    async fn events_split_across_reads_and_crlf_lines_are_read_whole() {
        let mut r = reader(&[
            ": keep-alive\r\n\r\nda",
            "ta: {\"a\":1}\r\n\r\ndata: line one\ndata: line two\n\n",
            "event: x\ndata: [DONE]",
        ]);
        assert_eq!(r.next_event().await.unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(
            r.next_event().await.unwrap().as_deref(),
            Some("line one\nline two")
        );
        assert_eq!(r.next_event().await.unwrap().as_deref(), Some("[DONE]"));
        assert_eq!(r.next_event().await.unwrap(), None);
    }
}
