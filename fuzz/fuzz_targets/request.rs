//! Request-body parsers, on arbitrary bytes:
//! - `proxy::request::RequestHead::parse`; on success `body_for` with several model swaps and
//!   every usage option. When the input is a JSON object the output must be one too, and must
//!   parse back with the new model, the usage asked for, and the other fields unchanged;
//!   with no swap and no usage option it must be the input's bytes.
//! - `providers::ClientFormat::{OpenAi, Anthropic}.parse_request`.
//! - `tokens::PromptSize::from_body`, then `bound()`, `estimate()` (≤ bound), `text()`,
//!   `last_user()` (the tokenizer's `exact()` has its own target, `tokens`).
//!
//! Asserts: no panic, and the properties above.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::providers::ClientFormat;
use tollgate::proxy::request::{RequestHead, UsageReports};
use tollgate::tokens::PromptSize;

fuzz_target!(|body: &[u8]| {
    let _ = ClientFormat::OpenAi.parse_request(body);
    let _ = ClientFormat::Anthropic.parse_request(body);

    if let Some(size) = PromptSize::from_body(body) {
        let (bound, estimate) = (size.bound(), size.estimate());
        assert!(estimate <= bound, "estimate {estimate} > bound {bound}");
        assert!(size.text().len() as u64 <= bound);
        let _ = size.last_user();
        let _ = size.requested_output;
    }

    let Ok(head) = RequestHead::parse(body) else {
        return;
    };
    assert!(!head.model.is_empty());
    assert!((1..=128).contains(&head.choices));
    let is_object = serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object());
    let bytes = Bytes::copy_from_slice(body);
    let same = head.model.clone();
    for model in [same.as_str(), "gpt-4o", "", "m\"\\\u{1}\u{2028}é😀"] {
        for usage in [
            None,
            Some(UsageReports::Final),
            Some(UsageReports::Continuous),
        ] {
            let out = head.body_for(&bytes, model, usage);
            if model == head.model && usage.is_none() {
                assert_eq!(
                    &out[..],
                    body,
                    "an unchanged body must be the input's bytes"
                );
            }
            if !is_object {
                continue;
            }
            let value: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "body_for({model:?}, {usage:?}) gave invalid JSON ({e}):\n{}\nfrom\n{}",
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(body)
                )
            });
            assert!(value.is_object());
            assert_eq!(value["model"], model);
            if model.is_empty() {
                continue; // RequestHead refuses an empty model: nothing more to read back.
            }
            let again = RequestHead::parse(&out).expect("body_for's output parses");
            assert_eq!(again.model, model);
            assert_eq!(again.stream, head.stream);
            assert_eq!(again.max_output, head.max_output);
            assert_eq!(again.choices, head.choices);
            assert_eq!(again.has_messages, head.has_messages);
            match usage {
                None => {
                    assert_eq!(again.include_usage, head.include_usage);
                    assert_eq!(again.continuous_usage, head.continuous_usage);
                }
                Some(UsageReports::Final) => {
                    assert!(again.include_usage && !again.continuous_usage)
                }
                Some(UsageReports::Continuous) => {
                    assert!(again.include_usage && again.continuous_usage)
                }
            }
        }
    }
});
