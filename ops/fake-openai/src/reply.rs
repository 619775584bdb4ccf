//! The deterministic reply text: `Echo: <last user message>` padded with filler words,
//! or the whole received history for `echo=prompt`.

use serde_json::Value;

use crate::directive::extract;

/// Words appended after the echo until the reply is long enough, in this order, cycling.
pub const FILLER: [&str; 19] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
];

/// One chat message as the fake understands it.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub role: String,
    /// Text content: a string, or the `text` of every text part joined by newlines.
    pub content: String,
}

impl Message {
    /// Reads `{role, content}`; content may be a string, null, or an array of parts.
    pub fn from_value(value: &Value) -> Option<Self> {
        let role = value.get("role")?.as_str()?.to_owned();
        let content = match value.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
            }
            _ => String::new(),
        };
        Some(Self { role, content })
    }
}

/// Reply for a normal request: `Echo:`, the echoed words, then filler, cut to `tokens`
/// words. Each element is one streamed token: the first word bare, later words with a
/// leading space, so the tokens concatenate to the reply text.
pub(crate) fn echo_reply(echo: &str, tokens: usize) -> Vec<String> {
    let words =
        std::iter::once("Echo:").chain(echo.split_whitespace()).chain(FILLER.iter().copied().cycle()).take(tokens);
    words.enumerate().map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") }).collect()
}

/// Reply for `echo=prompt`: every message as a `role: content` line (directives removed,
/// whitespace collapsed), one token per word; a line's first word carries the newline.
pub(crate) fn prompt_reply(messages: &[Message]) -> Vec<String> {
    let mut out = Vec::new();
    for (line, message) in messages.iter().enumerate() {
        let (content, _) = extract(&message.content);
        let head = format!("{}:", message.role);
        out.push(if line == 0 { head } else { format!("\n{head}") });
        out.extend(content.split_whitespace().map(|w| format!(" {w}")));
    }
    out
}

/// Reply for a prompt with numbered sources (a line starting `[1] ` followed by the source's
/// text, as chatq's retrieval writes them): quotes the first sentence of source `n` (1 unless
/// `cite=N` says otherwise) and cites it, `According to the sources, "<sentence>" [n]`. The
/// quote is copied verbatim from the prompt. `None` when no message has a source `n`.
pub(crate) fn cited_reply(messages: &[Message], n: usize) -> Option<Vec<String>> {
    let sentence = messages.iter().find_map(|m| source_sentence(&m.content, n))?;
    Some(split_keeping_spaces(&format!("According to the sources, \"{sentence}\" [{n}]")))
}

fn is_source_header(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else { return false };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with("] ")
}

fn source_sentence(content: &str, n: usize) -> Option<String> {
    let header = format!("[{n}] ");
    let mut lines = content.lines().skip_while(|l| !l.starts_with(&header));
    lines.next()?;
    let body: Vec<&str> = lines.take_while(|l| !is_source_header(l)).map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = body.iter().find(|l| !l.starts_with('#') && l.len() >= 20).or(body.first())?;
    let end = line
        .char_indices()
        .find(|(i, c)| matches!(c, '.' | '?' | '!') && line[i + 1..].starts_with(' '))
        .map_or(line.len(), |(i, _)| i + 1);
    Some(line[..end].trim().to_string())
}

/// Splits text into stream tokens: each word with the whitespace before it, so the tokens
/// concatenate to exactly the text.
fn split_keeping_spaces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_space = false;
    for c in text.chars() {
        if c.is_whitespace() && !prev_space && !current.is_empty() && !current.chars().all(char::is_whitespace) {
            out.push(std::mem::take(&mut current));
        }
        prev_space = c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_with_sources_is_answered_by_quoting_source_one() {
        let system = "Answer from the sources.\n\nSources:\n\n[1] guide.md (Install)\n# Install\nShort.\nRun  the installer now. Then reboot.\n\n[2] other.txt\nNope.\n";
        let messages = [
            Message { role: "system".into(), content: system.into() },
            Message { role: "user".into(), content: "how?".into() },
        ];
        let reply = cited_reply(&messages, 1).unwrap();
        assert_eq!(reply.concat(), "According to the sources, \"Run  the installer now.\" [1]");
        assert!(cited_reply(&messages[1..], 1).is_none());
        // `cite=2`: source 2 is quoted and cited; a source that is not there gives no citation.
        let reply = cited_reply(&messages, 2).unwrap();
        assert_eq!(reply.concat(), "According to the sources, \"Nope.\" [2]");
        assert!(cited_reply(&messages, 3).is_none());
    }

    #[test]
    fn the_echo_is_padded_with_filler_to_the_requested_length() {
        assert_eq!(echo_reply("  hello\n there ", 5).concat(), "Echo: hello there lorem ipsum");
        assert_eq!(echo_reply("hello there", 2), ["Echo:", " hello"]);
        assert!(echo_reply("hello", 0).is_empty());
    }

    #[test]
    fn filler_cycles_when_the_reply_is_long() {
        let reply = echo_reply("", 1 + FILLER.len() + 1);
        assert_eq!(reply.last().map(String::as_str), Some(" lorem"));
    }

    #[test]
    fn prompt_replies_render_one_line_per_message_without_directives() {
        let messages = [
            Message { role: "system".into(), content: "be  terse".into() },
            Message { role: "user".into(), content: "hi [[fake echo=prompt]]".into() },
        ];
        assert_eq!(prompt_reply(&messages).concat(), "system: be terse\nuser: hi");
    }
}
