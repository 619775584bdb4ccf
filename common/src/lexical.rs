//! Lexical ranking: BM25 over the full-text vectors Postgres keeps per chunk (`chunks.tsv`,
//! built in the knowledge base's language, so stemming and stop words are Postgres's). Postgres
//! stays the source of truth and does the language analysis of documents and queries; the
//! scoring runs in memory over an inverted index per base, rebuilt from the stored vectors when
//! the base's `embeddings_version` changes (as the vectors are). Scoring BM25 in SQL had to read
//! and unnest every matching chunk's vector: 8.8 s for a common-word question at 100,000 chunks;
//! here a query walks only the posting lists of its own lexemes
//! (`examples/lexical_bench.rs` measures it).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use uuid::Uuid;

use crate::db;

/// BM25 term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25 length normalisation (0: none, 1: full).
pub const B: f32 = 0.75;
/// How much more an occurrence in the chunk's heading path counts than one in its text: the
/// heading names what the section answers.
pub const HEADING_WEIGHT: f32 = 3.0;

/// One lexeme of a stored `tsvector`: occurrences in the heading path (weight A) and in the
/// text (the other weights).
#[derive(Debug, Clone, PartialEq)]
pub struct Lexeme {
    /// The lexeme, as Postgres normalised it.
    pub text: String,
    /// Occurrences in the heading path.
    pub heading: u32,
    /// Occurrences in the text.
    pub body: u32,
}

/// Parses the text form of a `tsvector` (`'lexeme':1A,5 'other':3 'bare'`). A lexeme without
/// positions counts once, in the text.
pub fn parse_tsvector(text: &str) -> Vec<Lexeme> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('\'') {
            break;
        }
        let mut lexeme = String::new();
        loop {
            match chars.next() {
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    lexeme.push('\'');
                }
                Some('\'') | None => break,
                Some('\\') => {
                    if let Some(c) = chars.next() {
                        lexeme.push(c);
                    }
                }
                Some(c) => lexeme.push(c),
            }
        }
        let (mut heading, mut body) = (0, 0);
        if chars.peek() == Some(&':') {
            chars.next();
            let mut positions = String::new();
            while chars.peek().is_some_and(|c| !c.is_whitespace()) {
                positions.push(chars.next().unwrap_or(' '));
            }
            for p in positions.split(',') {
                if p.ends_with('A') {
                    heading += 1;
                } else {
                    body += 1;
                }
            }
        } else {
            body = 1;
        }
        out.push(Lexeme { text: lexeme, heading, body });
    }
    out
}

/// An in-memory BM25 index over one base's chunks.
pub struct Bm25Index {
    /// Document length (weighted occurrences) of each chunk, by position.
    lens: Vec<f32>,
    /// Mean of `lens`.
    avg_len: f32,
    /// For each lexeme, `(chunk position, weighted occurrences)`.
    postings: HashMap<String, Vec<(u32, f32)>>,
}

impl Bm25Index {
    /// Builds the index from each chunk's parsed `tsvector`, by position.
    pub fn new(docs: impl IntoIterator<Item = Vec<Lexeme>>) -> Self {
        let mut lens = Vec::new();
        let mut postings: HashMap<String, Vec<(u32, f32)>> = HashMap::new();
        for (i, lexemes) in docs.into_iter().enumerate() {
            let mut len = 0.0;
            for l in lexemes {
                let tf = l.body as f32 + HEADING_WEIGHT * l.heading as f32;
                len += tf;
                postings.entry(l.text).or_default().push((i as u32, tf));
            }
            lens.push(len);
        }
        let avg_len = if lens.is_empty() { 1.0 } else { (lens.iter().sum::<f32>() / lens.len() as f32).max(1.0) };
        Self { lens, avg_len, postings }
    }

    /// Chunks.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether it holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The `k` best chunks for the query's lexemes (each counted once), best first, as
    /// `(position, score)`; only chunks holding at least one of them.
    pub fn search(&self, terms: &[String], k: usize) -> Vec<(usize, f32)> {
        let n = self.lens.len() as f32;
        // A dense accumulator: a common word's posting list can hold most of the base.
        let mut scores = vec![0f32; self.lens.len()];
        let mut seen = std::collections::HashSet::new();
        for term in terms {
            if !seen.insert(term) {
                continue;
            }
            let Some(list) = self.postings.get(term) else { continue };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in list {
                let norm = K1 * (1.0 - B + B * self.lens[doc as usize] / self.avg_len);
                scores[doc as usize] += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut out: Vec<(usize, f32)> = scores.into_iter().enumerate().filter(|(_, s)| *s > 0.0).collect();
        let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if out.len() > k && k > 0 {
            out.select_nth_unstable_by(k - 1, by_score);
            out.truncate(k);
        }
        out.sort_by(by_score);
        out
    }
}

struct CachedBase {
    version: i64,
    ids: Vec<Uuid>,
    index: Bm25Index,
}

/// The BM25 index of each base, built on first use and rebuilt when the base's
/// `embeddings_version` changes. One per process ([`LexicalCache::global`]).
#[derive(Default)]
pub struct LexicalCache {
    bases: Mutex<HashMap<Uuid, Arc<CachedBase>>>,
}

impl LexicalCache {
    /// The process's cache. A static rather than a field of the API and worker states, because
    /// both reach retrieval through [`crate::retrieval::search`] and neither needs to know how
    /// the lexical side is kept; bases are keyed by id, unique across databases.
    pub fn global() -> &'static LexicalCache {
        static CACHE: OnceLock<LexicalCache> = OnceLock::new();
        CACHE.get_or_init(LexicalCache::default)
    }

    /// Top `k` chunk ids by BM25 across `kb_ids`, each base analysing the query in its own
    /// language, best first.
    pub async fn search(
        &self,
        pool: &sqlx::PgPool,
        kb_ids: &[Uuid],
        query: &str,
        k: usize,
    ) -> Result<Vec<(Uuid, f32)>, sqlx::Error> {
        let mut out = Vec::new();
        for (kb, version, terms) in db::knowledge::query_lexemes(pool, kb_ids, query).await? {
            if terms.is_empty() {
                continue;
            }
            let cached = self.bases.lock().unwrap_or_else(|p| p.into_inner()).get(&kb).cloned();
            let base = match cached {
                Some(b) if b.version == version => b,
                _ => {
                    let started = Instant::now();
                    let (version, rows) = db::knowledge::load_tsvectors(pool, kb).await?;
                    let (ids, tsvs): (Vec<Uuid>, Vec<String>) = rows.into_iter().unzip();
                    let index = Bm25Index::new(tsvs.iter().map(|t| parse_tsvector(t)));
                    tracing::info!(kb.id = %kb, chunks = ids.len(), ms = started.elapsed().as_millis() as u64, "lexical index built");
                    let base = Arc::new(CachedBase { version, ids, index });
                    self.bases.lock().unwrap_or_else(|p| p.into_inner()).insert(kb, base.clone());
                    base
                }
            };
            out.extend(base.index.search(&terms, k).into_iter().map(|(i, s)| (base.ids[i], s)));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(text: &str, heading: u32, body: u32) -> Lexeme {
        Lexeme { text: text.into(), heading, body }
    }

    #[test]
    fn tsvector_text_is_parsed_with_heading_and_body_counts() {
        let parsed = parse_tsvector("'debian':1A,4,7 'it''s':2 'bare' 'x\\\\y':3B");
        assert_eq!(parsed, vec![lex("debian", 1, 2), lex("it's", 0, 1), lex("bare", 0, 1), lex("x\\y", 0, 1)]);
        assert!(parse_tsvector("").is_empty());
    }

    #[test]
    fn bm25_prefers_rare_terms_short_chunks_and_headings() {
        let docs = vec![
            vec![lex("debian", 0, 1), lex("common", 0, 1)],
            vec![lex("debian", 0, 1), lex("rare", 0, 1)],
            vec![lex("debian", 0, 1), lex("common", 0, 1), lex("filler", 0, 20)],
            vec![lex("debian", 0, 1), lex("other", 0, 1)],
        ];
        let index = Bm25Index::new(docs.clone());
        // "rare" is in one chunk, "debian" in all: the rare term decides.
        assert_eq!(index.search(&["debian".into(), "rare".into()], 1)[0].0, 1);
        // Same terms, the shorter chunk first.
        let hits = index.search(&["common".into()], 5);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 2]);
        // A term in the heading outweighs the same term in the text.
        let index =
            Bm25Index::new(vec![vec![lex("apt", 0, 1), lex("x", 0, 3)], vec![lex("apt", 1, 0), lex("x", 0, 3)]]);
        assert_eq!(index.search(&["apt".into()], 2)[0].0, 1);
        // A repeated query term counts once; no term, no result.
        assert_eq!(index.search(&["apt".into(), "apt".into()], 2).len(), 2);
        assert!(index.search(&["absent".into()], 2).is_empty());
    }
}
