//! Ingestion cannot be stalled: every extraction runs in the killable child under its limits,
//! and a document fails alone with a stable code.

use chatq_common::{db, domain::DocumentStatus};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::Setup;

/// The worker binary is the extractor child, as in production.
const EXTRACTOR: &str = env!("CARGO_BIN_EXE_chatq-worker");

/// A setup whose worker runs extractions with `extra` limits.
async fn setup(pool: PgPool, extra: &[(&str, &str)]) -> Setup {
    let mut env = vec![("CHATQ_EXTRACTOR_BIN", EXTRACTOR), ("CHATQ_EMBEDDING_DIMS", "256")];
    env.extend_from_slice(extra);
    Setup::with_env(pool, &env).await
}

/// A knowledge base, as the API creates it.
async fn knowledge_base(s: &Setup) -> Uuid {
    db::knowledge::create_kb(&s.pool, "Zoo", "", "text-embedding-3-small", 256).await.unwrap().id
}

/// A `queued` document, stored as the API stores an upload (the job is not pushed).
async fn store(s: &Setup, kb: Uuid, filename: &str, media_type: &str, bytes: &[u8]) -> Uuid {
    let mut tx = s.pool.begin().await.unwrap();
    let batch_id = db::knowledge::create_batch(&mut tx, kb).await.unwrap();
    let sha256 = Uuid::now_v7().as_bytes().to_vec();
    let new = db::knowledge::NewDocument { kb_id: kb, batch_id, filename, media_type, sha256: &sha256, bytes };
    let db::knowledge::Stored::Queued(id) = db::knowledge::insert_document(&mut tx, &new).await.unwrap() else {
        panic!("stored as a duplicate")
    };
    tx.commit().await.unwrap();
    id
}

/// The document after one run of the ingest job.
async fn ingest(s: &Setup, id: Uuid) -> db::knowledge::Document {
    chatq_worker::jobs::ingest::execute(&s.ctx().await, id).await.unwrap();
    db::knowledge::get_document(&s.pool, id).await.unwrap().unwrap()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_oversized_extractor_output_fails_that_document_and_the_others_are_ingested(pool: PgPool) {
    let s = setup(pool, &[("CHATQ_EXTRACT_MAX_OUTPUT_BYTES", "100000")]).await;
    let kb = knowledge_base(&s).await;
    let big: String = (0..3000).map(|i| format!("<p>Paragraph {i} about the otters of the zoo.</p>")).collect();
    let big = store(&s, kb, "big.html", "text/html", format!("<html><body>{big}</body></html>").as_bytes()).await;
    let small = "<html><head><title>Otters</title></head><body><p>Otters juggle pebbles.</p></body></html>";
    let small = store(&s, kb, "small.html", "text/html", small.as_bytes()).await;
    let notes = store(&s, kb, "notes.txt", "text/plain", b"The reptile house thermostat reads 28 degrees.").await;

    let doc = ingest(&s, big).await;
    assert_eq!(doc.status, DocumentStatus::Failed, "{doc:?}");
    assert_eq!(doc.error_code.map(|c| c.as_str()), Some("extraction_output_too_large"), "{doc:?}");
    assert!(doc.error_message.unwrap().contains("100000 bytes"));
    for id in [small, notes] {
        let doc = ingest(&s, id).await;
        assert_eq!(doc.status, DocumentStatus::Ready, "{doc:?}");
        assert_eq!(doc.chunk_count, 1, "{doc:?}");
    }
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn html_that_converts_too_slowly_fails_with_extraction_timeout_and_the_next_document_is_ingested(pool: PgPool) {
    let s = setup(pool, &[("CHATQ_EXTRACT_TIMEOUT_SECS", "2")]).await;
    let kb = knowledge_base(&s).await;
    // The security review's bomb: 500 000 unclosed <nav>, which the HTML parser nests.
    let bomb = format!("<html><body>{}</body></html>", "<nav></x>".repeat(500_000));
    let bomb = store(&s, kb, "bomb.html", "text/html", bomb.as_bytes()).await;
    let next = store(&s, kb, "next.html", "text/html", b"<p>Otters juggle pebbles.</p>").await;

    let started = std::time::Instant::now();
    let doc = tokio::time::timeout(std::time::Duration::from_secs(30), ingest(&s, bomb))
        .await
        .expect("the attempt ends within 30 s");
    assert_eq!(doc.status, DocumentStatus::Failed, "{doc:?}");
    assert_eq!(doc.error_code.map(|c| c.as_str()), Some("extraction_timeout"), "{doc:?}");
    assert!(doc.error_message.as_deref().unwrap().contains("HTML took longer than 2s"), "{doc:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
    let doc = ingest(&s, next).await;
    assert_eq!(doc.status, DocumentStatus::Ready, "{doc:?}");
    s.shutdown();
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_document_interrupted_three_times_fails_with_its_reason_instead_of_being_pushed_again(pool: PgPool) {
    let s = setup(pool.clone(), &[]).await;
    let kb = knowledge_base(&s).await;
    let doomed = store(&s, kb, "crashes.txt", "text/plain", b"Every worker that reads this dies.").await;
    let retried = store(&s, kb, "once.txt", "text/plain", b"One worker died on this one.").await;
    // Workers claimed them and died long ago: the first one three times (the default limit).
    sqlx::query("ALTER TABLE documents DISABLE TRIGGER documents_set_updated_at").execute(&pool).await.unwrap();
    for (id, attempts) in [(doomed, 3), (retried, 1)] {
        sqlx::query(
            "UPDATE documents SET status = 'processing', attempt = $2, updated_at = now() - interval '1 hour'
             WHERE id = $1",
        )
        .bind(id)
        .bind(attempts)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("ALTER TABLE documents ENABLE TRIGGER documents_set_updated_at").execute(&pool).await.unwrap();

    let ctx = s.ctx().await;
    assert_eq!(chatq_worker::reconciler::tick(&ctx).await.unwrap(), 2, "one failed, one pushed again");
    let doc = db::knowledge::get_document(&pool, doomed).await.unwrap().unwrap();
    assert_eq!(doc.status, DocumentStatus::Failed, "{doc:?}");
    assert_eq!(doc.error_code.map(|c| c.as_str()), Some("ingestion_attempts_exhausted"), "{doc:?}");
    assert!(doc.error_message.as_deref().unwrap().contains("interrupted 3 times"), "{doc:?}");
    // A late delivery of its job does not try it a fourth time.
    let doc = ingest(&s, doomed).await;
    assert_eq!((doc.status, doc.attempt), (DocumentStatus::Failed, 3), "{doc:?}");
    // The other one is tried again and ingested.
    let doc = ingest(&s, retried).await;
    assert_eq!((doc.status, doc.attempt), (DocumentStatus::Ready, 2), "{doc:?}");
    // Nothing is left to recover.
    assert_eq!(chatq_worker::reconciler::tick(&ctx).await.unwrap(), 0);
    s.shutdown();
}
