//! Chunking: sections split into token-sized pieces with overlap (Markdown-aware where the
//! text is Markdown), each located by page, heading path (`A > B`) or line.

use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use super::{Format, Section};

/// A chunk before embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Text.
    pub content: String,
    /// Tokens (cl100k, the tokenizer of the embedding models).
    pub tokens: usize,
    /// Character range in its section.
    pub char_start: usize,
    /// End of that range.
    pub char_end: usize,
    /// Page, heading path or line.
    pub location: Option<String>,
}

fn bpe() -> &'static tiktoken_rs::CoreBPE {
    tiktoken_rs::cl100k_base_singleton()
}

/// Splits sections into token-sized chunks with overlap, each with a location: the page, the
/// Markdown heading path in effect where it starts (`A > B`), or `line N` for plain text.
pub fn chunk(sections: &[Section], max_tokens: usize, overlap: usize) -> Vec<Piece> {
    let bpe = bpe();
    let config = || ChunkConfig::new(max_tokens).with_sizer(bpe).with_overlap(overlap).expect("overlap < size");
    let md = MarkdownSplitter::new(config());
    let plain = TextSplitter::new(config());
    let mut out = Vec::new();
    for s in sections {
        let headings = if s.format == Format::Markdown { headings(&s.text) } else { Vec::new() };
        let pieces: Vec<_> = match s.format {
            Format::Markdown => md.chunk_char_indices(&s.text).collect(),
            Format::Plain => plain.chunk_char_indices(&s.text).collect(),
        };
        for p in pieces {
            if p.chunk.trim().is_empty() {
                continue;
            }
            let location = match (&s.location, s.format) {
                (Some(l), _) => Some(l.clone()),
                (None, Format::Markdown) => heading_path(&headings, p.byte_offset + 1),
                (None, Format::Plain) => Some(format!("line {}", s.text[..p.byte_offset].matches('\n').count() + 1)),
            };
            out.push(Piece {
                content: p.chunk.to_string(),
                tokens: bpe.encode_ordinary(p.chunk).len(),
                char_start: p.char_offset,
                char_end: p.char_offset + p.chunk.chars().count(),
                location,
            });
        }
    }
    out
}

/// `(byte offset, level, title)` of every Markdown heading.
fn headings(md: &str) -> Vec<(usize, usize, String)> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut out = Vec::new();
    let mut current: Option<(usize, usize, String)> = None;
    for (event, range) in Parser::new(md).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => current = Some((range.start, level as usize, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = current.as_mut() {
                    c.2.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(c) = current.take() {
                    out.push((c.0, c.1, c.2.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

/// The heading path in effect before byte `at`.
fn heading_path(headings: &[(usize, usize, String)], at: usize) -> Option<String> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (offset, level, title) in headings {
        if *offset >= at {
            break;
        }
        while stack.last().is_some_and(|(l, _)| l >= level) {
            stack.pop();
        }
        stack.push((*level, title));
    }
    (!stack.is_empty()).then(|| stack.iter().map(|(_, t)| *t).collect::<Vec<_>>().join(" > "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_chunks_carry_their_heading_path() {
        let md = "# Guide\n\nIntro text.\n\n## Install\n\nRun the installer from the CD.\n\n### Network\n\nUse the netinst image.\n\n## Remove\n\nDelete it.\n";
        let pieces = chunk(&[Section { location: None, text: md.into(), format: Format::Markdown }], 12, 0);
        let find = |needle: &str| pieces.iter().find(|p| p.content.contains(needle)).unwrap().location.clone();
        assert_eq!(find("netinst").as_deref(), Some("Guide > Install > Network"));
        assert_eq!(find("Delete it").as_deref(), Some("Guide > Remove"));
        for p in &pieces {
            let text: String = md.chars().skip(p.char_start).take(p.char_end - p.char_start).collect();
            assert_eq!(text, p.content);
        }
    }

    #[test]
    fn plain_chunks_know_their_line() {
        let text = "first line\nsecond line\n\nthird paragraph here with words\n".repeat(20);
        let pieces = chunk(&[Section { location: None, text, format: Format::Plain }], 30, 5);
        assert!(pieces.len() > 2);
        assert_eq!(pieces[0].location.as_deref(), Some("line 1"));
        assert!(pieces.iter().all(|p| p.tokens <= 30));
    }
}
