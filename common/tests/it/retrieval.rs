//! The vector cache: which index a base gets, and that it follows the base's documents.

use std::time::{Duration, Instant};

use chatq_common::{
    ann::AnnSettings,
    db::knowledge::{self, NewChunk, NewDocument, Stored},
    retrieval::{VectorCache, normalize},
};
use sqlx::PgPool;
use uuid::Uuid;

const DIMS: usize = 16;

/// A unit vector from a seed (deterministic xorshift).
fn vector(seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..DIMS)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    normalize(&mut v);
    v
}

/// A ready document holding one chunk per vector; returns its id and its chunk ids in order.
async fn add_document(pool: &PgPool, kb: Uuid, vectors: &[Vec<f32>]) -> (Uuid, Vec<Uuid>) {
    let mut tx = pool.begin().await.unwrap();
    let batch = knowledge::create_batch(&mut tx, kb).await.unwrap();
    let sha = Uuid::now_v7().as_bytes().to_vec();
    let new = NewDocument {
        kb_id: kb,
        batch_id: batch,
        filename: "doc.txt",
        media_type: "text/plain",
        sha256: &sha,
        bytes: b"synthetic",
    };
    let Stored::Queued(id) = knowledge::insert_document(&mut tx, &new).await.unwrap() else { panic!("duplicate") };
    tx.commit().await.unwrap();
    let doc = knowledge::claim_document(pool, id, 3).await.unwrap().expect("claimable");
    let chunks: Vec<NewChunk> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| NewChunk {
            content: format!("chunk {i}"),
            token_count: 2,
            char_start: 0,
            char_end: 7,
            location: None,
            embedding: v.clone(),
        })
        .collect();
    assert!(knowledge::complete_document(pool, &doc, &chunks).await.unwrap());
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM chunks WHERE document_id = $1 ORDER BY ordinal")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap();
    (id, ids)
}

/// Waits until the cached index of `kb` is `kind` with `len` vectors.
async fn wait_for_index(cache: &VectorCache, kb: Uuid, kind: &str, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = cache.index_kind(kb);
        if now == Some((kind, len)) {
            return;
        }
        assert!(Instant::now() < deadline, "index of {kb} is {now:?}, wanted {kind} with {len} vectors");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn retrieval_searches_large_bases_with_hnsw_and_small_ones_exactly(pool: PgPool) {
    let cache = VectorCache::new(AnnSettings { threshold: 100, ef_search: 64 });
    let large = knowledge::create_kb(&pool, "large", "", "m", DIMS as i32).await.unwrap().id;
    let small = knowledge::create_kb(&pool, "small", "", "m", DIMS as i32).await.unwrap().id;
    let large_vectors: Vec<Vec<f32>> = (0..120).map(vector).collect();
    let (_, large_ids) = add_document(&pool, large, &large_vectors).await;
    let (_, small_ids) = add_document(&pool, small, &(1000..1099).map(vector).collect::<Vec<_>>()).await;

    let hits = cache.search(&pool, &[large], &large_vectors[7], 5).await.unwrap();
    assert_eq!(hits[0].0, large_ids[7]);
    wait_for_index(&cache, large, "hnsw", 120).await;
    let hits = cache.search(&pool, &[large], &large_vectors[42], 5).await.unwrap();
    assert_eq!(hits[0].0, large_ids[42]);
    assert!((hits[0].1 - 1.0).abs() < 1e-4);

    let hits = cache.search(&pool, &[small], &vector(1003), 5).await.unwrap();
    assert_eq!(hits[0].0, small_ids[3]);
    assert_eq!(cache.index_kind(small), Some(("exact", 99)));
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn retrieval_rebuilds_the_hnsw_index_when_a_document_is_added_or_deleted(pool: PgPool) {
    let cache = VectorCache::new(AnnSettings { threshold: 100, ef_search: 64 });
    let kb = knowledge::create_kb(&pool, "kb", "", "m", DIMS as i32).await.unwrap().id;
    add_document(&pool, kb, &(0..110).map(vector).collect::<Vec<_>>()).await;
    cache.search(&pool, &[kb], &vector(1), 5).await.unwrap();
    wait_for_index(&cache, kb, "hnsw", 110).await;

    // A new document: its chunk is found by the next search, and a new graph includes it.
    let fresh = vector(5000);
    let (doc, fresh_ids) = add_document(&pool, kb, std::slice::from_ref(&fresh)).await;
    let hits = cache.search(&pool, &[kb], &fresh, 3).await.unwrap();
    assert_eq!(hits[0].0, fresh_ids[0]);
    wait_for_index(&cache, kb, "hnsw", 111).await;
    let hits = cache.search(&pool, &[kb], &fresh, 3).await.unwrap();
    assert_eq!(hits[0].0, fresh_ids[0]);

    // Deleted: it leaves the index.
    assert!(knowledge::delete_document(&pool, doc).await.unwrap());
    let hits = cache.search(&pool, &[kb], &fresh, 3).await.unwrap();
    assert!(hits.iter().all(|h| h.0 != fresh_ids[0]));
    wait_for_index(&cache, kb, "hnsw", 110).await;
    let hits = cache.search(&pool, &[kb], &fresh, 50).await.unwrap();
    assert!(hits.iter().all(|h| h.0 != fresh_ids[0]));
}
