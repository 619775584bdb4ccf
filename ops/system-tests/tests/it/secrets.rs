//! Deployment secrets end to end: a stack whose Redis requires a password (as the compose
//! file's does) works through `REDIS_URL` alone.

use std::{
    net::TcpListener as StdListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chatq_system_tests::{Stack, wait_for};
use serde_json::json;
use sqlx::PgPool;

/// A throwaway `redis-server --requirepass` on a free port, stopped on drop.
struct PasswordRedis {
    child: Child,
    port: u16,
}

impl PasswordRedis {
    async fn start(password: &str) -> Self {
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", password])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        wait_for(Duration::from_secs(10), || async { std::net::TcpStream::connect(("127.0.0.1", port)).ok() }).await;
        PasswordRedis { child, port }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_stack_on_a_redis_with_a_password_answers_runs_through_redis_url(pool: PgPool) {
    let password = format!("{}", uuid::Uuid::now_v7().simple());
    let redis = PasswordRedis::start(&password).await;
    // The password is really required.
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = anonymous.get_multiplexed_async_connection().await.unwrap();
    let refused = redis::cmd("PING").query_async::<String>(&mut conn).await.unwrap_err();
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");

    let url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let s = Stack::start_with(pool, true, &[("REDIS_URL", url.as_str())]).await;
    let (status, ready) = s.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{ready}");
    let assistant = s.create_assistant(json!({})).await;
    let thread = s.create_thread(&assistant, "alice").await;
    // Queued through apalis-redis, streamed through Redis pub/sub, finished by the worker.
    let run = s.send(&thread, "Hello").await;
    let done = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(!done["output_text"].as_str().unwrap_or_default().is_empty(), "{done}");
    s.shutdown().await;
    drop(redis);
}
