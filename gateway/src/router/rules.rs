//! Per-model rules: "short prompts to the small model, code to the strong one". The first rule
//! whose conditions all hold limits the request to that rule's targets.

use crate::catalog::Tokenizer;
use crate::tokens::PromptSize;
use http::HeaderMap;
use regex::Regex;

pub struct Rule {
    pub prompt_tokens_below: Option<u64>,
    pub prompt_tokens_above: Option<u64>,
    /// Lower-case header names with the values they must have.
    pub headers: Vec<(String, String)>,
    pub last_user_matches: Option<Regex>,
    /// Per target of the model: does this rule send traffic there?
    pub targets: Vec<bool>,
}

impl Rule {
    /// Whether the prompt is needed to evaluate this rule.
    pub fn needs_prompt(&self) -> bool {
        self.prompt_tokens_below.is_some()
            || self.prompt_tokens_above.is_some()
            || self.last_user_matches.is_some()
    }

    /// All conditions hold. Token thresholds use the byte bound when it settles them, and an
    /// exact count only when it does not.
    pub fn matches(
        &self,
        headers: &HeaderMap,
        prompt: Option<&PromptSize>,
        tokenizer: Tokenizer,
    ) -> bool {
        let headers_hold = self.headers.iter().all(|(name, value)| {
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == value)
        });
        if !headers_hold {
            return false;
        }
        if !self.needs_prompt() {
            return true;
        }
        let Some(prompt) = prompt else {
            return false;
        };
        if let Some(below) = self.prompt_tokens_below {
            if prompt.bound() >= below && prompt.exact(tokenizer) >= below {
                return false;
            }
        }
        if let Some(above) = self.prompt_tokens_above {
            if prompt.bound() <= above || prompt.exact(tokenizer) <= above {
                return false;
            }
        }
        match &self.last_user_matches {
            Some(re) => prompt.last_user().is_some_and(|text| re.is_match(text)),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            prompt_tokens_below: None,
            prompt_tokens_above: None,
            headers: Vec::new(),
            last_user_matches: None,
            targets: vec![true, false],
        }
    }

    fn prompt(text: &str) -> PromptSize {
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "earlier question about code"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": text},
        ]});
        PromptSize::from_body(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn token_thresholds() {
        let short = prompt("hi");
        let long = prompt(&"word ".repeat(2000));
        let t = Tokenizer::O200k;
        let below = Rule {
            prompt_tokens_below: Some(500),
            ..rule()
        };
        assert!(below.matches(&HeaderMap::new(), Some(&short), t));
        assert!(!below.matches(&HeaderMap::new(), Some(&long), t));
        let above = Rule {
            prompt_tokens_above: Some(500),
            ..rule()
        };
        assert!(!above.matches(&HeaderMap::new(), Some(&short), t));
        assert!(above.matches(&HeaderMap::new(), Some(&long), t));
    }

    #[test]
    fn headers_and_last_user_message() {
        let t = Tokenizer::O200k;
        let mut headers = HeaderMap::new();
        headers.insert("x-tier", "premium".parse().unwrap());
        let tier = Rule {
            headers: vec![("x-tier".into(), "premium".into())],
            ..rule()
        };
        assert!(tier.matches(&headers, None, t));
        assert!(!tier.matches(&HeaderMap::new(), None, t));
        let code = Rule {
            last_user_matches: Some(Regex::new(r"(?i)\b(rust|python)\b").unwrap()),
            ..rule()
        };
        assert!(code.matches(&HeaderMap::new(), Some(&prompt("Write Rust please")), t));
        assert!(
            !code.matches(&HeaderMap::new(), Some(&prompt("tell a joke")), t),
            "only the last user turn counts"
        );
    }
}
