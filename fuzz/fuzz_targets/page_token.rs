//! The page token decoder on arbitrary input: never a panic, never an accepted token (the
//! fuzzer cannot sign with the key).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    assert!(!diesel_budget::page::__fuzz_decode(&text), "an unsigned token was accepted");
});
