//! `POST /v1/embeddings`.

use http::StatusCode;
use serde::Serialize;

use super::request::EmbeddingRequest;
use super::{invalid_json, missing};
use crate::body::{json, MockResponse};
use crate::config::MockConfig;
use crate::state::{ReportedUsage, Shared};
use crate::stream::answer_delay;
use crate::text::{embedding, embedding_base64};

pub(crate) async fn handle(
    shared: &Shared,
    cfg: &MockConfig,
    body: &[u8],
    deployment: Option<String>,
) -> MockResponse {
    let req: EmbeddingRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid_json(&e),
    };
    // Azure paths name the model by their deployment.
    let Some(model) = req.model.or(deployment) else {
        return missing("model");
    };
    let Some(input) = req.input else {
        return missing("input");
    };
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let data = input
        .items()
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let v = embedding(&item.content());
            Embedding {
                object: "embedding",
                embedding: if base64 {
                    Vector::Base64(embedding_base64(&v))
                } else {
                    Vector::Floats(v.to_vec())
                },
                index,
            }
        })
        .collect();
    let prompt_tokens = input.tokens();
    answer_delay(cfg).await;
    shared.stats.report_usage(ReportedUsage {
        input: prompt_tokens,
        output: 0,
    });
    json(
        StatusCode::OK,
        &EmbeddingList {
            object: "list",
            data,
            model: &model,
            usage: EmbeddingUsage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        },
    )
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    embedding: Vector,
    index: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}
