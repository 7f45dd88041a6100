//! The budget lockfile reader on arbitrary bytes: never a panic; a file that parses writes
//! back to itself and compares with itself without a regression.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diesel_budget::testing::lockfile::__fuzz_lockfile(data);
});
