//! The `rampart` command line: serve, manage users, use the client, run the demo.
//!
//! All logic lives in the library; this binary parses arguments, calls it, and formats the
//! results. Every error ends the process with a non-zero exit code and one line on stderr.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes, joined, with any line breaks a
            // dependency's message carries folded. The text may quote the server (or a
            // sender, through it), so control characters are shown escaped, never obeyed.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!(
                "error: {}",
                cli::terminal::visible(&line, cli::terminal::Shape::Line)
            );
            ExitCode::FAILURE
        }
    }
}
