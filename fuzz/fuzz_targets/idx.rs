//! The `.idx` parser and the pair checks: any bytes as a `.idx` and a `.bin`, opened and read
//! whole. Errors are expected; a panic, a hang or an out-of-memory is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow::{IndexedShard, Shard};
use shardflow_fuzz::{scratch, split_pair};

fuzz_target!(|data: &[u8]| {
    let (bin, idx) = split_pair(data);
    let prefix = scratch().join("pair");
    std::fs::write(prefix.with_extension("idx"), idx).unwrap();
    std::fs::write(prefix.with_extension("bin"), bin).unwrap();
    if let Ok(shard) = IndexedShard::open(&prefix) {
        let mut out = vec![0i64; 256];
        for i in 0..shard.len() {
            let seq = shard.get(i).unwrap();
            assert_eq!(Some(seq.len()), shard.sequence_len(i));
            if seq.len() <= out.len() {
                let _ = seq.decode_into(&mut out);
            }
        }
        for d in 0..shard.documents() {
            let r = shard.document(d).unwrap();
            assert!(r.start <= r.end && r.end <= shard.len());
        }
        let _ = shard.verify();
    }
});
