//! `[[fake key=value ...]]` directives: finding them in a message and parsing their keys.

/// What `fail=` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// An HTTP status with an OpenAI JSON error body.
    Status(u16),
    /// 429 `insufficient_quota` (permanent, no retry-after).
    InsufficientQuota,
    /// 502 with an HTML body, as a reverse proxy would send.
    Html502,
    /// 400 `context_length_exceeded`.
    ContextLength,
}

/// A parsed `fail=KIND[xN]` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fail {
    pub kind: FailKind,
    /// Fail only the first N requests carrying the directive; `None` = always.
    pub times: Option<u64>,
}

/// The keys a directive may set; `None` means "not set here, fall back".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directive {
    pub tokens: Option<usize>,
    pub ttft_ms: Option<u64>,
    pub delay_ms: Option<u64>,
    /// `finish_ms=N`: a pause after the last content chunk, before the finish chunk.
    pub finish_ms: Option<u64>,
    pub fail: Option<Fail>,
    pub retry_after_ms: Option<u64>,
    pub cut_after: Option<usize>,
    pub garbage_after: Option<usize>,
    pub error_after: Option<usize>,
    pub cached: Option<u32>,
    pub echo_prompt: Option<bool>,
    /// `stamp=1`: every content chunk is ` @<unix microseconds when it was sent>` (benchmarks
    /// measure end-to-end streaming latency with it).
    pub stamp: Option<bool>,
    /// `no_usage`: no usage anywhere, even when `include_usage` asks for it, as several
    /// OpenAI-compatible servers do.
    pub no_usage: Option<bool>,
    /// `no_finish`: a stream without its finish chunk (usage and `[DONE]` still follow).
    pub no_finish: Option<bool>,
    /// `no_done`: a stream closed cleanly after its finish chunk and usage, without `[DONE]`.
    pub no_done: Option<bool>,
    /// `trigger_at=K`: the K-th word of the reply (from 1, `Echo:` included) is the moderation
    /// trigger word, so an answer can be flagged while the question is not.
    pub trigger_at: Option<usize>,
    /// `cite=N`: a reply to a prompt with numbered sources quotes and cites source N instead
    /// of source 1.
    pub cite: Option<usize>,
}

/// Keys that are flags: a bare `no_usage` means `no_usage=1`.
const FLAGS: &[&str] = &["no_usage", "no_finish", "no_done"];

impl Directive {
    /// Parses `key=value key=value ...`. Unknown keys and unparsable values are ignored,
    /// so a typo degrades to "no effect" rather than an error the client would not expect.
    pub fn parse(text: &str) -> Self {
        let mut d = Directive::default();
        for pair in text.split_whitespace() {
            let (key, value) = match pair.split_once('=') {
                Some(kv) => kv,
                None if FLAGS.contains(&pair) => (pair, "1"),
                None => continue,
            };
            match key {
                "tokens" => d.tokens = value.parse().ok().or(d.tokens),
                "ttft_ms" => d.ttft_ms = value.parse().ok().or(d.ttft_ms),
                "delay_ms" => d.delay_ms = value.parse().ok().or(d.delay_ms),
                "finish_ms" => d.finish_ms = value.parse().ok().or(d.finish_ms),
                "fail" => d.fail = parse_fail(value).or(d.fail),
                "retry_after_ms" => d.retry_after_ms = value.parse().ok().or(d.retry_after_ms),
                "cut_after" => d.cut_after = value.parse().ok().or(d.cut_after),
                "garbage_after" => d.garbage_after = value.parse().ok().or(d.garbage_after),
                "error_after" => d.error_after = value.parse().ok().or(d.error_after),
                "cached" => d.cached = value.parse().ok().or(d.cached),
                "echo" => d.echo_prompt = Some(value == "prompt"),
                "stamp" => d.stamp = Some(value == "1"),
                "no_usage" => d.no_usage = Some(value == "1"),
                "no_finish" => d.no_finish = Some(value == "1"),
                "no_done" => d.no_done = Some(value == "1"),
                "trigger_at" => d.trigger_at = value.parse().ok().or(d.trigger_at),
                "cite" => d.cite = value.parse().ok().filter(|n| *n > 0).or(d.cite),
                _ => {}
            }
        }
        d
    }

    /// Returns `self` with every key that `over` sets replaced by `over`'s value.
    pub fn overlay(&self, over: &Directive) -> Directive {
        Directive {
            tokens: over.tokens.or(self.tokens),
            ttft_ms: over.ttft_ms.or(self.ttft_ms),
            delay_ms: over.delay_ms.or(self.delay_ms),
            finish_ms: over.finish_ms.or(self.finish_ms),
            fail: over.fail.or(self.fail),
            retry_after_ms: over.retry_after_ms.or(self.retry_after_ms),
            cut_after: over.cut_after.or(self.cut_after),
            garbage_after: over.garbage_after.or(self.garbage_after),
            error_after: over.error_after.or(self.error_after),
            cached: over.cached.or(self.cached),
            echo_prompt: over.echo_prompt.or(self.echo_prompt),
            stamp: over.stamp.or(self.stamp),
            no_usage: over.no_usage.or(self.no_usage),
            no_finish: over.no_finish.or(self.no_finish),
            no_done: over.no_done.or(self.no_done),
            trigger_at: over.trigger_at.or(self.trigger_at),
            cite: over.cite.or(self.cite),
        }
    }
}

fn parse_fail(value: &str) -> Option<Fail> {
    let (kind, times) = match value.rsplit_once('x') {
        Some((kind, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (kind, Some(n.parse().ok()?)),
        _ => (value, None),
    };
    let kind = match kind {
        "insufficient_quota" => FailKind::InsufficientQuota,
        "502html" => FailKind::Html502,
        "context_length" => FailKind::ContextLength,
        status => match status.parse::<u16>() {
            Ok(code @ 400..=599) => FailKind::Status(code),
            _ => return None,
        },
    };
    Some(Fail { kind, times })
}

/// Removes every `[[fake ...]]` directive from `text`. Returns the remaining text and the
/// directives' inner texts joined by a space (empty when there were none). An unterminated
/// `[[fake` is left as ordinary text.
pub(crate) fn extract(text: &str) -> (String, String) {
    const OPEN: &str = "[[fake";
    let mut rest = text;
    let mut stripped = String::with_capacity(text.len());
    let mut inner = String::new();
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        // `[[fakeness]]` is not a directive: the keyword must end here.
        let keyword_ends = after.starts_with("]]") || after.starts_with(char::is_whitespace);
        match after.find("]]") {
            Some(end) if keyword_ends => {
                stripped.push_str(&rest[..start]);
                stripped.push(' ');
                if !inner.is_empty() {
                    inner.push(' ');
                }
                inner.push_str(after[..end].trim());
                rest = &after[end + 2..];
            }
            _ => {
                stripped.push_str(&rest[..start + OPEN.len()]);
                rest = after;
            }
        }
    }
    stripped.push_str(rest);
    (stripped, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directive_is_removed_and_its_keys_parsed() {
        let (text, inner) = extract("hello [[fake tokens=5 fail=500x2]] world");
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["hello", "world"]);
        assert_eq!(inner, "tokens=5 fail=500x2");
        let d = Directive::parse(&inner);
        assert_eq!(d.tokens, Some(5));
        assert_eq!(d.fail, Some(Fail { kind: FailKind::Status(500), times: Some(2) }));
    }

    #[test]
    fn fail_kinds_without_a_count_fail_always() {
        let q = parse_fail("insufficient_quota").unwrap();
        assert_eq!(q.kind, FailKind::InsufficientQuota);
        assert_eq!(q.times, None);
        assert_eq!(parse_fail("502htmlx3").unwrap().kind, FailKind::Html502);
        assert_eq!(parse_fail("502htmlx3").unwrap().times, Some(3));
        assert_eq!(parse_fail("200"), None);
        assert_eq!(parse_fail("nonsense"), None);
    }

    #[test]
    fn text_that_only_looks_like_a_directive_is_kept() {
        let (text, inner) = extract("a [[fakeness]] b [[fake unterminated");
        assert_eq!(text, "a [[fakeness]] b [[fake unterminated");
        assert_eq!(inner, "");
    }

    #[test]
    fn flags_may_be_bare_words() {
        let d = Directive::parse("no_usage no_done=0 tokens");
        assert_eq!(d.no_usage, Some(true));
        assert_eq!(d.no_done, Some(false));
        assert_eq!(d.no_finish, None);
        assert_eq!(d.tokens, None, "only flags may be bare");
    }

    #[test]
    fn overlay_replaces_only_the_keys_that_are_set() {
        let base = Directive::parse("tokens=5 delay_ms=7 unknown=1");
        let merged = base.overlay(&Directive::parse("tokens=9"));
        assert_eq!(merged.tokens, Some(9));
        assert_eq!(merged.delay_ms, Some(7));
    }
}
