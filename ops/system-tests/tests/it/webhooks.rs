//! Signed webhooks end to end: a real HTTP receiver on 127.0.0.1 gets `run.completed`,
//! `document.ready` and `batch.completed` from the worker, signed as Standard Webhooks says
//! (checked by Python's `hmac` through `ops/webhook-verify.py`); failures are retried and
//! recorded; private destinations are refused unless allowed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::HeaderMap, routing::post};
use chatq_system_tests::{Stack, metric, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Status codes to answer, in order; 200 once they are used up.
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1; returns it and its URL.
    async fn start(answers: &[u16]) -> (Self, String) {
        let r = Receiver::default();
        r.answers.lock().unwrap().extend(answers);
        let app = axum::Router::new().route("/hook", post(receive)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits for a delivery of `event` and returns it.
    async fn wait(&self, event: &str) -> Received {
        wait_for(Duration::from_secs(30), || async { self.all().into_iter().find(|r| r.json()["type"] == event) }).await
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    r.got.lock().unwrap().push(Received {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        body,
    });
    let code = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

/// Subscribes `url` to `events`; returns the webhook's id and secret.
async fn subscribe(s: &Stack, url: &str, events: &[&str]) -> (String, String) {
    let (status, w) = s.admin(Method::POST, "/v1/webhooks", Some(json!({"url": url, "events": events}))).await;
    assert_eq!(status, StatusCode::CREATED, "{w}");
    (w["id"].as_str().unwrap().to_string(), w["secret"].as_str().unwrap().to_string())
}

/// Checks the signature with Python's standard library (`ops/webhook-verify.py`), an
/// implementation that shares no code with chatq's.
fn python_verifies(secret: &str, r: &Received) -> bool {
    use std::io::Write as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../webhook-verify.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args([&r.id, &r.timestamp, &r.signature])
        .env("WEBHOOK_SECRET", secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(r.body.as_bytes()).unwrap();
    child.wait().unwrap().success()
}

/// The deliveries of a webhook, newest first.
async fn deliveries(s: &Stack, webhook: &str) -> Vec<Value> {
    let (status, list) = s.admin(Method::GET, &format!("/v1/webhooks/{webhook}/deliveries"), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["data"].as_array().unwrap().clone()
}

async fn worker_metrics(s: &Stack) -> String {
    let addr = s.worker.as_ref().unwrap().addr;
    s.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_finished_run_is_delivered_signed_and_verifies_with_an_independent_implementation(pool: PgPool) {
    let s = Stack::start_with(pool, true, &[("CHATQ_WEBHOOKS_ALLOW_PRIVATE", "1")]).await;
    let (receiver, url) = Receiver::start(&[]).await;
    let (webhook, secret) = subscribe(&s, &url, &["run.completed", "run.failed"]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    let run_id = run["id"].as_str().unwrap();
    s.wait_run(run_id).await;

    let got = receiver.wait("run.completed").await;
    assert!(python_verifies(&secret, &got), "Python's hmac rejects the signature: {got:?}");
    // The same check fails for another secret or a changed body, so it does check something.
    let mut tampered = got.clone();
    tampered.body = tampered.body.replace("completed", "c0mpleted");
    assert!(!python_verifies(&secret, &tampered));
    assert!(!python_verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &got));

    let body = got.json();
    assert_eq!(body["type"], "run.completed");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok(), "{body}");
    // `data` is the run as the API returns it.
    let (_, api_run) = s.client(Method::GET, &format!("/v1/runs/{run_id}"), None).await;
    let data = body["data"].as_object().unwrap();
    assert_eq!(data["id"], run_id);
    assert_eq!(data["status"], "completed");
    assert!(!data["output_text"].as_str().unwrap().is_empty());
    for (k, v) in data {
        assert_eq!(&api_run[k], v, "data.{k} differs from GET /v1/runs/{run_id}");
    }

    // Recorded: one successful attempt, with its status code and latency.
    let ds = wait_for(Duration::from_secs(10), || async {
        let ds = deliveries(&s, &webhook).await;
        (ds.len() == 1 && ds[0]["status"] == "succeeded").then_some(ds)
    })
    .await;
    assert_eq!(ds[0]["id"], got.id, "webhook-id is the delivery id");
    assert_eq!(ds[0]["type"], "run.completed");
    assert_eq!(ds[0]["attempt"], 1);
    assert_eq!(ds[0]["status_code"], 200);
    assert!(ds[0]["latency_ms"].is_number());
    assert_eq!(ds[0]["next_attempt_at"], Value::Null);
    assert_eq!(receiver.all().len(), 1, "one event, one request");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn an_uploaded_document_sends_document_ready_then_batch_completed(pool: PgPool) {
    let s = crate::knowledge::stack(pool, &[("CHATQ_WEBHOOKS_ALLOW_PRIVATE", "1")]).await;
    let (receiver, url) = Receiver::start(&[]).await;
    let (_, secret) = subscribe(&s, &url, &["document.ready", "document.failed", "batch.completed"]).await;
    let (_, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "Zoo"}))).await;
    let kb = kb["id"].as_str().unwrap();
    let files = [
        ("notes.txt", b"The reptile house thermostat is set to thirty degrees at all times.".to_vec()),
        ("broken.pdf", b"%PDF-1.4 this is not a PDF at all".to_vec()),
    ];
    let (status, up) = crate::knowledge::upload(&s, &s.admin_key, kb, &files).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{up}");
    let batch = up["batch_id"].as_str().unwrap();

    let ready = receiver.wait("document.ready").await;
    let failed = receiver.wait("document.failed").await;
    let done = receiver.wait("batch.completed").await;
    for r in [&ready, &failed, &done] {
        assert!(python_verifies(&secret, r), "{r:?}");
    }
    assert_eq!(ready.json()["data"]["filename"], "notes.txt");
    assert_eq!(ready.json()["data"]["status"], "ready");
    assert_eq!(failed.json()["data"]["filename"], "broken.pdf");
    assert_eq!(failed.json()["data"]["status"], "failed");
    let (_, api_batch) = s.admin(Method::GET, &format!("/v1/ingestion-batches/{batch}"), None).await;
    assert_eq!(done.json()["data"], api_batch, "data is the batch as the API returns it");
    assert_eq!(done.json()["data"]["counts"]["ready"], 1);
    assert_eq!(done.json()["data"]["counts"]["failed"], 1);
    // batch.completed comes once, after both documents.
    let n = receiver.all().iter().filter(|r| r.json()["type"] == "batch.completed").count();
    assert_eq!(n, 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_receiver_failing_once_gets_the_same_delivery_again_and_every_attempt_is_recorded(pool: PgPool) {
    let s = Stack::start_with(pool, true, &[("CHATQ_WEBHOOKS_ALLOW_PRIVATE", "1")]).await;
    let before = worker_metrics(&s).await;
    for outcome in ["succeeded", "retrying", "failed"] {
        let v = metric(&before, "chatq_webhook_deliveries_total", &[("outcome", outcome)]);
        assert_eq!(v, Some(0.0), "{outcome} is exported at zero from start-up");
    }
    assert_eq!(metric(&before, "chatq_webhook_backlog", &[]), Some(0.0));

    let (receiver, url) = Receiver::start(&[500]).await;
    let (webhook, secret) = subscribe(&s, &url, &["run.completed"]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    s.wait_run(run["id"].as_str().unwrap()).await;

    // The first attempt gets 500; the retry (5 s later) gets 200.
    let ds = wait_for(Duration::from_secs(30), || async {
        let ds = deliveries(&s, &webhook).await;
        (ds.len() == 1 && ds[0]["status"] == "succeeded").then_some(ds)
    })
    .await;
    let d = &ds[0];
    assert_eq!(d["attempt"], 2, "{d}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[0]["error"], "the receiver answered 500");
    assert_eq!(attempts[1]["status_code"], 200);
    assert_eq!(attempts[1]["error"], Value::Null);
    let got = receiver.all();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id, "the retry carries the same webhook-id, so receivers dedupe");
    assert_eq!(got[0].body, got[1].body, "the retry sends the same body");
    assert!(got.iter().all(|r| python_verifies(&secret, r)));

    // A manual retry sends it once more, same id and body.
    let (status, body) =
        s.admin(Method::POST, &format!("/v1/webhooks/{webhook}/deliveries/{}/retry", got[0].id), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for(Duration::from_secs(15), || async { (receiver.all().len() == 3).then_some(()) }).await;
    assert_eq!(receiver.all()[2].id, got[0].id);
    let d = wait_for(Duration::from_secs(10), || async {
        let ds = deliveries(&s, &webhook).await;
        (ds[0]["attempt"] == 3 && ds[0]["status"] == "succeeded").then(|| ds[0].clone())
    })
    .await;
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3);

    let after = worker_metrics(&s).await;
    assert_eq!(metric(&after, "chatq_webhook_deliveries_total", &[("outcome", "retrying")]), Some(1.0));
    assert_eq!(metric(&after, "chatq_webhook_deliveries_total", &[("outcome", "succeeded")]), Some(2.0));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_private_destination_is_refused_without_the_allow_flag(pool: PgPool) {
    let s = Stack::start(pool).await;
    assert!(!s.config.worker.webhooks_allow_private);
    let (receiver, url) = Receiver::start(&[]).await;
    let (webhook, _) = subscribe(&s, &url, &["run.completed"]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "hello").await;
    s.wait_run(run["id"].as_str().unwrap()).await;

    let d = wait_for(Duration::from_secs(20), || async {
        let ds = deliveries(&s, &webhook).await;
        ds.first().filter(|d| d["status"] == "failed").cloned()
    })
    .await;
    assert_eq!(d["attempt"], 1, "a refused destination is not retried: {d}");
    assert_eq!(d["status_code"], Value::Null);
    assert!(d["error"].as_str().unwrap().contains("private"), "{d}");
    assert!(receiver.all().is_empty(), "the receiver on 127.0.0.1 got a request");
    let m = worker_metrics(&s).await;
    assert_eq!(metric(&m, "chatq_webhook_deliveries_total", &[("outcome", "failed")]), Some(1.0));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_delivery_whose_job_was_lost_is_sent_by_the_reconciler(pool: PgPool) {
    let mut s = Stack::start_with(
        pool,
        false,
        &[("CHATQ_WEBHOOKS_ALLOW_PRIVATE", "1"), ("CHATQ_RECONCILE_INTERVAL_SECS", "1")],
    )
    .await;
    let (receiver, url) = Receiver::start(&[]).await;
    let (webhook, secret) = subscribe(&s, &url, &["batch.completed"]).await;
    // A delivery committed by a process that died before pushing its job (or whose job a
    // Redis flush lost): only the outbox row exists.
    let subject = uuid::Uuid::now_v7();
    let mut tx = s.pool.begin().await.unwrap();
    chatq_common::db::webhooks::record(&mut tx, "batch.completed", subject).await.unwrap();
    tx.commit().await.unwrap();
    assert!(receiver.all().is_empty());

    s.start_worker().await;
    let got = receiver.wait("batch.completed").await;
    assert!(python_verifies(&secret, &got));
    assert_eq!(got.json()["data"], json!({"id": subject, "deleted": true}), "a subject gone since says so");
    let ds = deliveries(&s, &webhook).await;
    assert_eq!(ds[0]["id"], got.id);
    s.shutdown().await;
}
