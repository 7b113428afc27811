//! The replay CLI, run as a real process, against the worked example in ledger/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::io::Write;
use std::process::{Command, Stdio};

fn replay(input: &[u8]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel-ledger"))
        .arg("replay")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gavel-ledger");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "replay exited with {}", out.status);
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The fenced ```jsonl blocks of the README, in order.
fn readme_blocks() -> Vec<String> {
    let readme = include_str!("../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```jsonl") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn reproduces_the_documented_worked_example_exactly() {
    let blocks = readme_blocks();
    assert_eq!(blocks.len(), 2, "README has an input and an output block");
    let input = include_str!("data/worked-example.jsonl");
    assert_eq!(blocks[0], input, "README input block matches tests/data/worked-example.jsonl");
    let output = replay(input.as_bytes());
    assert_eq!(output, blocks[1], "replay output differs from the README");
    // And the story the README tells, read back from the output.
    let lines: Vec<serde_json::Value> = output.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), input.lines().count() + 1, "one line per command plus the summary");
    assert_eq!(lines[11]["current_price"], 10_500, "a $5,000 maximum over a $100 bid displays $105");
    assert_eq!(lines[15]["current_price"], 600_000, "meeting the reserve jumps the price to it");
    assert_eq!(lines[18]["ends_at"], "2026-11-22T19:03:00Z", "a late bid extends the close");
    let last = &lines[lines.len() - 1];
    assert_eq!(last["lots"][0]["status"], "SoldPendingPayment");
    assert_eq!(last["digest"].as_str().map(str::len), Some(64));
}

#[test]
fn replaying_twice_gives_the_same_digest() {
    let input = include_str!("data/worked-example.jsonl");
    assert_eq!(replay(input.as_bytes()), replay(input.as_bytes()));
}

#[test]
fn malformed_lines_get_an_error_line_and_processing_continues() {
    let mut input = Vec::new();
    input.extend_from_slice(b"{not json\n");
    input.extend_from_slice(b"\xff\xfe\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(&vec![b'x'; (1 << 20) + 10]);
    input.extend_from_slice(b"\n");
    input.extend_from_slice(br#"{"cmd":"create_user","at":"2026-11-22T17:00:00Z","user_id":"u1","username":"u1"}"#);
    input.extend_from_slice(b"\n");
    let output = replay(&input);
    let lines: Vec<serde_json::Value> = output.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 5, "three errors, one user, one summary: {output}");
    for line in &lines[..3] {
        assert_eq!(line["error"]["code"], "invalid_input");
    }
    assert_eq!(lines[3]["user_id"], "u1");
    assert!(lines[4]["digest"].is_string());
}
