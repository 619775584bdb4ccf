//! The chat upstreams as a worker uses them: each with its own client and circuit breaker, in
//! the order of the providers file. A run's routes (its models, each on the upstreams serving
//! it) index into this list.

use chatq_common::{
    config::Config,
    db::runs::Run,
    provider::Provider,
    upstreams::{Route, Upstreams},
};

use crate::breaker::Breaker;

/// One chat upstream.
pub struct ChatUpstream {
    /// Its name: the `upstream` label of metrics, its breaker's Redis key, and what runs and
    /// usage records store.
    pub name: String,
    /// Its client, with its own timeouts and key.
    pub provider: Provider,
    /// Its circuit breaker, shared by every run of this process.
    pub breaker: Breaker,
}

/// Every chat upstream of the configuration.
pub struct ChatUpstreams {
    config: Upstreams,
    list: Vec<ChatUpstream>,
}

impl ChatUpstreams {
    /// A client and a closed breaker per configured upstream.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let p = &config.provider;
        let list = p
            .upstreams
            .all()
            .iter()
            .map(|u| {
                Ok(ChatUpstream {
                    name: u.name.clone(),
                    provider: Provider::for_upstream(u)?,
                    breaker: Breaker::new(p.breaker_failures, p.breaker_cooldown),
                })
            })
            .collect::<Result<_, reqwest::Error>>()?;
        Ok(Self { config: p.upstreams.clone(), list })
    }

    /// Every upstream, in the order of the providers file.
    pub fn all(&self) -> &[ChatUpstream] {
        &self.list
    }

    /// The upstream at `index` of [`ChatUpstreams::all`] (a [`Route::upstream`]).
    pub fn get(&self, index: usize) -> &ChatUpstream {
        &self.list[index]
    }

    /// The upstream called `name`.
    pub fn by_name(&self, name: &str) -> Option<&ChatUpstream> {
        self.list.iter().find(|u| u.name == name)
    }

    /// The routes of `run`: its models in order (the model it was submitted with when it
    /// predates fallbacks), each on every upstream serving it.
    pub fn routes(&self, run: &Run) -> Vec<Route> {
        if run.models.is_empty() {
            self.config.routes(std::slice::from_ref(&run.model))
        } else {
            self.config.routes(&run.models)
        }
    }
}
