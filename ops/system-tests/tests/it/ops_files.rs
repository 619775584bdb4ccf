//! The deployment files, checked without a Docker engine: `docker-compose.yml`,
//! `ops/Dockerfile`, `ops/prometheus.yml`, the alert rules and the Grafana provisioning and
//! dashboard.

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    let mut v: Yaml = serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    v.apply_merge().unwrap();
    v
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The secrets `docker-compose.yml` requires.
const COMPOSE_SECRETS: [&str; 4] =
    ["CHATQ_TOKEN_SECRET", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"];

/// Every metric family name either process registers.
pub(crate) fn exported_names() -> HashSet<String> {
    let api = chatq_api::metrics::Metrics::new();
    let worker = chatq_worker::metrics::Metrics::new();
    api.names.into_iter().chain(worker.names).collect()
}

/// The binaries the Dockerfile builds and installs into the runtime image.
fn image_binaries() -> BTreeSet<String> {
    let dockerfile = read("ops/Dockerfile");
    let build = dockerfile.lines().find(|l| l.contains("cargo build")).expect("the Dockerfile runs cargo build");
    assert!(build.contains("--release") && build.contains("--locked"), "{build}");
    let built: BTreeSet<String> = build
        .split_whitespace()
        .skip_while(|w| *w != "-p")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|c| c[0] == "-p")
        .map(|c| c[1].to_string())
        .collect();
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("the runtime stage copies the binaries");
    let installed: BTreeSet<String> =
        copy.split_whitespace().filter_map(|w| w.strip_prefix("/out/")).map(String::from).collect();
    assert!(copy.trim_end().ends_with("/usr/local/bin/"), "{copy}");
    assert_eq!(built, installed, "every binary built is installed, and only those");
    assert!(dockerfile.contains("FROM debian:bookworm-slim") && dockerfile.contains("ca-certificates"));
    // Each is a [[bin]] of a workspace crate.
    for bin in &installed {
        let found = ["api", "worker", "ops/fake-openai"]
            .iter()
            .any(|c| read(&format!("{c}/Cargo.toml")).contains(&format!("[[bin]]\nname = \"{bin}\"")));
        assert!(found, "{bin} is not a binary of the workspace");
    }
    installed
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[test]
fn the_compose_file_runs_every_service_from_images_and_binaries_that_exist() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["postgres", "redis", "migrate", "api", "worker", "fake-openai", "prometheus", "grafana"])
    );
    let binaries = image_binaries();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert!(svc["image"].is_string() || svc["build"].is_mapping(), "{name} has neither an image nor a build");
        if let Some(build) = svc["build"].as_mapping() {
            let dockerfile = build.get("dockerfile").and_then(|d| d.as_str()).unwrap();
            let context = build.get("context").and_then(|d| d.as_str()).unwrap();
            assert!(root().join(context).join(dockerfile).is_file(), "{name}: {dockerfile} missing");
            let command = strings(&svc["command"]);
            assert!(binaries.contains(&command[0]), "{name} runs {:?}, which the image does not install", command[0]);
        }
        for volume in strings(&svc["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(root().join(source).exists(), "{name} mounts {source}, which does not exist");
            } else {
                assert!(compose["volumes"].get(source).is_some(), "{name} uses undeclared volume {source}");
            }
        }
        for dependency in svc["depends_on"].as_mapping().map(|m| m.keys().collect::<Vec<_>>()).unwrap_or_default() {
            assert!(services.contains_key(dependency), "{name} depends on unknown {dependency:?}");
        }
    }
    let s = |n: &str| &compose["services"][n];
    assert_eq!(strings(&s("migrate")["command"]), ["chatq-api", "migrate"]);
    assert_eq!(s("migrate")["depends_on"]["postgres"]["condition"], "service_healthy");
    for svc in ["api", "worker"] {
        assert_eq!(s(svc)["depends_on"]["migrate"]["condition"], "service_completed_successfully", "{svc}");
        assert_eq!(s(svc)["depends_on"]["redis"]["condition"], "service_healthy", "{svc}");
    }
    for svc in ["postgres", "redis", "api", "worker", "fake-openai"] {
        assert!(s(svc)["healthcheck"]["test"].is_sequence(), "{svc} has no health check");
    }
    assert_eq!(s("api")["depends_on"]["migrate"]["condition"], "service_completed_successfully");
    let redis = strings(&s("redis")["command"]).join(" ");
    assert!(redis.contains("--appendonly yes"), "Redis persistence (AOF) is on: {redis}");
    // The API listens on the port the compose file publishes; Prometheus scrapes its metrics
    // listener.
    let env = &s("api")["environment"];
    let api_port = port_of(env["CHATQ_LISTEN"].as_str().unwrap());
    let metrics_port = port_of(env["CHATQ_METRICS_LISTEN"].as_str().unwrap());
    let worker_port = port_of(env["CHATQ_WORKER_LISTEN"].as_str().unwrap());
    assert!(strings(&s("api")["ports"]).iter().any(|p| p.ends_with(&format!(":{api_port}"))));
    assert!(strings(&s("prometheus")["ports"]).iter().any(|p| p.ends_with(":9090")));
    assert!(strings(&s("grafana")["ports"]).iter().any(|p| p.ends_with(":3000")));
    // Without a key the worker talks to the fake, on the port the fake listens on.
    let fake_port = port_of(s("fake-openai")["environment"]["FAKE_OPENAI_LISTEN"].as_str().unwrap());
    assert!(env["OPENAI_BASE_URL"].as_str().unwrap().contains(&format!("fake-openai:{fake_port}/v1")));
    let config_vars = read("common/src/config.rs");
    for var in env.as_mapping().unwrap().keys().filter_map(|k| k.as_str()) {
        assert!(
            config_vars.contains(&format!("\"{var}\"")) || var == "RUST_LOG" || var == "LOG_FORMAT",
            "{var} is not a chatq setting"
        );
    }

    let prometheus = yaml("ops/prometheus.yml");
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|c| c["static_configs"].as_sequence().unwrap().iter().flat_map(|s| strings(&s["targets"])))
        .collect();
    assert_eq!(targets, BTreeSet::from([format!("api:{metrics_port}"), format!("worker:{worker_port}")]));
}

/// The `${NAME…}` references in `text`, each with what follows the name (`:?message}`,
/// `:-default}`, `}`).
fn references(text: &str) -> Vec<(String, String)> {
    text.split("${")
        .skip(1)
        .map(|rest| {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let close = rest.find('}').map_or(rest.len(), |i| i + 1);
            (rest[..end].to_string(), rest[end..close].to_string())
        })
        .collect()
}

#[test]
fn the_compose_file_has_no_default_secret_uses_passwords_and_publishes_only_the_api() {
    let text = read("docker-compose.yml");
    let compose = yaml("docker-compose.yml");
    let s = |n: &str| &compose["services"][n];
    // Every secret is required: `${NAME:?message}`, never a default a stranger can read here.
    let refs = references(&text);
    for secret in COMPOSE_SECRETS {
        let uses: Vec<&String> = refs.iter().filter(|(n, _)| n == secret).map(|(_, rest)| rest).collect();
        assert!(!uses.is_empty(), "{secret} is not used");
        for rest in uses {
            assert!(rest.starts_with(":?") && rest.len() > 3, "${{{secret}{rest} must be required with a message");
        }
    }
    for (name, rest) in &refs {
        let secret_like = ["SECRET", "PASSWORD", "TOKEN"].iter().any(|w| name.contains(w));
        assert!(!(secret_like && rest.starts_with(":-")), "${{{name}{rest} has a default");
    }
    assert!(!text.to_lowercase().contains("change-me") && !text.contains("trust"), "{text}");
    let env = &s("api")["environment"];
    for svc in ["api", "worker", "migrate"] {
        assert_eq!(&s(svc)["environment"], env, "{svc} shares the chatq environment");
    }
    let database_url = env["DATABASE_URL"].as_str().unwrap();
    assert!(database_url.starts_with("postgres://postgres:${POSTGRES_PASSWORD:?"), "{database_url}");
    let redis_url = env["REDIS_URL"].as_str().unwrap();
    assert!(redis_url.starts_with("redis://:${REDIS_PASSWORD:?") && redis_url.ends_with("@redis:6379"));

    // Postgres: password auth over TCP, from the first start of the volume.
    let pg = &s("postgres")["environment"];
    assert_eq!(pg["POSTGRES_HOST_AUTH_METHOD"], "scram-sha-256");
    assert_eq!(pg["POSTGRES_INITDB_ARGS"], "--auth=scram-sha-256");
    assert!(pg["POSTGRES_PASSWORD"].as_str().unwrap().starts_with("${POSTGRES_PASSWORD:?"));
    // Redis: requirepass, and a health check that authenticates without arguments.
    let redis = strings(&s("redis")["command"]);
    let at = redis.iter().position(|a| a == "--requirepass").expect("redis-server --requirepass");
    assert!(redis[at + 1].starts_with("${REDIS_PASSWORD:?"), "{redis:?}");
    assert!(s("redis")["environment"]["REDISCLI_AUTH"].as_str().unwrap().starts_with("${REDIS_PASSWORD:?"));
    // Grafana: sign-in required.
    let grafana = &s("grafana")["environment"];
    assert_eq!(grafana["GF_AUTH_ANONYMOUS_ENABLED"], "false");
    assert!(grafana.get("GF_AUTH_ANONYMOUS_ORG_ROLE").is_none());
    assert!(grafana["GF_SECURITY_ADMIN_PASSWORD"].as_str().unwrap().starts_with("${GRAFANA_ADMIN_PASSWORD:?"));

    // Only the API is published beyond this machine; the metrics listener is not published.
    let metrics_port = port_of(env["CHATQ_METRICS_LISTEN"].as_str().unwrap());
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        for port in strings(&svc["ports"]) {
            if name == "api" {
                assert!(!port.ends_with(&format!(":{metrics_port}")), "the API's metrics port is published");
            } else {
                assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port} on every interface");
            }
        }
    }
    for svc in ["postgres", "redis", "prometheus", "grafana"] {
        assert!(!strings(&s(svc)["ports"]).is_empty(), "{svc} keeps a loopback port for operators");
    }
}

#[test]
fn docker_compose_config_refuses_to_run_without_each_secret_and_accepts_them_set() {
    let available = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        println!("skipped: the docker compose CLI plugin is not installed (the YAML checks above still run)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("chatq-compose-config-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // An empty env file, so a developer's .env next to the compose file does not count.
    let empty = dir.join("empty.env");
    std::fs::write(&empty, "").unwrap();
    let config = |set: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new("docker");
        cmd.args(["compose", "-f"]).arg(root().join("docker-compose.yml")).arg("--env-file").arg(&empty);
        cmd.arg("config");
        for name in COMPOSE_SECRETS {
            cmd.env_remove(name);
        }
        cmd.envs(set.iter().copied());
        cmd.output().unwrap()
    };
    let values: Vec<(&str, String)> =
        COMPOSE_SECRETS.iter().map(|n| (*n, format!("{:x}", uuid::Uuid::now_v7().as_u128()))).collect();
    let all: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let out = config(&all);
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rendered.contains(&format!("redis://:{}@redis:6379", values[2].1)), "{rendered}");
    for missing in COMPOSE_SECRETS {
        let rest: Vec<(&str, &str)> = all.iter().copied().filter(|(n, _)| *n != missing).collect();
        let out = config(&rest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "compose accepted a missing {missing}");
        assert!(stderr.contains(missing), "the refusal names {missing}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `(alert name, expression)` of every rule in `ops/prometheus-alerts.yml`.
fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("ops/prometheus-alerts.yml");
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r["expr"].as_str().unwrap().to_string()))
        .collect()
}

/// Every `chatq_*` metric family the dashboard's panels and the alert rules query, each with
/// the first panel or alert that uses it.
pub(crate) fn queried_metrics() -> Vec<(String, String)> {
    let exported = exported_names();
    let dashboard: Json = serde_json::from_str(&read("ops/grafana/dashboards/chatq.json")).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((format!("panel {}", panel["title"]), target["expr"].as_str().unwrap().to_string()));
        }
    }
    queries.extend(alert_rules().into_iter().map(|(alert, expr)| (format!("alert {alert}"), expr)));
    let mut out: Vec<(String, String)> = Vec::new();
    for (user, expr) in queries {
        for name in metric_names(&expr, &exported) {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, user.clone()));
            }
        }
    }
    out
}

#[test]
fn the_compose_prometheus_loads_alert_rules_that_query_exported_metrics_and_are_unit_tested() {
    let exported = exported_names();
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(alert, _)| alert.as_str()).collect();
    for wanted in [
        "ChatqRunFailureRateHigh",
        "ChatqProviderBreakerOpen",
        "ChatqChatQueueSlow",
        "ChatqReconcilerRecoveries",
        "ChatqCostSpike",
        "ChatqWebhookBacklog",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}: {names:?}");
    }
    for (alert, expr) in &rules {
        for name in metric_names(expr, &exported) {
            assert!(exported.contains(&name), "alert {alert} uses {name}, which no process exports");
        }
    }
    // Loaded: rule_files is relative to the config, and compose mounts both side by side.
    let prometheus = yaml("ops/prometheus.yml");
    assert_eq!(strings(&prometheus["rule_files"]), ["prometheus-alerts.yml"]);
    let compose = yaml("docker-compose.yml");
    let volumes = strings(&compose["services"]["prometheus"]["volumes"]);
    for (file, mounted) in [
        ("./ops/prometheus.yml", "/etc/prometheus/prometheus.yml"),
        ("./ops/prometheus-alerts.yml", "/etc/prometheus/prometheus-alerts.yml"),
    ] {
        assert!(volumes.contains(&format!("{file}:{mounted}:ro")), "{file} is not mounted: {volumes:?}");
    }
    assert!(
        compose["services"]["prometheus"]["command"][0].as_str().unwrap().ends_with("/etc/prometheus/prometheus.yml")
    );
    // Every alert has promtool unit tests, and ./ops/test runs them.
    let tests = yaml("ops/prometheus-alerts_test.yml");
    assert_eq!(strings(&tests["rule_files"]), ["prometheus-alerts.yml"]);
    let tested: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap().iter())
        .filter_map(|a| a["alertname"].as_str().map(String::from))
        .collect();
    for alert in &names {
        assert!(tested.contains(*alert), "ops/prometheus-alerts_test.yml has no test of {alert}");
    }
    let ops_test = read("ops/test");
    assert!(ops_test.contains("promtool test rules ops/prometheus-alerts_test.yml"));
    assert!(ops_test.contains("promtool check rules ops/prometheus-alerts.yml"));
}

/// `chatq_*` names in a PromQL expression, with histogram suffixes mapped to their family.
fn metric_names(expr: &str, exported: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("chatq_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
            .unwrap_or(name);
        out.push(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_metric_the_dashboard_uses_is_exported_by_the_api_or_the_worker() {
    let exported = exported_names();
    assert!(exported.len() > 15, "{exported:?}");
    let dashboard: Json = serde_json::from_str(&read("ops/grafana/dashboards/chatq.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut used = 0;
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr, &exported);
            assert!(!names.is_empty(), "panel {:?} queries no chatq metric: {expr}", panel["title"]);
            for name in names {
                assert!(exported.contains(&name), "panel {:?} uses {name}, which no process exports", panel["title"]);
                used += 1;
            }
            assert_eq!(target["datasource"]["uid"], "prometheus");
        }
    }
    assert!(used > 10);
    let titles: Vec<String> = panels.iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    for wanted in [
        "cost per day by model",
        "cost per assistant per day",
        "failure rate",
        "time to first token",
        "throughput",
        "queue depth",
        "ingestion",
    ] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no panel for {wanted}");
    }
    let datasource = yaml("ops/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["uid"], "prometheus");
    assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
    let provider = yaml("ops/grafana/provisioning/dashboards/chatq.yml");
    assert_eq!(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards");
}

#[test]
fn the_readme_metrics_table_lists_every_exported_metric() {
    let readme = read("README.md");
    for name in exported_names() {
        assert!(readme.contains(&format!("| `{name}` |")), "README's metrics table misses {name}");
    }
}

/// The README's text from `heading` to the next heading of the same level.
fn readme_section(readme: &str, heading: &str) -> String {
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading}"));
    let level = heading.split(' ').next().unwrap();
    let body = &readme[start + heading.len() + 2..];
    let end = body.find(&format!("\n{level} ")).unwrap_or(body.len());
    body[..end].to_string()
}

#[test]
fn the_readme_threat_model_covers_every_published_port_and_how_to_rotate_every_secret() {
    let readme = read("README.md");
    let security = readme_section(&readme, "## Security");
    let compose = yaml("docker-compose.yml");
    let row = |port: &str| {
        security
            .lines()
            .find(|l| l.starts_with(&format!("| {port} |")))
            .unwrap_or_else(|| panic!("the Security port table has no row for {port}"))
            .to_string()
    };
    // Each published port, bound as the compose file binds it.
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        for mapping in strings(&svc["ports"]) {
            let port = port_of(&mapping);
            let bind = if mapping.starts_with("127.0.0.1:") { "| 127.0.0.1 |" } else { "| every interface |" };
            assert!(row(port).contains(bind), "{name:?} {mapping}: {}", row(port));
        }
    }
    let metrics_port = port_of(compose["services"]["api"]["environment"]["CHATQ_METRICS_LISTEN"].as_str().unwrap());
    assert!(row(metrics_port).contains("not published"), "{}", row(metrics_port));
    // Who holds each credential, and how each secret is changed.
    let holders = readme_section(&security, "### Who holds which credential");
    let rotating = readme_section(&security, "### Rotating secrets");
    for secret in COMPOSE_SECRETS.iter().chain(&["OPENAI_API_KEY", "CHATQ_TOKEN_SECRET_PREVIOUS"]) {
        assert!(holders.contains(&format!("`{secret}`")), "who holds {secret}?");
        assert!(rotating.contains(secret), "how is {secret} rotated?");
    }
    for credential in ["admin key", "client key", "user token"] {
        assert!(holders.contains(&format!("| {credential} (")), "who holds the {credential}?");
    }
    assert!(rotating.contains("chatq-api keys rotate") && rotating.contains("chatq-api keys revoke"));
    assert!(security.contains("### What this does not cover"));
}

#[test]
fn ops_dev_writes_random_compose_secrets_that_chatq_accepts_and_keeps_them() {
    let dir = std::env::temp_dir().join(format!("chatq-compose-env-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = COMPOSE_SECRETS;
    let write = |file: &Path| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(root().join("ops/dev")).arg("--compose-env").arg(file);
        for name in secrets {
            cmd.env_remove(name);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(file).unwrap()
    };
    let values = |text: &str| -> Vec<String> {
        secrets
            .iter()
            .map(|name| {
                let line =
                    text.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap_or_else(|| panic!("{name}"));
                line.split_once('=').unwrap().1.to_string()
            })
            .collect()
    };
    let (first, second) = (dir.join("a.env"), dir.join("b.env"));
    // An existing value is kept (the volumes remember it); the others are added.
    std::fs::write(&first, "OPENAI_API_KEY=sk-mine\nPOSTGRES_PASSWORD=0a1b2c3d4e5f60718293a4b5c6d7e8f9").unwrap();
    let a = values(&write(&first));
    let b = values(&write(&second));
    assert_eq!(a[1], "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    assert!(std::fs::read_to_string(&first).unwrap().starts_with("OPENAI_API_KEY=sk-mine\n"));
    for (i, value) in b.iter().enumerate() {
        assert!(value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()), "{value}");
        assert_eq!(chatq_common::config::weak_secret(value), None, "{value}");
        if i != 1 {
            assert_ne!(value, &a[i], "every file gets its own random values");
        }
    }
    assert_eq!(b.iter().collect::<BTreeSet<_>>().len(), 4);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&second).unwrap().permissions().mode() & 0o777, 0o600);
    // A second run changes nothing.
    let before = std::fs::read_to_string(&second).unwrap();
    assert_eq!(write(&second), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
