//! `search`: knowledge-base search latency and recall at scale, in process (no API in between).
//!
//! For each requested dimension it fills a base in Postgres with N synthetic chunks (reused on
//! later runs unless `--refill`), then measures: loading the vectors, building the HNSW graph
//! (time and resident memory), vector search alone (exact and HNSW), the BM25
//! search alone, and the whole hybrid search (`retrieval::search`: query embedding by
//! `chatq-fake-openai`, both searches, fusion, chunk fetch) with an exact and with an HNSW
//! index; and recall@10 / recall@50 of HNSW against exact.
//!
//! The corpus has topics, like real documents: a chunk is 60 words, about 60 % from its topic's
//! 40 words and the rest from a 5,000-word vocabulary; its vector is the one the fake server
//! returns for its text (hashed words and bigrams). Queries are five words of one topic.
//! Uniformly random vectors would be a poor stand-in: in 1,536 dimensions they are all nearly
//! equidistant, so "nearest" means nothing and no graph index does well on them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chatq_common::{
    ann::{self, AnnSettings, HnswIndex},
    config::Config,
    db::{self, knowledge},
    provider::Provider,
    retrieval::{self, ExactIndex, Fusion, VectorCache, VectorIndex},
};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::stats::{Samples, Summary};

/// Options of `chatq-bench search`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Scratch database (created if missing; the bench's bases stay there for later runs).
    #[arg(
        long,
        env = "CHATQ_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chatq_bench",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Chunks in the base.
    #[arg(long, default_value_t = 100_000)]
    pub chunks: usize,
    /// Embedding dimensions, one base each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "384,1536")]
    pub dims: Vec<usize>,
    /// Timed searches per measure.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Candidate list of the HNSW search (`CHATQ_ANN_EF_SEARCH`).
    #[arg(long, default_value_t = ann::DEFAULT_EF_SEARCH)]
    pub ef_search: usize,
    /// Sources returned by the hybrid search (`CHATQ_RETRIEVAL_TOP_K`).
    #[arg(long, default_value_t = 6)]
    pub top_k: usize,
    /// Refill the bases even when a filled one exists.
    #[arg(long)]
    pub refill: bool,
}

/// What `search` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always `search`.
    pub scenario: &'static str,
    /// Chunks per base.
    pub chunks: usize,
    /// Timed searches per measure.
    pub queries: usize,
    /// HNSW candidate list.
    pub ef_search: usize,
    /// CPU cores of the machine.
    pub cores: usize,
    /// 1-minute load average before and after (other work on the machine skews the figures).
    pub load_avg: (Option<f64>, Option<f64>),
    /// One entry per dimension.
    pub bases: Vec<BaseReport>,
}

/// Figures of one base.
#[derive(Debug, Serialize)]
pub struct BaseReport {
    /// Embedding dimensions.
    pub dims: usize,
    /// Seconds spent filling the base (null when an existing one was reused).
    pub fill_secs: Option<f64>,
    /// Reading every vector of the base from Postgres into memory.
    pub vectors_load_secs: f64,
    /// Memory of the vectors (f32), MiB.
    pub vectors_mib: f64,
    /// Building the HNSW graph.
    pub hnsw_build_secs: f64,
    /// Growth of the resident set while building the graph, MiB (graph plus allocator slack).
    pub hnsw_build_rss_mib: Option<f64>,
    /// Bytes per chunk held in memory by an HNSW base: vector + graph (resident growth).
    pub bytes_per_chunk: Option<f64>,
    /// Share of the exact top 10 that HNSW finds.
    pub recall_at_10: f64,
    /// Share of the exact top 50 (the candidates fused with full-text results) HNSW finds.
    pub recall_at_50: f64,
    /// Exact vector search of the 50 candidates, in memory.
    pub vector_exact_ms: Summary,
    /// HNSW vector search of the 50 candidates, in memory.
    pub vector_hnsw_ms: Summary,
    /// BM25 search (the in-memory index over the base's Postgres full-text vectors) of the 50
    /// candidates; the first query builds the index.
    pub lexical_ms: Summary,
    /// Whole hybrid search with the exact index.
    pub hybrid_exact_ms: Summary,
    /// Whole hybrid search with the HNSW index.
    pub hybrid_hnsw_ms: Summary,
}

const VOCAB: usize = 5_000;
const TOPICS: usize = 500;
const TOPIC_WORDS: usize = 40;
const CHUNK_WORDS: usize = 60;
const MODEL: &str = "text-embedding-3-small";

/// Deterministic xorshift64, so every run builds the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pronounceable pseudo-words ("bakitu"), distinct, so full-text search stems them like words.
fn vocabulary() -> Vec<String> {
    const C: &[u8] = b"bcdfghjklmnprstvwxyz";
    const V: &[u8] = b"aeiou";
    (0..VOCAB)
        .map(|i| {
            // 7919 is prime, so i -> i * 7919 mod 10^6 is one-to-one: distinct words.
            let mut x = (i * 7919) % 1_000_000;
            let mut w = String::new();
            for _ in 0..3 {
                let syllable = x % 100;
                x /= 100;
                w.push(C[syllable / 5] as char);
                w.push(V[syllable % 5] as char);
            }
            w
        })
        .collect()
}

fn topic_word(topic: usize, j: usize) -> usize {
    (topic * 37 + j * 101) % VOCAB
}

fn chunk_text(rng: &mut Rng, vocab: &[String]) -> String {
    let topic = rng.below(TOPICS);
    let words: Vec<&str> = (0..CHUNK_WORDS)
        .map(|_| {
            let w = if rng.below(10) < 6 { topic_word(topic, rng.below(TOPIC_WORDS)) } else { rng.below(VOCAB) };
            vocab[w].as_str()
        })
        .collect();
    words.join(" ")
}

fn query_text(rng: &mut Rng, vocab: &[String]) -> String {
    let topic = rng.below(TOPICS);
    let w: Vec<&str> = (0..5).map(|_| vocab[topic_word(topic, rng.below(TOPIC_WORDS))].as_str()).collect();
    format!("what about {} {} and {} with {} {}", w[0], w[1], w[2], w[3], w[4])
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.chunks > 0 && args.queries > 0, "--chunks and --queries must be positive");
    let (_fake_task, fake) = chatq_fake_openai::spawn(chatq_fake_openai::FakeConfig::default()).await?;
    let base_url = fake.base_url();
    let database_url = args.database_url.clone();
    let config = Config::from_lookup(|k| match k {
        "OPENAI_BASE_URL" => Some(base_url.clone()),
        "OPENAI_API_KEY" => Some("bench".into()),
        "DATABASE_URL" => Some(database_url.clone()),
        _ => None,
    })
    .map_err(|e| anyhow::anyhow!("config: {e:?}"))?;
    db::create_database_if_missing(&config).await?;
    let pool = db::connect(&config, 4).await?;
    chatq_common::MIGRATOR.run(&pool).await?;
    let provider = Provider::new(&config)?;
    let vocab = vocabulary();
    let load_before = load_avg();
    let mut bases = Vec::new();
    for &dims in &args.dims {
        bases.push(bench_base(&args, &pool, &provider, &vocab, dims).await?);
    }
    fake.shutdown();
    Ok(Report {
        scenario: "search",
        chunks: args.chunks,
        queries: args.queries,
        ef_search: args.ef_search,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_avg: (load_before, load_avg()),
        bases,
    })
}

async fn bench_base(
    args: &Args,
    pool: &PgPool,
    provider: &Provider,
    vocab: &[String],
    dims: usize,
) -> anyhow::Result<BaseReport> {
    let n = args.chunks;
    let (kb, fill_secs) = filled_base(pool, vocab, n, dims, args.refill).await?;

    eprintln!("search {dims}d: loading vectors");
    let started = Instant::now();
    let (_, rows) = knowledge::load_vectors(pool, kb).await?;
    let vectors: Vec<Vec<f32>> = rows.into_iter().map(|(_, v)| v).collect();
    let exact = Arc::new(ExactIndex::new(&vectors));
    drop(vectors);
    let vectors_load_secs = started.elapsed().as_secs_f64();

    eprintln!("search {dims}d: building the HNSW graph");
    let rss_before = rss_kib();
    let started = Instant::now();
    let ef_search = args.ef_search;
    let matrix = exact.clone();
    let hnsw = tokio::task::spawn_blocking(move || HnswIndex::build(matrix, ef_search)).await?;
    let hnsw_build_secs = started.elapsed().as_secs_f64();
    let hnsw_build_rss_mib = match (rss_before, rss_kib()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1024.0),
        _ => None,
    };
    let vectors_mib = (n * dims * 4) as f64 / (1024.0 * 1024.0);
    let bytes_per_chunk = hnsw_build_rss_mib.map(|g| ((g * 1024.0 * 1024.0) / n as f64 + (dims * 4) as f64).round());

    eprintln!("search {dims}d: vector search and recall");
    let mut rng = Rng(0xC0FF_EE00 + dims as u64);
    let queries: Vec<String> = (0..args.queries).map(|_| query_text(&mut rng, vocab)).collect();
    let (mut exact_ms, mut hnsw_ms) = (Samples::new(), Samples::new());
    let (mut truth, mut found) = (Vec::new(), Vec::new());
    for q in &queries {
        let v = chatq_fake_openai::embed(q, dims);
        let t = Instant::now();
        let e = exact.search(&v, retrieval::CANDIDATES);
        exact_ms.record(ms(t.elapsed()));
        let t = Instant::now();
        let h = hnsw.search(&v, retrieval::CANDIDATES);
        hnsw_ms.record(ms(t.elapsed()));
        truth.push(e);
        found.push(h);
    }
    let recall_at_10 = ann::recall_at_k(&truth, &found, 10);
    let recall_at_50 = ann::recall_at_k(&truth, &found, retrieval::CANDIDATES);
    drop((hnsw, exact));

    eprintln!("search {dims}d: BM25 search");
    let mut lexical_ms = Samples::new();
    for q in &queries {
        let t = Instant::now();
        chatq_common::lexical::LexicalCache::global().search(pool, &[kb], q, retrieval::CANDIDATES).await?;
        lexical_ms.record(ms(t.elapsed()));
    }

    eprintln!("search {dims}d: hybrid search, exact index");
    let hybrid_exact_ms =
        hybrid(pool, provider, &VectorCache::new(AnnSettings { threshold: 0, ef_search }), kb, dims, &queries, args)
            .await?;
    eprintln!("search {dims}d: hybrid search, HNSW index (built again by the cache)");
    let cache = VectorCache::new(AnnSettings { threshold: 1, ef_search });
    cache.search(pool, &[kb], &chatq_fake_openai::embed("warm up", dims), 1).await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while cache.index_kind(kb).map(|k| k.0) != Some("hnsw") {
        anyhow::ensure!(Instant::now() < deadline, "the cache's HNSW index was not ready within an hour");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hybrid_hnsw_ms = hybrid(pool, provider, &cache, kb, dims, &queries, args).await?;

    Ok(BaseReport {
        dims,
        fill_secs,
        vectors_load_secs: round3(vectors_load_secs),
        vectors_mib: round3(vectors_mib),
        hnsw_build_secs: round3(hnsw_build_secs),
        hnsw_build_rss_mib: hnsw_build_rss_mib.map(round3),
        bytes_per_chunk,
        recall_at_10: round3(recall_at_10),
        recall_at_50: round3(recall_at_50),
        vector_exact_ms: exact_ms.summary(),
        vector_hnsw_ms: hnsw_ms.summary(),
        lexical_ms: lexical_ms.summary(),
        hybrid_exact_ms,
        hybrid_hnsw_ms,
    })
}

/// Times `retrieval::search` over the queries, after one untimed search that loads the base.
async fn hybrid(
    pool: &PgPool,
    provider: &Provider,
    cache: &VectorCache,
    kb: Uuid,
    dims: usize,
    queries: &[String],
    args: &Args,
) -> anyhow::Result<Summary> {
    let search = |q: String| async move {
        retrieval::search(pool, provider, cache, &[kb], (MODEL, dims), &q, (args.top_k, None), Fusion::DEFAULT).await
    };
    search(queries[0].clone()).await?;
    let mut samples = Samples::new();
    for q in queries {
        let t = Instant::now();
        let (found, stats) = search(q.clone()).await?;
        samples.record(ms(t.elapsed()));
        anyhow::ensure!(stats.embedding_error.is_none(), "query embedding failed");
        anyhow::ensure!(!found.is_empty(), "a hybrid search found nothing");
    }
    Ok(samples.summary())
}

/// The bench base of `n` chunks of `dims` dimensions: an existing complete one, else a new one
/// (with the seconds it took to fill).
async fn filled_base(
    pool: &PgPool,
    vocab: &[String],
    n: usize,
    dims: usize,
    refill: bool,
) -> anyhow::Result<(Uuid, Option<f64>)> {
    let name = format!("bench-search-{n}-{dims}");
    let existing: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT kb.id, (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = kb.id)
         FROM knowledge_bases kb WHERE kb.name = $1 AND kb.deleted_at IS NULL",
    )
    .bind(&name)
    .fetch_all(pool)
    .await?;
    for (id, count) in &existing {
        if !refill && *count == n as i64 {
            eprintln!("search {dims}d: reusing base {id} ({n} chunks)");
            return Ok((*id, None));
        }
        sqlx::query("DELETE FROM knowledge_bases WHERE id = $1").bind(id).execute(pool).await?;
    }
    let kb = knowledge::create_kb(pool, &name, "chatq-bench search", MODEL, dims as i32).await?.id;
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ dims as u64);
    let per_doc = 1000;
    for d in 0..n.div_ceil(per_doc) {
        let mut tx = pool.begin().await?;
        let batch = knowledge::create_batch(&mut tx, kb).await?;
        let sha = Uuid::now_v7().as_bytes().to_vec();
        let new = knowledge::NewDocument {
            kb_id: kb,
            batch_id: batch,
            filename: &format!("doc{d}.txt"),
            media_type: "text/plain",
            sha256: &sha,
            bytes: b"synthetic",
        };
        let knowledge::Stored::Queued(doc_id) = knowledge::insert_document(&mut tx, &new).await? else {
            anyhow::bail!("unexpected duplicate document")
        };
        tx.commit().await?;
        let doc = knowledge::claim_document(pool, doc_id, 1).await?.expect("a new document is claimable");
        let chunks: Vec<knowledge::NewChunk> = (0..per_doc.min(n - d * per_doc))
            .map(|i| {
                let content = chunk_text(&mut rng, vocab);
                knowledge::NewChunk {
                    embedding: chatq_fake_openai::embed(&content, dims),
                    char_end: content.len() as i32,
                    content,
                    token_count: 120,
                    char_start: 0,
                    location: Some(format!("chunk {i}")),
                }
            })
            .collect();
        knowledge::complete_document(pool, &doc, &chunks).await?;
        if (d + 1) % 10 == 0 {
            eprintln!("search {dims}d: filled {} of {n} chunks", ((d + 1) * per_doc).min(n));
        }
    }
    Ok((kb, Some(round3(started.elapsed().as_secs_f64()))))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Resident set of this process, KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_has_distinct_alphabetic_words() {
        let v = vocabulary();
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), VOCAB);
        assert!(v.iter().all(|w| w.len() == 6 && w.chars().all(|c| c.is_ascii_lowercase())));
    }
}
