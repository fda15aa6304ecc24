//! `shardflow write`'s input: JSON lines or text (the first byte picks the format, or asks for
//! detection), tokenized into a shard that must read back exactly as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow_fuzz::scratch;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let _ = shardflow::cli::fuzz::write_input(input, mode, scratch());
});
