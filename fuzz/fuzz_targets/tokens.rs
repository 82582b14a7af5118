//! `tokens::count(Tokenizer::O200k, text)` on text of at most 64 KiB (invalid UTF-8 is
//! replaced, as a client's text would have been by then).
//!
//! Asserts: no panic escapes `count` (it catches tokenizer panics itself and estimates that
//! segment; such a caught panic is reported on stderr, once per message, but is not a crash),
//! and the count is at most the text's length in bytes (a BPE token covers at least a byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::{Mutex, Once};
use tollgate::catalog::Tokenizer;

const MAX_BYTES: usize = 64 * 1024;

/// libfuzzer-sys's panic hook aborts at the panic, before `count`'s `catch_unwind` can
/// recover. A panic that escapes `count` still aborts: libfuzzer-sys's `catch_unwind`
/// around the target does that.
fn report_caught_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let seen = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            if seen.lock().is_ok_and(|mut s| s.insert(message.clone())) {
                eprintln!("tokens: a panic (caught or not): {message}");
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    report_caught_panics();
    let data = &data[..data.len().min(MAX_BYTES)];
    let text = String::from_utf8_lossy(data);
    let n = tollgate::tokens::count(Tokenizer::O200k, &text);
    assert!(
        n <= text.len() as u64,
        "{n} tokens for {} bytes",
        text.len()
    );
});
