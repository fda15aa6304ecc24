//! Opens the Megatron shards given on the command line and prints the first tokens of each.
//!
//! `cargo run --example inspect_shard -- PREFIX...`

use shardflow::{IndexedShard, Shard};

fn main() -> shardflow::Result<()> {
    for prefix in std::env::args().skip(1) {
        let shard = IndexedShard::open(&prefix)?;
        println!(
            "{prefix}: {} sequences, {} documents, {}",
            shard.len(),
            shard.documents(),
            shard.dtype()
        );
        if let Some(seq) = shard.get(0) {
            let head: Vec<i64> = seq.iter().take(16).collect();
            println!("  sequence 0: {} tokens, first {head:?}", seq.len());
        }
    }
    Ok(())
}
