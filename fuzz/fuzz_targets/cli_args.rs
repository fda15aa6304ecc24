//! The command line: NUL-separated arguments parsed as `shardflow` parses them, and for `plan`
//! and `bench` the configs built and run a little. Errors are expected; a panic is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_fuzz::{mixture, split_args};

fuzz_target!(|data: &[u8]| {
    shardflow::cli::fuzz::args(&split_args(data), mixture());
});
