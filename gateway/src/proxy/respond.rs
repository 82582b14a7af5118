//! Responses the gateway writes itself: JSON bodies and OpenAI-shaped errors.

use super::RequestCtx;
use crate::error::GatewayError;
use crate::pipeline::{Answer, AnswerBody};
use crate::providers::ClientFormat;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
) -> Result<()> {
    with_headers(session, ctx, status, "application/json", body, &[]).await
}

/// A plugin's answer in place of an upstream's.
pub async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer,
) -> std::result::Result<(), GatewayError> {
    let gone = |_| GatewayError::ClientGone;
    let mut stream = match answer.body {
        AnswerBody::Whole(body) => {
            return with_headers(session, ctx, answer.status, answer.content_type, body, &[])
                .await
                .map_err(gone)
        }
        AnswerBody::Stream(stream) => stream,
    };
    let mut resp = ResponseHeader::build(answer.status, Some(4)).map_err(gone)?;
    resp.insert_header("content-type", answer.content_type)
        .map_err(gone)?;
    resp.insert_header("transfer-encoding", "chunked")
        .map_err(gone)?;
    resp.insert_header("x-request-id", &ctx.request_id)
        .map_err(gone)?;
    for (name, value) in &ctx.marks.headers {
        resp.insert_header(*name, value).map_err(gone)?;
    }
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(gone)?;
    ctx.status = answer.status;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                // The answer ends with one error event, as an upstream's broken stream does.
                let event = match ctx.client {
                    ClientFormat::OpenAi => e.sse_event(),
                    ClientFormat::Anthropic => e.anthropic_sse_event(),
                };
                return session
                    .write_response_body(Some(event), true)
                    .await
                    .map_err(gone);
            }
        };
        session
            .write_response_body(Some(chunk), false)
            .await
            .map_err(gone)?;
    }
    session.write_response_body(None, true).await.map_err(gone)
}

async fn with_headers(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", &ctx.request_id)?;
    if ctx.attempts > 0 {
        resp.insert_header("x-tollgate-attempts", ctx.attempts.to_string())?;
    }
    // A refusal's own headers describe the limit that refused; they win over the grant's.
    for (name, value) in ctx.marks.headers.iter().chain(extra) {
        resp.insert_header(*name, value)?;
    }
    // An unread request body would corrupt the next request on this connection.
    if !session.as_downstream_mut().is_body_done() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    ctx.status = status;
    session.write_response_body(Some(body), true).await
}

/// The error in the client's own format.
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, e: &GatewayError) -> Result<()> {
    let body = match ctx.client {
        ClientFormat::OpenAi => e.body(),
        ClientFormat::Anthropic => e.anthropic_body(),
    };
    with_headers(
        session,
        ctx,
        e.status(),
        "application/json",
        body,
        &e.headers(),
    )
    .await
}
