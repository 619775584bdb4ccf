//! HTML: converted in the [`sandbox`](super::sandbox) child process, so a document
//! that makes the converter loop, recurse or allocate without bound costs one killed child:
//! refused past [`MAX_HTML_DEPTH`] nested elements (html2text recurses per level), page
//! furniture (navigation, tables of contents, scripts) dropped, then converted to Markdown-like
//! text with `html2text` in a thread with a large stack.

use std::collections::HashMap;

use super::{ExtractError, Extracted, Format, text::utf8, whole};
use chatq_common::domain::DocumentErrorCode;

/// HTML nested deeper than this is refused (html2text recurses per level).
pub const MAX_HTML_DEPTH: usize = 512;

/// An HTML document as Markdown-like text (headings kept as `#`), the `<title>` as a top
/// heading; in the extractor child only.
pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    Ok(whole(html(bytes)?, Format::Markdown))
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

fn html(bytes: &[u8]) -> Result<String, ExtractError> {
    let text = utf8(bytes.to_vec())?;
    let depth = html_depth(&text);
    if depth > MAX_HTML_DEPTH {
        return Err(ExtractError::new(
            DocumentErrorCode::HtmlTooDeeplyNested,
            format!("the HTML nests elements {depth} levels deep (limit {MAX_HTML_DEPTH})"),
        ));
    }
    // html2text recurses per nesting level: a thread with a large stack.
    let converter = std::thread::Builder::new().name("html2text".into()).stack_size(256 << 20).spawn(move || {
        let title = html_title(&text);
        let text = strip_boilerplate(&text);
        html2text::config::plain().string_from_read(text.as_bytes(), 10_000).map(|body| match title {
            // The title is often the first heading again, with other spaces (no-break ones).
            Some(t) if !squashed(&body).contains(&squashed(&t)) => format!("# {t}\n\n{body}"),
            _ => body,
        })
    });
    let converter = converter
        .map_err(|_| ExtractError::new(DocumentErrorCode::HtmlUnreadable, "cannot start the HTML converter"))?;
    match converter.join() {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => {
            Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, format!("the HTML cannot be read: {e}")))
        }
        Err(_) => Err(ExtractError::new(DocumentErrorCode::HtmlUnreadable, "the HTML converter crashed on this file")),
    }
}

/// Drops page furniture before conversion: `<nav>`, `<header>`, `<footer>`, `<script>`,
/// `<style>`, and elements whose class names a navigation bar or table of contents (they list
/// every section title and would match every question). An element without a close tag is
/// kept. Linear in the document: one pass lists the tags, one pairs each open tag with its
/// close tag (a stack per element name), one copies what is not furniture.
pub fn strip_boilerplate(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let tags = tags(&lower);
    let mut open: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut close_of: Vec<Option<usize>> = vec![None; tags.len()];
    for (i, tag) in tags.iter().enumerate() {
        if tag.closing {
            if let Some(o) = open.get_mut(tag.name).and_then(Vec::pop) {
                close_of[o] = Some(i);
            }
        } else {
            open.entry(tag.name).or_default().push(i);
        }
    }
    let mut out = String::with_capacity(html.len());
    let mut pos = 0;
    for (tag, close) in tags.iter().zip(&close_of) {
        // Tags inside a dropped element are dropped with it.
        if tag.start < pos || !tag.furniture {
            continue;
        }
        if let Some(c) = close {
            out.push_str(&html[pos..tag.start]);
            pos = tags[*c].end;
        }
    }
    out.push_str(&html[pos..]);
    out
}

/// A tag of the lower-cased document.
struct Tag<'a> {
    /// Offset of its `<`.
    start: usize,
    /// Offset after its `>`.
    end: usize,
    /// Element name (letters and digits); empty for comments and doctypes.
    name: &'a str,
    /// `</name>`.
    closing: bool,
    /// An open tag of page furniture (see [`strip_boilerplate`]).
    furniture: bool,
}

/// Every tag with a name, in order; a `<` without a later `>` ends the scan.
fn tags(lower: &str) -> Vec<Tag<'_>> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(rel) = lower[search..].find('<') {
        let start = search + rel;
        let Some(end_rel) = lower[start..].find('>') else { break };
        let end = start + end_rel + 1;
        search = end;
        let body = &lower[start + 1..end - 1];
        let (closing, body) = match body.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let name_len = body.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(body.len());
        let name = &body[..name_len];
        if name.is_empty() {
            continue;
        }
        let class = body
            .split("class=")
            .nth(1)
            .map(|c| c.trim_start_matches(['"', '\'']).split(['"', '\'']).next().unwrap_or(""));
        let furniture = !closing
            && !body.ends_with('/')
            && (matches!(name, "nav" | "header" | "footer" | "script" | "style")
                || class.is_some_and(|c| c.split_whitespace().any(|w| w.starts_with("nav") || w == "toc")));
        out.push(Tag { start, end, name, closing, furniture });
    }
    out
}

/// `text` with all whitespace (no-break spaces included) removed.
fn squashed(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
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
    fn an_unclosed_furniture_element_is_kept_and_a_nested_one_goes_with_its_parent() {
        assert_eq!(strip_boilerplate("<p>a<nav>b</p>"), "<p>a<nav>b</p>");
        assert_eq!(strip_boilerplate("a<nav>b<nav>c</nav>d</nav>e<nav>f"), "ae<nav>f");
        assert_eq!(strip_boilerplate("a<div class=toc>b<div>c</div>d</div>e</div>"), "ae</div>");
    }

    #[test]
    fn cleaning_a_large_adversarial_document_takes_linear_time() {
        // Every `<nav>` is unclosed: looking for each one's close tag to the end of the
        // document takes hours on these 4.5 MB; one linear pass takes well under a second.
        let html = format!("<html><body>{}</body></html>", "<nav></x>".repeat(500_000));
        let (tx, rx) = std::sync::mpsc::channel();
        let input = html.clone();
        std::thread::spawn(move || tx.send(strip_boilerplate(&input)));
        let started = std::time::Instant::now();
        let cleaned = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the clean-up finishes within 20 s");
        eprintln!("cleaned {} bytes in {:?}", html.len(), started.elapsed());
        assert_eq!(cleaned, html, "nothing is closed, so nothing is dropped");
    }

    #[test]
    fn html_depth_counts_open_elements() {
        assert_eq!(html_depth("<html><body><p>a<br>b</p><img src=x/></body></html>"), 3);
        assert_eq!(html_depth(&"<div>".repeat(1000)), 1000);
    }
}
