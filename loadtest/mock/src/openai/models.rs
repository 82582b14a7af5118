//! `GET /v1/models`.

use http::StatusCode;
use serde::Serialize;

use crate::body::{json, MockResponse};
use crate::config::MockConfig;

/// A fixed creation time keeps the listing byte-for-byte stable.
const CREATED: u64 = 1_700_000_000;

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

pub(crate) fn list(cfg: &MockConfig) -> MockResponse {
    let data = cfg
        .models
        .iter()
        .map(|id| Model {
            id,
            object: "model",
            created: CREATED,
            owned_by: "tollgate-mock",
        })
        .collect();
    json(
        StatusCode::OK,
        &ModelList {
            object: "list",
            data,
        },
    )
}
