//! Loader checkpoints as untrusted JSON: parsed, checked, and resumed over the fixture mixture
//! with the configuration the state names; a few batches are taken. Errors are expected; a
//! panic is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardflow::loader::{LoaderBuilder, LoaderState};
use shardflow::order::OrderConfig;
use shardflow_fuzz::mixture;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = LoaderState::from_json(data) else {
        return;
    };
    let c = &state.cursor;
    let order = OrderConfig {
        seed: c.seed,
        shuffle: c.shuffle,
        mixture: c.mixture,
        partition: c.partition,
        world: c.world,
        rank: state.rank,
        local_batch: (c.global_batch / c.world.max(1) as u64) as usize,
        ..Default::default()
    };
    // Large batches only cost time here.
    if (order.local_batch as u64).saturating_mul(state.collate.seq_len as u64) > 1 << 16 {
        return;
    }
    let metrics = state.metrics.as_ref().map(|m| m.config.clone());
    let built = LoaderBuilder::<i32>::new(mixture().to_vec())
        .with_order(order)
        .with_collate(state.collate.clone())
        .with_transform(state.transform.clone())
        .with_metrics(metrics)
        .with_workers(0)
        .resume(state)
        .build_host();
    if let Ok(mut loader) = built {
        for batch in loader.by_ref().take(3) {
            if batch.is_err() {
                break;
            }
        }
        let _ = loader.metrics().report();
        let _ = serde_json::to_vec(&loader.state());
    }
});
