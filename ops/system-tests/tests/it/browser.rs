//! A real browser: headless Chromium (driven by playwright-core, `ops/browser/`) loads a page
//! that chats with a user token and `EventSource`, is reloaded in the middle of the answer and
//! must end with exactly the full text. `./ops/test` installs Chromium and playwright-core;
//! without them this test says so loudly and passes.

use std::{path::PathBuf, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;

use chatq_system_tests::Stack;

const PAGE: &str = r##"<!doctype html>
<html><body><pre id="out"></pre><script>
const api = "__API__", token = "__TOKEN__", thread = "__THREAD__";
const out = document.querySelector("#out");
let text = localStorage.getItem("text") ?? "";
out.textContent = text;
function follow(runId) {
  const after = Number(localStorage.getItem("seq") ?? 0);
  document.body.dataset.after = after;
  const es = new EventSource(`${api}/v1/runs/${runId}/events?after=${after}&access_token=${token}`);
  const save = (e) => {
    localStorage.setItem("seq", e.lastEventId);
    localStorage.setItem("text", text);
    out.textContent = text;
  };
  es.addEventListener("message.delta", (e) => { text += JSON.parse(e.data).text; save(e); });
  es.addEventListener("run.reset", (e) => { text = ""; save(e); });
  for (const end of ["run.completed", "run.failed", "run.cancelled"]) {
    es.addEventListener(end, (e) => { save(e); es.close(); document.body.dataset.status = end; document.body.dataset.done = "1"; });
  }
}
async function start() {
  const existing = localStorage.getItem("run");
  if (existing) return follow(existing);
  const resp = await fetch(`${api}/v1/threads/${thread}/runs`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ input: "Tell me a long story [[fake tokens=80 delay_ms=40]]" }),
  });
  const run = await resp.json();
  localStorage.setItem("run", run.id);
  follow(run.id);
}
start();
</script></body></html>"##;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../browser")
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_browser_reloading_mid_answer_ends_with_exactly_the_full_text(pool: PgPool) {
    let chromium = std::env::var("CHATQ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = browser_dir();
    if !std::path::Path::new(&chromium).exists() || !dir.join("node_modules/playwright-core").exists() {
        eprintln!(
            "\n!!!!!!!! SKIPPED the browser test: {chromium} or ops/browser/node_modules/playwright-core is missing.\n\
             !!!!!!!! ./ops/test installs them (apt-get install chromium; npm ci in ops/browser).\n"
        );
        return;
    }
    let s = Stack::start_with(pool, true, &[("CHATQ_CORS_ORIGINS", "*")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let (st, token) =
        s.client(Method::POST, "/v1/user-tokens", Some(json!({"user": "alice", "ttl_seconds": 600}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let page = PAGE
        .replace("__API__", &s.api_url)
        .replace("__TOKEN__", token["token"].as_str().unwrap())
        .replace("__THREAD__", &thread);

    // The page comes from another origin than the API, as a widget would.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(page) }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(dir.join("reload.mjs"))
            .arg(&page_url)
            .env("CHATQ_CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finishes within 90 s")
    .expect("node runs");
    server.abort();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser script failed: {stderr}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let run = s.wait_run(result["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(result["status"], "run.completed");
    assert_eq!(result["text"], run["output_text"], "exactly the full text after the reload");
    assert_eq!(run["output_text"].as_str().unwrap().split_whitespace().count(), 80);
    let after = result["afterReload"].as_i64().unwrap();
    assert!(after > 2, "the reloaded page resumed mid-answer, not from the start: {result}");
    s.shutdown().await;
}
