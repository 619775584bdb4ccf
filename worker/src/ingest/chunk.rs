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
        let mut locator = Locator::new(s);
        let pieces: Vec<_> = match s.format {
            Format::Markdown => md.chunk_char_indices(&s.text).collect(),
            Format::Plain => plain.chunk_char_indices(&s.text).collect(),
        };
        for p in pieces {
            if p.chunk.trim().is_empty() {
                continue;
            }
            let location = locator.at(p.byte_offset);
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

/// Locates the chunks of one section. Chunks come in increasing offset order, so the line
/// count and the heading stack carry over from one chunk to the next: locating every chunk of a
/// section takes time linear in the section, not in sections × chunks.
struct Locator<'a> {
    /// The section's own location (a PDF page), which every chunk of it shares.
    fixed: Option<&'a str>,
    format: Format,
    text: &'a str,
    /// Byte offset up to which `line` counts newlines.
    counted_to: usize,
    /// Line (from 1) at `counted_to`.
    line: usize,
    /// `(byte offset, level, title)` of every Markdown heading.
    headings: Vec<(usize, usize, String)>,
    /// Headings before this index are on `stack`.
    next_heading: usize,
    /// The open headings: indexes into `headings`.
    stack: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(section: &'a Section) -> Self {
        let headings = match (&section.location, section.format) {
            (None, Format::Markdown) => headings(&section.text),
            _ => Vec::new(),
        };
        Self {
            fixed: section.location.as_deref(),
            format: section.format,
            text: &section.text,
            counted_to: 0,
            line: 1,
            headings,
            next_heading: 0,
            stack: Vec::new(),
        }
    }

    /// The location of the chunk starting at byte `at`: the page, the Markdown heading path in
    /// effect there, or `line N`.
    fn at(&mut self, at: usize) -> Option<String> {
        if let Some(fixed) = self.fixed {
            return Some(fixed.to_string());
        }
        match self.format {
            Format::Plain => {
                if at < self.counted_to {
                    (self.counted_to, self.line) = (0, 1);
                }
                self.line += self.text.as_bytes()[self.counted_to..at].iter().filter(|b| **b == b'\n').count();
                self.counted_to = at;
                Some(format!("line {}", self.line))
            }
            Format::Markdown => {
                // A heading that starts at the chunk's first byte is in effect for it.
                let at = at + 1;
                if self.next_heading > 0 && self.headings[self.next_heading - 1].0 >= at {
                    (self.next_heading, self.stack) = (0, Vec::new());
                }
                while let Some((offset, level, _)) = self.headings.get(self.next_heading) {
                    if *offset >= at {
                        break;
                    }
                    while self.stack.last().is_some_and(|&open| self.headings[open].1 >= *level) {
                        self.stack.pop();
                    }
                    self.stack.push(self.next_heading);
                    self.next_heading += 1;
                }
                (!self.stack.is_empty())
                    .then(|| self.stack.iter().map(|&i| self.headings[i].2.as_str()).collect::<Vec<_>>().join(" > "))
            }
        }
    }
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

    /// Locates chunks starting at each of `offsets` on another thread; `None` if that takes
    /// longer than `limit`.
    fn locate_within(section: Section, offsets: Vec<usize>, limit: std::time::Duration) -> Option<Vec<Option<String>>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut locator = Locator::new(&section);
            let _ = tx.send(offsets.into_iter().map(|o| locator.at(o)).collect());
        });
        rx.recv_timeout(limit).ok()
    }

    #[test]
    fn locating_the_chunks_of_a_large_text_takes_linear_time() {
        // 8 MB in 100 000 chunks: counting lines from the start for each chunk reads 400 GB.
        let text = "a line of plain text that is long enough to matter here, with words\n".repeat(120_000);
        let offsets: Vec<usize> = (0..100_000).map(|i| i * (text.len() / 100_000)).collect();
        let line_len = text.find('\n').unwrap() + 1;
        let expected = |o: usize| Some(format!("line {}", o / line_len + 1));
        let wanted: Vec<_> = offsets.iter().map(|&o| expected(o)).collect();
        let section = Section { location: None, text, format: Format::Plain };
        let found = locate_within(section, offsets, std::time::Duration::from_secs(20)).expect("located within 20 s");
        assert_eq!(found, wanted);

        // 100 000 headings: walking them from the start for each chunk takes as long.
        let md: String =
            (0..100_000).map(|i| format!("# Part {i}\n\n## Sub {i}\n\nSome text of part {i}.\n\n")).collect();
        let offsets: Vec<usize> = md.match_indices("Some text").map(|(o, _)| o).collect();
        let section = Section { location: None, text: md, format: Format::Markdown };
        let found = locate_within(section, offsets, std::time::Duration::from_secs(20)).expect("located within 20 s");
        assert_eq!(found.len(), 100_000);
        assert_eq!(found[0].as_deref(), Some("Part 0 > Sub 0"));
        assert_eq!(found[99_999].as_deref(), Some("Part 99999 > Sub 99999"));
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
