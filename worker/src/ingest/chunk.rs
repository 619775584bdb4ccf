//! Section-aware chunking, in the extractor child. Each section (a whole document, or a PDF
//! page) is cut at its headings into blocks: Markdown `#`–`####` (HTML is converted to Markdown
//! first), PDF outline titles when the PDF has an outline, else layout cues in plain text (a
//! numbered title alone at the start of its paragraph). A block that is only a heading joins the
//! block after it, two adjacent small blocks join, and a block larger than the token budget is
//! split with overlap; so a chunk never straddles two sections unless both are small. Every chunk
//! carries its heading path (`A > B`; `page N > A > B` for PDF; `line N` for plain text before
//! any heading), which the index and the embedding put in front of its text. Chunks are sent back
//! as [`Span`]s: exact byte and character ranges into the section's text.

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use super::{Chunking, Format, Section};

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

impl Piece {
    /// The text embedded for this chunk: its heading path (without the page or line part of
    /// the location), a blank line, then its content; so the section title is part of what the
    /// embedding matches. The full-text index weighs the location the same way (`tsv`).
    pub fn indexed_text(&self) -> String {
        match self.location.as_deref().map(heading_path).filter(|p| !p.is_empty()) {
            Some(path) => format!("{path}\n\n{}", self.content),
            None => self.content.clone(),
        }
    }
}

/// The heading path of a location: `page 3 > A > B` → `A > B`; `line 4` → empty.
pub fn heading_path(location: &str) -> &str {
    let is_position = |s: &str| {
        let mut words = s.split(' ');
        matches!(words.next(), Some("page" | "line"))
            && words.next().is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            && words.next().is_none()
    };
    match location.split_once(" > ") {
        Some((first, rest)) if is_position(first) => rest,
        _ if is_position(location) => "",
        _ => location,
    }
}

/// Where a chunk lies in its section, without its text: what the extractor child sends back,
/// so that the text of a chunk is not sent twice (chunks overlap) nor at all when the worker
/// already holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Byte range in its section.
    pub byte_start: usize,
    /// End of that range.
    pub byte_end: usize,
    /// Character range in its section.
    pub char_start: usize,
    /// End of that range.
    pub char_end: usize,
    /// Tokens (cl100k, the tokenizer of the embedding models).
    pub tokens: usize,
    /// Page, heading path or line.
    pub location: Option<String>,
}

impl Span {
    /// The chunk of `text` this span marks; `None` if the span does not fit `text`.
    pub fn piece(self, text: &str) -> Option<Piece> {
        let content = text.get(self.byte_start..self.byte_end)?.to_string();
        Some(Piece {
            content,
            tokens: self.tokens,
            char_start: self.char_start,
            char_end: self.char_end,
            location: self.location,
        })
    }
}

fn bpe() -> &'static tiktoken_rs::CoreBPE {
    tiktoken_rs::cl100k_base_singleton()
}

/// Deepest heading level that starts a block (h1–h4); h5 and h6 stay inside their block.
const MAX_LEVEL: usize = 4;

/// A heading in a section's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Heading {
    /// Byte offset where the heading starts.
    pub start: usize,
    /// Byte offset where the heading ends (its text, not the body after it).
    pub end: usize,
    /// 1 for the top level.
    pub level: usize,
    /// The title, whitespace collapsed.
    pub title: String,
}

/// A run of a section's text under one heading path.
#[derive(Debug, Clone)]
struct Block {
    /// Byte range in the section, whitespace trimmed.
    start: usize,
    end: usize,
    /// Heading path, `A > B`; empty before the first heading.
    path: String,
    /// Tokens of the text.
    tokens: usize,
    /// Whether the block holds nothing but its heading.
    heading_only: bool,
}

/// Splits each section at its headings, then into chunks within the token budget
/// (`chunking.max_tokens`, heading path included) with overlap where a block must be split.
/// One list of spans per section; the heading path carries over from one section to the next
/// (a PDF section that starts a page continues the heading open at the end of the last page).
pub fn spans(sections: &[Section], chunking: Chunking) -> Vec<Vec<Span>> {
    let bpe = bpe();
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::with_capacity(sections.len());
    for s in sections {
        let headings = match s.format {
            Format::Markdown => markdown_headings(&s.text),
            Format::Plain => match &s.outline {
                Some(outline) => outline_headings(&s.text, outline),
                None => plain_headings(&s.text),
            },
        };
        let blocks = merge(blocks(&s.text, &headings, &mut open, bpe), chunking.max_tokens);
        let mut pos = Position::default();
        let mut spans = Vec::new();
        for b in blocks {
            let path_tokens = if b.path.is_empty() { 0 } else { bpe.encode_ordinary(&b.path).len() + 2 };
            // The heading path goes in front of the text in the index and the embedding: it
            // counts against the budget, but never takes more than half of it.
            let budget = chunking.max_tokens.saturating_sub(path_tokens).max(chunking.max_tokens / 2).max(1);
            let text = &s.text[b.start..b.end];
            let pieces: Vec<(usize, &str)> = if b.tokens <= budget {
                vec![(0, text)]
            } else {
                let config = ChunkConfig::new(budget)
                    .with_sizer(bpe)
                    .with_overlap(chunking.overlap_tokens.min(budget / 2))
                    .expect("overlap < size");
                match s.format {
                    Format::Markdown => MarkdownSplitter::new(config).chunk_indices(text).collect(),
                    Format::Plain => TextSplitter::new(config).chunk_indices(text).collect(),
                }
            };
            for (offset, chunk) in pieces {
                if chunk.trim().is_empty() || is_table_of_contents(chunk) {
                    continue;
                }
                let start = b.start + offset;
                let end = start + chunk.len();
                let (char_start, line) = pos.at(&s.text, start);
                let location = match (s.location.as_deref(), b.path.is_empty()) {
                    (Some(page), false) => Some(format!("{page} > {}", b.path)),
                    (Some(page), true) => Some(page.to_string()),
                    (None, false) => Some(b.path.clone()),
                    (None, true) => (s.format == Format::Plain).then(|| format!("line {line}")),
                };
                spans.push(Span {
                    byte_start: start,
                    byte_end: end,
                    char_start,
                    char_end: char_start + chunk.chars().count(),
                    tokens: if offset == 0 && chunk.len() == text.len() {
                        b.tokens
                    } else {
                        bpe.encode_ordinary(chunk).len()
                    },
                    location,
                });
            }
        }
        out.push(spans);
    }
    out
}

/// Character offset and line of the chunks' starts, which only increase (an overlapping piece
/// starts after the one before it), so locating every chunk of a section takes time linear in
/// the section; a start before the last one would count again from the beginning.
#[derive(Default)]
struct Position {
    byte: usize,
    chars: usize,
    /// Line (from 0) at `byte`.
    line: usize,
}

impl Position {
    /// `(character offset, line from 1)` of byte `at` of `text`.
    fn at(&mut self, text: &str, at: usize) -> (usize, usize) {
        if at < self.byte {
            *self = Self::default();
        }
        let skipped = &text[self.byte..at];
        self.chars += skipped.chars().count();
        self.line += skipped.bytes().filter(|b| *b == b'\n').count();
        self.byte = at;
        (self.chars, self.line + 1)
    }
}

/// Cuts `text` at `headings` (levels up to [`MAX_LEVEL`]) into blocks, each with the heading
/// path in effect; `open` is the heading stack, carried in and out.
fn blocks(text: &str, headings: &[Heading], open: &mut Vec<(usize, String)>, bpe: &tiktoken_rs::CoreBPE) -> Vec<Block> {
    let cuts: Vec<&Heading> = headings.iter().filter(|h| h.level <= MAX_LEVEL).collect();
    let mut out = Vec::new();
    let path = |open: &[(usize, String)]| open.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" > ");
    let mut push = |start: usize, end: usize, path: String, heading_end: usize| {
        let raw = &text[start..end];
        let lead = raw.len() - raw.trim_start().len();
        let (start, end) = (start + lead, start + raw.trim_end().len());
        if start >= end {
            return;
        }
        let body = text.get(heading_end.max(start)..end).unwrap_or("");
        let heading_only = heading_end > start && body.trim().is_empty();
        if !heading_only && is_table_of_contents(&text[start..end]) {
            return;
        }
        out.push(Block { start, end, path, tokens: bpe.encode_ordinary(&text[start..end]).len(), heading_only });
    };
    let first = cuts.first().map_or(text.len(), |h| h.start);
    push(0, first, path(open), 0);
    for (i, h) in cuts.iter().enumerate() {
        while open.last().is_some_and(|(level, _)| *level >= h.level) {
            open.pop();
        }
        open.push((h.level, h.title.clone()));
        let end = cuts.get(i + 1).map_or(text.len(), |n| n.start);
        push(h.start, end, path(open), h.end);
    }
    out
}

/// Joins a block that is only a heading to the block after it when that one lies under it, and
/// two adjacent blocks that are both small (under a quarter of the budget), within the budget.
fn merge(blocks: Vec<Block>, max_tokens: usize) -> Vec<Block> {
    let small = max_tokens / 4;
    let mut out: Vec<Block> = Vec::with_capacity(blocks.len());
    for b in blocks {
        if let Some(last) = out.last_mut() {
            let fits = last.tokens + b.tokens <= max_tokens;
            let under = last.heading_only && b.path.starts_with(&last.path);
            // A heading-only block joins forward, never backward: it opens what follows it.
            if fits && (under || (last.tokens < small && b.tokens < small && !b.heading_only)) {
                last.end = b.end;
                last.tokens += b.tokens;
                if under {
                    last.path = b.path;
                }
                // A chain of headings without text (chapter, section) joins the first text.
                last.heading_only = under && b.heading_only;
                continue;
            }
        }
        out.push(b);
    }
    out
}

/// Whether a block is a table of contents: mostly numbered title lines. Such a block lists
/// every section title and would match every question.
/// Lines that start with a section number of two or more parts (`4.5 …`): a third of the lines
/// and at least five. Running text rarely has five; a table of contents (or a list of tables)
/// is made of them, with wrapped titles between.
fn is_table_of_contents(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let numbered = lines
        .iter()
        .filter(|l| {
            section_number(l.trim_start_matches(['*', '-', ' ', '#']))
                .is_some_and(|n| n.level >= 2 && !n.rest.is_empty())
        })
        .count();
    numbered >= 5 && numbered * 3 >= lines.len()
}

/// Markdown headings: `#` lines and setext headings, via pulldown-cmark.
pub fn markdown_headings(md: &str) -> Vec<Heading> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut out = Vec::new();
    let mut current: Option<Heading> = None;
    for (event, range) in Parser::new(md).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                current =
                    Some(Heading { start: range.start, end: range.end, level: level as usize, title: String::new() })
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = current.as_mut() {
                    c.title.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(mut c) = current.take() {
                    c.title = collapse(&c.title);
                    out.push(c);
                }
            }
            _ => {}
        }
    }
    out
}

/// Whitespace (no-break spaces included) collapsed to single spaces.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A section number at the start of a line: `4`, `4.5`, `4.5.`, `4.5.1.`; `A.` for appendices.
struct SectionNumber<'a> {
    /// Components of the number.
    level: usize,
    /// Whether the number ends with a dot (`4.5.`).
    dotted: bool,
    /// The title after it.
    rest: &'a str,
}

fn section_number(line: &str) -> Option<SectionNumber<'_>> {
    let mut level = 0;
    let mut i = 0;
    let bytes = line.as_bytes();
    let dotted;
    loop {
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 3 {
            return None;
        }
        level += 1;
        i += digits;
        let dot = bytes.get(i) == Some(&b'.');
        if dot && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        if dot {
            i += 1;
        }
        dotted = dot;
        break;
    }
    let rest = &line[i..];
    let title = rest.trim_start_matches(|c: char| c.is_whitespace());
    // A space must follow the number ("4.5 Title"), never a letter or a unit ("4.5kg").
    if title.len() == rest.len() && !title.is_empty() {
        return None;
    }
    (level <= 6).then_some(SectionNumber { level, dotted, rest: title.trim_end() })
}

/// Headings of plain text found by layout: a paragraph (after a blank line) whose first line,
/// at the left margin, is a numbered title (`4.5. Title`, `Chapter 4. Title`), alone or
/// wrapped over at most three lines ending with `?`, or at the head of a longer paragraph when
/// its number has at least two parts and it reads like a title (PDF text often loses the blank
/// line after a title). The level is the number of parts; chapters are level 1.
pub fn plain_headings(text: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut lines = Vec::new();
    for line in text.split_inclusive('\n') {
        lines.push((offset, line));
        offset += line.len();
    }
    let mut i = 0;
    while i < lines.len() {
        if lines[i].1.trim().is_empty() || (i > 0 && !lines[i - 1].1.trim().is_empty()) {
            i += 1;
            continue;
        }
        let para_len = lines[i..].iter().take_while(|(_, l)| !l.trim().is_empty()).count();
        let (start, first) = lines[i];
        let first_trimmed = first.trim_end();
        if let Some(h) = numbered_title(first_trimmed) {
            // A title wrapped over two or three lines ends its paragraph with a question mark
            // (FAQ titles); a one-line title is a paragraph of its own.
            let last_line = lines[i + para_len - 1].1.trim_end();
            let wrapped = para_len <= 3
                && last_line.ends_with('?')
                && lines[i..i + para_len].iter().map(|(_, l)| l.len()).sum::<usize>() <= 240
                && lines[i + 1..i + para_len].iter().all(|(_, l)| !l.starts_with(char::is_whitespace));
            let capitalised = h.1.starts_with(char::is_uppercase);
            let head_of_long = h.0 >= 2
                && (h.2 || capitalised)
                && first_trimmed.len() <= 100
                && !first_trimmed.ends_with(['.', ',', ';', ':']);
            if para_len == 1 || wrapped {
                let (last_start, last) = lines[i + para_len - 1];
                let end = last_start + last.trim_end().len();
                out.push(Heading { start, end, level: h.0, title: collapse(&text[start..end]) });
            } else if head_of_long {
                out.push(Heading {
                    start,
                    end: start + first_trimmed.len(),
                    level: h.0,
                    title: collapse(first_trimmed),
                });
            }
        }
        i += para_len.max(1);
    }
    out
}

/// `(level, title, dotted)` of a line that is a numbered title at the left margin: `4.5. Title`
/// or `Chapter 4. Title` / `Appendix A. Title` (level 1).
fn numbered_title(line: &str) -> Option<(usize, &str, bool)> {
    if line.starts_with(char::is_whitespace) || line.chars().count() > 200 {
        return None;
    }
    for word in ["Chapter", "CHAPTER", "Appendix", "APPENDIX"] {
        if let Some(rest) = line.strip_prefix(word) {
            let rest = rest.trim_start();
            let label = rest.split(|c: char| c.is_whitespace() || c == '.').next().unwrap_or("");
            let is_label = !label.is_empty()
                && (label.chars().all(|c| c.is_ascii_digit())
                    || (label.len() == 1 && label.chars().all(|c| c.is_ascii_uppercase())));
            return is_label.then_some((1, rest, true));
        }
    }
    let n = section_number(line)?;
    let starts_with_letter = n.rest.chars().next().is_some_and(|c| c.is_alphabetic() || c == '"' || c == '`');
    // A single number is a chapter only when it is dotted and followed by a capitalised title
    // ("3. Choosing"); otherwise it is a list item or a figure.
    let single_ok = n.level > 1 || (n.dotted && n.rest.chars().next().is_some_and(char::is_uppercase));
    (starts_with_letter && single_ok && !n.rest.ends_with([',', ';', ':'])).then_some((n.level, n.rest, n.dotted))
}

/// Headings of a PDF page from the document outline: each title the outline puts on this page,
/// in order, found as the first line (from where the previous one was found) whose text starts
/// with the title's beginning, only letters and digits compared, section numbers ignored. The heading's title is
/// the line as printed, so it keeps the section number the outline may leave out.
pub fn outline_headings(text: &str, outline: &[(usize, String)]) -> Vec<Heading> {
    let squash = |s: &str| {
        let s = s.trim_start();
        let s = section_number(s).map_or(s, |n| n.rest);
        // Letters and digits only: a PDF prints typographic quotes and dashes the outline may not.
        s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>()
    };
    let mut out = Vec::new();
    let mut offset = 0;
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .map(|l| {
            let o = offset;
            offset += l.len();
            (o, l)
        })
        .collect();
    let mut next_line = 0;
    for (level, title) in outline {
        let want: String = squash(title).chars().take(30).collect();
        if want.is_empty() {
            continue;
        }
        let found = lines[next_line..].iter().position(|(_, l)| {
            let have = squash(l);
            !have.is_empty() && (have.starts_with(&want) || (want.starts_with(&have) && have.chars().count() >= 8))
        });
        if let Some(i) = found {
            let (start, line) = lines[next_line + i];
            let printed = collapse(line);
            let title = if squash(&printed).starts_with(&squash(title)) { printed } else { collapse(title) };
            out.push(Heading { start, end: start + line.trim_end().len(), level: *level, title });
            next_line += i + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str, format: Format) -> Section {
        Section { location: None, text: text.into(), format, outline: None }
    }

    /// The pieces of `sections`, as the worker rebuilds them from the spans; checks that every
    /// character range marks the piece's text exactly.
    fn chunk(sections: &[Section], max_tokens: usize, overlap_tokens: usize) -> Vec<Piece> {
        let spans = spans(sections, Chunking { max_tokens, overlap_tokens });
        let mut out = Vec::new();
        for (s, spans) in sections.iter().zip(spans) {
            for span in spans {
                let piece = span.piece(&s.text).expect("span fits");
                // Checked on small texts only: counting characters from the start for each
                // chunk is quadratic.
                if s.text.len() < 100_000 {
                    let text: String =
                        s.text.chars().skip(piece.char_start).take(piece.char_end - piece.char_start).collect();
                    assert_eq!(text, piece.content, "the character range marks the chunk");
                }
                out.push(piece);
            }
        }
        out
    }

    fn words(n: usize, word: &str) -> String {
        (0..n).map(|i| format!("{word}{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn markdown_sections_become_their_own_chunks_with_their_heading_path() {
        let md = format!(
            "# Guide\n\n## Install\n\n{}\n\n### Network\n\n{}\n\n## Remove\n\n{}\n",
            words(20, "cd"),
            words(20, "netinst"),
            words(20, "purge")
        );
        let pieces = chunk(&[section(&md, Format::Markdown)], 120, 10);
        let locations: Vec<_> = pieces.iter().map(|p| p.location.as_deref().unwrap_or("")).collect();
        // "# Guide" holds only its title: it joins the section under it.
        assert_eq!(locations, ["Guide > Install", "Guide > Install > Network", "Guide > Remove"]);
        assert!(pieces[0].content.starts_with("# Guide") && pieces[0].content.contains("cd19"));
        assert!(!pieces[0].content.contains("netinst0"), "a chunk does not straddle two sections");
        assert!(pieces[1].content.starts_with("### Network") && !pieces[1].content.contains("purge0"));
    }

    #[test]
    fn small_adjacent_sections_share_a_chunk_and_large_ones_are_split_within_the_budget() {
        let md = format!("## A\n\nTiny.\n\n## B\n\nAlso tiny.\n\n## Big\n\n{}\n", words(400, "w"));
        let pieces = chunk(&[section(&md, Format::Markdown)], 100, 10);
        assert!(pieces[0].content.contains("Tiny.") && pieces[0].content.contains("Also tiny."));
        let big: Vec<_> = pieces.iter().filter(|p| p.location.as_deref() == Some("Big")).collect();
        assert!(big.len() >= 4, "{} pieces", big.len());
        let path_tokens = bpe().encode_ordinary("Big").len() + 2;
        for p in &big {
            assert!(p.tokens + path_tokens <= 100, "{} tokens", p.tokens);
            assert_eq!(p.tokens, bpe().encode_ordinary(&p.content).len());
        }
        assert!(big.last().unwrap().content.ends_with("w399"), "nothing is dropped");
    }

    #[test]
    fn plain_text_is_cut_at_numbered_titles_and_its_table_of_contents_is_dropped() {
        let toc: String = (1..=10).map(|i| format!("    1.{i}. Question {i}?\n")).collect();
        let text = format!(
            "The FAQ\n\nTable of Contents\n\n1. Basics\n{toc}\nChapter\u{a0}1.\u{a0}Basics\n\n1.1.\u{a0}What is this FAQ?\n\n    {}\n\n\
             1.2. What is the difference between this and other\ndistributions?\n\n    {}\n\n    1. an indented list item\n\n    {}\n",
            words(40, "faq"),
            words(40, "distro"),
            words(10, "more")
        );
        let pieces = chunk(&[section(&text, Format::Plain)], 200, 20);
        let locations: Vec<_> = pieces.iter().map(|p| p.location.clone().unwrap()).collect();
        assert_eq!(
            locations,
            [
                "Chapter 1. Basics > 1.1. What is this FAQ?",
                "Chapter 1. Basics > 1.2. What is the difference between this and other distributions?"
            ]
        );
        assert!(!pieces.iter().any(|p| p.content.contains("Question 3?")), "the table of contents is dropped");
        assert!(pieces[1].content.contains("indented list item") && pieces[1].content.contains("more9"));
    }

    #[test]
    fn plain_text_without_titles_is_located_by_line() {
        let text = "first line\nsecond line\n\nthird paragraph here with words\n".repeat(20);
        let pieces = chunk(&[section(&text, Format::Plain)], 30, 5);
        assert!(pieces.len() > 2);
        assert_eq!(pieces[0].location.as_deref(), Some("line 1"));
        assert!(pieces[1].location.as_deref().unwrap() > "line 1");
        assert!(pieces.iter().all(|p| p.tokens <= 30));
    }

    #[test]
    fn pdf_pages_carry_the_open_heading_over_and_use_the_outline_when_there_is_one() {
        let page = |n: u32, text: &str, outline: Option<Vec<(usize, String)>>| Section {
            location: Some(format!("page {n}")),
            text: text.into(),
            format: Format::Plain,
            outline,
        };
        let laid_out = [
            page(1, &format!("2.3 Getting the images\n{}\n", words(40, "iso")), None),
            page(2, &format!("{}\n\n2.4. Installing from CD\n\n{}\n", words(40, "more"), words(40, "cd")), None),
        ];
        let pieces = chunk(&laid_out, 200, 20);
        let locations: Vec<_> = pieces.iter().map(|p| p.location.clone().unwrap()).collect();
        assert_eq!(
            locations,
            ["page 1 > 2.3 Getting the images", "page 2 > 2.3 Getting the images", "page 2 > 2.4. Installing from CD"]
        );

        let outlined = [page(
            7,
            &format!("Why Debian\n{}\n3.2 Non-free software\n{}\n", words(40, "why"), words(40, "nonfree")),
            Some(vec![(1, "Why Debian".into()), (2, "Non-free  software".into())]),
        )];
        let pieces = chunk(&outlined, 200, 20);
        let locations: Vec<_> = pieces.iter().map(|p| p.location.clone().unwrap()).collect();
        // The printed title keeps the section number the outline leaves out.
        assert_eq!(locations, ["page 7 > Why Debian", "page 7 > Why Debian > 3.2 Non-free software"]);
        // With an outline, a page without outline entries has no headings (no layout guesses).
        let pieces = chunk(&[page(8, &format!("4.1 Looks like a title\n{}\n", words(40, "x")), Some(vec![]))], 200, 20);
        assert_eq!(pieces[0].location.as_deref(), Some("page 8"));
    }

    #[test]
    fn the_indexed_text_starts_with_the_heading_path_without_page_or_line() {
        let piece = |location: Option<&str>| Piece {
            content: "Body.".into(),
            tokens: 2,
            char_start: 0,
            char_end: 5,
            location: location.map(str::to_string),
        };
        assert_eq!(piece(Some("page 3 > A > B")).indexed_text(), "A > B\n\nBody.");
        assert_eq!(piece(Some("A > B")).indexed_text(), "A > B\n\nBody.");
        assert_eq!(piece(Some("line 4")).indexed_text(), "Body.");
        assert_eq!(piece(Some("page 2")).indexed_text(), "Body.");
        assert_eq!(piece(None).indexed_text(), "Body.");
    }

    #[test]
    fn tables_of_contents_are_told_from_text_with_a_few_references() {
        let toc = "Contents\n1 Basics\n1.1 What is this? . . . 1\n1.2 Why? . . . 2\nwrapped title\n1.3 How? . . . 3\n1.4 When? . . . 4\n2.1 Where? . . . 5\n";
        assert!(is_table_of_contents(toc));
        let text =
            "See 1.2 for details.\nThen read the rest of the chapter,\n1.3 explains it.\nMore text.\nEven more.\n";
        assert!(!is_table_of_contents(text));
    }

    #[test]
    fn numbered_titles_are_told_from_list_items_and_figures() {
        assert_eq!(numbered_title("4.5. Title here").map(|t| t.0), Some(2));
        assert_eq!(numbered_title("3.1.2 Sub title").map(|t| t.0), Some(3));
        assert_eq!(numbered_title("Chapter 7. Packages").map(|t| t.0), Some(1));
        assert_eq!(numbered_title("3. Choosing a distribution").map(|t| t.0), Some(1));
        assert!(numbered_title("1. install the package").is_none());
        assert!(numbered_title("2.5 million users,").is_none());
        assert!(numbered_title("4.5kg of paper").is_none());
        assert!(numbered_title("  4.5. Indented").is_none());
    }

    #[test]
    fn chunking_a_document_with_many_headings_takes_linear_time() {
        // 100 000 headings: walking them from the start for each chunk would take hours.
        let md: String =
            (0..100_000).map(|i| format!("# Part {i}\n\n## Sub {i}\n\nSome text of part {i}.\n\n")).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let s = section(&md, Format::Markdown);
            let _ = tx.send(chunk(&[s], 200, 20));
        });
        let pieces = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("chunked within 60 s");
        assert!(pieces.len() >= 20_000, "{} pieces", pieces.len());
        assert_eq!(pieces[0].location.as_deref(), Some("Part 0 > Sub 0"));
    }
}
