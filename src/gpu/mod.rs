//! GPU contexts, used by [`crate::device`] and [`crate::collective`] (never the other way).
//!
//! - [`WgpuContext`] (feature `wgpu`): an adapter, its device and queue (created here, or adopted
//!   from Burn or any other wgpu 30 user), and the compute pipelines of `shaders/`, compiled once
//!   per context.
//! - [`cuda`] (feature `cuda`): a CUDA device with a compute and a copy stream, every entry
//!   guarded against a missing driver; its page-locked (pinned) host memory; and the kernels of
//!   `kernels/` behind typed safe launch functions, the only unsafe launches in the crate.
//! - [`nvrtc`] (feature `cuda`): the CUDA C kernels of `kernels/`, compiled at run time by NVRTC.

#[cfg(feature = "wgpu")]
mod wgpu_context;

#[cfg(feature = "wgpu")]
pub use wgpu_context::*;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod nvrtc;
