//! The `shardflow` command; it lives in the library's `cli` module (feature `cli`), so that the
//! fuzz targets can parse arguments the way the command does.

fn main() -> std::process::ExitCode {
    // Before any thread starts (the signal thread, workers): it may set XDG_RUNTIME_DIR, which
    // is sound only while this is the process's one thread.
    #[cfg(feature = "wgpu")]
    shardflow::gpu::quiet_wayland_probe();
    shardflow::cli::main()
}
