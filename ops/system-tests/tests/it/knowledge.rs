//! Knowledge bases end to end: the real API and worker (with the `extract` child process,
//! run from this crate's `chatq-test-extractor` binary) against Postgres, Redis and the fake
//! OpenAI server.

use std::time::Duration;

use chatq_system_tests::{Stack, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

const EXTRACTOR: &str = env!("CARGO_BIN_EXE_chatq-test-extractor");

pub(crate) async fn stack(pool: PgPool, extra: &[(&str, &str)]) -> Stack {
    let mut overrides = vec![
        ("CHATQ_EXTRACTOR_BIN", EXTRACTOR),
        ("CHATQ_CHUNK_TOKENS", "60"),
        ("CHATQ_CHUNK_OVERLAP_TOKENS", "10"),
        ("CHATQ_EMBEDDING_DIMS", "256"),
        ("CHATQ_EXTRACT_TIMEOUT_SECS", "20"),
    ];
    overrides.extend_from_slice(extra);
    Stack::start_with(pool, true, &overrides).await
}

/// A PDF with one page per entry of `pages` (each a list of lines), built by hand with a
/// correct cross-reference table.
fn pdf(pages: &[&[&str]]) -> Vec<u8> {
    let mut objects: Vec<String> = Vec::new();
    let n = pages.len();
    // 1: catalog, 2: pages, 3: font, then per page: page, contents.
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
    objects.push("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into());
    for (i, lines) in pages.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * i
        ));
        let mut content = String::from("BT /F1 12 Tf 72 720 Td 16 TL\n");
        for line in *lines {
            content.push_str(&format!("({}) Tj T*\n", line.replace('(', "\\(").replace(')', "\\)")));
        }
        content.push_str("ET");
        objects.push(format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()));
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

fn manual_pdf() -> Vec<u8> {
    pdf(&[
        &["Zoo Operations Manual.", "The aquarium tanks are checked for salinity every hour by the night keeper."],
        &["Penguins.", "The penguin pool is scrubbed every Tuesday morning before visitors arrive."],
        &["Elephants.", "Elephant baths use rainwater collected in the large cistern behind the barn."],
    ])
}

const GUIDE_MD: &str = "# Zoo Guide

Welcome to the city zoo. This guide explains feeding and opening hours.

## Feeding

Every animal has a diet plan written by the veterinarian.

### Lions

The lions are fed raw meat at four o'clock every afternoon. Visitors may watch from the glass wall.

### Giraffes

Giraffes eat acacia leaves from tall feeders placed near the north gate.

## Opening hours

The zoo opens at nine and closes at six, except on public holidays when it closes at four.
";

const HISTORY_HTML: &str = "<!doctype html><html><head><title>Zoo History</title></head><body>
<main><section><h1>Zoo History</h1><p>The zoo was founded in 1891 by a society of naturalists.</p>
<section><h2>The old aviary</h2><div><div><p>The Victorian aviary housed parrots and was restored in 1987 with a copper roof.</p></div></div></section>
<section><h2>Wartime</h2><p>During the war the zoo grew vegetables to feed the herbivores.</p></section>
</section></main></body></html>";

const NOTES_TXT: &str = "Keeper notes — café menu and ünïcödé are fine.\n\nThe reptile house thermostat is set to thirty degrees Celsius at all times.\n\nSnakes shed their skin roughly once a month.\n";

/// A multipart body with one `files` part per `(filename, bytes)`.
fn multipart(files: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "chatq-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub(crate) async fn upload(s: &Stack, key: &str, kb: &str, files: &[(&str, Vec<u8>)]) -> (StatusCode, Value) {
    let (content_type, body) = multipart(files);
    let resp = s
        .http
        .post(format!("{}/v1/knowledge-bases/{kb}/documents", s.api_url))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("API reachable");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create_kb(s: &Stack, name: &str) -> String {
    let (status, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": name}))).await;
    assert_eq!(status, StatusCode::CREATED, "{kb}");
    assert_eq!(kb["object"], "knowledge_base");
    kb["id"].as_str().unwrap().to_string()
}

/// Waits until no document of the batch is queued or processing; returns the batch.
async fn settle(s: &Stack, batch_id: &str) -> Value {
    wait_for(Duration::from_secs(60), || async {
        let (_, b) = s.admin(Method::GET, &format!("/v1/ingestion-batches/{batch_id}"), None).await;
        (b["counts"]["queued"] == 0 && b["counts"]["processing"] == 0).then_some(b)
    })
    .await
}

fn doc<'a>(batch: &'a Value, filename: &str) -> &'a Value {
    batch["documents"].as_array().unwrap().iter().find(|d| d["filename"] == filename).unwrap()
}

async fn search(s: &Stack, kb: &str, query: &str) -> Vec<Value> {
    let (status, r) =
        s.admin(Method::POST, &format!("/v1/knowledge-bases/{kb}/search"), Some(json!({"query": query, "k": 3}))).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    r["results"].as_array().unwrap().clone()
}

fn good_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("manual.pdf", manual_pdf()),
        ("guide.md", GUIDE_MD.as_bytes().to_vec()),
        ("history.html", HISTORY_HTML.as_bytes().to_vec()),
        ("notes.txt", NOTES_TXT.as_bytes().to_vec()),
    ]
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_mixed_batch_ingests_good_files_fails_bad_ones_alone_and_search_finds_the_right_chunks(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let kb = create_kb(&s, "Zoo").await;
    let good = manual_pdf();
    let mut random = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..4000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        random.push((x >> 16) as u8);
    }
    let mut files = good_files();
    files.extend([
        ("truncated.pdf", good[..good.len() / 2].to_vec()),
        ("random.pdf", random),
        ("empty.txt", Vec::new()),
        ("zero-pages.pdf", pdf(&[])),
        (
            "deep.html",
            format!("<html><body>{}deep{}</body></html>", "<div>".repeat(20_000), "</div>".repeat(20_000)).into_bytes(),
        ),
        ("latin1.txt", b"Caf\xe9 cr\xe8me \xff\xfe".to_vec()),
    ]);
    let (status, up) = upload(&s, &s.admin_key, &kb, &files).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{up}");
    assert_eq!(up["documents"].as_array().unwrap().len(), files.len());
    assert!(up["documents"].as_array().unwrap().iter().all(|d| d["status"] == "queued"), "{up}");
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["counts"]["ready"], 4, "{batch:#}");
    assert_eq!(batch["counts"]["failed"], 6, "{batch:#}");
    for (file, code) in [
        ("truncated.pdf", "pdf_unreadable"),
        ("random.pdf", "pdf_unreadable"),
        ("empty.txt", "empty_document"),
        ("zero-pages.pdf", "pdf_no_pages"),
        ("deep.html", "html_too_deeply_nested"),
        ("latin1.txt", "invalid_utf8"),
    ] {
        let d = doc(&batch, file);
        assert_eq!(d["status"], "failed", "{file}: {d}");
        assert_eq!(d["error"]["code"], code, "{file}: {d}");
        assert!(!d["error"]["message"].as_str().unwrap().is_empty());
    }
    for file in ["manual.pdf", "guide.md", "history.html", "notes.txt"] {
        let d = doc(&batch, file);
        assert_eq!(d["status"], "ready", "{file}: {d}");
        assert!(d["error"].is_null());
        assert!(d["chunk_count"].as_i64().unwrap() >= 1, "{file}: {d}");
        assert!(d["token_count"].as_i64().unwrap() > 5, "{file}: {d}");
    }
    // The PDF keeps one chunk per page with its page number; Markdown chunks their heading path.
    let locations: Vec<(String, Option<String>, i32, i32, String)> = sqlx::query_as(
        "SELECT d.filename, c.location, c.char_start, c.char_end, c.content FROM chunks c
         JOIN documents d ON d.id = c.document_id ORDER BY d.filename, c.ordinal",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let pdf_pages: Vec<_> = locations.iter().filter(|l| l.0 == "manual.pdf").map(|l| l.1.clone().unwrap()).collect();
    assert_eq!(pdf_pages, ["page 1", "page 2", "page 3"]);
    assert!(
        locations.iter().any(|l| l.0 == "guide.md" && l.1.as_deref() == Some("Zoo Guide > Feeding > Giraffes")),
        "{locations:#?}"
    );
    assert!(
        locations.iter().any(|l| l.0 == "history.html" && l.1.as_deref().is_some_and(|p| p.contains("Zoo History")))
    );
    assert!(locations.iter().all(|l| l.3 - l.2 == l.4.chars().count() as i32));
    let embedded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_records WHERE kind = 'embedding' AND document_id IS NOT NULL AND cost_usd > 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(embedded >= 4, "one priced usage record per embeddings request");

    // Retrieval: the expected chunk is in the top 3.
    for (question, file, needle) in [
        ("When are the lions fed?", "guide.md", "raw meat"),
        ("How often is the penguin pool cleaned?", "manual.pdf", "penguin pool"),
        ("What temperature is the reptile house?", "notes.txt", "thermostat"),
        ("When was the aviary restored?", "history.html", "copper roof"),
        ("Where does the water for elephant baths come from?", "manual.pdf", "rainwater"),
        ("What time does the zoo close?", "guide.md", "closes at six"),
    ] {
        let results = search(&s, &kb, question).await;
        assert!(
            results.iter().any(|r| r["filename"] == file && r["content"].as_str().unwrap().contains(needle)),
            "{question}: {results:#?}"
        );
    }

    // The worker survived the bad files: a new upload is still ingested.
    let (status, up) = upload(&s, &s.admin_key, &kb, &[("later.txt", b"Otters juggle pebbles.".to_vec())]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["counts"]["ready"], 1, "{batch}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_chat_about_a_document_cites_it_with_a_quote_from_the_chunk(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let kb = create_kb(&s, "Zoo").await;
    let (_, up) = upload(&s, &s.admin_key, &kb, &good_files()).await;
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["counts"]["ready"], 4, "{batch}");
    let assistant = s.create_assistant(json!({"knowledge_base_ids": [kb]})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "How often is the penguin pool scrubbed?").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    let text = run["output_text"].as_str().unwrap();
    assert!(text.contains("[1]"), "{text}");
    let citations = run["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 1, "{run}");
    let c = &citations[0];
    assert_eq!(c["index"], 1);
    assert_eq!(c["filename"], "manual.pdf", "{c}");
    assert_eq!(c["location"], "page 2", "{c}");
    let chunk: String = sqlx::query_scalar("SELECT content FROM chunks WHERE id = $1::uuid")
        .bind(c["chunk_id"].as_str().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let quote = c["quote"].as_str().unwrap();
    assert!(quote.len() > 10 && chunk.contains(quote), "quote {quote:?} not in chunk {chunk:?}");
    assert!(text.contains(quote), "the fake quoted the source verbatim");
    // The same citations on the message and as a `citation` event before completion.
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    assert_eq!(msgs["data"][1]["citations"], run["citations"]);
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, data FROM run_events WHERE run_id = $1::uuid ORDER BY seq")
            .bind(run["id"].as_str().unwrap())
            .fetch_all(&pool)
            .await
            .unwrap();
    let cited: Vec<_> = events.iter().filter(|e| e.0 == "citation").collect();
    assert_eq!(cited.len(), 1);
    assert_eq!(cited[0].1, *c);
    assert_eq!(events.last().unwrap().0, "run.completed");
    let query_embeddings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_records WHERE run_id = $1::uuid AND kind = 'embedding' AND outcome = 'ok'",
    )
    .bind(run["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(query_embeddings, 1);

    // Deleting the document takes it out of retrieval at once.
    let pdf_id = doc(&batch, "manual.pdf")["id"].as_str().unwrap().to_string();
    let (status, _) = s.admin(Method::DELETE, &format!("/v1/documents/{pdf_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let results = search(&s, &kb, "penguin pool scrubbed Tuesday").await;
    assert!(results.iter().all(|r| r["filename"] != "manual.pdf"), "{results:#?}");
    let run = s.send(&thread, "How often is the penguin pool scrubbed?").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert!(run["citations"].as_array().unwrap().iter().all(|c| c["filename"] != "manual.pdf"), "{run}");
    // Deleting the base empties retrieval and detaches it from the assistant.
    let (status, _) = s.admin(Method::DELETE, &format!("/v1/knowledge-bases/{kb}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, a) = s.admin(Method::GET, &format!("/v1/assistants/{assistant}"), None).await;
    assert_eq!(a["knowledge_base_ids"], json!([]));
    let (status, _) = s.admin(Method::GET, &format!("/v1/knowledge-bases/{kb}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn uploads_enforce_limits_types_duplicates_and_admin_only(pool: PgPool) {
    let s = stack(pool, &[("CHATQ_MAX_UPLOAD_FILE_BYTES", "2000"), ("CHATQ_MAX_UPLOAD_REQUEST_BYTES", "5000")]).await;
    let kb = create_kb(&s, "Limits").await;
    let big = vec![b'a'; 2500];
    let (status, e) = upload(&s, &s.admin_key, &kb, &[("big.txt", big)]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert_eq!(e["error"]["code"], "payload_too_large");
    let files: Vec<(&str, Vec<u8>)> =
        ["a.txt", "b.txt", "c.txt"].iter().map(|n| (*n, n.repeat(600).into_bytes())).collect();
    let (status, e) = upload(&s, &s.admin_key, &kb, &files).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    let (status, e) = upload(&s, &s.admin_key, &kb, &[("report.docx", b"PK..".to_vec())]).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");
    assert_eq!(e["error"]["code"], "unsupported_media_type");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("application/pdf") && msg.contains("text/markdown"), "{msg}");
    // Nothing of the refused uploads was stored.
    let (_, docs) = s.admin(Method::GET, &format!("/v1/knowledge-bases/{kb}/documents"), None).await;
    assert_eq!(docs["data"], json!([]));

    // Duplicates: same content again (even under another name) is reported, not embedded again.
    let (status, first) = upload(&s, &s.admin_key, &kb, &[("a.md", b"# A\n\nAardvarks dig.".to_vec())]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    settle(&s, first["batch_id"].as_str().unwrap()).await;
    let embeddings_before = s.fake.embedding_request_count();
    let (status, again) = upload(
        &s,
        &s.admin_key,
        &kb,
        &[("copy.md", b"# A\n\nAardvarks dig.".to_vec()), ("b.md", b"# B\n\nBadgers too.".to_vec())],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["documents"][0]["status"], "duplicate");
    assert_eq!(again["documents"][0]["id"], first["documents"][0]["id"]);
    assert_eq!(again["documents"][1]["status"], "queued");
    let batch = settle(&s, again["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["counts"]["duplicate"], 1, "{batch}");
    assert_eq!(batch["counts"]["ready"], 1, "{batch}");
    assert_eq!(batch["counts"]["total"], 2, "{batch}");
    assert_eq!(s.fake.embedding_request_count(), embeddings_before + 1, "only b.md was embedded");
    let (_, d) =
        s.admin(Method::GET, &format!("/v1/documents/{}", first["documents"][0]["id"].as_str().unwrap()), None).await;
    assert_eq!(d["status"], "ready");
    assert_eq!(d["object"], "document");
    assert_eq!(d["sha256"].as_str().unwrap().len(), 64);

    // Admin only: a client key can neither upload, list, search nor create.
    let (status, _) = upload(&s, &s.client_key, &kb, &[("c.md", b"# C".to_vec())]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (method, path, body) in [
        (Method::GET, format!("/v1/knowledge-bases/{kb}/documents"), None),
        (Method::POST, format!("/v1/knowledge-bases/{kb}/search"), Some(json!({"query": "x"}))),
        (Method::POST, "/v1/knowledge-bases".to_string(), Some(json!({"name": "mine"}))),
        (Method::GET, format!("/v1/ingestion-batches/{}", first["batch_id"].as_str().unwrap()), None),
    ] {
        let (status, e) = s.client(method, &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {e}");
    }
    let (status, _) = upload(&s, &s.admin_key, &uuid::Uuid::now_v7().to_string(), &[("x.md", b"# X".to_vec())]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn uploads_over_the_daily_quota_are_refused_and_store_nothing(pool: PgPool) {
    let s = stack(pool.clone(), &[("CHATQ_RATE_UPLOAD_BYTES_PER_DAY", "100")]).await;
    let kb = create_kb(&s, "quota").await;
    let (status, _) = upload(&s, &s.admin_key.clone(), &kb, &[("a.txt", vec![b'a'; 60])]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let resp = s
        .http
        .post(format!("{}/v1/knowledge-bases/{kb}/documents", s.api_url))
        .bearer_auth(&s.admin_key)
        .header("content-type", multipart(&[("b.txt", vec![b'b'; 60])]).0)
        .body(multipart(&[("b.txt", vec![b'b'; 60])]).1)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["ratelimit-limit"], "100");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE knowledge_base_id = $1::uuid")
        .bind(&kb)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the refused upload stored nothing");
    // A smaller upload still fits in what is left of the quota.
    let (status, _) = upload(&s, &s.admin_key.clone(), &kb, &[("c.txt", vec![b'c'; 30])]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.shutdown().await;
}

async fn attempt_of(pool: &PgPool, id: &str) -> i32 {
    sqlx::query_scalar("SELECT attempt FROM documents WHERE id = $1::uuid").bind(id).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_failed_document_can_be_retried_and_is_ingested_again_with_fresh_attempts(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let kb = create_kb(&s, "Retry").await;
    let good = manual_pdf();
    let files = [("broken.pdf", good[..good.len() / 2].to_vec()), ("notes.txt", NOTES_TXT.as_bytes().to_vec())];
    let (status, up) = upload(&s, &s.admin_key, &kb, &files).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{up}");
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    let broken = doc(&batch, "broken.pdf")["id"].as_str().unwrap().to_string();
    let ready = doc(&batch, "notes.txt")["id"].as_str().unwrap().to_string();
    assert_eq!(doc(&batch, "broken.pdf")["status"], "failed", "{batch:#}");
    assert_eq!(attempt_of(&pool, &broken).await, 1);

    let (status, d) = s.admin(Method::POST, &format!("/v1/documents/{broken}/retry"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d}");
    assert_eq!(d["id"], broken.as_str());
    assert_eq!(d["status"], "queued", "{d}");
    assert!(d["error"].is_null(), "{d}");
    // The worker takes it again: a new first attempt (the cap applies afresh) that fails the
    // same way, since the bytes are still broken.
    let d = wait_for(Duration::from_secs(60), || async {
        let (_, d) = s.admin(Method::GET, &format!("/v1/documents/{broken}"), None).await;
        (d["status"] == "failed").then_some(d)
    })
    .await;
    assert_eq!(d["error"]["code"], "pdf_unreadable", "{d}");
    assert_eq!(attempt_of(&pool, &broken).await, 1, "the retry reset the attempt counter");

    // Only a failed document can be retried.
    let (status, e) = s.admin(Method::POST, &format!("/v1/documents/{ready}/retry"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "document_not_failed");
    let (_, d) = s.admin(Method::GET, &format!("/v1/documents/{ready}"), None).await;
    assert_eq!(d["status"], "ready", "a refused retry leaves the document alone");
    let unknown = uuid::Uuid::now_v7();
    let (status, e) = s.admin(Method::POST, &format!("/v1/documents/{unknown}/retry"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = s.client(Method::POST, &format!("/v1/documents/{broken}/retry"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_retries_of_a_failed_document_queue_it_once(pool: PgPool) {
    // No worker: the ingest queue keeps every job pushed, so the test can count them.
    let s = Stack::start_with(pool.clone(), false, &[]).await;
    let kb = create_kb(&s, "Retry race").await;
    let (status, up) = upload(&s, &s.admin_key, &kb, &[("notes.txt", NOTES_TXT.as_bytes().to_vec())]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{up}");
    let id = up["documents"][0]["id"].as_str().unwrap().to_string();
    sqlx::query("UPDATE documents SET status = 'failed', attempt = 3, error_code = 'pdf_unreadable', error_message = 'x' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    // apalis-redis keeps every pushed task's payload in this hash until a worker finishes it.
    let tasks = format!("{}:data", s.config_queue("ingest-docs"));
    let mut redis = s.redis().await;
    let queued_before: i64 = redis::cmd("HLEN").arg(&tasks).query_async(&mut redis).await.unwrap();
    assert_eq!(queued_before, 1, "the upload's own job");

    let path = format!("/v1/documents/{id}/retry");
    let statuses = futures::future::join_all((0..8).map(|_| s.admin(Method::POST, &path, None))).await;
    let accepted = statuses.iter().filter(|(st, _)| *st == StatusCode::ACCEPTED).count();
    let refused = statuses
        .iter()
        .filter(|(st, e)| *st == StatusCode::CONFLICT && e["error"]["code"] == "document_not_failed")
        .count();
    assert_eq!((accepted, refused), (1, 7), "{statuses:?}");
    let queued_after: i64 = redis::cmd("HLEN").arg(&tasks).query_async(&mut redis).await.unwrap();
    assert_eq!(queued_after, 2, "one retry pushed one job");
    assert_eq!(attempt_of(&pool, &id).await, 0);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_documents_chunks_are_listed_in_order_with_locations_and_pages(pool: PgPool) {
    let s = stack(pool, &[]).await;
    let kb = create_kb(&s, "Chunks").await;
    let files = [("manual.pdf", manual_pdf()), ("guide.md", GUIDE_MD.as_bytes().to_vec())];
    let (status, up) = upload(&s, &s.admin_key, &kb, &files).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{up}");
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    let manual = doc(&batch, "manual.pdf")["id"].as_str().unwrap().to_string();
    let guide = doc(&batch, "guide.md");

    // Three pages, one chunk each, read two at a time.
    let (status, first) = s.admin(Method::GET, &format!("/v1/documents/{manual}/chunks?limit=2"), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["data"].as_array().unwrap().len(), 2, "{first:#}");
    let after = first["next_after"].as_str().expect("a second page");
    assert_eq!(after, first["data"][1]["id"]);
    let (status, second) =
        s.admin(Method::GET, &format!("/v1/documents/{manual}/chunks?limit=2&after={after}"), None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(second["next_after"].is_null(), "{second:#}");
    let chunks: Vec<&Value> =
        first["data"].as_array().unwrap().iter().chain(second["data"].as_array().unwrap()).collect();
    let pages: Vec<&str> = chunks.iter().map(|c| c["location"].as_str().unwrap()).collect();
    assert_eq!(pages, ["page 1", "page 2", "page 3"]);
    for (n, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "chunk");
        assert_eq!(c["ordinal"], n);
        let text = c["content"].as_str().unwrap();
        assert!(!text.is_empty());
        assert_eq!(c["char_end"].as_i64().unwrap() - c["char_start"].as_i64().unwrap(), text.chars().count() as i64);
        assert!(c["token_count"].as_i64().unwrap() > 0, "{c}");
    }
    assert!(chunks[1]["content"].as_str().unwrap().contains("penguin pool"), "{chunks:#?}");

    // Markdown chunks carry their heading path; the counts match the document's.
    let (_, all) =
        s.admin(Method::GET, &format!("/v1/documents/{}/chunks?limit=100", guide["id"].as_str().unwrap()), None).await;
    let data = all["data"].as_array().unwrap();
    assert_eq!(data.len() as i64, guide["chunk_count"].as_i64().unwrap());
    let tokens: i64 = data.iter().map(|c| c["token_count"].as_i64().unwrap()).sum();
    assert_eq!(tokens, guide["token_count"].as_i64().unwrap());
    assert!(data.iter().any(|c| c["location"] == "Zoo Guide > Feeding > Giraffes"), "{all:#}");

    let unknown = uuid::Uuid::now_v7();
    let (status, _) = s.admin(Method::GET, &format!("/v1/documents/{unknown}/chunks"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.client(Method::GET, &format!("/v1/documents/{manual}/chunks"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, e) = s.admin(Method::GET, &format!("/v1/documents/{manual}/chunks?limit=0"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    s.shutdown().await;
}

/// A writer the test can read after handing it to the ingest command.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `chatq-api ingest DIR --kb KB` in-process; returns (all good, table, progress lines).
async fn ingest_folder(s: &Stack, dir: &std::path::Path, kb: &str) -> (bool, String, String) {
    let args = chatq_api::ingest_cli::IngestArgs {
        dir: dir.to_path_buf(),
        kb: kb.to_string(),
        api: s.api_url.clone(),
        key: s.admin_key.clone(),
        timeout: Duration::from_secs(60),
    };
    let progress = Captured::default();
    let mut out = Vec::new();
    let ok =
        chatq_api::ingest_cli::run(args, &mut out, chatq_api::ingest_cli::Progress::Lines(Box::new(progress.clone())))
            .await
            .unwrap();
    (ok, String::from_utf8(out).unwrap(), progress.text())
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_ingest_command_uploads_a_nested_folder_reports_progress_and_fails_when_a_file_fails(pool: PgPool) {
    let s = stack(pool, &[]).await;
    let kb = create_kb(&s, "Folder").await;
    let dir = std::env::temp_dir().join(format!("chatq-ingest-folder-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("nested/deeper")).unwrap();
    let good = manual_pdf();
    std::fs::write(dir.join("guide.md"), GUIDE_MD).unwrap();
    std::fs::write(dir.join("nested/manual.pdf"), &good).unwrap();
    std::fs::write(dir.join("nested/deeper/notes.txt"), NOTES_TXT).unwrap();
    std::fs::write(dir.join("nested/broken.pdf"), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.join("nested/deeper/empty.txt"), "").unwrap();
    std::fs::write(dir.join("picture.png"), b"\x89PNG").unwrap();

    let (ok, table, progress) = ingest_folder(&s, &dir, &kb).await;
    assert!(!ok, "a failed file makes the command fail (exit status 1)\n{table}");
    let row = |file: &str| {
        table.lines().find(|l| l.split_whitespace().next() == Some(file)).unwrap_or_else(|| panic!("{file}:\n{table}"))
    };
    for file in ["guide.md", "manual.pdf", "notes.txt"] {
        let cols: Vec<&str> = row(file).split_whitespace().collect();
        assert_eq!(cols[1], "ready", "{table}");
        assert!(cols[2].parse::<u32>().unwrap() >= 1, "{table}");
    }
    assert!(row("broken.pdf").contains("failed") && row("broken.pdf").contains("pdf_unreadable"), "{table}");
    assert!(row("empty.txt").contains("failed") && row("empty.txt").contains("empty_document"), "{table}");
    assert!(row("picture.png").contains("skipped") && row("picture.png").contains("unsupported type"), "{table}");
    assert!(table.lines().last().unwrap().starts_with("3 ready, 2 failed, 1 other"), "{table}");

    // Progress: the upload, then ingestion counted up to every file.
    let lines: Vec<&str> = progress.lines().collect();
    assert_eq!(lines.first(), Some(&"uploaded 5/5 files"), "{progress}");
    assert_eq!(lines.last(), Some(&"ingested 5/5 files"), "{progress}");
    let counts: Vec<u32> = lines[1..]
        .iter()
        .map(|l| l.strip_prefix("ingested ").unwrap().split('/').next().unwrap().parse().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{progress}");

    // A folder whose files all ingest succeeds (exit status 0); known content is a duplicate.
    let clean = dir.join("nested/deeper");
    std::fs::remove_file(clean.join("empty.txt")).unwrap();
    std::fs::write(clean.join("more.txt"), "Otters juggle pebbles in the river enclosure.").unwrap();
    let (ok, table, _) = ingest_folder(&s, &clean, &kb).await;
    assert!(ok, "{table}");
    assert!(row_status(&table, "more.txt") == "ready" && row_status(&table, "notes.txt") == "duplicate", "{table}");
    assert!(table.lines().last().unwrap().starts_with("1 ready, 0 failed, 1 other"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
    s.shutdown().await;
}

fn row_status<'a>(table: &'a str, file: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(file))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
}

/// A FAQ in Markdown whose sections each answer one question; the section titles do not use
/// the words of the paraphrased questions asked of it.
const FAQ_MD: &str = "# Garden FAQ

## Watering

Tomato plants want deep watering twice a week rather than a little every day, so the roots grow down.
In a heat wave, water them early in the morning.

## Pests

Aphids cluster under the leaves of roses; a jet of water or ladybirds keep them down without spraying.
Slugs come out at night after rain and eat young lettuce.

## Soil

Compost made from kitchen peelings and autumn leaves is ready after about a year of turning.
Clay soil drains better once sand and compost are dug in.

## Tools

Secateurs stay sharp when wiped clean after pruning and oiled before winter storage in the shed.
";

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn search_ranks_the_section_that_answers_a_paraphrased_question_first(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let kb = create_kb(&s, "Garden").await;
    let (_, up) = upload(&s, &s.admin_key, &kb, &[("faq.md", FAQ_MD.as_bytes().to_vec())]).await;
    let batch = settle(&s, up["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["counts"]["ready"], 1, "{batch}");
    // One chunk per section, each carrying its heading path.
    let locations: Vec<String> =
        sqlx::query_scalar("SELECT location FROM chunks ORDER BY ordinal").fetch_all(&pool).await.unwrap();
    assert_eq!(
        locations,
        ["Garden FAQ > Watering", "Garden FAQ > Pests", "Garden FAQ > Soil", "Garden FAQ > Tools"],
        "a chunk per section"
    );
    for (question, section) in [
        ("how often should I water my tomatoes?", "Garden FAQ > Watering"),
        ("what eats my lettuce seedlings at night", "Garden FAQ > Pests"),
        ("how long until my compost heap is usable", "Garden FAQ > Soil"),
        ("keeping pruning shears sharp over the winter", "Garden FAQ > Tools"),
    ] {
        let results = search(&s, &kb, question).await;
        assert_eq!(results[0]["location"], section, "{question}: {results:#?}");
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_knowledge_bases_language_decides_stemming_and_an_unknown_one_is_refused(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let (status, err) =
        s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "x", "language": "klingon"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "invalid_request", "{err}");
    assert_eq!(err["error"]["details"]["problems"][0]["field"], "language", "{err}");

    let mut kbs = Vec::new();
    for language in ["english", "simple"] {
        let (status, kb) =
            s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": language, "language": language}))).await;
        assert_eq!(status, StatusCode::CREATED, "{kb}");
        assert_eq!(kb["language"], language);
        let kb = kb["id"].as_str().unwrap().to_string();
        let text = b"The foxes were digging burrows under the hedges.".to_vec();
        let (_, up) = upload(&s, &s.admin_key, &kb, &[("foxes.txt", text)]).await;
        assert_eq!(settle(&s, up["batch_id"].as_str().unwrap()).await["counts"]["ready"], 1);
        kbs.push(kb);
    }
    let keyword = |kb: String| {
        let s = &s;
        async move {
            let body = json!({"query": "fox dig burrow", "mode": "keyword"});
            let (status, r) = s.admin(Method::POST, &format!("/v1/knowledge-bases/{kb}/search"), Some(body)).await;
            assert_eq!(status, StatusCode::OK, "{r}");
            r["results"].as_array().unwrap().len()
        }
    };
    // English stems "foxes" and "digging" to what the query's words stem to; `simple` does not.
    assert_eq!(keyword(kbs[0].clone()).await, 1, "english stems");
    assert_eq!(keyword(kbs[1].clone()).await, 0, "simple does not stem");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_answer_citing_source_two_gets_source_twos_document_chunk_and_a_verbatim_quote(pool: PgPool) {
    let s = stack(pool.clone(), &[]).await;
    let kb = create_kb(&s, "Zoo").await;
    let (_, up) = upload(&s, &s.admin_key, &kb, &good_files()).await;
    assert_eq!(settle(&s, up["batch_id"].as_str().unwrap()).await["counts"]["ready"], 4);
    let assistant = s.create_assistant(json!({"knowledge_base_ids": [kb]})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "How often is the penguin pool scrubbed? [[fake cite=2]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    let text = run["output_text"].as_str().unwrap();
    // Source 2 as the model saw it: the second `[n] filename (location)` block of the prompt.
    let request = s.fake.chat_requests().into_iter().last().expect("a chat request");
    assert!(text.ends_with("[2]"), "{text}\n{request:#}");
    let messages = request["messages"].as_array().unwrap();
    let system = messages.iter().filter_map(|m| m["content"].as_str()).find(|c| c.contains("\nSources:\n")).unwrap();
    let block = system.split("\n[2] ").nth(1).expect("a source 2").split("\n[3] ").next().unwrap();
    let (header, body) = block.split_once('\n').unwrap();
    let citations = run["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 1, "{run}");
    let c = &citations[0];
    assert_eq!(c["index"], 2);
    let location = c["location"].as_str().map(|l| format!(" ({l})")).unwrap_or_default();
    assert_eq!(format!("{}{location}", c["filename"].as_str().unwrap()), header, "source 2's file and location");
    let (chunk, document): (String, String) =
        sqlx::query_as("SELECT content, document_id::text FROM chunks WHERE id = $1::uuid")
            .bind(c["chunk_id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(chunk.trim(), body.trim(), "source 2's chunk");
    assert_eq!(c["document_id"], document.as_str());
    let quote = c["quote"].as_str().unwrap();
    assert!(quote.len() > 10 && chunk.contains(quote), "quote {quote:?} is a verbatim span of {chunk:?}");
    assert!(text.contains(quote), "the answer quoted it");
    s.shutdown().await;
}
