//! Model providers (spec §4): the registry of built-in and configured providers, model-string
//! parsing, and the usability check applied wherever a model is named.

pub mod anthropic;
pub mod http;
pub mod mock;
pub mod openai;
pub mod sse;
pub mod types;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ProviderConfig, ProviderKind, UpstreamConfig};
use types::ModelClient;

/// Built-in providers: name, kind, default base URL, key variable (`None`: no key needed).
const BUILT_INS: &[(&str, ProviderKind, &str, Option<&str>)] = &[
    (
        "openai",
        ProviderKind::Openai,
        "https://api.openai.com/v1",
        Some("OPENAI_API_KEY"),
    ),
    (
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
        Some("ANTHROPIC_API_KEY"),
    ),
    ("xai", ProviderKind::Openai, "https://api.x.ai/v1", Some("XAI_API_KEY")),
    (
        "groq",
        ProviderKind::Openai,
        "https://api.groq.com/openai/v1",
        Some("GROQ_API_KEY"),
    ),
    (
        "openrouter",
        ProviderKind::Openai,
        "https://openrouter.ai/api/v1",
        Some("OPENROUTER_API_KEY"),
    ),
    (
        "mistral",
        ProviderKind::Openai,
        "https://api.mistral.ai/v1",
        Some("MISTRAL_API_KEY"),
    ),
    (
        "deepseek",
        ProviderKind::Openai,
        "https://api.deepseek.com/v1",
        Some("DEEPSEEK_API_KEY"),
    ),
    (
        "together",
        ProviderKind::Openai,
        "https://api.together.xyz/v1",
        Some("TOGETHER_API_KEY"),
    ),
    (
        "fireworks",
        ProviderKind::Openai,
        "https://api.fireworks.ai/inference/v1",
        Some("FIREWORKS_API_KEY"),
    ),
    (
        "google",
        ProviderKind::Openai,
        "https://generativelanguage.googleapis.com/v1beta/openai",
        Some("GOOGLE_API_KEY"),
    ),
    ("ollama", ProviderKind::Openai, "http://localhost:11434/v1", None),
    ("mock", ProviderKind::Mock, "", None),
];

/// The models of the built-in `mock` provider (spec §4.6).
pub const MOCK_MODELS: &[&str] = &["echo", "slow-echo", "error-500", "error-429", "cut", "tool"];

/// A provider as resolved at start-up. The key is held here only; it is never logged or shown.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<String>,
    /// The variable the key is read from, for error messages (`None`: no key needed).
    pub api_key_env: Option<String>,
    pub enabled: bool,
    /// Models the operator lists for `GET /v1/models` (spec §3.14).
    pub models: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("enabled", &self.enabled)
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Provider>,
}

/// A model string split at its first `:` or `/` (spec §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRef<'a> {
    pub provider: &'a str,
    pub model: &'a str,
}

/// Splits `provider:model` / `provider/model`; `None` when there is no separator.
pub fn split_model(text: &str) -> Option<ModelRef<'_>> {
    let at = text.find([':', '/'])?;
    Some(ModelRef {
        provider: &text[..at],
        model: &text[at + 1..],
    })
}

fn valid_provider_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// `<NAME>` of the `<NAME>_API_KEY` / `<NAME>_BASE_URL` variables.
fn env_stem(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

impl Providers {
    /// Resolves built-ins and `[providers.*]` tables; precedence: environment, table, built-in.
    pub fn from_config(
        tables: &BTreeMap<String, ProviderConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for &(name, kind, base_url, key_env) in BUILT_INS {
            let table = tables.get(name).cloned().unwrap_or_default();
            if table.kind.is_some_and(|k| k != kind) {
                return Err(format!(
                    "providers.{name}: the kind of a built-in provider cannot change"
                ));
            }
            // A built-in that needs no key reaches whatever answers at its address (`ollama` on
            // localhost): it is on only when the operator configures it.
            let keyless_network = key_env.is_none() && kind != ProviderKind::Mock;
            let configured = tables.contains_key(name) || env(&format!("{}_BASE_URL", env_stem(name))).is_some();
            let mut provider = Self::resolve(name, kind, base_url, key_env, &table, env);
            if keyless_network && !configured {
                provider.enabled = false;
            }
            by_name.insert(name.to_string(), provider);
        }
        let built_in = |n: &str| BUILT_INS.iter().any(|b| b.0 == n);
        for (name, table) in tables.iter().filter(|(n, _)| !built_in(n)) {
            if !valid_provider_name(name) {
                return Err(format!(
                    "providers.{name}: names must match ^[a-z0-9][a-z0-9_-]{{0,31}}$"
                ));
            }
            let kind = match table.kind {
                Some(ProviderKind::Mock) | None => {
                    return Err(format!("providers.{name}: kind must be \"openai\" or \"anthropic\""));
                }
                Some(kind) => kind,
            };
            if table.base_url.is_none() && env(&format!("{}_BASE_URL", env_stem(name))).is_none() {
                return Err(format!("providers.{name}: base_url is required"));
            }
            by_name.insert(name.clone(), Self::resolve(name, kind, "", None, table, env));
        }
        Ok(Self { by_name })
    }

    fn resolve(
        name: &str,
        kind: ProviderKind,
        default_base_url: &str,
        default_key_env: Option<&str>,
        table: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Provider {
        let stem = env_stem(name);
        let base_url = env(&format!("{stem}_BASE_URL"))
            .or_else(|| table.base_url.clone())
            .unwrap_or_else(|| default_base_url.to_string());
        let api_key_env = table
            .api_key_env
            .clone()
            .or_else(|| default_key_env.map(str::to_string));
        let api_key = match &api_key_env {
            Some(var) => env(var),
            None => env(&format!("{stem}_API_KEY")),
        }
        .filter(|k| !k.is_empty());
        Provider {
            name: name.to_string(),
            kind,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            api_key_env,
            enabled: table.enabled.unwrap_or(true),
            models: table.models.clone(),
        }
    }

    /// Every usable provider, by name.
    pub fn all_usable(&self) -> impl Iterator<Item = &Provider> {
        self.by_name.values().filter(|p| p.usable())
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.by_name.get(name)
    }

    /// Names of the providers a model may name right now.
    pub fn usable_names(&self) -> Vec<&str> {
        self.all_usable().map(|p| p.name.as_str()).collect()
    }

    /// Checks that `model` is in provider form and names a usable provider (and, for `mock`, a
    /// model it has). The error is a client-facing sentence.
    pub fn check_model<'a>(&'a self, model: &'a str) -> Result<(&'a Provider, ModelRef<'a>), String> {
        let parsed = split_model(model)
            .ok_or_else(|| "must be provider:model or provider/model (for example mock/echo)".to_string())?;
        if !valid_provider_name(parsed.provider) {
            return Err(format!("invalid provider name {:?}", parsed.provider));
        }
        if parsed.model.is_empty() {
            return Err("the model name after the provider is empty".to_string());
        }
        let provider = self.get(parsed.provider).ok_or_else(|| {
            format!(
                "unknown provider {:?}; usable providers: {}",
                parsed.provider,
                self.usable_names().join(", ")
            )
        })?;
        if !provider.enabled && provider.api_key_env.is_none() && provider.kind != ProviderKind::Mock {
            return Err(format!(
                "provider {:?} is off until the operator configures it ([providers.{}] in the configuration)",
                provider.name, provider.name
            ));
        }
        if !provider.enabled {
            return Err(format!("provider {:?} is disabled", provider.name));
        }
        if provider.api_key.is_none()
            && let Some(var) = &provider.api_key_env
        {
            return Err(format!(
                "provider {:?} has no API key configured (set {var})",
                provider.name
            ));
        }
        if provider.kind == ProviderKind::Mock && !MOCK_MODELS.contains(&parsed.model) {
            return Err(format!(
                "unknown mock model {:?}; mock offers {}",
                parsed.model,
                MOCK_MODELS.join(", ")
            ));
        }
        Ok((provider, parsed))
    }
}

/// One client per usable provider, sharing one pooled HTTP client.
#[derive(Clone, Default)]
pub struct Clients {
    by_name: BTreeMap<String, Arc<dyn ModelClient>>,
}

impl Clients {
    pub fn build(providers: &Providers, upstream: &UpstreamConfig) -> Result<Self, String> {
        let http = upstream::Client::new(upstream.connect_timeout)
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut by_name: BTreeMap<String, Arc<dyn ModelClient>> = BTreeMap::new();
        for provider in providers.by_name.values().filter(|p| p.usable()) {
            let client: Arc<dyn ModelClient> = match provider.kind {
                ProviderKind::Mock => Arc::new(mock::MockClient),
                ProviderKind::Openai => Arc::new(openai::OpenAiClient::new(
                    http.clone(),
                    &provider.name,
                    provider.base_url.clone(),
                    provider.api_key.clone(),
                )),
                ProviderKind::Anthropic => Arc::new(anthropic::AnthropicClient::new(
                    http.clone(),
                    provider.base_url.clone(),
                    provider.api_key.clone(),
                )),
            };
            by_name.insert(provider.name.clone(), client);
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, provider: &str) -> Option<Arc<dyn ModelClient>> {
        self.by_name.get(provider).cloned()
    }
}

impl Provider {
    pub fn usable(&self) -> bool {
        self.enabled && (self.api_key.is_some() || self.api_key_env.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn model_strings_split_at_the_first_separator() {
        assert_eq!(
            split_model("ollama:llama3.1:8b"),
            Some(ModelRef {
                provider: "ollama",
                model: "llama3.1:8b"
            })
        );
        assert_eq!(
            split_model("openrouter/meta-llama/llama-3.1-8b-instruct"),
            Some(ModelRef {
                provider: "openrouter",
                model: "meta-llama/llama-3.1-8b-instruct"
            })
        );
        assert_eq!(split_model("writer"), None);
    }

    #[test]
    fn providers_without_keys_are_not_usable() {
        let providers = Providers::from_config(&BTreeMap::new(), &no_env).unwrap();
        assert!(
            providers
                .check_model("openai:gpt-4o")
                .unwrap_err()
                .contains("OPENAI_API_KEY")
        );
        assert!(providers.check_model("mock/echo").is_ok());
        assert!(
            providers.check_model("ollama:llama3.1:8b").is_err(),
            "a keyless network provider is off until configured"
        );
        let mut tables = BTreeMap::new();
        tables.insert("ollama".to_string(), ProviderConfig::default());
        let configured = Providers::from_config(&tables, &no_env).unwrap();
        assert!(configured.check_model("ollama:llama3.1:8b").is_ok());
        assert!(providers.check_model("mock/nope").is_err());
        assert!(
            providers
                .check_model("nope/model")
                .unwrap_err()
                .contains("unknown provider")
        );
        assert!(providers.check_model("Open/x").is_err());
        assert!(providers.check_model("openai:").is_err());
    }

    #[test]
    fn environment_keys_and_urls_win_over_the_table() {
        let env = |name: &str| match name {
            "OPENAI_API_KEY" => Some("sk-upstream".to_string()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1/".to_string()),
            _ => None,
        };
        let mut tables = BTreeMap::new();
        tables.insert(
            "openai".to_string(),
            ProviderConfig {
                base_url: Some("http://table/v1".into()),
                ..Default::default()
            },
        );
        let providers = Providers::from_config(&tables, &env).unwrap();
        let openai = providers.get("openai").unwrap();
        assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
        assert!(providers.check_model("openai:gpt-4o").is_ok());
        assert!(!format!("{openai:?}").contains("sk-upstream"));
    }

    #[test]
    fn custom_providers_need_a_kind_and_a_url() {
        let mut tables = BTreeMap::new();
        tables.insert(
            "my-llm".to_string(),
            ProviderConfig {
                kind: Some(ProviderKind::Openai),
                base_url: Some("http://llm/v1".into()),
                ..Default::default()
            },
        );
        let providers = Providers::from_config(&tables, &no_env).unwrap();
        assert!(providers.check_model("my-llm/any-model").is_ok());
        tables.insert("broken".to_string(), ProviderConfig::default());
        assert!(Providers::from_config(&tables, &no_env).is_err());
    }

    #[test]
    fn mock_can_be_disabled() {
        let mut tables = BTreeMap::new();
        tables.insert(
            "mock".to_string(),
            ProviderConfig {
                enabled: Some(false),
                ..Default::default()
            },
        );
        let providers = Providers::from_config(&tables, &no_env).unwrap();
        assert!(providers.check_model("mock/echo").unwrap_err().contains("disabled"));
    }
}
