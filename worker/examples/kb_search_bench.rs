//! Search latency on a synthetic knowledge base.
//!
//! `cargo run --release -p chatq-worker --example kb_search_bench -- [CHUNKS] [DIMS]`
//! with `DATABASE_URL` pointing at a scratch database (created if missing, its knowledge
//! bases left in place; use a throwaway database). It inserts CHUNKS chunks (default 100000)
//! of 60 words from a 5,000-word vocabulary with DIMS-dimensional unit vectors (default
//! 1536), starts the fake OpenAI server for query embeddings, then times 50 searches: the
//! in-memory exact cosine search alone, the full-text query alone, and the whole hybrid search
//! (`retrieval::search`: query embedding + both searches + RRF + chunk fetch).

use std::time::{Duration, Instant};

use chatq_common::{config::Config, db, retrieval};

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let dims: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1536);
    let (_, fake) = chatq_fake_openai::spawn(chatq_fake_openai::FakeConfig::default()).await?;
    let base = fake.base_url();
    let config = Config::from_lookup(|k| match k {
        "OPENAI_BASE_URL" => Some(base.clone()),
        other => std::env::var(other).ok(),
    })?;
    db::create_database_if_missing(&config).await?;
    let pool = db::connect(&config, 4).await?;
    chatq_common::MIGRATOR.run(&pool).await?;
    let kb = db::knowledge::create_kb(&pool, "bench", "", "text-embedding-3-small", dims as i32).await?;

    // Synthetic corpus: deterministic words, hashed-bag-of-words-like random unit vectors.
    let vocab: Vec<String> = (0..5000).map(|i| format!("w{}x{}", i, (i * 7919) % 997)).collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let per_doc = 1000;
    for d in 0..n.div_ceil(per_doc) {
        let mut tx = pool.begin().await?;
        let doc = chatq_common::new_id();
        let batch = db::knowledge::create_batch(&mut tx, kb.id).await?;
        let sha = doc.as_bytes().to_vec();
        let new = db::knowledge::NewDocument {
            kb_id: kb.id,
            batch_id: batch,
            filename: &format!("doc{d}.txt"),
            media_type: "text/plain",
            sha256: &sha,
            bytes: b"synthetic",
        };
        let db::knowledge::Stored::Queued(doc_id) = db::knowledge::insert_document(&mut tx, &new).await? else {
            anyhow::bail!("unexpected duplicate")
        };
        tx.commit().await?;
        let doc = db::knowledge::claim_document(&pool, doc_id, 1).await?.expect("claimable");
        let count = per_doc.min(n - d * per_doc);
        let chunks: Vec<db::knowledge::NewChunk> = (0..count)
            .map(|_| {
                let words: Vec<&str> = (0..60).map(|_| vocab[(next() % 5000) as usize].as_str()).collect();
                let mut v: Vec<f32> = (0..dims).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                retrieval::normalize(&mut v);
                let content = words.join(" ");
                db::knowledge::NewChunk {
                    char_end: content.len() as i32,
                    content,
                    token_count: 120,
                    char_start: 0,
                    location: Some("line 1".into()),
                    embedding: v,
                }
            })
            .collect();
        db::knowledge::complete_document(&pool, &doc, &chunks).await?;
    }
    println!("inserted {n} chunks of {dims} dims in {:.1}s", started.elapsed().as_secs_f64());

    let provider = chatq_common::provider::Provider::new(&config)?;
    let cache = retrieval::VectorCache::default();
    let load = Instant::now();
    let mut q: Vec<f32> = vec![0.5; dims];
    retrieval::normalize(&mut q);
    cache.search(&pool, &[kb.id], &q, 50).await?;
    println!("vector cache load: {:.2}s", load.elapsed().as_secs_f64());

    let queries: Vec<String> = (0..50)
        .map(|i| format!("{} {} {} what about {}", vocab[i * 3], vocab[i * 5 + 1], vocab[i * 11 + 2], vocab[i]))
        .collect();
    let (mut vec_t, mut kw_t, mut all_t) = (Vec::new(), Vec::new(), Vec::new());
    for query in &queries {
        let mut v: Vec<f32> = (0..dims).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        retrieval::normalize(&mut v);
        let t = Instant::now();
        cache.search(&pool, &[kb.id], &v, 50).await?;
        vec_t.push(t.elapsed());
        let t = Instant::now();
        chatq_common::lexical::LexicalCache::global().search(&pool, &[kb.id], query, 50).await?;
        kw_t.push(t.elapsed());
        let t = Instant::now();
        let (found, _) =
            retrieval::search(&pool, &provider, &cache, &[kb.id], ("text-embedding-3-small", dims), query, 5, None)
                .await?;
        all_t.push(t.elapsed());
        assert!(!found.is_empty());
    }
    for (name, t) in [
        ("vector (exact, in memory)", &mut vec_t),
        ("BM25 (in memory)", &mut kw_t),
        ("hybrid search total", &mut all_t),
    ] {
        println!("{name:28} p50 {:7.1} ms  p95 {:7.1} ms", percentile(t, 0.5), percentile(t, 0.95));
    }
    fake.shutdown();
    Ok(())
}
