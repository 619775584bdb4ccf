//! The thread stream: one SSE stream following a thread's messages and runs, resumable, with
//! the same visibility and caps as the run stream.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::harness::{Stack, sse_events as parse};

/// An open thread stream and what it has sent so far.
struct Follower {
    resp: reqwest::Response,
    body: String,
}

impl Follower {
    /// Reads until `n` events in all have arrived (within 10 s) and returns them.
    async fn until(&mut self, n: usize) -> Vec<(String, String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while parse(&self.body).len() < n {
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("the events arrive within 10 s")
                .unwrap()
                .expect("the stream stays open");
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
        parse(&self.body)
    }

    /// Reads until the server closes the stream (within 10 s) and returns every event.
    async fn read_to_end(mut self) -> Vec<(String, String, Value)> {
        let rest = tokio::time::timeout(Duration::from_secs(10), self.resp.text())
            .await
            .expect("the server closes the stream within 10 s")
            .unwrap();
        self.body.push_str(&rest);
        parse(&self.body)
    }
}

async fn open(s: &Stack, thread: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(format!("{}/v1/threads/{thread}/events", s.api_url)).bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

async fn follower(s: &Stack, thread: &str, token: &str, last_event_id: Option<&str>) -> Follower {
    let resp = open(s, thread, token, last_event_id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    Follower { resp, body: String::new() }
}

async fn user_token(s: &Stack, user: &str) -> String {
    let (st, body) = s.client(Method::POST, "/v1/user-tokens", Some(json!({"user": user}))).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// Sends `input` and cancels the run (the API alone has no worker): its log is `run.queued`,
/// `run.cancelled`. Returns the run id.
async fn run_and_cancel(s: &Stack, thread: &str, input: &str, f: &mut Follower, seen: usize) -> String {
    let run = s.send(thread, input).await["id"].as_str().unwrap().to_string();
    // The run's first events reach the follower while the run is live.
    f.until(seen + 2).await;
    let (st, body) = s.client(Method::POST, &format!("/v1/runs/{run}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    f.until(seen + 3).await;
    run
}

fn ids_and_types(events: &[(String, String, Value)]) -> Vec<(String, String)> {
    events.iter().map(|e| (e.0.clone(), e.1.clone())).collect()
}

fn expected(runs: &[&str]) -> Vec<(String, String)> {
    runs.iter()
        .flat_map(|r| {
            [
                (format!("{r}:0"), "message.created"),
                (format!("{r}:1"), "run.queued"),
                (format!("{r}:2"), "run.cancelled"),
            ]
        })
        .map(|(id, t)| (id, t.to_string()))
        .collect()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_thread_stream_shows_each_message_then_every_event_of_two_runs_live_and_resumes_exactly(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let key = s.client_key.clone();
    let mut f = follower(&s, &thread, &key, None).await;
    let first = run_and_cancel(&s, &thread, "first question", &mut f, 0).await;
    let second = run_and_cancel(&s, &thread, "second question", &mut f, 3).await;
    let got = f.until(6).await;
    assert_eq!(ids_and_types(&got), expected(&[&first, &second]));
    assert_eq!(got[0].2["content"], "first question", "{}", got[0].2);
    assert_eq!(got[0].2["role"], "user");
    assert_eq!(got[0].2["run_id"], first.as_str());
    assert_eq!(got[3].2["content"], "second question");

    // Resuming mid-way gives exactly the rest; deleting the thread (once the replay arrived,
    // as the deletion takes the log with it) ends the stream.
    let mut resumed = follower(&s, &thread, &key, Some(&format!("{first}:1"))).await;
    resumed.until(4).await;
    let (st, body) = s.client(Method::DELETE, &format!("/v1/threads/{thread}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    drop(f);
    let rest = resumed.read_to_end().await;
    assert_eq!(ids_and_types(&rest), expected(&[&first, &second])[2..]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_thread_stream_resumed_from_its_message_gives_the_rest_of_the_run(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let key = s.client_key.clone();
    let mut f = follower(&s, &thread, &key, None).await;
    let run = run_and_cancel(&s, &thread, "hi", &mut f, 0).await;
    drop(f);
    let mut resumed = follower(&s, &thread, &key, Some(&format!("{run}:0"))).await;
    resumed.until(2).await;
    let (st, body) = s.client(Method::DELETE, &format!("/v1/threads/{thread}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(ids_and_types(&resumed.read_to_end().await), expected(&[&run])[1..]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn another_end_users_token_gets_404_on_a_thread_stream(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let bob = user_token(&s, "bob").await;
    assert_eq!(open(&s, &thread, &bob, None).await.status(), StatusCode::NOT_FOUND);
    let alice = user_token(&s, "alice").await;
    let url = format!("{}/v1/threads/{thread}/events?access_token={alice}", s.api_url);
    assert_eq!(s.http.get(url).send().await.unwrap().status(), StatusCode::OK);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn thread_streams_beyond_the_per_user_cap_get_429_too_many_streams(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAMS_PER_USER", "1")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let alice = user_token(&s, "alice").await;
    let first = open(&s, &thread, &alice, None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let resp = open(&s, &thread, &alice, None).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    drop(first);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_thread_stream_is_closed_after_its_maximum_lifetime_and_resumes_with_last_event_id(pool: PgPool) {
    let s = Stack::start_with(pool, &[("CHATQ_STREAM_MAX_LIFETIME_SECS", "1")]).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let key = s.client_key.clone();
    let run = s.send(&thread, "hi").await["id"].as_str().unwrap().to_string();
    let got = follower(&s, &thread, &key, None).await.read_to_end().await;
    assert_eq!(ids_and_types(&got), expected(&[&run])[..2]);
    // The run ends while the client is away; it resumes after the last id it saw.
    let (st, body) = s.client(Method::POST, &format!("/v1/runs/{run}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let got = follower(&s, &thread, &key, Some(&got[1].0)).await.read_to_end().await;
    assert_eq!(ids_and_types(&got), expected(&[&run])[2..]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_thread_stream_cursor_of_another_thread_is_rejected(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let other = s.create_thread(&assistant, "alice").await;
    let run = s.send(&other, "hi").await["id"].as_str().unwrap().to_string();
    let key = s.client_key.clone();
    let resp = open(&s, &thread, &key, Some(&format!("{run}:1"))).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_header", "{body}");
    let url = format!("{}/v1/threads/{thread}/events?after=7", s.api_url);
    let body: Value = s.http.get(url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_thread_stream_ends_when_its_users_tokens_are_revoked(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    s.send(&thread, "hi").await;
    let alice = user_token(&s, "alice").await;
    let mut f = follower(&s, &thread, &alice, None).await;
    f.until(2).await;
    let (st, body) = s.client(Method::POST, "/v1/user-tokens/revoke", Some(json!({"user": "alice"}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    tokio::time::timeout(Duration::from_secs(15), f.resp.text())
        .await
        .expect("the stream is still open 15 s after the revocation")
        .unwrap();
    s.shutdown().await;
}
