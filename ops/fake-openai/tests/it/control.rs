//! Runtime control, catalogue routes, shutdown and the binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use chatq_fake_openai::FakeConfig;
use serde_json::{Value, json};

use crate::helpers::{DEADLINE, api_status, client, contents, request, start, start_with, stream_all, user};

#[tokio::test]
async fn put_directive_makes_the_fake_fail_until_cleared() {
    let fake = start().await;
    let client = client(&fake);
    let http = reqwest::Client::new();
    let control = format!("http://{}/_fake/directive", fake.addr());

    let put = http.put(&control).json(&json!({"directive": "fail=503x1 tokens=2"})).send().await.unwrap();
    assert_eq!(put.status(), 200);

    let failed = stream_all(&client, request(vec![user("x")])).await;
    let short = stream_all(&client, request(vec![user("x")])).await.unwrap();
    http.put(&control).json(&json!({"directive": "cut_after=1"})).send().await.unwrap();
    let cut = stream_all(&client, request(vec![user("x")])).await.unwrap();
    http.put(&control).json(&json!({"directive": ""})).send().await.unwrap();
    let normal = stream_all(&client, request(vec![user("x [[fake tokens=3]]")])).await.unwrap();

    assert_eq!(api_status(&failed), 503);
    assert_eq!(contents(&short), ["Echo:", " x"]);
    assert_eq!(contents(&cut), ["Echo:"]);
    assert_eq!(contents(&normal).concat(), "Echo: x lorem");

    let stats: Value =
        http.get(format!("http://{}/_fake/stats", fake.addr())).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["chat_requests"], 4);
    assert_eq!(stats["chat_streamed"], 3);
    assert_eq!(stats["chat_failed"]["503"], 1);
    assert_eq!(stats["chat_interrupted"], 1);
}

#[tokio::test]
async fn a_request_directive_overrides_the_default_key_by_key() {
    let fake = start_with(FakeConfig { tokens: 8, ..FakeConfig::default() }).await;
    let client = client(&fake);
    fake.set_default_directive("tokens=4 cut_after=2");

    let defaulted = stream_all(&client, request(vec![user("a b c d e")])).await.unwrap();
    let overridden = stream_all(&client, request(vec![user("a b c d e [[fake cut_after=9]]")])).await.unwrap();

    assert_eq!(contents(&defaulted), ["Echo:", " a"]);
    // tokens=4 still comes from the default; cut_after=9 lies past the end of the reply.
    assert_eq!(contents(&overridden).concat(), "Echo: a b c");
}

#[tokio::test]
async fn the_model_catalogue_lists_and_finds_models() {
    let fake = start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", fake.base_url())).bearer_auth("sk-test").send();

    let list: Value = get("/models").await.unwrap().json().await.unwrap();
    let one = get("/models/gpt-4o-mini").await.unwrap();
    let missing = get("/models/nope").await.unwrap();
    let unknown_route = get("/assistants").await.unwrap();

    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert!(ids.contains(&json!("text-embedding-3-small")));
    assert_eq!(one.json::<Value>().await.unwrap()["object"], "model");
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");
    assert_eq!(unknown_route.status(), 404);
    let body: Value = unknown_route.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid URL (GET /v1/assistants)");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let fake = start().await;
    let addr = fake.addr();

    fake.shutdown();
    tokio::time::timeout(DEADLINE, fake.stopped()).await.expect("server stops before the deadline");

    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn the_binary_prints_its_address_serves_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatq-fake-openai"))
        .args(["--listen", "127.0.0.1:0", "--tokens", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim_end()
        .strip_prefix("chatq-fake-openai listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply: Value = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/chat/completions"))
            .bearer_auth("sk-test")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi there"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(reply["choices"][0]["message"]["content"], "Echo: hi there");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(started.elapsed() < DEADLINE, "binary did not exit on SIGTERM");
        std::thread::yield_now();
    }
}
