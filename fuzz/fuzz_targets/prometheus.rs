//! `upstream::load::LoadReport::parse`, the Prometheus text reader for vLLM, Triton and
//! TensorRT-LLM `/metrics` pages, on arbitrary text.
//!
//! Asserts: no panic; a report's `kv_cache` and `gpu_utilization`, documented as 0..1, are
//! within 0..=1 (not NaN); the `waiting` and `running` counts are finite and not negative;
//! LoRA adapter names are non-empty and trimmed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::upstream::load::LoadReport;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(report) = LoadReport::parse(&text) else {
        return;
    };
    for (name, value) in [
        ("kv_cache", report.kv_cache),
        ("gpu_utilization", report.gpu_utilization),
    ] {
        if let Some(v) = value {
            assert!((0.0..=1.0).contains(&v), "{name} = {v} for {text:?}");
        }
    }
    for (name, value) in [
        ("waiting", Some(report.waiting)),
        ("running", report.running),
    ] {
        if let Some(v) = value {
            assert!(v.is_finite() && v >= 0.0, "{name} = {v} for {text:?}");
        }
    }
    for name in &report.lora_adapters {
        assert!(!name.is_empty() && name.trim() == name, "adapter {name:?}");
    }
});
