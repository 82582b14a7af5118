//! OpenAI-compatible providers (openai, azure-openai, vllm, ollama): the body is already in
//! their format, so the adapter only decides the path and the credential headers.

use super::{Operation, Provider, ProviderKind};
use crate::upstream::Endpoint;
use pingora::http::RequestHeader;
use pingora::Result;

const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// The upstream request header for one attempt. `body_len` is the exact body that follows.
pub fn request_header(
    provider: &Provider,
    endpoint: &Endpoint,
    op: Operation,
    upstream_model: &str,
    body_len: usize,
) -> Result<RequestHeader> {
    let path = upstream_path(provider, endpoint, op, upstream_model);
    let mut req = super::json_post(endpoint, &path, body_len)?;
    super::insert_credential(&mut req, provider)?;
    Ok(req)
}

fn upstream_path(
    provider: &Provider,
    endpoint: &Endpoint,
    op: Operation,
    upstream_model: &str,
) -> String {
    let suffix = match op {
        // A Messages request reaches an OpenAI-style provider translated into chat.
        Operation::ChatCompletions | Operation::Messages => "chat/completions",
        Operation::Completions => "completions",
        Operation::Embeddings => "embeddings",
    };
    match provider.kind {
        ProviderKind::AzureOpenai => format!(
            "{}/openai/deployments/{}/{suffix}?api-version={}",
            endpoint.prefix,
            super::path_segment(upstream_model),
            provider
                .api_version
                .as_deref()
                .unwrap_or(AZURE_DEFAULT_API_VERSION)
        ),
        _ => format!("{}/v1/{suffix}", endpoint.prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fixtures::{self, header};
    use std::sync::Arc;

    fn provider(kind: ProviderKind, base: &str) -> (Provider, Arc<Endpoint>) {
        fixtures::provider(kind, base, Some("sk-up"))
    }

    #[test]
    fn openai_paths_and_bearer() {
        let (p, e) = provider(ProviderKind::Openai, "https://api.openai.com");
        let req = request_header(&p, &e, Operation::ChatCompletions, "gpt-4o", 42).unwrap();
        assert_eq!(req.uri.path(), "/v1/chat/completions");
        assert_eq!(header(&req, "authorization").unwrap(), "Bearer sk-up");
        assert_eq!(header(&req, "host").unwrap(), "api.openai.com");
        assert_eq!(header(&req, "content-length").unwrap(), "42");

        let (p, e) = provider(ProviderKind::Vllm, "http://10.0.0.5:8000/gpu");
        let req = request_header(&p, &e, Operation::Embeddings, "m", 1).unwrap();
        assert_eq!(req.uri.path(), "/gpu/v1/embeddings");
        assert_eq!(header(&req, "host").unwrap(), "10.0.0.5:8000");
    }

    #[test]
    fn azure_deployment_path_and_api_key_header() {
        let (p, e) = provider(ProviderKind::AzureOpenai, "https://x.openai.azure.com");
        let req = request_header(&p, &e, Operation::ChatCompletions, "gpt 4o", 1).unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/openai/deployments/gpt%204o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(header(&req, "api-key").unwrap(), "sk-up");
        assert!(header(&req, "authorization").is_none());
    }
}
