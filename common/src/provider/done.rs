//! Watching an event stream's body for OpenAI's `data: [DONE]` terminator on its way to
//! async-openai's parser: only a stream that ends with it is a finished answer, and
//! async-openai ends its chunk stream alike when the connection closes cleanly before it.

use std::sync::{Arc, atomic::Ordering};

use futures::StreamExt as _;

use super::Seen;

/// `response` with the same status and headers, whose body sets `seen.done` when a
/// `data: [DONE]` line passes. The flag is set before the parser sees the line, so it is set by
/// the time async-openai's stream ends.
pub(super) fn watch(response: reqwest::Response, seen: Arc<Seen>) -> reqwest::Response {
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let mut scanner = DoneScanner::default();
    let body = response.bytes_stream().inspect(move |chunk| {
        if let Ok(bytes) = chunk
            && scanner.feed(bytes)
        {
            seen.done.store(true, Ordering::Release);
        }
    });
    let mut watched = http::Response::new(reqwest::Body::wrap_stream(body));
    *watched.status_mut() = status;
    *watched.version_mut() = version;
    *watched.headers_mut() = headers;
    reqwest::Response::from(watched)
}

/// The longest line worth keeping: `data: [DONE]`. Longer lines are data, never the terminator.
const LONGEST: usize = b"data: [DONE]".len();

/// Finds a `data: [DONE]` (or `data:[DONE]`) line across chunk boundaries, keeping at most
/// [`LONGEST`] bytes of the current line. Lines end with `\n`, `\r\n` or `\r`, as in SSE.
#[derive(Debug, Default)]
struct DoneScanner {
    line: Vec<u8>,
    /// The current line is longer than [`LONGEST`].
    long: bool,
    seen: bool,
}

impl DoneScanner {
    /// Reads `bytes`; true once a terminator line has been read.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.long && matches!(self.line.as_slice(), b"data: [DONE]" | b"data:[DONE]") {
                    self.seen = true;
                }
                self.line.clear();
                self.long = false;
            } else if self.line.len() < LONGEST {
                self.line.push(b);
            } else {
                self.long = true;
            }
        }
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::DoneScanner;

    #[test]
    fn the_terminator_is_found_split_across_chunks() {
        let mut s = DoneScanner::default();
        assert!(!s.feed(b"data: {\"choices\":[]}\n\ndata: [DO"));
        assert!(s.feed(b"NE]\n\n"));
    }

    #[test]
    fn only_a_whole_terminator_line_counts() {
        let mut s = DoneScanner::default();
        assert!(!s.feed(b"data: {\"content\":\"data: [DONE]\"}\n\n"));
        assert!(!s.feed(b"data: [DONE]x\n"));
        assert!(!s.feed(b"xdata: [DONE]\n"));
        // A line not yet ended may still go on.
        assert!(!s.feed(b"data: [DONE]"));
        assert!(s.feed(b"\r\n"));
        assert!(DoneScanner::default().feed(b"data:[DONE]\r"));
    }
}
