//! The `sluice` binary: parse the command line, set up logging, run. Everything else lives in
//! the library (`sluice::cli`, `sluice::serve`).

use std::io::IsTerminal;

use clap::Parser;

/// mimalloc instead of glibc malloc: the pipeline allocates and frees small buffers on several
/// threads at once, where glibc's arenas spent over a quarter of the server's CPU (measured with
/// `perf` under `sluice bench`: `_int_malloc`, `malloc_consolidate`, `free`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    let serving = matches!(cli.command, sluice::cli::Command::Serve(_));
    let default_level = if serving { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sluice::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Colour codes only for a person at a terminal: a log file or a pipe gets plain text, and
/// `NO_COLOR` (set and not empty, as <https://no-color.org> defines it) turns colour off.
fn colour_logs() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The error and its causes on one line, skipping a cause whose text the line already ends
/// with (many errors repeat their source in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        // A message that already quotes its cause (`...: {source} (hint)`) is not repeated.
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
