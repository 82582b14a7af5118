//! Facts about upstream models: context window, tokenizer, prices. Built-in defaults for
//! well-known models, overridden or extended by the config's `catalog:`.

use std::collections::HashMap;

/// The tiktoken encoding that counts a model's tokens (an estimate for non-OpenAI models).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    O200k,
    Cl100k,
}

impl Tokenizer {
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::O200k => "o200k_base",
            Tokenizer::Cl100k => "cl100k_base",
        }
    }

    pub fn parse(text: &str) -> Option<Tokenizer> {
        [Tokenizer::O200k, Tokenizer::Cl100k]
            .into_iter()
            .find(|t| t.name() == text)
    }
}

/// USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prices {
    pub input: f64,
    pub cached_input: Option<f64>,
    pub output: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelFacts {
    pub context_window: Option<u64>,
    pub tokenizer: Tokenizer,
    pub prices: Option<Prices>,
}

pub struct Catalog {
    entries: HashMap<String, ModelFacts>,
}

/// (model, context window, tokenizer, input, cached input, output): public list prices at the
/// time of writing; override them in config when they change.
type HostedModel = (&'static str, u64, Tokenizer, f64, Option<f64>, f64);

const DEFAULTS: &[HostedModel] = &[
    ("gpt-4o", 128_000, Tokenizer::O200k, 2.50, Some(1.25), 10.00),
    (
        "gpt-4o-mini",
        128_000,
        Tokenizer::O200k,
        0.15,
        Some(0.075),
        0.60,
    ),
    (
        "gpt-4.1",
        1_047_576,
        Tokenizer::O200k,
        2.00,
        Some(0.50),
        8.00,
    ),
    (
        "gpt-4.1-mini",
        1_047_576,
        Tokenizer::O200k,
        0.40,
        Some(0.10),
        1.60,
    ),
    (
        "text-embedding-3-small",
        8_191,
        Tokenizer::Cl100k,
        0.02,
        None,
        0.0,
    ),
    (
        "text-embedding-3-large",
        8_191,
        Tokenizer::Cl100k,
        0.13,
        None,
        0.0,
    ),
    (
        "claude-sonnet-4-5",
        200_000,
        Tokenizer::Cl100k,
        3.00,
        Some(0.30),
        15.00,
    ),
    (
        "claude-sonnet-4",
        200_000,
        Tokenizer::Cl100k,
        3.00,
        Some(0.30),
        15.00,
    ),
    (
        "claude-3-5-haiku",
        200_000,
        Tokenizer::Cl100k,
        0.80,
        Some(0.08),
        4.00,
    ),
    (
        "gemini-2.5-pro",
        1_048_576,
        Tokenizer::Cl100k,
        1.25,
        None,
        10.00,
    ),
    (
        "gemini-2.5-flash",
        1_048_576,
        Tokenizer::Cl100k,
        0.30,
        None,
        2.50,
    ),
];

/// Self-hosted models: windows only, the GPUs are paid for anyway.
const OPEN_MODELS: &[(&str, u64)] = &[
    ("meta-llama/Llama-3.1-8B-Instruct", 131_072),
    ("meta-llama/Llama-3.1-70B-Instruct", 131_072),
    ("meta-llama/Llama-3.3-70B-Instruct", 131_072),
];

impl Default for Catalog {
    fn default() -> Self {
        let mut entries = HashMap::new();
        for &(name, window, tokenizer, input, cached_input, output) in DEFAULTS {
            entries.insert(
                name.to_string(),
                ModelFacts {
                    context_window: Some(window),
                    tokenizer,
                    prices: Some(Prices {
                        input,
                        cached_input,
                        output,
                    }),
                },
            );
        }
        for &(name, window) in OPEN_MODELS {
            entries.insert(
                name.to_string(),
                ModelFacts {
                    context_window: Some(window),
                    tokenizer: Tokenizer::Cl100k,
                    prices: None,
                },
            );
        }
        Catalog { entries }
    }
}

impl Catalog {
    /// The entry for `model`, else for its longest known prefix (`gpt-4o-2024-08-06` →
    /// `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<&ModelFacts> {
        self.entries.get(model).or_else(|| {
            self.entries
                .iter()
                .filter(|(name, _)| model.starts_with(name.as_str()))
                .max_by_key(|(name, _)| name.len())
                .map(|(_, facts)| facts)
        })
    }

    pub fn insert(&mut self, model: String, facts: ModelFacts) {
        self.entries.insert(model, facts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_longest_prefix() {
        let c = Catalog::default();
        assert_eq!(c.get("gpt-4o").unwrap().context_window, Some(128_000));
        let dated = c.get("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(dated.prices.unwrap().input, 0.15, "gpt-4o-mini, not gpt-4o");
        assert!(c.get("my-own-model").is_none());
        assert_eq!(Tokenizer::parse("o200k_base"), Some(Tokenizer::O200k));
    }
}
