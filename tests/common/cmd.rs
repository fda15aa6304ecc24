//! Running the `shardflow` binary from a test.

use std::path::Path;
use std::process::{Command, Output};

/// The binary, ready for arguments.
pub fn shardflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardflow"))
}

/// Runs `shardflow ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    shardflow().args(args).output().unwrap()
}

/// Runs `shardflow ARGS`, which must succeed, and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A path as an argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
