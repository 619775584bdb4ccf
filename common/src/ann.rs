//! Approximate nearest-neighbour search for large knowledge bases: an HNSW graph
//! (`instant-distance`) over the same vectors as the exact index, built on a background thread,
//! and the rule that picks it over exact search (`CHATQ_ANN_THRESHOLD`).
//!
//! Small bases stay exact: below a few tens of thousands of vectors an exact scan takes a few
//! milliseconds and has perfect recall. Above the threshold a base is served exactly until its
//! graph is built, then from the graph.

use std::{
    cell::RefCell,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Instant,
};

use instant_distance::{Builder, HnswMap, Point, Search};

use crate::retrieval::{ExactIndex, VectorIndex, dot};

/// Default of `CHATQ_ANN_THRESHOLD`: bases with at least this many vectors get an HNSW index.
pub const DEFAULT_THRESHOLD: usize = 20_000;
/// Default of `CHATQ_ANN_EF_SEARCH`: candidates kept while walking the graph's bottom layer.
pub const DEFAULT_EF_SEARCH: usize = 128;
/// Candidates kept per insertion while building; higher builds slower and finds better edges.
pub const EF_CONSTRUCTION: usize = 100;

/// When and how a base is searched approximately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnSettings {
    /// Bases with at least this many vectors get an HNSW index; 0 turns ANN off.
    pub threshold: usize,
    /// Size of the candidate list of a graph search; bounds `k` (a larger `k` searches exactly).
    pub ef_search: usize,
}

impl Default for AnnSettings {
    fn default() -> Self {
        Self { threshold: DEFAULT_THRESHOLD, ef_search: DEFAULT_EF_SEARCH }
    }
}

/// The index a base of `vectors` gets under `settings`: exact below the threshold, else exact
/// until an HNSW graph built on a background thread is ready.
pub fn index_for(vectors: &[Vec<f32>], settings: AnnSettings) -> Box<dyn VectorIndex> {
    let exact = ExactIndex::new(vectors);
    if settings.threshold == 0 || exact.len() < settings.threshold || exact.dims() == 0 {
        return Box::new(exact);
    }
    Box::new(TieredIndex::spawn(Arc::new(exact), settings.ef_search))
}

/// One row of a shared matrix, as `instant-distance` wants its points: the graph and the exact
/// index share one copy of the vectors.
#[derive(Clone)]
struct Row {
    matrix: Arc<ExactIndex>,
    row: u32,
}

impl Point for Row {
    fn distance(&self, other: &Self) -> f32 {
        // Vectors are unit length, so cosine distance is 1 - dot.
        1.0 - dot(self.matrix.row(self.row as usize), other.matrix.row(other.row as usize))
    }
}

thread_local! {
    /// Scratch space of graph searches, reused by each thread (it holds a visited mark per
    /// vector of the largest base searched).
    static SEARCH: RefCell<Search> = RefCell::new(Search::default());
}

/// An HNSW graph over the rows of an [`ExactIndex`].
pub struct HnswIndex {
    matrix: Arc<ExactIndex>,
    map: HnswMap<Row, u32>,
    ef_search: usize,
}

impl HnswIndex {
    /// Builds the graph (CPU-bound, seconds to minutes for 100k vectors; uses rayon's pool).
    /// The seed is fixed so a base gives the same graph every time.
    pub fn build(matrix: Arc<ExactIndex>, ef_search: usize) -> Self {
        let n = u32::try_from(matrix.len()).expect("fewer than 2^32 vectors");
        let points: Vec<Row> = (0..n).map(|row| Row { matrix: matrix.clone(), row }).collect();
        let values: Vec<u32> = (0..n).collect();
        let map = Builder::default()
            .ef_construction(EF_CONSTRUCTION)
            .ef_search(ef_search.max(1))
            .seed(0x5eed_c4a7)
            .build(points, values);
        Self { matrix, map, ef_search: ef_search.max(1) }
    }
}

impl VectorIndex for HnswIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        if k == 0 || query.len() != self.matrix.dims() || self.matrix.is_empty() {
            return Vec::new();
        }
        if k > self.ef_search {
            // The graph search returns at most ef_search results.
            return self.matrix.search(query, k);
        }
        let query = Row { matrix: Arc::new(ExactIndex::new(&[query.to_vec()])), row: 0 };
        SEARCH.with_borrow_mut(|search| {
            self.map.search(&query, search).take(k).map(|item| (*item.value as usize, 1.0 - item.distance)).collect()
        })
    }

    fn len(&self) -> usize {
        self.matrix.len()
    }

    fn kind(&self) -> &'static str {
        "hnsw"
    }
}

/// Exact search until the HNSW graph is built, then the graph.
struct TieredIndex {
    shared: Arc<Tiers>,
}

struct Tiers {
    exact: Arc<ExactIndex>,
    ann: OnceLock<HnswIndex>,
}

/// One graph is built at a time per process, so a burst of base changes cannot start a build
/// per change; a build whose base has been replaced meanwhile is skipped.
static BUILD: Mutex<()> = Mutex::new(());

impl TieredIndex {
    fn spawn(exact: Arc<ExactIndex>, ef_search: usize) -> Self {
        let shared = Arc::new(Tiers { exact, ann: OnceLock::new() });
        let weak: Weak<Tiers> = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new().name("ann-build".into()).spawn(move || {
            let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
            // The cache dropped this version while it waited: nothing to build.
            let Some(tiers) = weak.upgrade() else { return };
            let started = Instant::now();
            let index = HnswIndex::build(tiers.exact.clone(), ef_search);
            tracing::info!(
                vectors = tiers.exact.len(),
                dims = tiers.exact.dims(),
                ms = started.elapsed().as_millis() as u64,
                "hnsw index built"
            );
            let _ = tiers.ann.set(index);
        });
        if let Err(e) = spawned {
            // Exact search keeps working; only the speed-up is lost.
            tracing::error!(error = %e, "could not start the hnsw build thread; searching exactly");
        }
        Self { shared }
    }
}

impl VectorIndex for TieredIndex {
    fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        match self.shared.ann.get() {
            Some(ann) => ann.search(query, k),
            None => self.shared.exact.search(query, k),
        }
    }

    fn len(&self) -> usize {
        self.shared.exact.len()
    }

    fn kind(&self) -> &'static str {
        self.shared.ann.get().map_or("exact", |_| "hnsw")
    }
}

/// Fraction of the exact top `k` that `found` contains, averaged over queries; the usual
/// recall@k of an approximate index.
pub fn recall_at_k(exact: &[Vec<(usize, f32)>], found: &[Vec<(usize, f32)>], k: usize) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let mut total = 0.0;
    for (e, f) in exact.iter().zip(found) {
        let truth: Vec<usize> = e.iter().take(k).map(|h| h.0).collect();
        if truth.is_empty() {
            total += 1.0;
            continue;
        }
        let hit = f.iter().take(k).filter(|h| truth.contains(&h.0)).count();
        total += hit as f64 / truth.len() as f64;
    }
    total / exact.len() as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::retrieval::normalize;

    /// Deterministic xorshift, so failures reproduce.
    fn rng(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2_000_001) as f32 / 1_000_000.0 - 1.0
        }
    }

    fn random_vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut next = rng(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dims).map(|_| next()).collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn hnsw_recall_at_10_against_exact_search_is_at_least_095() {
        // Small enough to build in seconds unoptimised (tests run at opt-level 0).
        let (n, dims) = (1_000, 16);
        let vectors = random_vectors(n, dims, 7);
        let exact = Arc::new(ExactIndex::new(&vectors));
        let hnsw = HnswIndex::build(exact.clone(), DEFAULT_EF_SEARCH);
        let queries = random_vectors(100, dims, 99);
        let truth: Vec<_> = queries.iter().map(|q| exact.search(q, 10)).collect();
        let found: Vec<_> = queries.iter().map(|q| hnsw.search(q, 10)).collect();
        let recall = recall_at_k(&truth, &found, 10);
        assert!(recall >= 0.95, "recall@10 = {recall}");
        // Best first, with the exact index's scores.
        for (f, t) in found.iter().zip(&truth) {
            assert!(f.windows(2).all(|w| w[0].1 >= w[1].1));
            assert!((f[0].1 - t[0].1).abs() < 1e-4 || f[0].1 <= t[0].1);
        }
    }

    #[test]
    fn a_stored_vector_finds_itself_first() {
        let vectors = random_vectors(500, 32, 3);
        let hnsw = HnswIndex::build(Arc::new(ExactIndex::new(&vectors)), DEFAULT_EF_SEARCH);
        for i in [0, 17, 499] {
            let hits = hnsw.search(&vectors[i], 3);
            assert_eq!(hits[0].0, i);
            assert!((hits[0].1 - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn empty_and_one_vector_bases_answer_sensibly() {
        let empty = HnswIndex::build(Arc::new(ExactIndex::new(&[])), DEFAULT_EF_SEARCH);
        assert!(empty.is_empty());
        assert!(empty.search(&[1.0, 0.0], 5).is_empty());

        let one = HnswIndex::build(Arc::new(ExactIndex::new(&[vec![0.0, 1.0]])), DEFAULT_EF_SEARCH);
        assert_eq!(one.len(), 1);
        let hits = one.search(&[0.0, 1.0], 5);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, 0);
    }

    #[test]
    fn a_query_of_other_dimensions_finds_nothing() {
        let vectors = random_vectors(100, 16, 5);
        let hnsw = HnswIndex::build(Arc::new(ExactIndex::new(&vectors)), DEFAULT_EF_SEARCH);
        assert!(hnsw.search(&[1.0; 15], 5).is_empty());
        assert!(hnsw.search(&[1.0; 17], 5).is_empty());
        assert!(hnsw.search(&vectors[0], 0).is_empty());
    }

    #[test]
    fn k_above_ef_search_falls_back_to_exact_results() {
        let vectors = random_vectors(300, 16, 11);
        let exact = Arc::new(ExactIndex::new(&vectors));
        let hnsw = HnswIndex::build(exact.clone(), 8);
        let hits = hnsw.search(&vectors[4], 50);
        assert_eq!(hits, exact.search(&vectors[4], 50));
    }

    #[test]
    fn bases_below_the_threshold_are_exact_and_above_it_become_hnsw() {
        let settings = AnnSettings { threshold: 200, ef_search: DEFAULT_EF_SEARCH };
        let small = index_for(&random_vectors(199, 16, 1), settings);
        assert_eq!(small.kind(), "exact");
        let vectors = random_vectors(200, 16, 2);
        let large = index_for(&vectors, settings);
        // Served (exactly) at once, while the graph builds.
        assert_eq!(large.search(&vectors[9], 1)[0].0, 9);
        let deadline = Instant::now() + Duration::from_secs(30);
        while large.kind() != "hnsw" {
            assert!(Instant::now() < deadline, "the hnsw index was never built");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(large.search(&vectors[9], 1)[0].0, 9);
        assert_eq!(large.len(), 200);
        let off = index_for(&vectors, AnnSettings { threshold: 0, ..settings });
        assert_eq!(off.kind(), "exact");
    }

    #[test]
    fn recall_counts_the_share_of_true_neighbours_found() {
        let truth = vec![vec![(1, 0.9), (2, 0.8)], vec![(3, 0.9), (4, 0.5)]];
        let found = vec![vec![(2, 0.8), (1, 0.9)], vec![(3, 0.9), (7, 0.4)]];
        assert!((recall_at_k(&truth, &found, 2) - 0.75).abs() < 1e-9);
    }
}
