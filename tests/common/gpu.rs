//! The wgpu context for a test, or a printed reason to skip it.

use std::sync::Arc;

use shardflow::gpu::WgpuContext;

/// A context on this machine's adapter. Without one the test is skipped with a printed reason,
/// unless `SHARDFLOW_REQUIRE_WGPU=1` (CI), which makes it fail.
pub fn wgpu() -> Option<Arc<WgpuContext>> {
    super::available(
        "SHARDFLOW_REQUIRE_WGPU",
        "there is no usable wgpu adapter",
        WgpuContext::new(),
    )
}
