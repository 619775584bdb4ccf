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

#[cfg(test)]
mod tests {
    use super::*;

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
