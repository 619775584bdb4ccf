//! HTML: refused past [`MAX_HTML_DEPTH`] nested elements (html2text recurses per level), page
//! furniture (navigation, tables of contents, scripts) dropped, then converted to Markdown-like
//! text with `html2text` in a thread with a large stack.

use super::{ExtractError, Extracted, Format, text::utf8, whole};
use chatq_common::domain::DocumentErrorCode;

/// HTML nested deeper than this is refused (html2text recurses per level).
pub const MAX_HTML_DEPTH: usize = 512;

/// An HTML document, as Markdown-like text.
pub async fn extract(bytes: Vec<u8>) -> Result<Extracted, ExtractError> {
    Ok(whole(html(bytes).await?, Format::Markdown))
}

/// The deepest element nesting of an HTML document, by a cheap tag scan.
pub fn html_depth(html: &str) -> usize {
    const VOID: [&str; 16] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
        "!doctype", "!--",
    ];
    let (mut depth, mut max) = (0usize, 0usize);
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if let Some(closing) = tag.strip_prefix('/') {
            if !closing.is_empty() {
                depth = depth.saturating_sub(1);
            }
        } else {
            let name: String =
                tag.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect::<String>().to_ascii_lowercase();
            if !name.is_empty() && !tag.ends_with('/') && !VOID.iter().any(|v| name.starts_with(v)) {
                depth += 1;
                max = max.max(depth);
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    max
}

/// HTML → Markdown-like text (headings kept as `#`), the `<title>` as a top heading.
async fn html(bytes: Vec<u8>) -> Result<String, ExtractError> {
    let text = utf8(bytes)?;
    let depth = html_depth(&text);
    if depth > MAX_HTML_DEPTH {
        return Err(ExtractError::new(
            DocumentErrorCode::HtmlTooDeeplyNested,
            format!("the HTML nests elements {depth} levels deep (limit {MAX_HTML_DEPTH})"),
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("html2text".into()).stack_size(256 << 20).spawn(move || {
        let result = std::panic::catch_unwind(|| {
            let title = html_title(&text);
            let text = strip_boilerplate(&text);
            html2text::config::plain().string_from_read(text.as_bytes(), 10_000).map(|body| match title {
                Some(t) if !body.contains(&t) => format!("# {t}\n\n{body}"),
                _ => body,
            })
        });
        let _ = tx.send(result);
    });
    if spawned.is_err() {
        return Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, "cannot start the HTML converter"));
    }
    match rx.await {
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(e))) => {
            Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, format!("the HTML cannot be read: {e}")))
        }
        _ => Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, "the HTML converter crashed on this file")),
    }
}

/// Drops page furniture before conversion: `<nav>`, `<header>`, `<footer>`, `<script>`,
/// `<style>`, and elements whose class names a navigation bar or table of contents (they list
/// every section title and would match every question).
pub fn strip_boilerplate(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut pos = 0;
    let mut search = 0;
    while let Some(rel) = lower[search..].find('<') {
        let start = search + rel;
        let Some(end_rel) = lower[start..].find('>') else { break };
        let tag = &lower[start + 1..start + end_rel];
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        let class = tag
            .split("class=")
            .nth(1)
            .map(|c| c.trim_start_matches(['"', '\'']).split(['"', '\'']).next().unwrap_or(""));
        let furniture = matches!(name.as_str(), "nav" | "header" | "footer" | "script" | "style")
            || class.is_some_and(|c| c.split_whitespace().any(|w| w.starts_with("nav") || w == "toc"));
        if !name.is_empty() && furniture && !tag.ends_with('/') {
            // Skip to the matching close tag, counting nested elements of the same name.
            let (open, close) = (format!("<{name}"), format!("</{name}"));
            let mut depth = 0usize;
            let mut i = start;
            let mut skip_to = None;
            while i < lower.len() {
                let next_open = lower[i..].find(&open).map(|r| i + r);
                let next_close = lower[i..].find(&close).map(|r| i + r);
                match (next_open, next_close) {
                    (Some(o), Some(c)) if o < c => {
                        depth += 1;
                        i = o + open.len();
                    }
                    (_, Some(c)) => {
                        depth = depth.saturating_sub(1);
                        i = c + close.len();
                        if depth == 0 {
                            skip_to = lower[i..].find('>').map(|r| i + r + 1);
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if let Some(to) = skip_to {
                out.push_str(&html[pos..start]);
                pos = to;
                search = to;
                continue;
            }
        }
        search = start + end_rel + 1;
    }
    out.push_str(&html[pos..]);
    out
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let title = html[open_end..close].split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn navigation_and_tables_of_contents_are_dropped_from_html() {
        let html = "<body><div class=\"navheader\"><table><tr><td>Prev</td></tr></table></div>\
            <div class=\"toc\"><div><a>1.1 All titles</a></div></div><h1>Real</h1><p>Body text.</p>\
            <nav>menu</nav><footer>foot</footer></body>";
        assert_eq!(strip_boilerplate(html), "<body><h1>Real</h1><p>Body text.</p></body>");
        assert_eq!(strip_boilerplate("<p>plain</p>"), "<p>plain</p>");
    }

    #[test]
    fn html_depth_counts_open_elements() {
        assert_eq!(html_depth("<html><body><p>a<br>b</p><img src=x/></body></html>"), 3);
        assert_eq!(html_depth(&"<div>".repeat(1000)), 1000);
    }
}
