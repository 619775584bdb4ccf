//! The upstreams chat calls go to: OpenAI-compatible servers, each with its base URL, key,
//! timeouts and the models it serves. Without a providers file (`CHATQ_PROVIDERS_FILE`) there
//! is one upstream, `default`, built from `OPENAI_BASE_URL`/`OPENAI_API_KEY` and serving every
//! model. A run's routes are its models (the assistant's `model`, then its `fallback_models`),
//! each on every upstream serving it, in the order of the file.

use std::{collections::HashSet, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The name of the upstream built from `OPENAI_BASE_URL`/`OPENAI_API_KEY`.
pub const DEFAULT_UPSTREAM: &str = "default";

/// One OpenAI-compatible server.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Unique name: labels metrics, names the breaker and is stored on runs and usage records.
    pub name: String,
    /// Base URL including `/v1`, without a trailing slash.
    pub base_url: String,
    /// The key, read from the variable the file names; `None` sends a placeholder key (servers
    /// without authentication still want the header).
    pub api_key: Option<SecretString>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout between two chunks of a stream.
    pub idle_timeout: Duration,
    /// The models it serves; `None` serves every model (the default upstream).
    pub models: Option<Vec<String>>,
}

impl Upstream {
    /// The API key sent; servers like the fake accept any non-empty key.
    pub fn key(&self) -> &str {
        self.api_key.as_ref().map(ExposeSecret::expose_secret).unwrap_or("sk-no-key")
    }

    /// Whether it serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.iter().any(|s| s == model))
    }
}

/// One way to answer: a model on an upstream (an index into [`Upstreams::all`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Model name sent.
    pub model: String,
    /// Index of the upstream in [`Upstreams::all`].
    pub upstream: usize,
}

/// The configured upstreams, in the order of the providers file.
#[derive(Clone, Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
}

/// The providers file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    providers: Vec<ProviderEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    base_url: String,
    api_key_env: Option<String>,
    connect_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    models: Vec<String>,
}

impl Upstreams {
    /// The single upstream of a setup without a providers file.
    pub fn single(default: Upstream) -> Self {
        Self { list: vec![default] }
    }

    /// Parses and checks a providers file. `source` names the file in errors; `lookup` reads
    /// the variables holding the keys; `connect_timeout`/`idle_timeout` apply where the file
    /// sets none. Every problem found is returned, each naming the provider it is about.
    pub fn parse(
        text: &str,
        source: &str,
        lookup: impl Fn(&str) -> Option<String>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, Vec<String>> {
        let file: ProvidersFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(":{}", text[..s.start.min(text.len())].lines().count().max(1)))
                .unwrap_or_default();
            vec![format!("{source}{at}: {}", e.message())]
        })?;
        let mut errors = Vec::new();
        if file.providers.is_empty() {
            errors.push(format!("{source}: no [[providers]]"));
        }
        let mut names = HashSet::new();
        let mut list = Vec::with_capacity(file.providers.len());
        for p in file.providers {
            let at = format!("{source}: provider {:?}", p.name);
            let valid_name = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                errors.push(format!("{at}: name must be 1-64 letters, digits, '-' or '_'"));
            }
            if !names.insert(p.name.clone()) {
                errors.push(format!("{at}: the name is used twice"));
            }
            let base_url = p.base_url.trim_end_matches('/').to_string();
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                errors.push(format!("{at}: base_url must start with http:// or https://"));
            }
            let api_key = match &p.api_key_env {
                None => None,
                Some(var) => match lookup(var).filter(|v| !v.trim().is_empty()) {
                    Some(key) => Some(SecretString::from(key)),
                    None => {
                        errors.push(format!("{at}: api_key_env names {var}, which is not set"));
                        None
                    }
                },
            };
            if p.models.is_empty() {
                errors.push(format!("{at}: models is empty; list the models it serves"));
            }
            if p.models.iter().any(|m| m.trim().is_empty() || m.len() > 200) {
                errors.push(format!("{at}: a model name is empty or longer than 200 characters"));
            }
            for (field, secs) in
                [("connect_timeout_secs", p.connect_timeout_secs), ("idle_timeout_secs", p.idle_timeout_secs)]
            {
                if secs == Some(0) {
                    errors.push(format!("{at}: {field} must be greater than 0"));
                }
            }
            list.push(Upstream {
                name: p.name,
                base_url,
                api_key,
                connect_timeout: p.connect_timeout_secs.map_or(connect_timeout, Duration::from_secs),
                idle_timeout: p.idle_timeout_secs.map_or(idle_timeout, Duration::from_secs),
                models: Some(p.models),
            });
        }
        if errors.is_empty() { Ok(Self { list }) } else { Err(errors) }
    }

    /// Every upstream, in the order of the file.
    pub fn all(&self) -> &[Upstream] {
        &self.list
    }

    /// Whether some upstream serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.list.iter().any(|u| u.serves(model))
    }

    /// The routes of a run trying `models` in order: each model on every upstream serving it,
    /// in the order of the file. A model nobody serves has no route.
    pub fn routes(&self, models: &[String]) -> Vec<Route> {
        let mut routes = Vec::new();
        for model in models {
            for (upstream, u) in self.list.iter().enumerate() {
                let route = Route { model: model.clone(), upstream };
                if u.serves(model) && !routes.contains(&route) {
                    routes.push(route);
                }
            }
        }
        routes
    }

    /// The index of the upstream called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn parse(text: &str) -> Result<Upstreams, Vec<String>> {
        let env = |k: &str| match k {
            "OPENAI_API_KEY" => Some("sk-a".to_string()),
            "VLLM_API_KEY" => Some("sk-b".to_string()),
            _ => None,
        };
        Upstreams::parse(text, "providers.toml", env, 10 * S, 120 * S)
    }

    const TWO: &str = r#"
[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o-mini", "gpt-4o"]

[[providers]]
name = "local"
base_url = "http://vllm:8000/v1"
api_key_env = "VLLM_API_KEY"
idle_timeout_secs = 30
models = ["llama-3.1-8b", "gpt-4o-mini"]
"#;

    #[test]
    fn a_file_with_two_providers_reads_with_keys_from_the_environment_and_default_timeouts() {
        let u = parse(TWO).unwrap();
        let [a, b] = u.all() else { panic!("two upstreams") };
        assert_eq!((a.name.as_str(), a.base_url.as_str(), a.key()), ("openai", "https://api.openai.com/v1", "sk-a"));
        assert_eq!((a.connect_timeout, a.idle_timeout), (10 * S, 120 * S));
        assert_eq!((b.name.as_str(), b.key(), b.idle_timeout), ("local", "sk-b", 30 * S));
        assert!(u.serves("llama-3.1-8b") && !u.serves("claude"));
    }

    #[test]
    fn routes_are_each_model_on_each_upstream_serving_it_in_file_order() {
        let u = parse(TWO).unwrap();
        let routes = u.routes(&["gpt-4o-mini".into(), "claude".into(), "llama-3.1-8b".into()]);
        let got: Vec<(&str, usize)> = routes.iter().map(|r| (r.model.as_str(), r.upstream)).collect();
        assert_eq!(got, [("gpt-4o-mini", 0), ("gpt-4o-mini", 1), ("llama-3.1-8b", 1)]);
        let single = Upstreams::single(Upstream {
            name: DEFAULT_UPSTREAM.into(),
            base_url: "http://x/v1".into(),
            api_key: None,
            connect_timeout: S,
            idle_timeout: S,
            models: None,
        });
        assert_eq!(single.routes(&["anything".into()]).len(), 1, "the default upstream serves every model");
    }

    #[test]
    fn unknown_fields_are_refused_with_the_file_and_line() {
        let err =
            parse("[[providers]]\nname = \"a\"\nbase_url = \"http://a/v1\"\nmodels = [\"m\"]\napi_key = \"sk-oops\"\n")
                .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].starts_with("providers.toml:"), "{err:?}");
        assert!(err[0].contains("unknown field `api_key`"), "{err:?}");
    }

    #[test]
    fn every_problem_is_reported_naming_its_provider() {
        let text = r#"
[[providers]]
name = "a"
base_url = "ftp://a"
api_key_env = "MISSING_KEY"
models = []
[[providers]]
name = "a"
base_url = "http://b/v1"
connect_timeout_secs = 0
models = ["m"]
[[providers]]
name = "bad name"
base_url = "http://c/v1"
models = [""]
"#;
        let err = parse(text).unwrap_err().join("\n");
        for want in [
            "provider \"a\": base_url must start with http:// or https://",
            "provider \"a\": api_key_env names MISSING_KEY, which is not set",
            "provider \"a\": models is empty",
            "provider \"a\": the name is used twice",
            "provider \"a\": connect_timeout_secs must be greater than 0",
            "provider \"bad name\": name must be",
            "provider \"bad name\": a model name is empty",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        assert!(!err.contains("sk-"), "no key in errors");
    }

    #[test]
    fn the_example_file_in_ops_is_valid() {
        let text = include_str!("../../ops/providers.example.toml");
        let u = parse(text).unwrap();
        let names: Vec<&str> = u.all().iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["openai", "local"]);
        assert_eq!(u.all()[1].connect_timeout, 5 * S);
    }

    #[test]
    fn an_empty_list_of_providers_is_refused() {
        let err = parse("providers = []\n").unwrap_err();
        assert!(err[0].contains("no [[providers]]"), "{err:?}");
    }
}
