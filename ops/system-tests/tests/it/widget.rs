//! The chat widget `<chatq-chat>` in a real browser: headless Chromium driven by playwright-core
//! (`ops/browser/widget.mjs`, one scenario per test) on a host page of another origin, as a
//! site embeds it, or on the demo page. The script reports what the visitor saw; these tests
//! compare it with what the API stored. `./ops/test` installs Chromium and the npm packages;
//! without them the browser tests say so loudly and pass.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    response::{Html, IntoResponse},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha384};
use sqlx::PgPool;
use tokio::net::TcpListener;

use chatq_system_tests::{Stack, wait_for};

/// Gzipped size budget of `/widget/chatq.js`.
const BUDGET_GZIP_BYTES: u64 = 25 * 1024;

/// The workspace root, wherever this test crate lives in it.
fn repo() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        assert!(dir.pop(), "no Cargo.lock above {}", env!("CARGO_MANIFEST_DIR"));
    }
    dir
}

fn browser_dir() -> PathBuf {
    repo().join("ops/browser")
}

/// Screenshots go to the target directory, never into the repository.
fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target")).join("widget")
}

/// Chromium and the npm packages, or `None` after saying loudly that the test is skipped.
fn browser() -> Option<String> {
    let chromium = std::env::var("CHATQ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = browser_dir().join("node_modules");
    if !Path::new(&chromium).exists() || !modules.join("playwright-core").exists() || !modules.join("axe-core").exists()
    {
        eprintln!(
            "\n!!!!!!!! SKIPPED the widget browser test: {chromium} or ops/browser/node_modules is missing.\n\
             !!!!!!!! ./ops/test installs them (apt-get install chromium; npm ci in ops/browser).\n"
        );
        return None;
    }
    Some(chromium)
}

/// Runs one scenario of `ops/browser/widget.mjs` on `page_url` and returns its report.
async fn scenario(chromium: &str, name: &str, page_url: &str, env: &[(&str, String)]) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join("widget.mjs"))
        .arg(name)
        .arg(page_url)
        .arg(out_dir())
        .env("CHATQ_CHROMIUM", chromium)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .expect("the browser scenario finishes within 150 s")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser scenario {name} failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(report["pageErrors"], json!([]), "errors on the page: {report}");
    report
}

/// A page on another origin that embeds the widget the documented way, and its server.
struct Host {
    url: String,
    /// Calls of the token endpoint so far.
    token_calls: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

/// Serves a host page with the token endpoint a site writes: it holds the client key and
/// returns a user token, valid for `ttl_seconds`, for its visitor.
async fn host_page(s: &Stack, assistant: &str, ttl_seconds: i64) -> Host {
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Zoo</title>
<script type="module" src="{api}/widget/chatq.js"></script></head>
<body><main><h1>The zoo</h1><p>Opening hours: every day.</p></main>
<chatq-chat api="{api}" token-url="/token" assistant="{assistant}" heading="Zoo help"></chatq-chat>
</body></html>"#,
        api = s.api_url
    );
    let (api, key, http, bound) = (s.api_url.clone(), s.client_key.clone(), s.http.clone(), assistant.to_string());
    let token_calls = Arc::new(AtomicUsize::new(0));
    let calls = token_calls.clone();
    let token = move || {
        let (api, key, http, bound) = (api.clone(), key.clone(), http.clone(), bound.clone());
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let resp = http
                .post(format!("{api}/v1/user-tokens"))
                .bearer_auth(&key)
                .json(&json!({"user": "visitor-1", "ttl_seconds": ttl_seconds, "assistants": [bound]}))
                .send()
                .await
                .expect("API reachable");
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            (status, Json(resp.json::<Value>().await.unwrap()))
        }
    };
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let page = page.clone();
                async move {
                    // Trusted Types: any HTML string assigned to the DOM is an error on the page.
                    ([("content-security-policy", "require-trusted-types-for 'script'")], Html(page)).into_response()
                }
            }),
        )
        .route("/token", post(token));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Host { url, token_calls, server }
}

async fn stack(pool: PgPool, extra: &[(&str, &str)]) -> Stack {
    let mut overrides = vec![
        ("CHATQ_CORS_ORIGINS", "*"),
        ("CHATQ_RETRY_BASE_MS", "50"),
        ("CHATQ_RETRY_MAX_MS", "300"),
        // Every document is extracted in this child process (the demo knowledge base).
        ("CHATQ_EXTRACTOR_BIN", env!("CARGO_BIN_EXE_chatq-test-extractor")),
    ];
    overrides.extend_from_slice(extra);
    Stack::start_with(pool, true, &overrides).await
}

/// The runs of a thread, oldest first.
async fn runs(s: &Stack, thread: &str) -> Vec<Value> {
    let (status, page) = s.admin(Method::GET, &format!("/v1/threads/{thread}/runs?limit=100"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["data"].as_array().unwrap().clone()
}

fn texts(report: &Value) -> Vec<String> {
    report["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// A knowledge base with the files of `ops/demo-kb`, ingested; returns its id.
async fn demo_knowledge_base(s: &Stack) -> String {
    let (status, kb) = s.admin(Method::POST, "/v1/knowledge-bases", Some(json!({"name": "Demo docs"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{kb}");
    let kb = kb["id"].as_str().unwrap().to_string();
    let boundary = "chatq-widget-test-boundary-31f6c2";
    let mut body = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo().join("ops/demo-kb")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&std::fs::read(path).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let resp = s
        .http
        .post(format!("{}/v1/knowledge-bases/{kb}/documents", s.api_url))
        .bearer_auth(&s.admin_key)
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let batch = resp.json::<Value>().await.unwrap()["batch_id"].as_str().unwrap().to_string();
    let settled = wait_for(Duration::from_secs(60), || async {
        let (_, b) = s.admin(Method::GET, &format!("/v1/ingestion-batches/{batch}"), None).await;
        (b["counts"]["queued"] == 0 && b["counts"]["processing"] == 0).then_some(b)
    })
    .await;
    assert_eq!(settled["counts"]["ready"], files.len(), "{settled}");
    kb
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_is_served_from_the_binary_with_cache_headers_and_integrity(pool: PgPool) {
    let s = Stack::without_worker(pool).await;
    let resp = s.http.get(format!("{}/widget/chatq.js", s.api_url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=300");
    assert_eq!(h["access-control-allow-origin"], "*", "module scripts of other origins need CORS");
    let etag = h["etag"].to_str().unwrap().to_string();
    let body = resp.bytes().await.unwrap();
    assert!(std::str::from_utf8(&body).unwrap().contains("customElements.define(\"chatq-chat\""));

    let again =
        s.http.get(format!("{}/widget/chatq.js", s.api_url)).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let (status, manifest) = s.call(Method::GET, "/widget/manifest.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let integrity = format!("sha384-{}", STANDARD.encode(Sha384::digest(&body)));
    assert_eq!(manifest["integrity"], integrity.as_str());
    let versioned = s.http.get(format!("{}{}", s.api_url, manifest["src"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(versioned.status(), StatusCode::OK);
    assert_eq!(versioned.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(versioned.bytes().await.unwrap(), body);
    let stale = s.http.get(format!("{}/widget/0000000000000000/chatq.js", s.api_url)).send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::NOT_FOUND);

    // The READMEs show this version and its hash.
    let version = manifest["version"].as_str().unwrap();
    for readme in ["api/widget/README.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(readme)).unwrap();
        assert!(
            text.contains(&integrity) && text.contains(&format!("/widget/{version}/chatq.js")),
            "{readme} (\"Embed the chat\") must show the widget's version and integrity hash: \
             replace the old ones with /widget/{version}/chatq.js and {integrity}"
        );
    }

    // The demo is off unless CHATQ_DEMO=1.
    let (status, _) = s.call(Method::GET, "/demo", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.call(Method::POST, "/demo/token", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[tokio::test]
async fn widget_sources_type_check_with_tsc() {
    let tsc = browser_dir().join("node_modules/typescript/bin/tsc");
    if !tsc.exists() {
        eprintln!(
            "\n!!!!!!!! SKIPPED the widget type check: ops/browser/node_modules/typescript is missing (npm ci).\n"
        );
        return;
    }
    let output = tokio::process::Command::new("node")
        .arg(tsc)
        .arg("-p")
        .arg(repo().join("api/widget/tsconfig.json"))
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "tsc --checkJs found errors:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_streams_an_answer_equal_to_the_runs_output_text(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "answer", &host.url, &[]).await;
    host.server.abort();

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    assert_eq!(runs.len(), 1, "one send, one run: {runs:?}");
    assert_eq!(runs[0]["status"], "completed");
    assert_eq!(texts(&report), vec![runs[0]["output_text"].as_str().unwrap().to_string()]);
    assert_eq!(report["questions"], json!(["Hello there [[fake tokens=40 delay_ms=25]]"]));
    assert_eq!(host.token_calls.load(Ordering::SeqCst), 1, "a valid token is reused");
    assert_eq!(report["lostResponses"], 1, "the first send's response was lost and the send retried: {report}");
    assert_eq!(report["busyWhileStreaming"], "true", "aria-busy while streaming");
    assert_eq!(report["overflow320"], false, "the open launcher panel fits 320 px");
    assert_eq!(report["answersWhileStreaming"], 0, "a streaming answer is not announced token by token");
    let early = report["earlyWords"].as_u64().unwrap();
    assert!((3..40).contains(&early), "the answer appeared token by token: {report}");
    let gzip = report["gzipBytes"].as_u64().unwrap();
    eprintln!("widget size: {} bytes, {gzip} bytes gzipped", report["rawBytes"]);
    assert!(gzip <= BUDGET_GZIP_BYTES, "the widget is {gzip} bytes gzipped, over the {BUDGET_GZIP_BYTES} budget");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_renders_markdown_as_elements_and_html_as_text(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({})).await;
    // Tokens that expire within the refresh margin are replaced before each use.
    let host = host_page(&s, &assistant, 30).await;
    let report = scenario(&chromium, "markdown", &host.url, &[]).await;
    host.server.abort();
    let calls = host.token_calls.load(Ordering::SeqCst);
    assert!(calls >= 3, "an expiring token is refreshed before it is used ({calls} token calls)");

    assert_eq!(report["strong"], json!(["bold"]), "{report}");
    assert_eq!(report["em"], json!(["soft"]), "{report}");
    assert_eq!(report["code"], json!(["x < y"]), "{report}");
    assert_eq!(
        report["links"],
        json!([["docs", "https://example.org/docs", "noopener noreferrer"]]),
        "only http(s) links"
    );
    assert_eq!(report["images"], 0, "model text never becomes HTML");
    let text = report["text"].as_str().unwrap();
    assert!(text.contains("[bad](javascript:alert(1))"), "a script link stays text: {text}");
    assert!(text.contains("<img src=x onerror=alert(1)>"), "HTML stays text: {text}");
    assert!(text.contains("snake_case_name"), "{text}");
    assert!(
        report["question"].as_str().unwrap().starts_with("**bold** and _soft_"),
        "the visitor's text is shown as typed"
    );
    assert_eq!(report["articlesAfterNew"], 0, "New conversation empties the log");
    assert_eq!(report["textsAfterNew"], json!(["Echo: Fresh start"]));
    assert_ne!(report["stored"]["thread"], report["threadBefore"], "a new thread");
    assert_eq!(runs(&s, report["stored"]["thread"].as_str().unwrap()).await.len(), 1);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_reload_and_network_loss_mid_answer_show_the_text_exactly_once(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "resume", &host.url, &[]).await;
    host.server.abort();

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let expected: Vec<String> = runs.iter().map(|r| r["output_text"].as_str().unwrap().to_string()).collect();
    assert!(runs.iter().all(|r| r["status"] == "completed"), "{runs:?}");
    assert_eq!(texts(&report), expected, "each answer exactly, once");
    let log = report["logText"].as_str().unwrap();
    for text in &expected {
        assert_eq!(text.split_whitespace().count(), 80);
        assert_eq!(log.matches(text.as_str()).count(), 1, "shown exactly once: {log}");
    }
    assert!(report["seqBeforeReload"].as_i64().unwrap() > 2, "the reload happened mid-answer: {report}");
    let offline = report["wordsWhileOffline"].as_u64().unwrap();
    assert!((6..80).contains(&offline), "the network went away mid-answer: {report}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_stop_cancels_the_run_within_a_second_and_keeps_the_partial_text(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "stop", &host.url, &[]).await;
    host.server.abort();

    let elapsed = report["cancelledAfterMs"].as_u64().unwrap_or_else(|| panic!("the run was not cancelled: {report}"));
    assert!(elapsed < 1000, "cancelled {elapsed} ms after Stop");
    let run = s.wait_run(report["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "cancelled");
    let partial = run["output_text"].as_str().unwrap();
    let words = partial.split_whitespace().count();
    assert!((5..200).contains(&words), "a partial answer: {partial}");
    assert_eq!(texts(&report), vec![partial.to_string()], "the partial text stays");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_on_the_demo_page_cites_the_demo_knowledge_base_and_passes_axe(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[("CHATQ_DEMO", "1")]).await;
    let kb = demo_knowledge_base(&s).await;
    s.create_assistant(json!({"name": "Demo", "knowledge_base_ids": [kb]})).await;
    let mut env = vec![];
    let readme_shot = repo().join("api/widget/screenshot.png");
    if std::env::var("CHATQ_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        env.push(("CHATQ_UPDATE_SCREENSHOT", "1".to_string()));
        env.push(("CHATQ_SCREENSHOT_PATH", readme_shot.display().to_string()));
    }
    // Without `?assistant=` the page picks the newest assistant named "Demo".
    let report = scenario(&chromium, "citation", &format!("{}/demo", s.api_url), &env).await;

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (_, run) = s.admin(Method::GET, &format!("/v1/runs/{}", runs[0]["id"].as_str().unwrap()), None).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(texts(&report), vec![run["output_text"].as_str().unwrap().to_string()]);
    assert_eq!(report["historyTexts"], report["texts"], "the same answer from the history after a reload");
    let citation = &run["citations"][0];
    assert_eq!(report["quoteText"], citation["quote"], "the activated citation shows its quote: {report}");
    assert_eq!(report["citeLabel"], format!("Source 1: {}", citation["filename"].as_str().unwrap()));
    assert!(report["sourceLabel"].as_str().unwrap().contains(citation["filename"].as_str().unwrap()));
    assert_eq!(report["overflow320"], false, "no horizontal scrolling at 320 px");
    for scheme in ["axe", "axeDark"] {
        let serious: Vec<&Value> = report[scheme]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .collect();
        eprintln!("axe-core violations ({scheme}): {}", report[scheme]);
        assert!(serious.is_empty(), "axe-core ({scheme}): serious or critical violations: {serious:?}");
    }
    for shot in ["widget-desktop.png", "widget-desktop-dark.png", "widget-320.png"] {
        assert!(out_dir().join(shot).metadata().is_ok_and(|m| m.len() > 1000), "{shot} written");
    }
    eprintln!("screenshots: {}", out_dir().display());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_errors_show_their_message_and_leave_the_widget_usable(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({"moderation": "input"})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "errors", &host.url, &[]).await;
    host.server.abort();

    let seen = &report["seen"];
    let says = |name: &str, needle: &str| {
        let text = seen[name].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{name}: expected {needle:?} in {text:?}");
    };
    says("rate_limited", "too many requests");
    says("exhausted", "unavailable");
    says("moderation", "content rules");
    says("busy", "still answering");
    assert_eq!(report["busyStatus"], 202, "{report}");
    assert_eq!(report["keptInput"], "Sent while busy [[fake tokens=4]]", "the refused message is kept");

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["failed", "completed", "failed", "completed", "failed", "completed", "completed", "completed"],
        "{runs:?}"
    );
    let codes: Vec<&str> = runs.iter().filter_map(|r| r["error"]["code"].as_str()).collect();
    assert_eq!(codes, ["provider_rate_limited", "provider_unavailable", "moderation_flagged"]);
    let busy = runs.iter().find(|r| r["id"] == report["busyRun"]).expect("the other tab's run");
    let answers = texts(&report);
    assert!(answers.contains(&busy["output_text"].as_str().unwrap().to_string()), "the busy run was followed");
    assert_eq!(answers.last().unwrap(), runs.last().unwrap()["output_text"].as_str().unwrap());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_replaces_an_answer_withdrawn_by_moderation_with_the_refusal(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let assistant = s.create_assistant(json!({"moderation": "output"})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "withdraw", &host.url, &[]).await;
    host.server.abort();

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["error"]["code"], "moderation_flagged");
    let refusal = runs[0]["output_text"].as_str().unwrap();
    let shown = report["shownWhileStreaming"].as_str().unwrap();
    assert!(shown.starts_with("Echo: Tell me a story"), "the answer streamed before it was withdrawn: {shown}");
    let live = &report["live"];
    assert_eq!(live["texts"], json!([refusal]), "the partial answer was replaced by the refusal: {live}");
    assert!(live["alert"].as_str().unwrap().contains("withdrawn"), "{live}");
    assert_eq!(report["reloaded"]["texts"], json!([refusal]), "the history keeps the refusal: {report}");
    for seen in [&live["log"], &report["reloaded"]["log"]] {
        let seen = seen.as_str().unwrap();
        assert!(!seen.contains("forbidden-topic") && !seen.contains("lorem"), "no withdrawn text left: {seen}");
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_drops_the_text_of_a_reset_attempt_and_shows_a_rate_limits_wait(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[("CHATQ_RATE_USER_ACTIVE_RUNS", "1")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "limits", &host.url, &[]).await;
    host.server.abort();

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["failed", "completed"], "{runs:?}");
    assert_eq!(runs[0]["attempt"], 3, "every attempt was cut short and retried: {}", runs[0]);
    let failed = &report["failed"];
    assert!(failed["alert"].as_str().unwrap().contains("unavailable"), "{failed}");
    // What the last attempt said: the deltas after the last `run.reset` of the run's log.
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, data FROM run_events WHERE run_id = $1::uuid ORDER BY seq")
            .bind(runs[0]["id"].as_str().unwrap())
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert_eq!(events.iter().filter(|e| e.0 == "run.reset").count(), 2, "{events:?}");
    let last_reset = events.iter().rposition(|e| e.0 == "run.reset").unwrap();
    let last_attempt: String =
        events[last_reset..].iter().filter(|e| e.0 == "message.delta").map(|e| e.1["text"].as_str().unwrap()).collect();
    assert!(last_attempt.starts_with("Echo: Cut"), "{events:?}");
    assert_eq!(failed["texts"], json!([last_attempt]), "only the last attempt's text, once: {failed}");

    let limited = &report["limited"];
    assert!(limited["alert"].as_str().unwrap().contains("wait 1 second"), "the wait is shown: {limited}");
    assert_eq!(limited["kept"], "Over the limit [[fake tokens=6]]", "the message is kept: {limited}");
    assert_eq!(limited["sendDisabled"], true, "Send waits: {limited}");
    assert_eq!(texts(&report)[1], runs[1]["output_text"].as_str().unwrap(), "sent after the wait");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn widget_works_with_the_keyboard_alone(pool: PgPool) {
    let Some(chromium) = browser() else { return };
    let s = stack(pool, &[]).await;
    let kb = demo_knowledge_base(&s).await;
    let assistant = s.create_assistant(json!({"knowledge_base_ids": [kb]})).await;
    let host = host_page(&s, &assistant, 600).await;
    let report = scenario(&chromium, "keyboard", &host.url, &[]).await;
    host.server.abort();

    let steps = &report["steps"];
    assert_eq!(steps["launcher"]["label"], "Chat with us", "{steps}");
    assert_eq!(steps["afterOpen"]["tag"], "textarea", "opening focuses the message box: {steps}");
    assert!(steps["citation"]["label"].as_str().unwrap().starts_with("Source 1:"), "{steps}");
    assert_eq!(steps["afterCitation"]["expanded"], "true", "the source opened and took focus: {steps}");
    assert_eq!(report["quoteVisible"], true);
    assert_eq!(report["panelHidden"], true, "Escape closed the panel");
    assert_eq!(steps["afterClose"]["label"], "Chat with us", "focus went back to the launcher: {steps}");

    let runs = runs(&s, report["stored"]["thread"].as_str().unwrap()).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["cancelled", "completed"], "Escape stopped the first answer");
    s.shutdown().await;
}
