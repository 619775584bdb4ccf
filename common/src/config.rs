//! The one typed configuration, read once from the environment and validated at start.
//!
//! [`Config`] is split by concern; each field names the variable it is read from. `.env.example`
//! lists every variable with its default, in the same groups.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use crate::upstreams::{DEFAULT_UPSTREAM, Upstream, Upstreams};

pub use secrecy::{ExposeSecret, SecretString};

/// A configuration problem, always naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Everything chatq reads from the environment. See `.env.example` for defaults and meanings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Postgres database.
    pub database: DatabaseConfig,
    /// The Redis server holding queues, live streams and counters.
    pub redis: RedisConfig,
    /// The OpenAI-compatible provider and what to do when it fails.
    pub provider: ProviderConfig,
    /// The HTTP API process.
    pub api: ApiConfig,
    /// End-user tokens.
    pub auth: AuthConfig,
    /// Size limits of requests and rate limits of keys and end users.
    pub limits: LimitsConfig,
    /// The worker process: its address, concurrency and shutdown.
    pub worker: WorkerConfig,
    /// How a chat run is executed: lease, attempts, retries, recovery, prompt budget.
    pub runs: RunsConfig,
    /// Live streaming of run events.
    pub streaming: StreamingConfig,
    /// Knowledge bases: embeddings, chunking, retrieval and document extraction.
    pub knowledge: KnowledgeConfig,
    /// What is deleted when, and the cleanup job that deletes it.
    pub retention: RetentionConfig,
    /// Connections to the API: timeouts, the connection limit and the event-stream caps.
    pub http: HttpConfig,
}

/// Connections to the API. Timeouts and limits stop one client (or a slowloris) from holding
/// the process's connections and file descriptors.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Longest time to receive a request's head, which is also the longest a kept-alive
    /// connection may sit idle between two requests (`CHATQ_HTTP_HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
    /// Longest pause between two chunks of a request body (`CHATQ_HTTP_BODY_TIMEOUT_SECS`).
    pub body_timeout: Duration,
    /// Longest time a request may take to produce its response head; event streams are not
    /// cut by it (they have [`HttpConfig::stream_max_lifetime`]), JSON long-polls shorten their
    /// wait to fit in it, uploads are bounded by the body timeout instead
    /// (`CHATQ_HTTP_REQUEST_TIMEOUT_SECS`).
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog
    /// (`CHATQ_HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Event streams (SSE and JSON long-polls) open at once in one API process
    /// (`CHATQ_STREAMS_MAX`).
    pub max_streams: usize,
    /// Event streams one API key has open at once in one API process, its user tokens
    /// included (`CHATQ_STREAMS_PER_KEY`).
    pub max_streams_per_key: usize,
    /// Event streams one end user (a user token) has open at once in one API process
    /// (`CHATQ_STREAMS_PER_USER`).
    pub max_streams_per_user: usize,
    /// An event stream is closed after this long; the client resumes with `Last-Event-ID`,
    /// which also re-checks its credentials (`CHATQ_STREAM_MAX_LIFETIME_SECS`).
    pub stream_max_lifetime: Duration,
    /// How often a quiet event stream re-reads its run, so it ends when the run finished
    /// unseen or was deleted (`CHATQ_STREAM_RECHECK_SECS`).
    pub stream_recheck: Duration,
}

/// The Postgres database.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// Connection string (`DATABASE_URL`); may hold a password, so it is a secret.
    pub url: SecretString,
    /// Size of the Postgres pool per process (`CHATQ_DB_MAX_CONNECTIONS`).
    pub max_connections: u32,
}

/// The Redis server.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// Connection string (`REDIS_URL`); may hold a password, so it is a secret.
    pub url: SecretString,
    /// Prefix of every Redis key and queue name, so stacks and tests can share one Redis
    /// (`CHATQ_QUEUE_PREFIX`).
    pub queue_prefix: String,
}

/// The OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// API key (`OPENAI_API_KEY`); `None` means "no key" (see [`ProviderConfig::key`]).
    pub api_key: Option<SecretString>,
    /// Base URL including `/v1`, without a trailing slash (`OPENAI_BASE_URL`).
    pub base_url: String,
    /// Connect timeout (`CHATQ_PROVIDER_CONNECT_TIMEOUT_SECS`).
    pub connect_timeout: Duration,
    /// Idle timeout between two chunks of a stream (`CHATQ_PROVIDER_IDLE_TIMEOUT_SECS`).
    pub idle_timeout: Duration,
    /// A pricing file replacing the built-in `ops/pricing.toml`, for cost records
    /// (`CHATQ_PRICING_FILE`).
    pub pricing_file: Option<PathBuf>,
    /// Retryable failures in a row that open the circuit breaker (`CHATQ_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe (`CHATQ_BREAKER_COOLDOWN_SECS`).
    pub breaker_cooldown: Duration,
    /// Longest a run waits for an open breaker, from its submission, before failing with
    /// `provider_unavailable` (`CHATQ_PROVIDER_MAX_WAIT_SECS`).
    pub max_wait: Duration,
    /// When the moderation endpoint is down: refuse to answer (`true`) or answer unchecked
    /// with a warning metric (`false`, the default) (`CHATQ_MODERATION_FAIL_CLOSED`).
    pub moderation_fail_closed: bool,
    /// With output moderation, also check the answer each time this many more characters have
    /// streamed, so a flagged answer is withdrawn early; 0 (the default) checks only the
    /// complete answer (`CHATQ_MODERATION_OUTPUT_EVERY_CHARS`).
    pub moderation_output_every_chars: usize,
    /// The providers file naming the chat upstreams (`CHATQ_PROVIDERS_FILE`); without one, chat
    /// goes to `OPENAI_BASE_URL` as the upstream `default`.
    pub providers_file: Option<PathBuf>,
    /// Where chat calls go: the upstreams of the providers file, or the single `default` one.
    /// Embeddings and moderation always use `OPENAI_BASE_URL`/`OPENAI_API_KEY`.
    pub upstreams: Upstreams,
}

impl ProviderConfig {
    /// The API key sent to the provider; servers like the fake accept any non-empty key.
    pub fn key(&self) -> &str {
        self.api_key.as_ref().map(ExposeSecret::expose_secret).unwrap_or("sk-no-key")
    }
}

/// The HTTP API process.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Address of the HTTP API (`CHATQ_LISTEN`).
    pub listen: SocketAddr,
    /// Address serving the API's Prometheus `/metrics`, apart from the public API port so
    /// that only operators reach it (`CHATQ_METRICS_LISTEN`).
    pub metrics_listen: SocketAddr,
    /// Origins allowed to call the API from a browser, or `*` (`CHATQ_CORS_ORIGINS`,
    /// comma-separated); empty means no CORS headers.
    pub cors_origins: Vec<String>,
    /// Serve the widget demo page at `/demo` and its token endpoint, which mints user tokens
    /// for anonymous visitors: a development aid, never for production (`CHATQ_DEMO`).
    pub demo: bool,
}

/// End-user tokens.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Secret from which the key sealing user tokens is derived (`CHATQ_TOKEN_SECRET`); required
    /// by the API, which refuses to start without it.
    pub token_secret: Option<SecretString>,
    /// The secret used before the current one (`CHATQ_TOKEN_SECRET_PREVIOUS`): tokens it sealed
    /// are still accepted, none are issued with it, so the secret rotates without signing
    /// anyone out. Remove it once the longest token lifetime (24 h) has passed.
    pub token_secret_previous: Option<SecretString>,
}

/// Size limits of requests and rate limits of keys and end users.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Largest accepted JSON request body in bytes (`CHATQ_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Largest accepted chat message in bytes (`CHATQ_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Largest accepted uploaded file in bytes (`CHATQ_MAX_UPLOAD_FILE_BYTES`).
    pub max_upload_file_bytes: usize,
    /// Largest accepted upload request in bytes (`CHATQ_MAX_UPLOAD_REQUEST_BYTES`).
    pub max_upload_request_bytes: usize,
    /// Runs one end user may start per minute, per key; 0 = unlimited
    /// (`CHATQ_RATE_USER_RUNS_PER_MIN`).
    pub user_runs_per_min: u32,
    /// Runs one key may start per minute, unless the key overrides it; 0 = unlimited
    /// (`CHATQ_RATE_KEY_RUNS_PER_MIN`).
    pub key_runs_per_min: u32,
    /// Queued or in-progress runs one end user may have at once; 0 = unlimited
    /// (`CHATQ_RATE_USER_ACTIVE_RUNS`).
    pub user_active_runs: u32,
    /// Bytes one key may upload to knowledge bases per day (UTC); 0 = unlimited
    /// (`CHATQ_RATE_UPLOAD_BYTES_PER_DAY`).
    pub upload_bytes_per_day: u64,
    /// Threads one end user of a key may have, so one user token cannot fill the database;
    /// 0 = unlimited (`CHATQ_QUOTA_THREADS_PER_USER`).
    pub threads_per_user: u64,
    /// Threads one key may have over all its end users; 0 = unlimited
    /// (`CHATQ_QUOTA_THREADS_PER_KEY`).
    pub threads_per_key: u64,
    /// Longest thread title, in characters (`CHATQ_QUOTA_THREAD_TITLE_CHARS`).
    pub thread_title_chars: usize,
    /// Largest thread `metadata`, in bytes of JSON (`CHATQ_QUOTA_THREAD_METADATA_BYTES`).
    pub thread_metadata_bytes: usize,
    /// Live documents one knowledge base may hold; 0 = unlimited (`CHATQ_QUOTA_KB_DOCUMENTS`).
    pub kb_documents: u64,
    /// Bytes of live documents one knowledge base may hold; 0 = unlimited
    /// (`CHATQ_QUOTA_KB_BYTES`).
    pub kb_bytes: u64,
}

/// The worker process.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Address of the worker's health and metrics server (`CHATQ_WORKER_LISTEN`).
    pub listen: SocketAddr,
    /// Chat runs one worker process executes at once (`CHATQ_CHAT_CONCURRENCY`).
    pub chat_concurrency: usize,
    /// How often an idle worker polls the chat queue (`CHATQ_CHAT_POLL_MS`).
    pub chat_poll_interval: Duration,
    /// Documents one worker process ingests at once (`CHATQ_INGEST_CONCURRENCY`).
    pub ingest_concurrency: usize,
    /// On SIGTERM, how long in-flight runs may finish before their leases are released
    /// (`CHATQ_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// Assistants that get their own `assistant` label value in this worker's cost, token and
    /// run metrics; later ones share `other`, so a deployment with thousands of assistants
    /// cannot explode Prometheus (`CHATQ_METRICS_MAX_ASSISTANTS`).
    pub metrics_max_assistants: usize,
    /// Webhook deliveries one worker process sends at once (`CHATQ_WEBHOOK_CONCURRENCY`).
    pub webhook_concurrency: usize,
    /// Send webhooks to private, loopback and link-local addresses too
    /// (`CHATQ_WEBHOOKS_ALLOW_PRIVATE`); off, a URL resolving to one is refused at send time, so
    /// a webhook cannot be aimed at the stack's own network.
    pub webhooks_allow_private: bool,
}

/// How a chat run is executed.
#[derive(Clone, Debug)]
pub struct RunsConfig {
    /// How long a claimed run stays leased without renewal (`CHATQ_RUN_LEASE_SECS`).
    pub lease: Duration,
    /// Attempts a run gets before a retryable error, or its worker dying that often, fails it
    /// (`CHATQ_RUN_MAX_ATTEMPTS`).
    pub max_attempts: i32,
    /// First retry delay; doubled each attempt, with jitter (`CHATQ_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// Longest delay between attempts, also the cap on a provider's `Retry-After`
    /// (`CHATQ_RETRY_MAX_MS`).
    pub retry_max: Duration,
    /// How often the reconciler looks for runs whose job was lost (`CHATQ_RECONCILE_INTERVAL_SECS`).
    pub reconcile_interval: Duration,
    /// A due run not pushed for this long is pushed again (`CHATQ_RECONCILE_AFTER_SECS`).
    pub reconcile_after: Duration,
    /// Token budget for the thread history sent to the model (`CHATQ_HISTORY_MAX_TOKENS`).
    pub history_max_tokens: usize,
    /// How long a finished answer waits in memory for an unreachable Postgres before the attempt
    /// gives up (`CHATQ_FINISH_RETRY_SECS`): outages shorter than this cost no second call.
    pub finish_retry: Duration,
}

/// Live streaming of run events.
#[derive(Clone, Debug)]
pub struct StreamingConfig {
    /// Window for coalescing deltas into one event (`CHATQ_STREAM_COALESCE_MS`).
    pub coalesce: Duration,
    /// Interval of the batched writer of run events to Postgres (`CHATQ_EVENT_FLUSH_MS`).
    pub event_flush_interval: Duration,
    /// How long a run's live Redis stream is kept after it finishes, for late subscribers
    /// (`CHATQ_RUN_STREAM_TTL_SECS`).
    pub run_stream_ttl: Duration,
}

/// Knowledge bases.
#[derive(Clone, Debug)]
pub struct KnowledgeConfig {
    /// Embedding model of new knowledge bases (`CHATQ_EMBEDDING_MODEL`).
    pub embedding_model: String,
    /// Embedding dimensions of new knowledge bases (`CHATQ_EMBEDDING_DIMS`).
    pub embedding_dims: usize,
    /// Most inputs per embeddings request (`CHATQ_EMBEDDING_BATCH_INPUTS`).
    pub embedding_batch_inputs: usize,
    /// Most tokens per embeddings request (`CHATQ_EMBEDDING_BATCH_TOKENS`).
    pub embedding_batch_tokens: usize,
    /// Target chunk size in tokens (`CHATQ_CHUNK_TOKENS`).
    pub chunk_tokens: usize,
    /// Tokens shared by neighbouring chunks (`CHATQ_CHUNK_OVERLAP_TOKENS`).
    pub chunk_overlap_tokens: usize,
    /// Sources put in a prompt at most (`CHATQ_RETRIEVAL_TOP_K`).
    pub retrieval_top_k: usize,
    /// Token budget of the sources in a prompt (`CHATQ_RETRIEVAL_MAX_TOKENS`).
    pub retrieval_max_tokens: usize,
    /// Which bases are searched with an HNSW graph instead of exactly: those with at least
    /// `CHATQ_ANN_THRESHOLD` chunks (0 = never), with a candidate list of
    /// `CHATQ_ANN_EF_SEARCH`.
    pub ann: crate::ann::AnnSettings,
    /// Weights of the hybrid search's fusion (`CHATQ_FUSION_KEYWORD_WEIGHT`,
    /// `CHATQ_FUSION_VECTOR_WEIGHT`; non-negative, not both 0).
    pub fusion: crate::retrieval::Fusion,
    /// Wall-clock limit of one extraction child process, which extracts and chunks every
    /// document whatever its format; past it the child is killed and the document fails with
    /// `extraction_timeout` (`CHATQ_EXTRACT_TIMEOUT_SECS`).
    pub extract_timeout: Duration,
    /// Address-space limit of the extraction child in MiB (`CHATQ_EXTRACT_MEMORY_MB`).
    pub extract_memory_mb: u64,
    /// Most bytes read from the extraction child's output (the extracted text, except for text
    /// and Markdown files, and the chunk list, as JSON); a document whose output is larger
    /// fails with `extraction_output_too_large` instead of filling the worker's memory
    /// (`CHATQ_EXTRACT_MAX_OUTPUT_BYTES`).
    pub extract_max_output_bytes: u64,
    /// Binary run as `<bin> extract MEDIA_TYPE CHUNK_TOKENS OVERLAP_TOKENS`; default: the
    /// running worker binary (`CHATQ_EXTRACTOR_BIN`).
    pub extractor_bin: Option<PathBuf>,
    /// Ingestion attempts of one document; a document whose attempts were all interrupted
    /// (the worker died or lost the job, e.g. on a file that crashes it) fails with
    /// `ingestion_attempts_exhausted` instead of being tried again forever
    /// (`CHATQ_INGEST_MAX_ATTEMPTS`).
    pub ingest_max_attempts: i32,
}

/// What is deleted when, and the cleanup job that deletes it.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    /// Threads with no activity for this many days are deleted, unless their assistant sets
    /// its own `retention_days` (`CHATQ_RETENTION_DAYS`).
    pub thread_days: u32,
    /// Events of runs finished longer ago than this are dropped; the run keeps its output
    /// (`CHATQ_EVENT_RETENTION`, e.g. `7d`, `12h`).
    pub events: Duration,
    /// How long finished jobs stay in Redis before the cleanup vacuums them
    /// (`CHATQ_QUEUE_RETENTION`, e.g. `24h`).
    pub finished_jobs: Duration,
    /// Cron expression (seconds first, UTC) of the cleanup job (`CHATQ_CLEANUP_SCHEDULE`).
    pub cleanup_schedule: String,
    /// Rows deleted per statement by the cleanup, so no statement holds locks for long
    /// (`CHATQ_CLEANUP_BATCH`).
    pub cleanup_batch: i64,
}

impl Config {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader { lookup: &lookup, errors: Vec::new() };
        let config = Config {
            database: DatabaseConfig {
                url: r.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/chatq").into(),
                max_connections: r.parse("CHATQ_DB_MAX_CONNECTIONS", "20"),
            },
            redis: RedisConfig {
                url: r.string("REDIS_URL", "redis://127.0.0.1:6379").into(),
                queue_prefix: r.string("CHATQ_QUEUE_PREFIX", "chatq"),
            },
            provider: ProviderConfig {
                api_key: r.optional("OPENAI_API_KEY").map(SecretString::from),
                base_url: r.string("OPENAI_BASE_URL", "https://api.openai.com/v1").trim_end_matches('/').to_string(),
                connect_timeout: Duration::from_secs(r.parse("CHATQ_PROVIDER_CONNECT_TIMEOUT_SECS", "10")),
                idle_timeout: Duration::from_secs(r.parse("CHATQ_PROVIDER_IDLE_TIMEOUT_SECS", "120")),
                pricing_file: r.optional("CHATQ_PRICING_FILE").map(PathBuf::from),
                breaker_failures: r.parse("CHATQ_BREAKER_FAILURES", "5"),
                breaker_cooldown: Duration::from_secs(r.parse("CHATQ_BREAKER_COOLDOWN_SECS", "30")),
                max_wait: Duration::from_secs(r.parse("CHATQ_PROVIDER_MAX_WAIT_SECS", "300")),
                moderation_fail_closed: r.parse("CHATQ_MODERATION_FAIL_CLOSED", "false"),
                moderation_output_every_chars: r.parse("CHATQ_MODERATION_OUTPUT_EVERY_CHARS", "0"),
                providers_file: r.optional("CHATQ_PROVIDERS_FILE").map(PathBuf::from),
                upstreams: Upstreams::single(Upstream {
                    name: DEFAULT_UPSTREAM.into(),
                    base_url: String::new(),
                    api_key: None,
                    connect_timeout: Duration::ZERO,
                    idle_timeout: Duration::ZERO,
                    models: None,
                }),
            },
            api: ApiConfig {
                listen: r.parse("CHATQ_LISTEN", "127.0.0.1:8080"),
                metrics_listen: r.parse("CHATQ_METRICS_LISTEN", "127.0.0.1:9092"),
                cors_origins: r
                    .string("CHATQ_CORS_ORIGINS", "")
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect(),
                demo: match r.string("CHATQ_DEMO", "0").trim() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    other => {
                        r.errors.push(format!("CHATQ_DEMO={other:?} must be 1 (on) or 0 (off)"));
                        false
                    }
                },
            },
            auth: AuthConfig {
                token_secret: r.optional("CHATQ_TOKEN_SECRET").map(SecretString::from),
                token_secret_previous: r.optional("CHATQ_TOKEN_SECRET_PREVIOUS").map(SecretString::from),
            },
            limits: LimitsConfig {
                max_body_bytes: r.parse("CHATQ_MAX_BODY_BYTES", "1048576"),
                max_message_bytes: r.parse("CHATQ_MAX_MESSAGE_BYTES", "32768"),
                max_upload_file_bytes: r.parse("CHATQ_MAX_UPLOAD_FILE_BYTES", "52428800"),
                max_upload_request_bytes: r.parse("CHATQ_MAX_UPLOAD_REQUEST_BYTES", "209715200"),
                user_runs_per_min: r.parse("CHATQ_RATE_USER_RUNS_PER_MIN", "30"),
                key_runs_per_min: r.parse("CHATQ_RATE_KEY_RUNS_PER_MIN", "0"),
                user_active_runs: r.parse("CHATQ_RATE_USER_ACTIVE_RUNS", "3"),
                upload_bytes_per_day: r.parse("CHATQ_RATE_UPLOAD_BYTES_PER_DAY", "1073741824"),
                threads_per_user: r.parse("CHATQ_QUOTA_THREADS_PER_USER", "1000"),
                threads_per_key: r.parse("CHATQ_QUOTA_THREADS_PER_KEY", "100000"),
                thread_title_chars: r.parse("CHATQ_QUOTA_THREAD_TITLE_CHARS", "500"),
                thread_metadata_bytes: r.parse("CHATQ_QUOTA_THREAD_METADATA_BYTES", "16384"),
                kb_documents: r.parse("CHATQ_QUOTA_KB_DOCUMENTS", "10000"),
                kb_bytes: r.parse("CHATQ_QUOTA_KB_BYTES", "1073741824"),
            },
            worker: WorkerConfig {
                listen: r.parse("CHATQ_WORKER_LISTEN", "127.0.0.1:9091"),
                chat_concurrency: r.parse("CHATQ_CHAT_CONCURRENCY", "256"),
                chat_poll_interval: Duration::from_millis(r.parse("CHATQ_CHAT_POLL_MS", "20")),
                ingest_concurrency: r.parse("CHATQ_INGEST_CONCURRENCY", "2"),
                shutdown_grace: Duration::from_secs(r.parse("CHATQ_SHUTDOWN_GRACE_SECS", "20")),
                metrics_max_assistants: r.parse("CHATQ_METRICS_MAX_ASSISTANTS", "50"),
                webhook_concurrency: r.parse("CHATQ_WEBHOOK_CONCURRENCY", "16"),
                webhooks_allow_private: match r.string("CHATQ_WEBHOOKS_ALLOW_PRIVATE", "0").trim() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    other => {
                        r.errors.push(format!("CHATQ_WEBHOOKS_ALLOW_PRIVATE={other:?} must be 1 (on) or 0 (off)"));
                        false
                    }
                },
            },
            runs: RunsConfig {
                lease: Duration::from_secs(r.parse("CHATQ_RUN_LEASE_SECS", "30")),
                max_attempts: r.parse("CHATQ_RUN_MAX_ATTEMPTS", "3"),
                retry_base: Duration::from_millis(r.parse("CHATQ_RETRY_BASE_MS", "500")),
                retry_max: Duration::from_millis(r.parse("CHATQ_RETRY_MAX_MS", "30000")),
                reconcile_interval: Duration::from_secs(r.parse("CHATQ_RECONCILE_INTERVAL_SECS", "10")),
                finish_retry: Duration::from_secs(r.parse("CHATQ_FINISH_RETRY_SECS", "120")),
                reconcile_after: Duration::from_secs(r.parse("CHATQ_RECONCILE_AFTER_SECS", "30")),
                history_max_tokens: r.parse("CHATQ_HISTORY_MAX_TOKENS", "16000"),
            },
            streaming: StreamingConfig {
                coalesce: Duration::from_millis(r.parse("CHATQ_STREAM_COALESCE_MS", "25")),
                event_flush_interval: Duration::from_millis(r.parse("CHATQ_EVENT_FLUSH_MS", "100")),
                run_stream_ttl: Duration::from_secs(r.parse("CHATQ_RUN_STREAM_TTL_SECS", "3600")),
            },
            knowledge: KnowledgeConfig {
                embedding_model: r.string("CHATQ_EMBEDDING_MODEL", "text-embedding-3-small"),
                embedding_dims: r.parse("CHATQ_EMBEDDING_DIMS", "1536"),
                embedding_batch_inputs: r.parse("CHATQ_EMBEDDING_BATCH_INPUTS", "128"),
                embedding_batch_tokens: r.parse("CHATQ_EMBEDDING_BATCH_TOKENS", "100000"),
                chunk_tokens: r.parse("CHATQ_CHUNK_TOKENS", "200"),
                chunk_overlap_tokens: r.parse("CHATQ_CHUNK_OVERLAP_TOKENS", "30"),
                retrieval_top_k: r.parse("CHATQ_RETRIEVAL_TOP_K", "6"),
                retrieval_max_tokens: r.parse("CHATQ_RETRIEVAL_MAX_TOKENS", "3000"),
                ann: crate::ann::AnnSettings {
                    threshold: r.parse("CHATQ_ANN_THRESHOLD", "20000"),
                    ef_search: r.parse("CHATQ_ANN_EF_SEARCH", "128"),
                },
                fusion: crate::retrieval::Fusion {
                    keyword: r.parse("CHATQ_FUSION_KEYWORD_WEIGHT", "1.0"),
                    vector: r.parse("CHATQ_FUSION_VECTOR_WEIGHT", "0.05"),
                },
                extract_timeout: Duration::from_secs(r.parse("CHATQ_EXTRACT_TIMEOUT_SECS", "60")),
                extract_memory_mb: r.parse("CHATQ_EXTRACT_MEMORY_MB", "1024"),
                extract_max_output_bytes: r.parse("CHATQ_EXTRACT_MAX_OUTPUT_BYTES", "33554432"),
                extractor_bin: r.optional("CHATQ_EXTRACTOR_BIN").map(PathBuf::from),
                ingest_max_attempts: r.parse("CHATQ_INGEST_MAX_ATTEMPTS", "3"),
            },
            retention: RetentionConfig {
                thread_days: r.parse("CHATQ_RETENTION_DAYS", "30"),
                events: r.duration("CHATQ_EVENT_RETENTION", "7d"),
                finished_jobs: r.duration("CHATQ_QUEUE_RETENTION", "24h"),
                cleanup_schedule: r.string("CHATQ_CLEANUP_SCHEDULE", "0 17 3 * * *"),
                cleanup_batch: r.parse("CHATQ_CLEANUP_BATCH", "1000"),
            },
            http: HttpConfig {
                header_timeout: Duration::from_secs(r.parse("CHATQ_HTTP_HEADER_TIMEOUT_SECS", "10")),
                body_timeout: Duration::from_secs(r.parse("CHATQ_HTTP_BODY_TIMEOUT_SECS", "30")),
                request_timeout: Duration::from_secs(r.parse("CHATQ_HTTP_REQUEST_TIMEOUT_SECS", "60")),
                max_connections: r.parse("CHATQ_HTTP_MAX_CONNECTIONS", "25000"),
                max_streams: r.parse("CHATQ_STREAMS_MAX", "20000"),
                max_streams_per_key: r.parse("CHATQ_STREAMS_PER_KEY", "20000"),
                max_streams_per_user: r.parse("CHATQ_STREAMS_PER_USER", "16"),
                stream_max_lifetime: Duration::from_secs(r.parse("CHATQ_STREAM_MAX_LIFETIME_SECS", "1800")),
                stream_recheck: Duration::from_secs(r.parse("CHATQ_STREAM_RECHECK_SECS", "30")),
            },
        };
        let mut config = config;
        config.provider.upstreams = load_upstreams(&config.provider, &lookup, &mut r.errors);
        config.validate(&mut r.errors);
        if r.errors.is_empty() { Ok(config) } else { Err(ConfigError(r.errors)) }
    }

    fn validate(&self, errors: &mut Vec<String>) {
        let prefix = &self.redis.queue_prefix;
        let prefix_ok =
            !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !prefix_ok {
            errors.push("CHATQ_QUEUE_PREFIX must be non-empty and use only letters, digits, '-', '_' or '.'".into());
        }
        if let Some(secret) = &self.auth.token_secret
            && let Some(problem) = weak_secret(secret.expose_secret())
        {
            errors.push(format!(
                "CHATQ_TOKEN_SECRET {problem}; generate one with `openssl rand -hex 32` (anyone who knows the \
                 secret can forge user tokens)"
            ));
        }
        for (name, url) in [("DATABASE_URL", &self.database.url), ("REDIS_URL", &self.redis.url)] {
            if is_placeholder(url.expose_secret()) {
                errors.push(format!("{name} holds a placeholder password; set a random one"));
            }
        }
        if let Some(secret) = &self.auth.token_secret_previous
            && secret.expose_secret().len() < 32
        {
            errors.push("CHATQ_TOKEN_SECRET_PREVIOUS must be at least 32 characters".into());
        }
        let base_url = &self.provider.base_url;
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            errors.push("OPENAI_BASE_URL must start with http:// or https://".into());
        }
        let (limits, knowledge) = (&self.limits, &self.knowledge);
        for (name, value) in [
            ("CHATQ_CHAT_CONCURRENCY", self.worker.chat_concurrency),
            ("CHATQ_MAX_MESSAGE_BYTES", limits.max_message_bytes),
            ("CHATQ_MAX_BODY_BYTES", limits.max_body_bytes),
            ("CHATQ_HISTORY_MAX_TOKENS", self.runs.history_max_tokens),
            ("CHATQ_INGEST_CONCURRENCY", self.worker.ingest_concurrency),
            ("CHATQ_WEBHOOK_CONCURRENCY", self.worker.webhook_concurrency),
            ("CHATQ_MAX_UPLOAD_FILE_BYTES", limits.max_upload_file_bytes),
            ("CHATQ_MAX_UPLOAD_REQUEST_BYTES", limits.max_upload_request_bytes),
            ("CHATQ_QUOTA_THREAD_TITLE_CHARS", limits.thread_title_chars),
            ("CHATQ_QUOTA_THREAD_METADATA_BYTES", limits.thread_metadata_bytes),
            ("CHATQ_EMBEDDING_DIMS", knowledge.embedding_dims),
            ("CHATQ_EMBEDDING_BATCH_INPUTS", knowledge.embedding_batch_inputs),
            ("CHATQ_EMBEDDING_BATCH_TOKENS", knowledge.embedding_batch_tokens),
            ("CHATQ_CHUNK_TOKENS", knowledge.chunk_tokens),
            ("CHATQ_RETRIEVAL_TOP_K", knowledge.retrieval_top_k),
            ("CHATQ_ANN_EF_SEARCH", knowledge.ann.ef_search),
            ("CHATQ_HTTP_MAX_CONNECTIONS", self.http.max_connections),
            ("CHATQ_STREAMS_MAX", self.http.max_streams),
            ("CHATQ_STREAMS_PER_KEY", self.http.max_streams_per_key),
            ("CHATQ_STREAMS_PER_USER", self.http.max_streams_per_user),
            ("CHATQ_EXTRACT_MAX_OUTPUT_BYTES", knowledge.extract_max_output_bytes as usize),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        }
        let retention = &self.retention;
        if retention.thread_days == 0 {
            errors.push("CHATQ_RETENTION_DAYS must be greater than 0".into());
        }
        let fusion = self.knowledge.fusion;
        let weight_ok = |w: f32| w.is_finite() && w >= 0.0;
        if !weight_ok(fusion.keyword) || !weight_ok(fusion.vector) || fusion.keyword + fusion.vector == 0.0 {
            errors.push(
                "CHATQ_FUSION_KEYWORD_WEIGHT and CHATQ_FUSION_VECTOR_WEIGHT must be non-negative and not both 0".into(),
            );
        }
        if !(1..=100_000).contains(&retention.cleanup_batch) {
            errors.push("CHATQ_CLEANUP_BATCH must be between 1 and 100000".into());
        }
        if retention.finished_jobs < Duration::from_secs(3600) {
            // vacuum also removes failed tasks waiting for a retry; an hour keeps them safe.
            errors.push("CHATQ_QUEUE_RETENTION must be at least 1h".into());
        }
        if let Err(e) = cron::Schedule::from_str(&retention.cleanup_schedule) {
            errors.push(format!(
                "CHATQ_CLEANUP_SCHEDULE={:?} is not a cron expression (sec min hour day month weekday): {e}",
                retention.cleanup_schedule
            ));
        }
        if !(1..=25).contains(&self.runs.max_attempts) {
            errors.push("CHATQ_RUN_MAX_ATTEMPTS must be between 1 and 25".into());
        }
        if !(1..=25).contains(&knowledge.ingest_max_attempts) {
            errors.push("CHATQ_INGEST_MAX_ATTEMPTS must be between 1 and 25".into());
        }
        if knowledge.chunk_overlap_tokens >= knowledge.chunk_tokens {
            errors.push("CHATQ_CHUNK_OVERLAP_TOKENS must be smaller than CHATQ_CHUNK_TOKENS".into());
        }
        let origins = &self.api.cors_origins;
        for origin in origins {
            let ok = origin == "*" || origin.starts_with("http://") || origin.starts_with("https://");
            if !ok || (origin == "*" && origins.len() > 1) || !origin.chars().all(|c| c.is_ascii_graphic()) {
                errors.push(format!(
                    "CHATQ_CORS_ORIGINS must be `*` or a comma-separated list of origins like https://app.example.com (got {origin:?})"
                ));
            }
        }
        let http = &self.http;
        for (name, value) in [
            ("CHATQ_HTTP_HEADER_TIMEOUT_SECS", http.header_timeout),
            ("CHATQ_HTTP_BODY_TIMEOUT_SECS", http.body_timeout),
            ("CHATQ_HTTP_REQUEST_TIMEOUT_SECS", http.request_timeout),
            ("CHATQ_STREAM_MAX_LIFETIME_SECS", http.stream_max_lifetime),
            ("CHATQ_STREAM_RECHECK_SECS", http.stream_recheck),
        ] {
            if value.is_zero() {
                errors.push(format!("{name} must be greater than 0"));
            }
        }
        if self.runs.lease < Duration::from_secs(3) {
            errors.push("CHATQ_RUN_LEASE_SECS must be at least 3".into());
        }
    }
}

/// The chat upstreams: those of `CHATQ_PROVIDERS_FILE`, or the single `default` upstream of
/// `OPENAI_BASE_URL`/`OPENAI_API_KEY` serving every model.
fn load_upstreams(p: &ProviderConfig, lookup: &impl Fn(&str) -> Option<String>, errors: &mut Vec<String>) -> Upstreams {
    let default = Upstreams::single(Upstream {
        name: DEFAULT_UPSTREAM.into(),
        base_url: p.base_url.clone(),
        api_key: p.api_key.clone(),
        connect_timeout: p.connect_timeout,
        idle_timeout: p.idle_timeout,
        models: None,
    });
    let Some(path) = &p.providers_file else { return default };
    let source = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(format!("CHATQ_PROVIDERS_FILE: cannot read {source}: {e}"));
            return default;
        }
    };
    match Upstreams::parse(&text, &source, lookup, p.connect_timeout, p.idle_timeout) {
        Ok(upstreams) => upstreams,
        Err(problems) => {
            errors.extend(problems.into_iter().map(|e| format!("CHATQ_PROVIDERS_FILE: {e}")));
            default
        }
    }
}

/// Words that mark a value copied from an example rather than generated.
const PLACEHOLDER_MARKERS: [&str; 6] = ["change-me", "changeme", "change_me", "replace-me", "replaceme", "your-secret"];

/// Whether `value` holds a placeholder from an example file or an old built-in default.
fn is_placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m))
}

/// Why `secret` is unfit to sign user tokens, or `None` when it is fit: it must be long and
/// varied (a generated value), and no placeholder that is public in this repository.
pub fn weak_secret(secret: &str) -> Option<&'static str> {
    if secret.len() < 32 {
        return Some("must be at least 32 characters");
    }
    if is_placeholder(secret) {
        return Some("is a placeholder from an example, known to everyone");
    }
    let distinct: std::collections::HashSet<char> = secret.chars().collect();
    if distinct.len() < 8 {
        return Some("repeats too few characters to be a random secret");
    }
    None
}

struct Reader<'a, F: Fn(&str) -> Option<String>> {
    lookup: &'a F,
    errors: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn optional(&mut self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn string(&mut self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_string())
    }

    /// A duration such as `30s`, `15m`, `12h` or `7d` (a bare number is seconds).
    fn duration(&mut self, name: &str, default: &str) -> Duration {
        let raw = self.string(name, default);
        match parse_duration(raw.trim()) {
            Some(d) => d,
            None => {
                self.errors.push(format!("{name}={raw:?} is not a duration like 30s, 15m, 12h or 7d"));
                parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: &str) -> T
    where
        T::Err: fmt::Display,
    {
        let raw = self.string(name, default);
        match raw.trim().parse() {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(format!("{name}={raw:?} is not valid: {e}"));
                // The error is reported; the built-in default keeps the struct complete.
                match default.parse() {
                    Ok(v) => v,
                    Err(_) => unreachable!("built-in default of {name} is valid"),
                }
            }
        }
    }
}

/// Parses `30s`, `15m`, `12h`, `7d` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let c = from(&[]).unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.redis.queue_prefix, "chatq");
        assert!(c.provider.api_key.is_none());
        assert_eq!(c.provider.key(), "sk-no-key");
    }

    #[test]
    fn every_error_names_its_variable() {
        let err =
            from(&[("CHATQ_LISTEN", "nowhere"), ("CHATQ_CHAT_CONCURRENCY", "0"), ("CHATQ_TOKEN_SECRET", "short")])
                .unwrap_err()
                .to_string();
        assert!(err.contains("CHATQ_LISTEN"), "{err}");
        assert!(err.contains("CHATQ_CHAT_CONCURRENCY"), "{err}");
        assert!(err.contains("CHATQ_TOKEN_SECRET"), "{err}");
    }

    #[test]
    fn fusion_weights_are_read_and_checked_at_start_up() {
        let c = from(&[("CHATQ_FUSION_VECTOR_WEIGHT", "0.5")]).unwrap();
        assert_eq!(c.knowledge.fusion, crate::retrieval::Fusion { keyword: 1.0, vector: 0.5 });
        assert_eq!(from(&[]).unwrap().knowledge.fusion, crate::retrieval::Fusion::DEFAULT);
        for bad in [("CHATQ_FUSION_VECTOR_WEIGHT", "-1"), ("CHATQ_FUSION_KEYWORD_WEIGHT", "lots")] {
            let err = from(&[bad]).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{err}");
        }
        let err = from(&[("CHATQ_FUSION_VECTOR_WEIGHT", "0"), ("CHATQ_FUSION_KEYWORD_WEIGHT", "0")]).unwrap_err();
        assert!(err.to_string().contains("not both 0"), "{err}");
    }

    #[test]
    fn operations_settings_parse_durations_and_cron() {
        let c = from(&[("CHATQ_EVENT_RETENTION", "12h"), ("CHATQ_CLEANUP_SCHEDULE", "0 */5 * * * *")]).unwrap();
        assert_eq!(c.retention.events, Duration::from_secs(12 * 3600));
        assert_eq!(c.retention.thread_days, 30);
        assert_eq!(c.retention.finished_jobs, Duration::from_secs(24 * 3600));
        let err =
            from(&[("CHATQ_EVENT_RETENTION", "soon"), ("CHATQ_CLEANUP_SCHEDULE", "daily")]).unwrap_err().to_string();
        assert!(err.contains("CHATQ_EVENT_RETENTION"), "{err}");
        assert!(err.contains("CHATQ_CLEANUP_SCHEDULE"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = from(&[
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("REDIS_URL", "redis://:redispw@h"),
            ("CHATQ_TOKEN_SECRET", "token-secret-token-secret-token-secret"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(!shown.contains("pw@"), "{shown}");
        assert!(!shown.contains("token-secret"), "{shown}");
        assert_eq!(c.provider.key(), "sk-very-secret");
    }

    #[test]
    fn a_placeholder_or_weak_token_secret_stops_start_up_with_a_clear_message() {
        for secret in [
            // The old docker-compose default, public in this repository's history.
            "change-me-change-me-change-me-change-me",
            "CHANGEME-please-CHANGEME-please-CHANGEME",
            "replace-me-with-a-random-secret-of-32-chars",
            "short",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0101010101010101010101010101010101010101",
        ] {
            let err = from(&[("CHATQ_TOKEN_SECRET", secret)]).unwrap_err().to_string();
            assert!(err.contains("CHATQ_TOKEN_SECRET"), "{secret}: {err}");
            assert!(!err.contains(secret), "the message never repeats the secret: {err}");
        }
        let generated = "3f9c2a7be41d0c8e95a6b7f1d2e3c4a5968778695a4b3c2d1e0f9a8b7c6d5e4f";
        from(&[("CHATQ_TOKEN_SECRET", generated)]).unwrap();
    }

    #[test]
    fn a_placeholder_password_in_a_connection_url_stops_start_up() {
        let err = from(&[
            ("DATABASE_URL", "postgres://postgres:change-me@postgres:5432/chatq"),
            ("REDIS_URL", "redis://:changeme@redis:6379"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("DATABASE_URL") && err.contains("REDIS_URL"), "{err}");
        assert!(!err.contains("change-me@"), "{err}");
        from(&[("DATABASE_URL", "postgres://postgres:9f8e7d6c5b4a@postgres:5432/chatq")]).unwrap();
    }

    /// `KEY=VALUE` lines of `.env.example`, commented out (`# KEY=VALUE`) or not.
    fn env_example() -> Vec<(String, String, bool)> {
        let text = include_str!("../../.env.example");
        text.lines()
            .filter_map(|line| {
                let (commented, line) = match line.strip_prefix("# ") {
                    Some(rest) => (true, rest),
                    None => (false, line),
                };
                let (key, value) = line.split_once('=')?;
                let is_var = !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c == '_');
                is_var.then(|| (key.to_string(), value.to_string(), commented))
            })
            .collect()
    }

    #[test]
    fn env_example_lists_every_variable_with_its_built_in_default() {
        let example = env_example();
        let read = std::cell::RefCell::new(Vec::new());
        Config::from_lookup(|k| {
            read.borrow_mut().push(k.to_string());
            None
        })
        .unwrap();
        for name in read.borrow().iter() {
            assert!(example.iter().any(|(k, _, _)| k == name), "{name} is missing from .env.example");
        }
        // The uncommented values are the defaults: setting them changes nothing.
        let set: HashMap<String, String> =
            example.iter().filter(|(_, _, commented)| !commented).map(|(k, v, _)| (k.clone(), v.clone())).collect();
        let with_example = Config::from_lookup(|k| set.get(k).cloned()).unwrap();
        assert_eq!(format!("{with_example:?}"), format!("{:?}", from(&[]).unwrap()));
    }

    #[test]
    fn without_a_providers_file_chat_goes_to_the_default_upstream_serving_every_model() {
        let c = from(&[("OPENAI_BASE_URL", "http://fake:1/v1/"), ("OPENAI_API_KEY", "sk-k")]).unwrap();
        let [u] = c.provider.upstreams.all() else { panic!("one upstream") };
        assert_eq!((u.name.as_str(), u.base_url.as_str(), u.key()), ("default", "http://fake:1/v1", "sk-k"));
        assert!(c.provider.upstreams.serves("any-model"));
    }

    #[test]
    fn a_providers_file_is_read_at_start_and_its_problems_name_the_variable() {
        let dir = std::env::temp_dir().join(format!("chatq-providers-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("providers.toml");
        let file = path.display().to_string();
        std::fs::write(
            &path,
            "[[providers]]\nname = 'a'\nbase_url = 'http://a/v1'\napi_key_env = 'A_KEY'\nmodels = ['m']\n",
        )
        .unwrap();
        let c = from(&[("CHATQ_PROVIDERS_FILE", &file), ("A_KEY", "sk-a")]).unwrap();
        assert_eq!(c.provider.upstreams.all()[0].key(), "sk-a");
        assert!(!c.provider.upstreams.serves("gpt-4o-mini"), "the file replaces the default upstream");
        let err = from(&[("CHATQ_PROVIDERS_FILE", &file)]).unwrap_err().to_string();
        assert!(err.contains("CHATQ_PROVIDERS_FILE") && err.contains("A_KEY, which is not set"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = from(&[("CHATQ_PROVIDERS_FILE", &file)]).unwrap_err().to_string();
        assert!(err.contains(&format!("CHATQ_PROVIDERS_FILE: cannot read {file}")), "{err}");
    }
}
