//! `gavel-ledger`: audit and replay tools for the bid ledger.
//!
//! `gavel-ledger replay` reads commands as JSON lines on stdin (format: ledger/README.md),
//! applies them to an empty ledger and writes one JSON line per command, then a summary line
//! with the state digest and every lot.

use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ledger::{Ledger, json, view};

/// Longest input line accepted; longer ones get an error line and are skipped.
const LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Parser)]
#[command(name = "gavel-ledger", version, about = "Audit and replay tools for Gavel's bid ledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply JSON-line commands from stdin; print each outcome, then {"digest","lots"}.
    Replay,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay => match replay(io::stdin().lock(), io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gavel-ledger: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn replay(mut input: impl BufRead, output: impl Write) -> io::Result<()> {
    let mut out = BufWriter::new(output);
    let mut ledger = Ledger::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = io::Read::take(&mut input, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let answer = if line.len() > LINE_BYTES_MAX && line.last() != Some(&b'\n') {
            skip_rest_of_line(&mut input)?;
            view::error("invalid_input", &format!("line longer than {LINE_BYTES_MAX} bytes"))
        } else {
            match std::str::from_utf8(&line) {
                Err(_) => view::error("invalid_input", "line is not UTF-8"),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match json::parse_command(text) {
                    Ok(cmd) => view::outcome(&ledger.apply(&cmd).outcome),
                    Err(e) => view::error("invalid_input", &e.to_string()),
                },
            }
        };
        writeln!(out, "{answer}")?;
    }
    writeln!(out, "{}", json::summary(&ledger))?;
    out.flush()
}

fn skip_rest_of_line(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                input.consume(len);
            }
        }
    }
}
