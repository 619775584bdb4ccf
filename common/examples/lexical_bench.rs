//! BM25 search cost on a large base: builds the lexical index of knowledge base `KB_ID` from
//! Postgres, then times `ROUNDS` searches of each query below (query analysis in Postgres plus
//! scoring in memory).
//!
//! `DATABASE_URL=<db> cargo run --release -p chatq-common --example lexical_bench -- KB_ID [ROUNDS]`

use std::time::Instant;

use chatq_common::lexical::LexicalCache;

const QUERIES: [&str; 6] = [
    "How do I install Debian from CD-ROMs?",
    "where can I report a bug in the kernel package",
    "Can I delete the downloaded .deb archives from the cache?",
    "How do you say the word Debian out loud?",
    "What is stored in the pool directory of the archive?",
    "Which package does a given file belong to?",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kb: uuid::Uuid = args.next().expect("KB_ID").parse()?;
    let rounds: usize = args.next().map_or(Ok(20), |r| r.parse())?;
    let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let cache = LexicalCache::default();
    let started = Instant::now();
    let first = cache.search(&pool, &[kb], QUERIES[0], 50).await?;
    println!("first search (builds the index): {:?}, {} hits", started.elapsed(), first.len());
    let mut ms = Vec::new();
    for _ in 0..rounds {
        for q in QUERIES {
            let t = Instant::now();
            cache.search(&pool, &[kb], q, 50).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    println!("{} searches: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", ms.len(), at(0.5), at(0.99), at(1.0));
    Ok(())
}
