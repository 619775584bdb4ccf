//! Live streaming: SSE with exact resume, JSON long-poll, stream-on-submit, cancel, user tokens.

use std::time::Duration;

use rand::{Rng, SeedableRng as _};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{
    Stack, metric,
    sse::{SseClient, SseEvent},
    wait_for,
};

/// Opens the events of a run after `after` with the client key.
async fn events(s: &Stack, run_id: &str, after: Option<i64>) -> SseClient {
    let mut req = s.http.get(format!("{}/v1/runs/{run_id}/events", s.api_url)).bearer_auth(&s.client_key);
    if let Some(a) = after {
        req = req.header("Last-Event-ID", a.to_string());
    }
    SseClient::open(req.send().await.unwrap()).await
}

/// Applies events to a text the way a frontend does (a reset clears it).
fn apply(text: &mut String, e: &SseEvent) {
    match e.event.as_str() {
        "message.delta" => text.push_str(e.data["text"].as_str().unwrap()),
        "run.reset" => text.clear(),
        _ => {}
    }
}

fn is_terminal(e: &SseEvent) -> bool {
    matches!(e.event.as_str(), "run.completed" | "run.failed" | "run.cancelled")
}

/// Reads the whole stream; asserts seqs are contiguous from `after + 1`.
async fn read_to_end(mut c: SseClient, after: i64) -> Vec<SseEvent> {
    let mut out: Vec<SseEvent> = Vec::new();
    while let Some(e) = c.next().await {
        assert_eq!(e.id, out.last().map_or(after, |l| l.id) + 1, "seqs are contiguous: {out:?} then {e:?}");
        out.push(e);
    }
    assert!(out.last().is_some_and(is_terminal), "the stream ends with a terminal event: {out:?}");
    out
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_event_stream_replays_then_follows_live_and_closes_after_the_terminal_event(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Stream me [[fake tokens=30 delay_ms=10]]").await;
    let run_id = run["id"].as_str().unwrap();
    let evs = read_to_end(events(&s, run_id, None).await, 0).await;
    assert_eq!(evs[0].event, "run.queued");
    assert_eq!(evs[0].data["run_id"], run_id);
    assert_eq!(evs.last().unwrap().event, "run.completed");
    let mut text = String::new();
    evs.iter().for_each(|e| apply(&mut text, e));
    let done = s.wait_run(run_id).await;
    assert_eq!(text, done["output_text"].as_str().unwrap());
    assert_eq!(text.split_whitespace().count(), 30);

    // Resuming from any point gives exactly the rest.
    for after in [1, evs.len() as i64 / 2, evs.len() as i64 - 1] {
        let rest = read_to_end(events(&s, run_id, Some(after)).await, after).await;
        assert_eq!(rest.len(), evs.len() - after as usize);
    }
    // `?after=` works too, and after the terminal event the stream closes at once.
    let resp = s
        .http
        .get(format!("{}/v1/runs/{run_id}/events?after={}", s.api_url, evs.len()))
        .bearer_auth(&s.client_key)
        .send()
        .await
        .unwrap();
    let mut c = SseClient::open(resp).await;
    assert!(c.next().await.is_none());
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_finished_run_replays_from_postgres_after_its_redis_stream_expired(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Remember me [[fake tokens=15]]").await;
    let run_id = run["id"].as_str().unwrap();
    let done = s.wait_run(run_id).await;
    let mut redis = s.redis().await;
    let key = format!("{}:run:{run_id}", s.config.redis.queue_prefix);
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.unwrap();
    let evs = read_to_end(events(&s, run_id, None).await, 0).await;
    let mut text = String::new();
    evs.iter().for_each(|e| apply(&mut text, e));
    assert_eq!(text, done["output_text"].as_str().unwrap());
    let rest = read_to_end(events(&s, run_id, Some(3)).await, 3).await;
    assert_eq!(rest.len(), evs.len() - 3);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn clients_disconnecting_at_random_points_and_resuming_get_every_event_exactly_once(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let mut runs = Vec::new();
    for i in 0..12 {
        let thread = s.create_thread(&assistant, &format!("user{i}")).await;
        let run = s.send(&thread, &format!("Run {i} [[fake tokens={} delay_ms=3]]", 40 + i * 7)).await;
        runs.push(run["id"].as_str().unwrap().to_string());
    }
    let mut clients = Vec::new();
    for (i, run_id) in runs.iter().enumerate() {
        for c in 0..3 {
            let s = &s;
            let run_id = run_id.clone();
            clients.push(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64((i * 10 + c) as u64);
                let mut seen: Vec<SseEvent> = Vec::new();
                loop {
                    let after = seen.last().map(|e| e.id);
                    let mut client = events(s, &run_id, after).await;
                    // Disconnect after a random number of events (or read to the end).
                    let budget = rng.random_range(1..12usize);
                    let mut ended = false;
                    for _ in 0..budget {
                        match client.next().await {
                            Some(e) => {
                                assert_eq!(e.id, seen.last().map_or(0, |l| l.id) + 1, "{run_id}: gap or duplicate");
                                let last = is_terminal(&e);
                                seen.push(e);
                                if last {
                                    ended = true;
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                    drop(client);
                    if ended {
                        break;
                    }
                    if rng.random_bool(0.3) {
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
                    }
                }
                (run_id, seen)
            });
        }
    }
    let results = futures::future::join_all(clients).await;
    for (run_id, seen) in results {
        let run = s.wait_run(&run_id).await;
        assert_eq!(run["status"], "completed", "{run}");
        let mut text = String::new();
        seen.iter().for_each(|e| apply(&mut text, e));
        assert_eq!(text, run["output_text"].as_str().unwrap(), "{run_id}: the full text exactly once");
        let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=run["last_seq"].as_i64().unwrap()).collect::<Vec<_>>());
    }
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_json_page_returns_as_soon_as_an_event_arrives(pool: PgPool) {
    let mut s = Stack::without_worker(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Poll me [[fake tokens=5]]").await;
    let run_id = run["id"].as_str().unwrap().to_string();

    let (st, page) = s.client(Method::GET, &format!("/v1/runs/{run_id}/events?format=json"), None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["seq"], 1);
    assert_eq!(page["events"][0]["type"], "run.queued");
    assert_eq!(page["next_after"], 1);
    assert_eq!(page["done"], false);

    // Waits while nothing happens, answers as soon as the worker starts.
    let started = std::time::Instant::now();
    let poll = tokio::spawn(
        s.http
            .get(format!("{}/v1/runs/{run_id}/events?format=json&after=1&wait_ms=10000", s.api_url))
            .bearer_auth(s.client_key.clone())
            .send(),
    );
    // The request waits on a live subscription while nothing happens.
    wait_for(Duration::from_secs(5), || async {
        metric(&s.api_metrics().await, "chatq_sse_subscribers", &[]).is_some_and(|n| n >= 1.0).then_some(())
    })
    .await;
    assert!(!poll.is_finished(), "the page waits while no event arrives");
    s.start_worker().await;
    let resp = poll.await.unwrap().unwrap();
    let st = resp.status();
    let page: Value = resp.json().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(page["events"][0]["seq"], 2, "{page}");
    assert_eq!(page["events"][0]["type"], "run.started");

    // Paging to the end gives every event once and `done`.
    let mut after = page["next_after"].as_i64().unwrap();
    let mut kinds = vec!["run.queued".to_string()];
    kinds.extend(page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()));
    loop {
        let (_, p) = s
            .client(Method::GET, &format!("/v1/runs/{run_id}/events?format=json&after={after}&wait_ms=5000"), None)
            .await;
        for e in p["events"].as_array().unwrap() {
            assert_eq!(e["seq"].as_i64().unwrap(), after + 1);
            after += 1;
            kinds.push(e["type"].as_str().unwrap().to_string());
        }
        if p["done"] == true {
            break;
        }
    }
    assert_eq!(kinds.last().unwrap(), "run.completed");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn submitting_with_stream_true_answers_with_the_event_stream(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let resp = s
        .http
        .post(format!("{}/v1/threads/{thread}/runs", s.api_url))
        .bearer_auth(&s.client_key)
        .json(&json!({"input": "Hi [[fake tokens=10]]", "stream": true}))
        .send()
        .await
        .unwrap();
    let evs = read_to_end(SseClient::open(resp).await, 0).await;
    assert_eq!(evs[0].event, "run.queued");
    let run_id = evs[0].data["run_id"].as_str().unwrap().to_string();
    let run = s.wait_run(&run_id).await;
    let mut text = String::new();
    evs.iter().for_each(|e| apply(&mut text, e));
    assert_eq!(text, run["output_text"].as_str().unwrap());

    // `Accept: text/event-stream` does the same; disconnecting does not cancel the run.
    let resp = s
        .http
        .post(format!("{}/v1/threads/{thread}/runs", s.api_url))
        .bearer_auth(&s.client_key)
        .header("accept", "text/event-stream")
        .json(&json!({"input": "Again [[fake tokens=20 delay_ms=20]]"}))
        .send()
        .await
        .unwrap();
    let mut c = SseClient::open(resp).await;
    let first = c.next().await.unwrap();
    assert_eq!(first.event, "run.queued");
    drop(c);
    let run = s.wait_run(first.data["run_id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cancelling_a_streaming_run_stops_it_within_a_second_and_keeps_the_partial_text(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Talk slowly [[fake tokens=200 delay_ms=50]]").await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let mut c = events(&s, &run_id, None).await;
    let mut text = String::new();
    let mut deltas = 0;
    let mut last = 0;
    while deltas < 3 {
        let e = c.next().await.unwrap();
        apply(&mut text, &e);
        deltas += usize::from(e.event == "message.delta");
        last = e.id;
    }
    let asked = std::time::Instant::now();
    let (st, cancelled) = s.client(Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(asked.elapsed() < Duration::from_secs(1), "{:?}", asked.elapsed());
    let rest = read_to_end(c, last).await;
    rest.iter().for_each(|e| apply(&mut text, e));
    assert_eq!(rest.last().unwrap().event, "run.cancelled");
    let output = cancelled["output_text"].as_str().unwrap();
    assert_eq!(text, output);
    assert!(!output.is_empty() && output.split_whitespace().count() < 200, "{output}");
    let (_, msgs) = s.client(Method::GET, &format!("/v1/threads/{thread}/messages"), None).await;
    assert_eq!(msgs["data"][1]["role"], "assistant");
    assert_eq!(msgs["data"][1]["content"], output, "the partial answer is kept");

    // Twice: nothing changes.
    let (st, again) = s.client(Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["last_seq"], cancelled["last_seq"]);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cancelling_a_queued_run_cancels_it_before_it_starts(pool: PgPool) {
    let mut s = Stack::without_worker(pool.clone()).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Never mind").await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let c = events(&s, &run_id, None).await;
    let (st, cancelled) = s.client(Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["last_seq"], 2);
    let evs = read_to_end(c, 0).await;
    assert_eq!(evs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["run.queued", "run.cancelled"]);
    let (st, _) = s.client(Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK);

    // A worker starting later does not call the provider; the thread is free again.
    s.start_worker().await;
    let next = s.send(&thread, "Now answer [[fake tokens=3]]").await;
    let next = s.wait_run(next["id"].as_str().unwrap()).await;
    assert_eq!(next["status"], "completed");
    assert_eq!(s.fake.chat_requests().len(), 1);
    let run = s.wait_run(&run_id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["attempt"], 0, "never started");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cancelling_a_finished_run_changes_nothing(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    let run = s.send(&thread, "Quick [[fake tokens=4]]").await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let done = s.wait_run(&run_id).await;
    let (st, after) = s.client(Method::POST, &format!("/v1/runs/{run_id}/cancel"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(after["status"], "completed");
    assert_eq!(after["last_seq"], done["last_seq"]);
    assert_eq!(after["output_text"], done["output_text"]);
    // Another key's run is 404.
    let (other, _) = chatq_common::db::keys::create(&s.pool, chatq_common::keys::Role::Client, "other").await.unwrap();
    let (st, _) = s.call(Method::POST, &format!("/v1/runs/{run_id}/cancel"), Some(&other), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

/// A token for `user`, bound to `assistant`.
async fn user_token(s: &Stack, user: &str, ttl: i64, assistant: &str) -> String {
    let body = json!({"user": user, "ttl_seconds": ttl, "assistants": [assistant]});
    let (st, t) = s.client(Method::POST, "/v1/user-tokens", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    assert!(t["expires_at"].is_string());
    t["token"].as_str().unwrap().to_string()
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_user_token_acts_for_its_user_only_and_is_refused_when_expired_tampered_or_misused(pool: PgPool) {
    let s = Stack::start(pool).await;
    let assistant = s.create_assistant(json!({})).await;
    let bobs_thread = s.create_thread(&assistant, "bob").await;
    let alice = user_token(&s, "alice", 600, &assistant).await;

    // Alice chats with her token: her thread, her run, her events (also via ?access_token=).
    let (st, thread) =
        s.call(Method::POST, "/v1/threads", Some(&alice), Some(json!({"assistant_id": assistant}))).await;
    assert_eq!(st, StatusCode::CREATED, "{thread}");
    assert_eq!(thread["user"], "alice");
    let thread = thread["id"].as_str().unwrap();
    let (st, run) = s
        .call(
            Method::POST,
            &format!("/v1/threads/{thread}/runs"),
            Some(&alice),
            Some(json!({"input": "hi [[fake tokens=3]]"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{run}");
    let run_id = run["id"].as_str().unwrap();
    let resp = s.http.get(format!("{}/v1/runs/{run_id}/events?access_token={alice}", s.api_url)).send().await.unwrap();
    let evs = read_to_end(SseClient::open(resp).await, 0).await;
    assert_eq!(evs.last().unwrap().event, "run.completed");
    let (st, _) = s.call(Method::GET, &format!("/v1/runs/{run_id}"), Some(&alice), None).await;
    assert_eq!(st, StatusCode::OK);

    // Wrong user: Bob's thread does not exist for Alice; she cannot create threads for him.
    let (st, _) = s.call(Method::GET, &format!("/v1/threads/{bobs_thread}"), Some(&alice), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call(Method::POST, &format!("/v1/threads/{bobs_thread}/runs"), Some(&alice), Some(json!({"input": "x"})))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.call(Method::POST, "/v1/threads", Some(&alice), Some(json!({"user": "bob"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Wrong route: nothing admin, no new tokens, no token in the URL outside the events route.
    let (st, _) = s
        .call(
            Method::POST,
            "/v1/assistants",
            Some(&alice),
            Some(json!({"name": "x", "instructions": "y", "model": "gpt-4o-mini"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.call(Method::POST, "/v1/user-tokens", Some(&alice), Some(json!({"user": "alice"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.call(Method::GET, &format!("/v1/runs/{run_id}?access_token={alice}"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // An API key is never accepted in the URL.
    let (st, _) =
        s.call(Method::GET, &format!("/v1/runs/{run_id}/events?access_token={}", s.client_key), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Tampered: one character of Alice's token changed.
    let mut forged = alice.clone().into_bytes();
    let middle = forged.len() / 2;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (st, _) = s.call(Method::GET, &format!("/v1/threads/{bobs_thread}"), Some(&forged), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s.call(Method::GET, &format!("/v1/runs/{run_id}/events?access_token={forged}"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Expired.
    let short = user_token(&s, "alice", 1, &assistant).await;
    wait_for(Duration::from_secs(5), || async {
        let (st, _) = s.call(Method::GET, &format!("/v1/runs/{run_id}"), Some(&short), None).await;
        (st == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let (st, _) = s.call(Method::GET, &format!("/v1/runs/{run_id}/events?access_token={short}"), None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // A token of a revoked client key is refused.
    let (other_key, row) =
        chatq_common::db::keys::create(&s.pool, chatq_common::keys::Role::Client, "revoked").await.unwrap();
    let (st, t) = s.call(Method::POST, "/v1/user-tokens", Some(&other_key), Some(json!({"user": "carol"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1").bind(row.id).execute(&s.pool).await.unwrap();
    let (st, _) = s.call(Method::GET, "/v1/threads", Some(t["token"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Bad requests for tokens.
    let (st, _) = s.client(Method::POST, "/v1/user-tokens", Some(json!({"user": "", "ttl_seconds": 10}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let (st, _) = s.client(Method::POST, "/v1/user-tokens", Some(json!({"user": "a", "ttl_seconds": 0}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cors_allows_the_configured_origin_only(pool: PgPool) {
    let s = Stack::start_with(pool, false, &[("CHATQ_CORS_ORIGINS", "https://widget.example")]).await;
    let preflight = |origin: &'static str| {
        s.http
            .request(Method::OPTIONS, format!("{}/v1/threads", s.api_url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let ok = preflight("https://widget.example").await.unwrap();
    assert_eq!(ok.headers().get("access-control-allow-origin").unwrap(), "https://widget.example");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A page on the allowed origin can read the wait of a 429.
    let get = s
        .http
        .get(format!("{}/v1/threads", s.api_url))
        .header("origin", "https://widget.example")
        .header("authorization", format!("Bearer {}", s.client_key))
        .send()
        .await
        .unwrap();
    let exposed = get.headers().get("access-control-expose-headers").map(|v| v.to_str().unwrap().to_lowercase());
    assert!(
        exposed.as_deref().is_some_and(|v| v.contains("retry-after") && v.contains("ratelimit-reset")),
        "{exposed:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_character_split_across_network_chunks_arrives_intact() {
    let frame = "id: 7\nevent: message.delta\ndata: {\"text\":\"roar 🦁!\"}\n\n".as_bytes();
    let split = frame.iter().position(|&b| b == 0xF0).unwrap() + 2; // inside the lion's 4 bytes
    let chunks: Vec<reqwest::Result<Vec<u8>>> = vec![Ok(frame[..split].to_vec()), Ok(frame[split..].to_vec())];
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let resp = http::Response::builder().header("content-type", "text/event-stream").body(body).unwrap();
    let mut client = SseClient::open(reqwest::Response::from(resp)).await;
    let e = client.next().await.unwrap();
    assert_eq!((e.id, e.event.as_str()), (7, "message.delta"));
    assert_eq!(e.data["text"], "roar 🦁!");
    assert!(client.next().await.is_none());
}
