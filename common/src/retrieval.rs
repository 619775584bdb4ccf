//! Hybrid retrieval over knowledge bases: BM25 over Postgres full-text vectors
//! ([`crate::lexical`]) plus exact cosine similarity over vectors held in memory, fused with
//! weighted reciprocal rank fusion; and the parsing of `[n]` citation markers in answers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;
use uuid::Uuid;

use crate::{
    ann::{self, AnnSettings},
    db::{self, knowledge::ChunkHit},
    provider::{Provider, ProviderError},
};

/// RRF constant (Cormack et al. 2009).
pub const RRF_K: f32 = 60.0;
/// Candidates taken from each of the two searches before fusion.
pub const CANDIDATES: usize = 50;

/// A nearest-neighbour index over one base's vectors: [`ExactIndex`] for small bases, an HNSW
/// graph ([`crate::ann`]) for large ones.
pub trait VectorIndex: Send + Sync {
    /// The `k` entries most similar to `query` (unit length), best first, as
    /// `(position, score)`.
    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)>;
    /// Number of vectors.
    fn len(&self) -> usize;
    /// Whether it holds no vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Which search answers now (`exact` or `hnsw`), for logs and tests.
    fn kind(&self) -> &'static str {
        "exact"
    }
}

/// Exact cosine search over unit-length vectors in one contiguous matrix.
pub struct ExactIndex {
    dims: usize,
    data: Vec<f32>,
}

impl ExactIndex {
    /// Builds the index; vectors of another length than the first are skipped (as zeros).
    pub fn new(vectors: &[Vec<f32>]) -> Self {
        let dims = vectors.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(dims * vectors.len());
        for v in vectors {
            if v.len() == dims {
                data.extend_from_slice(v);
            } else {
                data.extend(std::iter::repeat_n(0.0, dims));
            }
        }
        Self { dims, data }
    }

    /// Length of every vector (0 for an empty index).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Vector number `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }
}

/// Dot product with 16 independent accumulators, so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

impl VectorIndex for ExactIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        if self.dims == 0 || query.len() != self.dims || k == 0 {
            return Vec::new();
        }
        let mut scored: Vec<(usize, f32)> =
            self.data.chunks_exact(self.dims).map(|row| dot(row, query)).enumerate().collect();
        let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1);
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score);
            scored.truncate(k);
        }
        scored.sort_by(by_score);
        scored
    }

    fn len(&self) -> usize {
        self.data.len().checked_div(self.dims).unwrap_or(0)
    }
}

struct CachedBase {
    version: i64,
    ids: Vec<Uuid>,
    index: Box<dyn VectorIndex>,
}

/// The vectors of each base, loaded on first use and reloaded when the base's
/// `embeddings_version` changes. One per process.
#[derive(Default)]
pub struct VectorCache {
    bases: Mutex<HashMap<Uuid, Arc<CachedBase>>>,
    /// Which bases get an approximate index.
    ann: AnnSettings,
}

impl VectorCache {
    /// An empty cache whose large bases get HNSW indexes as `ann` says.
    pub fn new(ann: AnnSettings) -> Self {
        Self { bases: Mutex::default(), ann }
    }

    /// The kind (`exact`, `hnsw`) and size of the index cached for `kb`, if any.
    pub fn index_kind(&self, kb: Uuid) -> Option<(&'static str, usize)> {
        let bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.get(&kb).map(|b| (b.index.kind(), b.index.len()))
    }

    /// Top `k` chunk ids by cosine similarity across `kb_ids`, best first.
    pub async fn search(
        &self,
        pool: &sqlx::PgPool,
        kb_ids: &[Uuid],
        query: &[f32],
        k: usize,
    ) -> Result<Vec<(Uuid, f32)>, RetrievalError> {
        let mut out = Vec::new();
        for (kb, version) in db::knowledge::kb_versions(pool, kb_ids).await? {
            let cached = self.bases.lock().unwrap_or_else(|p| p.into_inner()).get(&kb).cloned();
            let base = match cached {
                Some(b) if b.version == version => b,
                _ => {
                    let started = Instant::now();
                    let (version, rows) = db::knowledge::load_vectors(pool, kb).await?;
                    let (ids, vectors): (Vec<Uuid>, Vec<Vec<f32>>) = rows.into_iter().unzip();
                    let ann = self.ann;
                    let index = tokio::task::spawn_blocking(move || ann::index_for(&vectors, ann))
                        .await
                        .map_err(RetrievalError::Index)?;
                    tracing::info!(kb.id = %kb, vectors = ids.len(), ms = started.elapsed().as_millis() as u64, "vectors loaded");
                    let base = Arc::new(CachedBase { version, ids, index });
                    self.bases.lock().unwrap_or_else(|p| p.into_inner()).insert(kb, base.clone());
                    base
                }
            };
            let query = query.to_vec();
            let b = base.clone();
            let hits =
                tokio::task::spawn_blocking(move || b.index.search(&query, k)).await.map_err(RetrievalError::Index)?;
            out.extend(hits.into_iter().map(|(i, s)| (base.ids[i], s)));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.truncate(k);
        Ok(out)
    }
}

/// Reciprocal rank fusion of ranked id lists: `score = Σ 1 / (RRF_K + rank)`, rank from 1.
pub fn rrf(lists: &[&[Uuid]]) -> Vec<(Uuid, f32)> {
    let weighted: Vec<(f32, &[Uuid])> = lists.iter().map(|l| (1.0, *l)).collect();
    weighted_rrf(&weighted)
}

/// Weighted reciprocal rank fusion: `score = Σ weight / (RRF_K + rank)`, rank from 1.
pub fn weighted_rrf(lists: &[(f32, &[Uuid])]) -> Vec<(Uuid, f32)> {
    let mut scores: HashMap<Uuid, f32> = HashMap::new();
    for (weight, list) in lists {
        for (rank, id) in list.iter().enumerate() {
            *scores.entry(*id).or_default() += weight / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(Uuid, f32)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

/// A retrieved passage with its fused score.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// The chunk.
    pub chunk: ChunkHitOut,
    /// RRF score.
    pub score: f32,
}

/// The serialisable part of a chunk hit.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkHitOut {
    /// Chunk id.
    pub chunk_id: Uuid,
    /// Document id.
    pub document_id: Uuid,
    /// File name.
    pub filename: String,
    /// Page or heading path.
    pub location: Option<String>,
    /// Text.
    pub content: String,
    /// Tokens of the text.
    #[serde(skip)]
    pub token_count: i32,
}

impl From<ChunkHit> for ChunkHitOut {
    fn from(c: ChunkHit) -> Self {
        Self {
            chunk_id: c.id,
            document_id: c.document_id,
            filename: c.filename,
            location: c.location,
            content: c.content,
            token_count: c.token_count,
        }
    }
}

/// Why retrieval failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// Postgres.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Building or searching a vector index did not complete (it panicked, or the runtime is
    /// shutting down).
    #[error("vector index task failed: {0}")]
    Index(#[source] tokio::task::JoinError),
}

/// What a search did besides its results.
#[derive(Debug, Default, Clone)]
pub struct SearchStats {
    /// Tokens billed for embedding the query (0 when the vector side was skipped).
    pub embedding_tokens: u64,
    /// The embedding error that made the search keyword-only, if any.
    pub embedding_error: Option<ProviderError>,
}

/// The weights of the two rankings in the fusion. A weight of 0 leaves that side out (the
/// query is then not embedded, or not searched by keyword).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    /// Weight of the BM25 ranking.
    pub keyword: f32,
    /// Weight of the vector ranking.
    pub vector: f32,
}

impl Fusion {
    /// Keyword (BM25) ranking only.
    pub const KEYWORD: Fusion = Fusion { keyword: 1.0, vector: 0.0 };
    /// Vector ranking only.
    pub const VECTOR: Fusion = Fusion { keyword: 0.0, vector: 1.0 };
    /// The default weights, tuned with `ops/eval/run` (see ops/eval/README.md): with lexical
    /// stand-in embeddings BM25 is the better ranker and the vectors break its ties.
    pub const DEFAULT: Fusion = Fusion { keyword: 1.0, vector: 0.05 };
}

/// Hybrid search across `kb_ids` (which share `model` and `dims`) with the given fusion
/// weights (`Config::knowledge.fusion` for answers): the `k` best live chunks, within
/// `max_tokens` when given. When the query cannot be embedded the search is keyword-only and
/// the error is reported in the stats.
#[expect(clippy::too_many_arguments)]
pub async fn search(
    pool: &sqlx::PgPool,
    provider: &Provider,
    cache: &VectorCache,
    kb_ids: &[Uuid],
    (model, dims): (&str, usize),
    query: &str,
    (k, max_tokens): (usize, Option<usize>),
    fusion: Fusion,
) -> Result<(Vec<Source>, SearchStats), RetrievalError> {
    let mut stats = SearchStats::default();
    if kb_ids.is_empty() || query.trim().is_empty() || k == 0 {
        return Ok((Vec::new(), stats));
    }
    let keyword: Vec<Uuid> = match fusion.keyword > 0.0 {
        true => crate::lexical::LexicalCache::global()
            .search(pool, kb_ids, query, CANDIDATES)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
        false => Vec::new(),
    };
    let semantic: Vec<Uuid> = match fusion.vector > 0.0 {
        false => Vec::new(),
        true => match provider.embed_with_retries(model, dims, &[query.to_string()], 3).await {
            Ok(mut e) => {
                stats.embedding_tokens = e.tokens;
                let mut v = e.vectors.pop().unwrap_or_default();
                normalize(&mut v);
                // A chunk with nothing in common with the query (cosine ≤ 0) is no candidate.
                let hits = cache.search(pool, kb_ids, &v, CANDIDATES).await?;
                hits.into_iter().filter(|(_, score)| *score > 0.0).map(|(id, _)| id).collect()
            }
            Err(e) => {
                tracing::warn!(code = %e.code, detail = %e.detail, "query embedding failed; keyword search only");
                stats.embedding_error = Some(e);
                Vec::new()
            }
        },
    };
    let fused = weighted_rrf(&[(fusion.vector, &semantic), (fusion.keyword, &keyword)]);
    let wanted: Vec<Uuid> = fused.iter().take(k * 3).map(|(id, _)| *id).collect();
    let mut hits: HashMap<Uuid, ChunkHit> =
        db::knowledge::chunks_by_ids(pool, &wanted).await?.into_iter().map(|c| (c.id, c)).collect();
    let mut out = Vec::new();
    let mut used = 0usize;
    for (id, score) in fused {
        let Some(hit) = hits.remove(&id) else { continue };
        if let Some(budget) = max_tokens {
            let cost = hit.token_count.max(0) as usize;
            // The best source is always kept so a large chunk never empties the context.
            if !out.is_empty() && used + cost > budget {
                continue;
            }
            used += cost;
        }
        out.push(Source { chunk: hit.into(), score });
        if out.len() == k {
            break;
        }
    }
    Ok((out, stats))
}

/// One `[n]` marker of an answer mapped to its source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    /// The source number as written in the answer (`[n]`).
    pub index: usize,
    /// Document.
    pub document_id: Uuid,
    /// Chunk.
    pub chunk_id: Uuid,
    /// File name.
    pub filename: String,
    /// Page or heading path.
    pub location: Option<String>,
    /// A passage of the chunk: the text the answer quoted from it, else its beginning.
    pub quote: String,
}

/// The distinct source numbers cited in `answer`, in order of first use. Understands `[1]`,
/// `[1][3]` and `[1, 3]`; ignores numbers outside `1..=sources` and markers in code spans.
pub fn cited_numbers(answer: &str, sources: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut in_code = false;
    let bytes = answer.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b'[' if !in_code => {
                if let Some(end) = answer[i + 1..].find(']') {
                    let inner = &answer[i + 1..i + 1 + end];
                    let nums: Option<Vec<usize>> = inner.split(',').map(|p| p.trim().parse::<usize>().ok()).collect();
                    if let Some(nums) = nums {
                        for n in nums {
                            if (1..=sources).contains(&n) && !out.contains(&n) {
                                out.push(n);
                            }
                        }
                        i += end + 2;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The citations of `answer` over `sources` (numbered from 1).
pub fn citations(answer: &str, sources: &[Source]) -> Vec<Citation> {
    cited_numbers(answer, sources.len())
        .into_iter()
        .map(|n| {
            let c = &sources[n - 1].chunk;
            Citation {
                index: n,
                document_id: c.document_id,
                chunk_id: c.chunk_id,
                filename: c.filename.clone(),
                location: c.location.clone(),
                quote: quote_for(answer, n, &c.content),
            }
        })
        .collect()
}

/// The text between double quotes before the first `[n]` of the answer when the chunk
/// contains it, else the chunk's first 200 characters.
fn quote_for(answer: &str, n: usize, content: &str) -> String {
    let marker = format!("[{n}]");
    if let Some(pos) = answer.find(&marker) {
        let before = &answer[..pos];
        let mut parts = before.rsplit('"');
        let _after_quote = parts.next();
        if let Some(quoted) = parts.next() {
            let quoted = quoted.trim();
            if quoted.len() >= 8 && content.contains(quoted) {
                return quoted.to_string();
            }
        }
    }
    let start: String = content.chars().take(200).collect();
    start.trim().to_string()
}

/// The system-prompt block numbering the sources, in the format the fake server reads:
/// each source starts on a line `[n] filename (location)`, its text follows.
pub fn sources_prompt(sources: &[Source]) -> String {
    let mut s = String::from(
        "Answer from the numbered sources below when they are relevant. After each statement taken \
         from a source, cite it with its number in square brackets, like [1]. If the sources do not \
         cover the question, say so.\n\nSources:\n",
    );
    for (i, src) in sources.iter().enumerate() {
        let c = &src.chunk;
        let loc = c.location.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
        s.push_str(&format!("\n[{}] {}{}\n{}\n", i + 1, c.filename, loc, c.content.trim()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citation_markers_are_parsed_in_every_form_and_out_of_range_ones_dropped() {
        assert_eq!(cited_numbers("a [2] b [1][3] c [2, 1]", 3), vec![2, 1, 3]);
        assert_eq!(cited_numbers("x [7] y [0] z [1]", 3), vec![1]);
        assert_eq!(cited_numbers("code `arr[1]` then [2]", 2), vec![2]);
        assert_eq!(cited_numbers("[see] [1", 2), Vec::<usize>::new());
    }

    #[test]
    fn rrf_rewards_agreement_between_lists() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let fused = rrf(&[&[a, b], &[b, c]]);
        assert_eq!(fused[0].0, b);
        assert!((fused[0].1 - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-6);
    }

    #[test]
    fn weighted_rrf_follows_the_heavier_ranking_and_breaks_its_ties_with_the_other() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        // The keyword ranking (weight 1) says a, b; the vector one (0.5) says b, a: a stays first.
        let fused = weighted_rrf(&[(1.0, &[a, b]), (0.5, &[b, a])]);
        assert_eq!(fused[0].0, a);
        // The keyword ranking ties nothing out; the vector ranking orders what it leaves out.
        let fused = weighted_rrf(&[(1.0, &[a]), (0.5, &[c, b])]);
        assert_eq!(fused.iter().map(|f| f.0).collect::<Vec<_>>(), [a, c, b]);
        // A zero weight leaves that ranking out of the order.
        let fused = weighted_rrf(&[(1.0, &[b, a]), (0.0, &[a, b])]);
        assert_eq!(fused[0].0, b);
    }

    #[test]
    fn exact_search_returns_the_nearest_vectors_first() {
        let mut vs = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.7, 0.7, 0.0]];
        vs.iter_mut().for_each(|v| normalize(v));
        let idx = ExactIndex::new(&vs);
        let hits = idx.search(&[1.0, 0.0, 0.0], 2);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn the_quote_is_the_quoted_text_when_the_chunk_contains_it() {
        let content = "Intro. The lion sleeps twenty hours a day. More text.";
        let q = quote_for("As written, \"The lion sleeps twenty hours a day.\" [1]", 1, content);
        assert_eq!(q, "The lion sleeps twenty hours a day.");
        let q = quote_for("Something else [1]", 1, content);
        assert!(content.starts_with(&q));
    }
}
