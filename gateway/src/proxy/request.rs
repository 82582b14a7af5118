//! Parse an OpenAI request body once: only the fields routing needs, and where `model` and
//! `stream_options` sit, so the upstream body can be the client's bytes with just those
//! values swapped.

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
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The client asked for the running usage on every chunk (vLLM's
    /// `stream_options.continuous_usage_stats`).
    pub continuous_usage: bool,
    /// Byte range of the `stream_options` value, when there is one.
    stream_options_span: Option<Range<usize>>,
    /// The output cap the request sets (`max_completion_tokens`, else `max_tokens`).
    pub max_output: Option<u64>,
    /// How many choices it asks for (`n`, 1 by default).
    pub choices: u64,
    /// `messages` is a non-empty array, as chat and Messages requests need.
    pub has_messages: bool,
}

/// Deeper JSON than this is refused before anything parses it: serde_json skips the fields
/// the gateway ignores without a depth limit, and an upstream or a translation would not.
const MAX_NESTING: usize = 128;

/// How deep the arrays and objects of `json` nest, reading no further than needed. Strings
/// are skipped with a SIMD search for their end, so a prompt costs next to nothing.
fn nesting(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0);
    while at < json.len() {
        match json[at] {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_NESTING {
                    return deepest;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                // To the closing quote, past escaped characters.
                at += 1;
                loop {
                    let next = json
                        .get(at..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest));
                    // An unterminated string: nothing after it nests.
                    let Some(i) = next else {
                        return deepest;
                    };
                    at += i;
                    if json[at] == b'"' {
                        break;
                    }
                    at += 2;
                }
            }
            _ => {}
        }
        at += 1;
    }
    deepest
}

/// The most choices one request may ask for, as OpenAI allows.
const MAX_CHOICES: u64 = 128;

/// Which usage a stream should report when the gateway asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageReports {
    /// A final usage chunk (`include_usage`).
    Final,
    /// Also the running usage on every chunk (vLLM's `continuous_usage_stats`), so a stream
    /// cut short is still metered from the provider's own count.
    Continuous,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
    /// Present (`null` included: it must be replaced, not shadowed by a second key) or not.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
    continuous_usage_stats: Option<bool>,
}

/// A field's raw value whenever the field is there, `null` included (plain `Option` reads
/// `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Where `raw` (borrowed from `body`) sits in `body`.
fn span_in(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
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
        // serde fills a struct from an array too (`["m", true]`): only an object is a request.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(bad("The request body must be a JSON object.".into(), None));
        }
        if nesting(body) > MAX_NESTING {
            return Err(bad(
                format!("The request body is nested more than {MAX_NESTING} levels deep."),
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
        let options = match fields.stream_options {
            Some(raw) if raw.get() != "null" => Some(
                serde_json::from_str::<StreamOptions>(raw.get()).map_err(|_| {
                    bad(
                        "`stream_options` must be an object.".into(),
                        Some("stream_options"),
                    )
                })?,
            ),
            _ => None,
        };
        let include_usage = options
            .as_ref()
            .is_some_and(|o| o.include_usage == Some(true));
        let choices = fields.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&choices) {
            return Err(bad(
                format!("`n` must be between 1 and {MAX_CHOICES}."),
                Some("n"),
            ));
        }
        // RawValue borrows from `body`, so its address gives the value's exact position.
        Ok(RequestHead {
            model,
            model_span: span_in(body, raw),
            stream: fields.stream.unwrap_or(false),
            include_usage,
            continuous_usage: include_usage
                && options.is_some_and(|o| o.continuous_usage_stats == Some(true)),
            stream_options_span: fields.stream_options.map(|raw| span_in(body, raw)),
            max_output: fields.max_completion_tokens.or(fields.max_tokens),
            choices,
            has_messages: fields.messages.is_some_and(|raw| {
                let text = raw.get();
                text.starts_with('[') && !text[1..].trim_start().starts_with(']')
            }),
        })
    }

    /// The body with `model` replaced by `upstream_model`, and `stream_options` asking for
    /// `usage` reports when given; every other byte untouched.
    pub fn body_for(
        &self,
        body: &Bytes,
        upstream_model: &str,
        usage: Option<UsageReports>,
    ) -> Bytes {
        let mut edits: Vec<(Range<usize>, String)> = Vec::with_capacity(2);
        if upstream_model != self.model {
            let quoted = serde_json::to_string(upstream_model).expect("a string serializes");
            edits.push((self.model_span.clone(), quoted));
        }
        if let Some(usage) = usage {
            let options = match usage {
                UsageReports::Final => r#"{"include_usage":true}"#,
                UsageReports::Continuous => {
                    r#"{"include_usage":true,"continuous_usage_stats":true}"#
                }
            };
            match &self.stream_options_span {
                Some(span) => edits.push((span.clone(), options.to_string())),
                // Right after the opening brace: the body is a JSON object.
                None => {
                    let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
                    edits.push((
                        open + 1..open + 1,
                        format!(r#""stream_options":{options},"#),
                    ));
                }
            }
        }
        if edits.is_empty() {
            return body.clone();
        }
        edits.sort_by_key(|(span, _)| span.start);
        let added: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(body.len() + added);
        let mut at = 0;
        for (span, text) in edits {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(text.as_bytes());
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
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
        let out = head.body_for(&Bytes::from_static(body), "gpt-4o", None);
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
        assert_eq!(head.body_for(&body, "m", None).as_ptr(), body.as_ptr());
    }

    #[test]
    fn escaped_model_names() {
        let body = Bytes::from_static(br#"{"model":"a\u0062c"}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert_eq!(head.model, "abc");
        assert_eq!(
            &head.body_for(&body, "x\"y", None)[..],
            br#"{"model":"x\"y"}"#
        );
    }

    #[test]
    fn asks_for_usage_without_touching_the_rest() {
        let body = Bytes::from_static(br#"{"model":"v","stream":true,"messages":[]}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert!(!head.include_usage);
        let out = head.body_for(&body, "up", Some(UsageReports::Final));
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"up","stream":true,"messages":[]}"#
        );

        let body = Bytes::from_static(
            br#" {"stream_options":{"include_usage":false},"model":"v","stream":true}"#,
        );
        let head = RequestHead::parse(&body).unwrap();
        assert!(!head.include_usage);
        let out = head.body_for(&body, "v", Some(UsageReports::Continuous));
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true,"continuous_usage_stats":true},"model":"v","stream":true}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        assert_eq!(nesting(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting(br#"{"a":"[[[[{{{{\"[[["}"#), 1);
        assert_eq!(nesting(br#"{"a":"\\","b":[[]]}"#), 3);
        assert_eq!(nesting(b"[[[[[[[[[["), 10);
        assert_eq!(nesting(br#"{"unterminated":"\"#), 1);
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = RequestHead::parse(deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
        let fine = format!(
            r#"{{"model":"m","x":{}{}}}"#,
            "[".repeat(127),
            "]".repeat(127)
        );
        assert!(RequestHead::parse(fine.as_bytes()).is_ok());
    }

    #[test]
    fn knows_whether_there_are_messages() {
        for (body, has) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                true,
            ),
            (r#"{"model":"m","messages":[ ]}"#, false),
            (r#"{"model":"m","messages":"hi"}"#, false),
            (r#"{"model":"m","messages":null}"#, false),
            (r#"{"model":"m","prompt":"hi"}"#, false),
        ] {
            assert_eq!(
                RequestHead::parse(body.as_bytes()).unwrap().has_messages,
                has,
                "{body}"
            );
        }
    }

    #[test]
    fn a_null_stream_options_is_replaced_not_shadowed() {
        let body = Bytes::from_static(br#"{"model":"m","stream_options":null,"stream":true}"#);
        let head = RequestHead::parse(&body).unwrap();
        let out = head.body_for(&body, "m", Some(UsageReports::Final));
        assert_eq!(
            &out[..],
            br#"{"model":"m","stream_options":{"include_usage":true},"stream":true}"#
        );
    }

    #[test]
    fn reads_the_clients_usage_request() {
        let head = RequestHead::parse(
            br#"{"model":"v","stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(head.include_usage);
        let head = RequestHead::parse(br#"{"model":"v","stream_options":null}"#).unwrap();
        assert!(!head.include_usage);
        let err = RequestHead::parse(br#"{"model":"v","stream_options":3}"#).unwrap_err();
        assert!(err.to_string().contains("stream_options"));
    }

    #[test]
    fn rejects_bad_bodies() {
        for (body, needle) in [
            (&b""[..], "empty"),
            (b"{not json", "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (br#"["m",true]"#, "JSON object"),
            (br#"{"messages":[]}"#, "provide a model"),
            (br#"{"model":7}"#, "must be a string"),
            (br#"{"model":""}"#, "must not be empty"),
            (br#"{"model":"m","stream":"yes"}"#, "not valid JSON"),
            (br#"{"model":"m"} trailing"#, "not valid JSON"),
            (br#"{"model":"m","n":0}"#, "`n` must be"),
            (br#"{"model":"m","n":129}"#, "`n` must be"),
            (br#"{"model":"m","n":-1}"#, "not valid JSON"),
        ] {
            let err = RequestHead::parse(body).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{body:?}: {err}");
        }
    }
}
