//! Parse an OpenAI request body once: only the fields routing needs, and where `model` sits,
//! so the upstream body can be the client's bytes with just the model name swapped.

use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// What the gateway reads from a request body.
#[derive(Debug)]
pub struct RequestHead {
    pub model: String,
    /// Byte range of the `model` value (quotes included) in the body.
    model_span: Range<usize>,
    pub stream: bool,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
}

impl RequestHead {
    pub fn parse(body: &[u8]) -> Result<RequestHead, GatewayError> {
        let bad = |message: String, param| GatewayError::BadRequest { message, param };
        if body.is_empty() {
            return Err(bad(
                "The request body is empty; expected a JSON object.".into(),
                None,
            ));
        }
        let fields: Fields = serde_json::from_slice(body)
            .map_err(|e| bad(format!("The request body is not valid JSON: {e}."), None))?;
        let raw = fields
            .model
            .ok_or_else(|| bad("You must provide a model parameter.".into(), Some("model")))?;
        let model: String = serde_json::from_str(raw.get())
            .map_err(|_| bad("`model` must be a string.".into(), Some("model")))?;
        if model.is_empty() {
            return Err(bad("`model` must not be empty.".into(), Some("model")));
        }
        // RawValue borrows from `body`, so its address gives the value's exact position.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        Ok(RequestHead {
            model,
            model_span: start..start + raw.get().len(),
            stream: fields.stream.unwrap_or(false),
        })
    }

    /// The body with `model` replaced by `upstream_model`; every other byte untouched.
    pub fn body_for(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        if upstream_model == self.model {
            return body.clone();
        }
        let quoted = serde_json::to_string(upstream_model).expect("a string serializes");
        let mut out = BytesMut::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(&body[..self.model_span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[self.model_span.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_stream() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model" : "virt","stream":true}"#;
        let head = RequestHead::parse(body).unwrap();
        assert_eq!(head.model, "virt");
        assert!(head.stream);
        let out = head.body_for(&Bytes::from_static(body), "gpt-4o");
        assert_eq!(
            &out[..],
            br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model" : "gpt-4o","stream":true}"#
        );
    }

    #[test]
    fn same_model_shares_the_bytes() {
        let body = Bytes::from_static(br#"{"model":"m"}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert!(!head.stream);
        assert_eq!(head.body_for(&body, "m").as_ptr(), body.as_ptr());
    }

    #[test]
    fn escaped_model_names() {
        let body = Bytes::from_static(br#"{"model":"a\u0062c"}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert_eq!(head.model, "abc");
        assert_eq!(&head.body_for(&body, "x\"y")[..], br#"{"model":"x\"y"}"#);
    }

    #[test]
    fn rejects_bad_bodies() {
        for (body, needle) in [
            (&b""[..], "empty"),
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "not valid JSON"),
            (br#"{"messages":[]}"#, "provide a model"),
            (br#"{"model":7}"#, "must be a string"),
            (br#"{"model":""}"#, "must not be empty"),
            (br#"{"model":"m","stream":"yes"}"#, "not valid JSON"),
            (br#"{"model":"m"} trailing"#, "not valid JSON"),
        ] {
            let err = RequestHead::parse(body).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{body:?}: {err}");
        }
    }
}
