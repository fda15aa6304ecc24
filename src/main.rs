//! The `shardflow` command; it lives in the library's `cli` module (feature `cli`), so that the
//! fuzz targets can parse arguments the way the command does.

fn main() -> std::process::ExitCode {
    shardflow::cli::main()
}
