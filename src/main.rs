//! The `rampart` command line: serve, manage users, use the client, run the demo.
//!
//! All logic lives in the library; this binary parses arguments, calls it, and formats the
//! results. Every error ends the process with a non-zero exit code and one line on stderr.
//! It is built with the default `cli` feature, which brings clap, indicatif and
//! tracing-subscriber; the library needs none of them.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Allocations of this size or more are mapped on their own and returned to the system when
/// freed.
const MMAP_THRESHOLD: usize = 4 << 20;

/// Pins glibc's mmap threshold. By default glibc raises it after the first large block is
/// freed, so every later argon2 working area (19 MiB per hash) came from a thread's heap
/// arena, which never shrinks: the scenario runner, which hashes account passwords on many
/// threads, grew from 230 to 940 MB resident over the suite, and a server kept the peak of
/// its logins. With the threshold pinned, the same five scenarios stay near 60 MB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_mmap_threshold() {
    let threshold = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists, and M_MMAP_THRESHOLD accepts any value up to HEAP_MAX.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {
    let _ = MMAP_THRESHOLD;
}

fn main() -> ExitCode {
    pin_mmap_threshold();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes, joined, with any line breaks a
            // dependency's message carries folded. The text may quote the server (or a
            // sender, through it), so control characters are shown escaped, never obeyed.
            let line = cli::error_line(&e).replace('\n', " ");
            eprintln!(
                "error: {}",
                cli::terminal::visible(&line, cli::terminal::Shape::Line)
            );
            ExitCode::FAILURE
        }
    }
}
