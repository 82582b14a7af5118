//! Response bodies: whole buffers, and event streams fed by a producer task.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use serde::Serialize;
use tokio::sync::mpsc;

pub(crate) type MockBody = Either<Full<Bytes>, EventBody>;
pub(crate) type MockResponse = Response<MockBody>;

/// What a stream producer sends to its response body.
pub(crate) enum Event {
    /// One chunk, written as its own HTTP chunk.
    Data(Bytes),
    /// Kill the connection without finishing the response.
    Abort,
}

/// A streaming body; dropping it (the client went away) closes the channel,
/// which is how the producer notices cancellation.
pub(crate) struct EventBody {
    rx: mpsc::Receiver<Event>,
    aborting: bool,
}

impl EventBody {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        EventBody {
            rx,
            aborting: false,
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.aborting {
            // hyper closes the connection on a body error, skipping the final chunk.
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock drop_after_chunks",
            ))));
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Event::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Event::Abort) => {
                // Pending once first: hyper flushes what it has buffered before
                // polling again, so every chunk sent before the abort arrives.
                self.aborting = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: MockBody) -> MockResponse {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn full(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> MockResponse {
    with_type(status, content_type, Either::Left(Full::new(body.into())))
}

pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>) -> MockResponse {
    full(status, "application/json", body)
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> MockResponse {
    json_bytes(
        status,
        serde_json::to_vec(value).expect("mock responses always serialize"),
    )
}

pub(crate) fn empty(status: StatusCode) -> MockResponse {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    resp
}

pub(crate) fn event_stream(body: EventBody, content_type: &'static str) -> MockResponse {
    let mut resp = with_type(StatusCode::OK, content_type, Either::Right(body));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One server-sent event carrying `value` as JSON.
pub(crate) fn sse_json<T: Serialize>(value: &T) -> Bytes {
    sse_event(None, value, "\n")
}

/// An event with an `event:` name line, as Anthropic sends them.
pub(crate) fn sse_named<T: Serialize>(name: &str, value: &T) -> Bytes {
    sse_event(Some(name), value, "\n")
}

/// An event framed with CRLF line ends, as Gemini (Vertex AI) sends them.
pub(crate) fn sse_json_crlf<T: Serialize>(value: &T) -> Bytes {
    sse_event(None, value, "\r\n")
}

fn sse_event<T: Serialize>(name: Option<&str>, value: &T, eol: &str) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    if let Some(name) = name {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(eol.as_bytes());
    }
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).expect("mock chunks always serialize");
    // A blank line ends the event.
    buf.extend_from_slice(eol.as_bytes());
    buf.extend_from_slice(eol.as_bytes());
    buf.into()
}

/// The event that ends an OpenAI stream.
pub(crate) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn sse_framing() {
        let event = sse_json(&serde_json::json!({"a": [1, null]}));
        assert_eq!(&event[..], b"data: {\"a\":[1,null]}\n\n");
        let named = sse_named("ping", &serde_json::json!({"type": "ping"}));
        assert_eq!(&named[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        let crlf = sse_json_crlf(&serde_json::json!([]));
        assert_eq!(&crlf[..], b"data: []\r\n\r\n");
    }

    #[tokio::test]
    async fn event_body_yields_chunks_then_ends() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Event::Data(Bytes::from_static(b"a")))
            .await
            .unwrap();
        tx.send(Event::Data(Bytes::from_static(b"b")))
            .await
            .unwrap();
        drop(tx);
        let collected = EventBody::new(rx).collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"ab");
    }

    #[tokio::test]
    async fn event_body_errors_after_abort() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Event::Data(Bytes::from_static(b"a")))
            .await
            .unwrap();
        tx.send(Event::Abort).await.unwrap();
        let mut body = EventBody::new(rx);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        assert!(body.frame().await.unwrap().is_err());
    }
}
