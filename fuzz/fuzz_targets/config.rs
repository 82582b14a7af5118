//! `config::parse` on arbitrary text (no environment variables set), then, when it parses,
//! `config::build` (validation into the runtime model).
//!
//! Asserts: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = tollgate::config::parse("f.yaml", text, &|_| None) else {
        return;
    };
    let _ = tollgate::config::build("f.yaml", Path::new("f.yaml"), file, None);
});
