//! Operations: metrics after real runs, `/v1/usage`, the cleanup job, the reaper.

use std::time::Duration;

use chatq_common::jobs::{self, Cleanup};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use chatq_system_tests::{Stack, metric, wait_for};

async fn text(s: &Stack, url: &str) -> String {
    s.http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn worker_metrics(s: &Stack) -> String {
    text(s, &format!("http://{}/metrics", s.worker.as_ref().unwrap().addr)).await
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn metrics_show_completed_failed_and_cancelled_runs_and_cost_matches_usage_records(pool: PgPool) {
    let mut s = Stack::without_worker(pool.clone()).await;
    let priced = s.create_assistant(json!({})).await;
    let unpriced = s.create_assistant(json!({"model": "my-local-llama"})).await;
    // Cancelled before any worker sees it: the worker finishes it as cancelled at claim.
    let t = s.create_thread(&priced, "carol").await;
    let cancelled = s.send(&t, "stop me").await["id"].as_str().unwrap().to_string();
    sqlx::query("UPDATE runs SET cancel_requested_at = now() WHERE id = $1::uuid")
        .bind(&cancelled)
        .execute(&pool)
        .await
        .unwrap();
    s.start_worker().await;
    let t = s.create_thread(&priced, "alice").await;
    let completed = s.send(&t, "hello [[fake tokens=7]]").await["id"].as_str().unwrap().to_string();
    let t = s.create_thread(&priced, "bob").await;
    let failed = s.send(&t, "break [[fake fail=400]]").await["id"].as_str().unwrap().to_string();
    let t = s.create_thread(&unpriced, "dave").await;
    let local = s.send(&t, "hi [[fake tokens=3]]").await["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait_run(&cancelled).await["status"], "cancelled");
    assert_eq!(s.wait_run(&completed).await["status"], "completed");
    let f = s.wait_run(&failed).await;
    assert_eq!(f["status"], "failed", "{f}");
    let code = f["error"]["code"].as_str().unwrap().to_string();
    assert_eq!(s.wait_run(&local).await["status"], "completed");

    let w = worker_metrics(&s).await;
    assert_eq!(metric(&w, "chatq_runs_finished_total", &[("status", "completed")]), Some(2.0), "{w}");
    assert_eq!(metric(&w, "chatq_runs_finished_total", &[("status", "failed"), ("error_code", &code)]), Some(1.0));
    assert_eq!(metric(&w, "chatq_runs_finished_total", &[("status", "cancelled")]), Some(1.0));
    assert_eq!(metric(&w, "chatq_run_duration_seconds_count", &[("status", "completed")]), Some(2.0));
    assert_eq!(metric(&w, "chatq_run_duration_seconds_count", &[("status", "cancelled")]), Some(1.0));
    assert_eq!(metric(&w, "chatq_run_time_to_first_token_seconds_count", &[]), Some(2.0));
    assert_eq!(metric(&w, "chatq_tokens_total", &[("model", "gpt-4o-mini"), ("kind", "output")]), Some(7.0));
    assert_eq!(metric(&w, "chatq_provider_requests_total", &[("upstream", "default"), ("outcome", "ok")]), Some(2.0));
    assert_eq!(metric(&w, "chatq_provider_requests_total", &[("upstream", "default"), ("outcome", &code)]), Some(1.0));
    assert_eq!(metric(&w, "chatq_unpriced_requests_total", &[("model", "my-local-llama")]), Some(1.0));
    assert_eq!(
        metric(&w, "chatq_jobs_total", &[("queue", &s.config_queue("chat-runs")), ("outcome", "ok")]),
        Some(4.0)
    );
    assert_eq!(metric(&w, "chatq_job_queue_wait_seconds_count", &[]), Some(4.0));
    assert_eq!(
        metric(&w, "chatq_queue_depth", &[("queue", &s.config_queue("chat-runs")), ("state", "active")]),
        Some(0.0)
    );
    assert!(metric(&w, "chatq_queue_oldest_job_age_seconds", &[("queue", &s.config_queue("chat-runs"))]).is_some());
    assert_eq!(metric(&w, "chatq_documents", &[("status", "ready")]), Some(0.0));
    assert_eq!(metric(&w, "chatq_runs_in_progress", &[]), Some(0.0));
    // The cost counter adds up to the usage records, per model; the unpriced model has none.
    let recorded: f64 = sqlx::query_scalar(
        "SELECT sum(cost_usd)::float8 FROM usage_records WHERE model = 'gpt-4o-mini' AND cost_usd IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let counted = metric(&w, "chatq_cost_usd_total", &[("model", "gpt-4o-mini")]).unwrap();
    assert!((counted - recorded).abs() < 1e-12, "counter {counted} vs records {recorded}");
    assert_eq!(metric(&w, "chatq_cost_usd_total", &[("model", "my-local-llama")]), None);

    let a = s.api_metrics().await;
    assert_eq!(metric(&a, "chatq_runs_submitted_total", &[("outcome", "accepted")]), Some(4.0), "{a}");
    assert_eq!(
        metric(
            &a,
            "chatq_http_requests_total",
            &[("route", "/v1/threads/{id}/runs"), ("method", "POST"), ("status", "202")]
        ),
        Some(4.0)
    );
    assert!(metric(&a, "chatq_http_request_duration_seconds_count", &[("route", "/v1/runs/{id}")]).unwrap() >= 4.0);
    s.shutdown().await;
}

/// Whether a Prometheus text exposition has a series of the family `name` (a histogram's
/// series are its `_bucket`, `_sum` and `_count`).
fn has_series(text: &str, name: &str) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|line| {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        series == name || [format!("{name}_bucket"), format!("{name}_count")].iter().any(|s| s == series)
    })
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn a_fresh_api_and_worker_export_every_series_the_dashboard_and_the_alerts_query_at_zero(pool: PgPool) {
    let s = Stack::start(pool).await;
    // HTTP series are per route template and start with the first request, which in a
    // deployment is the container health check.
    let health = s.http.get(format!("{}/healthz", s.api_url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let a = s.api_metrics().await;
    let w = worker_metrics(&s).await;
    let both = format!("{a}\n{w}");
    let queried = crate::ops_files::queried_metrics();
    assert!(queried.len() > 15, "{queried:?}");
    for (name, user) in &queried {
        assert!(has_series(&both, name), "{user} queries {name}, which a fresh stack does not export:\n{both}");
    }
    // The counters whose first event may come days after start-up are there, at zero, for
    // every known label value.
    for kind in chatq_worker::metrics::CLEANUP_KINDS {
        assert_eq!(metric(&w, "chatq_cleanup_deleted_total", &[("kind", kind)]), Some(0.0), "{kind}");
    }
    for action in ["requeued", "failed"] {
        assert_eq!(metric(&w, "chatq_reconciler_recoveries_total", &[("action", action)]), Some(0.0), "{action}");
    }
    assert_eq!(metric(&w, "chatq_unpriced_requests_total", &[("model", "gpt-4o-mini")]), Some(0.0));
    let other = [("model", "gpt-4o-mini"), ("assistant", "other")];
    assert_eq!(metric(&w, "chatq_cost_usd_total", &other), Some(0.0));
    assert_eq!(metric(&w, "chatq_tokens_total", &[other[0], other[1], ("kind", "output")]), Some(0.0));
    for code in chatq_common::domain::RunErrorCode::ALL {
        let labels = [("status", "failed"), ("error_code", code.as_str()), ("assistant", "other")];
        assert_eq!(metric(&w, "chatq_runs_finished_total", &labels), Some(0.0), "{code:?}");
    }
    assert_eq!(metric(&w, "chatq_runs_finished_total", &[("status", "completed")]), Some(0.0));
    let chat = s.config_queue("chat-runs");
    assert_eq!(metric(&w, "chatq_jobs_total", &[("queue", &chat), ("outcome", "error")]), Some(0.0));
    assert_eq!(metric(&a, "chatq_runs_submitted_total", &[("outcome", "accepted")]), Some(0.0));
    assert_eq!(metric(&a, "chatq_cleanup_requests_total", &[("outcome", "new")]), Some(0.0));
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn past_the_assistant_bound_cost_tokens_and_runs_of_later_assistants_share_other(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), true, &[("CHATQ_METRICS_MAX_ASSISTANTS", "1")]).await;
    let first = s.create_assistant(json!({})).await;
    let second = s.create_assistant(json!({})).await;
    // One after the other, so the first assistant counted is `first`.
    for (assistant, user) in [(&first, "ann"), (&second, "ben")] {
        let t = s.create_thread(assistant, user).await;
        let run = s.send(&t, "hi [[fake tokens=5]]").await;
        assert_eq!(s.wait_run(run["id"].as_str().unwrap()).await["status"], "completed");
    }
    // The counters move just after the run is stored as completed.
    let w = wait_for(Duration::from_secs(10), || async {
        let w = worker_metrics(&s).await;
        (metric(&w, "chatq_runs_finished_total", &[("status", "completed")]) == Some(2.0)).then_some(w)
    })
    .await;
    let cost_of = |assistant: &str| {
        sqlx::query_scalar::<_, f64>(
            "SELECT sum(cost_usd)::float8 FROM usage_records WHERE assistant_id = $1::uuid AND model = 'gpt-4o-mini'",
        )
        .bind(assistant.to_string())
        .fetch_one(&pool)
    };
    let (first_cost, second_cost) = (cost_of(&first).await.unwrap(), cost_of(&second).await.unwrap());
    assert!(first_cost > 0.0 && second_cost > 0.0);
    let counted =
        |assistant: &str| metric(&w, "chatq_cost_usd_total", &[("model", "gpt-4o-mini"), ("assistant", assistant)]);
    assert!((counted(&first).unwrap() - first_cost).abs() < 1e-12, "{w}");
    assert!((counted("other").unwrap() - second_cost).abs() < 1e-12, "{w}");
    assert_eq!(counted(&second), None, "the second assistant is past the bound: {w}");
    for (assistant, runs) in [(first.as_str(), 1.0), ("other", 1.0)] {
        let labels = [("status", "completed"), ("assistant", assistant)];
        assert_eq!(metric(&w, "chatq_runs_finished_total", &labels), Some(runs), "{assistant}");
        let labels = [("kind", "output"), ("assistant", assistant)];
        assert_eq!(metric(&w, "chatq_tokens_total", &labels), Some(5.0), "{assistant}");
    }
    assert!(!w.contains(&second), "no series names the second assistant");
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn the_pricing_file_override_prices_a_model_the_built_in_table_does_not_know(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("chatq-pricing-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pricing.toml");
    std::fs::write(&file, "[[model]]\nname = \"my-local-llama\"\neffective = \"2026-01-01\"\ninput = 1.0\ncached_input = 0.5\noutput = 2.0\n")
        .unwrap();
    let s = Stack::start_with(pool.clone(), true, &[("CHATQ_PRICING_FILE", file.to_str().unwrap())]).await;
    let a = s.create_assistant(json!({"model": "my-local-llama"})).await;
    let t = s.create_thread(&a, "erin").await;
    let run = s.send(&t, "hi [[fake tokens=4]]").await;
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    let input = run["usage"]["input_tokens"].as_f64().unwrap();
    let expected = (input * 1.0 + 4.0 * 2.0) / 1e6;
    assert!((run["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{run}");
    let (st, report) = s.admin(Method::GET, "/v1/usage?group_by=model", None).await;
    assert_eq!(st, StatusCode::OK, "{report}");
    assert_eq!(report["rows"][0]["model"], "my-local-llama");
    assert_eq!(report["rows"][0]["unpriced"], false);
    assert!((report["totals"]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[expect(clippy::too_many_arguments)]
async fn usage_record(
    pool: &PgPool,
    at: &str,
    kind: &str,
    model: &str,
    assistant: Option<uuid::Uuid>,
    tokens: (i32, i32, i32),
    cost: Option<f64>,
    outcome: &str,
) {
    sqlx::query(
        "INSERT INTO usage_records (id, at, kind, model, assistant_id, run_id, input_tokens, cached_input_tokens,
                                    output_tokens, cost_usd, outcome)
         VALUES ($1, $2::timestamptz, $3, $4, $5, $6, $7, $8, $9, $10::float8::numeric, $11)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(at)
    .bind(kind)
    .bind(model)
    .bind(assistant)
    .bind((kind == "chat").then(uuid::Uuid::now_v7))
    .bind(tokens.0)
    .bind(tokens.1)
    .bind(tokens.2)
    .bind(cost)
    .bind(outcome)
    .execute(pool)
    .await
    .unwrap();
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-12)
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn usage_groups_and_totals_match_hand_computed_figures(pool: PgPool) {
    let s = Stack::without_worker(pool.clone()).await;
    let a = uuid::Uuid::now_v7();
    usage_record(&pool, "2026-11-01T10:00:00Z", "chat", "gpt-4o-mini", Some(a), (1000, 400, 100), Some(0.00018), "ok")
        .await;
    usage_record(
        &pool,
        "2026-11-01T11:00:00Z",
        "chat",
        "gpt-4o-mini",
        Some(a),
        (0, 0, 0),
        None,
        "provider_unavailable",
    )
    .await;
    usage_record(&pool, "2026-11-02T09:00:00Z", "chat", "my-local-llama", Some(a), (50, 0, 5), None, "ok").await;
    usage_record(
        &pool,
        "2026-11-02T23:59:59Z",
        "embedding",
        "text-embedding-3-small",
        None,
        (300, 0, 0),
        Some(0.000006),
        "ok",
    )
    .await;
    usage_record(&pool, "2026-11-03T00:00:00Z", "chat", "gpt-4o-mini", Some(a), (1, 0, 1), Some(1.0), "ok").await;

    let range = "from=2026-11-01&to=2026-11-02";
    let (st, r) = s.admin(Method::GET, &format!("/v1/usage?{range}&group_by=model"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{r}");
    let mini = &rows[0];
    assert_eq!(mini["model"], "gpt-4o-mini");
    assert_eq!((mini["requests"].as_i64(), mini["failures"].as_i64()), (Some(2), Some(1)));
    assert!(close(&mini["failure_rate"], 0.5));
    assert_eq!((mini["input_tokens"].as_i64(), mini["cached_input_tokens"].as_i64()), (Some(1000), Some(400)));
    assert_eq!(mini["output_tokens"], 100);
    assert!(close(&mini["cost_usd"], 0.00018), "{mini}");
    assert_eq!(mini["unpriced"], false);
    let llama = &rows[1];
    assert_eq!(llama["model"], "my-local-llama");
    assert!(llama["cost_usd"].is_null(), "unpriced is null, never free: {llama}");
    assert_eq!(llama["unpriced"], true);
    assert_eq!(llama["unpriced_models"], json!(["my-local-llama"]));
    assert_eq!(rows[2]["model"], "text-embedding-3-small");
    assert!(close(&rows[2]["cost_usd"], 0.000006));

    let t = &r["totals"];
    assert_eq!((t["requests"].as_i64(), t["failures"].as_i64()), (Some(4), Some(1)));
    assert!(close(&t["failure_rate"], 0.25));
    assert_eq!(t["input_tokens"], 1350);
    assert_eq!(t["cached_input_tokens"], 400);
    assert_eq!(t["output_tokens"], 105);
    assert_eq!(t["runs"], 3);
    assert!(close(&t["cost_usd"], 0.000186), "{t}");
    assert_eq!((t["unpriced"].as_bool(), t["unpriced_requests"].as_i64()), (Some(true), Some(1)));

    let (_, r) = s.admin(Method::GET, &format!("/v1/usage?{range}&group_by=day,kind"), None).await;
    let rows: Vec<(String, String, i64)> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (x["day"].as_str().unwrap().into(), x["kind"].as_str().unwrap().into(), x["requests"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2026-11-01".into(), "chat".into(), 2),
            ("2026-11-02".into(), "chat".into(), 1),
            ("2026-11-02".into(), "embedding".into(), 1)
        ]
    );

    let (_, r) = s.admin(Method::GET, &format!("/v1/usage?{range}&group_by=assistant"), None).await;
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows[0]["assistant_id"], a.to_string());
    assert_eq!(rows[0]["requests"], 3);
    assert!(rows[1]["assistant_id"].is_null());

    let (st, _) = s.client(Method::GET, "/v1/usage", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, e) = s.admin(Method::GET, "/v1/usage?group_by=user", None).await;
    assert_eq!((st, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")));
    s.shutdown().await;
}

async fn age_thread(pool: &PgPool, thread: &str, days: i32) {
    sqlx::query("UPDATE threads SET last_activity_at = now() - make_interval(days => $2) WHERE id = $1::uuid")
        .bind(thread)
        .bind(days)
        .execute(pool)
        .await
        .unwrap();
}

async fn count(pool: &PgPool, sql: &str, thread: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).bind(thread).fetch_one(pool).await.unwrap()
}

async fn rows_of_thread(pool: &PgPool, thread: &str) -> (i64, i64, i64, i64) {
    (
        count(pool, "SELECT count(*) FROM threads WHERE id = $1::uuid", thread).await,
        count(pool, "SELECT count(*) FROM messages WHERE thread_id = $1::uuid", thread).await,
        count(pool, "SELECT count(*) FROM runs WHERE thread_id = $1::uuid", thread).await,
        count(
            pool,
            "SELECT count(*) FROM run_events e JOIN runs r ON r.id = e.run_id WHERE r.thread_id = $1::uuid",
            thread,
        )
        .await,
    )
}

async fn cleanup_and_wait(s: &Stack, dry_run: bool) -> Value {
    let (st, job) = s.admin(Method::POST, "/v1/admin/cleanup", Some(json!({"dry_run": dry_run}))).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    wait_job(s, job["id"].as_str().unwrap()).await
}

async fn wait_job(s: &Stack, id: &str) -> Value {
    wait_for(Duration::from_secs(20), || async {
        let (_, job) = s.admin(Method::GET, &format!("/v1/admin/jobs/{id}"), None).await;
        matches!(job["status"].as_str(), Some("completed" | "failed")).then_some(job)
    })
    .await
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn cleanup_deletes_expired_threads_keeps_the_rest_and_a_dry_run_deletes_nothing(pool: PgPool) {
    let s = Stack::start_with(pool.clone(), true, &[("CHATQ_CLEANUP_BATCH", "1")]).await;
    let global = s.create_assistant(json!({})).await;
    let long = s.create_assistant(json!({"retention_days": 90})).await;
    let mut threads = Vec::new();
    for (assistant, user) in [(&global, "old"), (&global, "recent"), (&long, "kept"), (&long, "ancient")] {
        let t = s.create_thread(assistant, user).await;
        let run = s.send(&t, "hello [[fake tokens=5]]").await;
        s.wait_run(run["id"].as_str().unwrap()).await;
        threads.push(t);
    }
    // A thread with no assistant follows the global retention too.
    let (_, bare) = s.client(Method::POST, "/v1/threads", Some(json!({"user": "bare"}))).await;
    let bare = bare["id"].as_str().unwrap().to_string();
    let [old, recent, kept, ancient] = [&threads[0], &threads[1], &threads[2], &threads[3]];
    age_thread(&pool, old, 31).await;
    age_thread(&pool, recent, 10).await;
    age_thread(&pool, kept, 40).await;
    age_thread(&pool, ancient, 91).await;
    age_thread(&pool, &bare, 45).await;
    // The recent thread's run finished long ago: its events go, except the terminal one.
    sqlx::query("UPDATE runs SET completed_at = now() - interval '8 days' WHERE thread_id = $1::uuid")
        .bind(recent)
        .execute(&pool)
        .await
        .unwrap();
    let before: Vec<_> =
        futures::future::join_all([old, recent, kept, ancient, &bare].map(|t| rows_of_thread(&pool, t))).await;
    let (o, a) = (before[0], before[3]);
    assert_eq!((o.0, o.1, o.2), (1, 2, 1), "a thread with a question, an answer and a run");
    let expected = json!({
        "threads": 3,
        "messages": o.1 + a.1,
        "runs": o.2 + a.2,
        "run_events": o.3 + a.3,
        "old_run_events": before[1].3 - 1,
        "document_chunks": 0,
        "document_blobs": 0,
    });

    let dry = cleanup_and_wait(&s, true).await;
    assert_eq!(dry["status"], "completed", "{dry}");
    assert_eq!(dry["dry_run"], true);
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&dry["stats"][k], v, "dry run {k}: {dry}");
    }
    let after_dry: Vec<_> =
        futures::future::join_all([old, recent, kept, ancient, &bare].map(|t| rows_of_thread(&pool, t))).await;
    assert_eq!(after_dry, before, "a dry run deletes nothing");

    let real = cleanup_and_wait(&s, false).await;
    assert_eq!(real["status"], "completed", "{real}");
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&real["stats"][k], v, "real run {k}: {real}");
    }
    assert!(real["stats"]["batches"].as_i64().unwrap() > 3, "one thread per statement with CHATQ_CLEANUP_BATCH=1");
    assert!(real["stats"]["redis"].is_object(), "{real}");
    assert_eq!(rows_of_thread(&pool, old).await, (0, 0, 0, 0));
    assert_eq!(rows_of_thread(&pool, ancient).await, (0, 0, 0, 0));
    assert_eq!(rows_of_thread(&pool, &bare).await, (0, 0, 0, 0));
    assert_eq!(rows_of_thread(&pool, kept).await, before[2]);
    let r = rows_of_thread(&pool, recent).await;
    assert_eq!((r.0, r.1, r.2, r.3), (1, 2, 1, 1), "only the terminal event is left");
    let last: String = sqlx::query_scalar(
        "SELECT e.kind FROM run_events e JOIN runs r ON r.id = e.run_id WHERE r.thread_id = $1::uuid",
    )
    .bind(recent)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(last, "run.completed");
    let usage: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records").fetch_one(&pool).await.unwrap();
    assert_eq!(usage, 4, "cost history outlives retention");

    let w = worker_metrics(&s).await;
    assert_eq!(metric(&w, "chatq_cleanup_deleted_total", &[("kind", "threads")]), Some(3.0), "{w}");
    assert_eq!(
        metric(&w, "chatq_jobs_total", &[("queue", &s.config_queue("maintenance")), ("outcome", "ok")]),
        Some(2.0)
    );
    let (st, _) = s.client(Method::POST, "/v1/admin/cleanup", Some(json!({}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.admin(Method::GET, &format!("/v1/admin/jobs/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

#[sqlx::test(migrator = "chatq_common::MIGRATOR")]
async fn concurrent_triggers_and_every_replicas_tick_do_the_work_once(pool: PgPool) {
    let mut s = Stack::without_worker(pool.clone()).await;
    let body = Some(json!({"dry_run": false}));
    let ((s1, j1), (s2, j2)) = tokio::join!(
        s.admin(Method::POST, "/v1/admin/cleanup", body.clone()),
        s.admin(Method::POST, "/v1/admin/cleanup", body.clone())
    );
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{j1} {j2}");
    assert_eq!(j1["id"], j2["id"], "the second trigger gets the active job");
    // A dry run asked while a real cleanup is pending is refused, not silently merged.
    let (st, e) = s.admin(Method::POST, "/v1/admin/cleanup", Some(json!({"dry_run": true}))).await;
    assert_eq!((st, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("cleanup_running")));
    s.start_worker().await;
    let job = wait_job(&s, j1["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "{job}");

    // Two replicas tick at the same second: one job.
    let storage =
        jobs::storage::<Cleanup>(s.redis().await, &chatq_common::jobs::Queues::new(&s.config.redis.queue_prefix));
    for _ in 0..2 {
        jobs::push(&storage, Cleanup::default(), "cleanup-1700000000".into()).await.unwrap();
    }
    let n = wait_for(Duration::from_secs(20), || async {
        let (n, active): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('queued', 'running')) FROM maintenance_jobs",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 2 && active == 0).then_some(n)
    })
    .await;
    assert_eq!(n, 2);
    // Both pushes have had their chance: the queue has delivered and acknowledged everything.
    wait_for(Duration::from_secs(20), || async { s.queue_idle("maintenance").await.then_some(()) }).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM maintenance_jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(total, 2, "the trigger's job and one job for the tick");
    s.shutdown().await;
}
