//! `shardflow write`: a document past the i32 length is refused as soon as it passes the limit
//! (read from a pipe, in bounded memory), the output directory is created, and a UTF-8 byte
//! order mark at the start of the input is skipped.
#![cfg(feature = "cli")]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use common::cmd::{ok, p, run, shardflow};

/// The ids of the shard at `prefix` (u16, as `write` stores byte-level ids).
fn ids(prefix: &Path) -> Vec<u16> {
    let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
    bin.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `text`'s bytes as ids, each document followed by the end-of-document id 256.
fn expect(docs: &[&str]) -> Vec<u16> {
    docs.iter()
        .flat_map(|d| d.bytes().map(u16::from).chain([256]))
        .collect()
}

/// The most bytes one document may hold: its ids and the end-of-document id fit an i32 length.
const MAX_DOCUMENT_BYTES: u64 = i32::MAX as u64 - 1;

/// The peak resident memory of process `pid` in bytes (`VmHWM`), while it runs.
#[cfg(target_os = "linux")]
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(not(target_os = "linux"))]
fn peak_rss(_pid: u32) -> Option<u64> {
    None
}

#[test]
fn a_paragraph_past_the_i32_length_is_refused_as_soon_as_it_passes_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("big");
    let mut child = shardflow()
        .args([
            "write",
            "--input",
            "-",
            "--output",
            p(&prefix),
            "--format",
            "text",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // One paragraph with no newline, 64 MiB past the limit, generated as it is written.
    let total = MAX_DOCUMENT_BYTES + (64 << 20);
    let chunk = vec![b'a'; 1 << 20];
    let mut stdin = child.stdin.take().unwrap();
    let (mut written, mut peak) = (0u64, 0u64);
    while written < total {
        let n = chunk.len().min((total - written) as usize);
        if stdin.write_all(&chunk[..n]).is_err() {
            break; // the command stopped reading
        }
        written += n as u64;
        if written % (64 << 20) == 0 {
            peak = peak.max(peak_rss(pid).unwrap_or(0));
        }
    }
    drop(stdin);
    loop {
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: <stdin> line 1: the paragraph starting at line 1 passes {MAX_DOCUMENT_BYTES} \
             bytes, the most one document can hold (with its end-of-document id, the i32 length \
             of a Megatron sequence); split it\n"
        )
    );
    assert!(out.stdout.is_empty());
    // Refused once the limit was passed: the rest of the input was never read (the pipe and the
    // command's 1 MiB read buffer hold a little past it).
    assert!(
        written < MAX_DOCUMENT_BYTES + (8 << 20),
        "{written} bytes were read"
    );
    // Memory holds the paragraph so far, no copy of it (the ids alone would take 4 GiB).
    if cfg!(target_os = "linux") {
        assert!(peak < (2 << 30) + (256 << 20), "peak RSS {peak} bytes");
    }
    assert!(!prefix.with_extension("bin").exists());
    assert!(!prefix.with_extension("idx").exists());
}

#[test]
fn write_creates_its_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello\n\nworld\r\nagain\n").unwrap();
    let prefix = dir.path().join("a/b/shard");
    let out = ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    assert_eq!(
        out,
        format!(
            "wrote {}.idx/.bin: 2 documents, 2 sequences, 18 tokens, dtype u16\n",
            prefix.display()
        )
    );
    assert_eq!(ids(&prefix), expect(&["hello", "world\nagain"]));
}

#[test]
fn a_byte_order_mark_at_the_start_is_skipped_and_elsewhere_named() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("bom.jsonl");
    std::fs::write(&jsonl, "\u{feff}{\"text\": \"hi\"}\n{\"text\": \"yo\"}\n").unwrap();
    let prefix = dir.path().join("json");
    ok(&["write", "--input", p(&jsonl), "--output", p(&prefix)]);
    assert_eq!(ids(&prefix), expect(&["hi", "yo"]));
    // From stdin, detected by its first byte after the mark.
    let mut child = shardflow()
        .args([
            "write",
            "--input",
            "-",
            "--output",
            p(&dir.path().join("stdin")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("\u{feff}{\"text\": \"ok\"}\n".as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ids(&dir.path().join("stdin")), expect(&["ok"]));
    // Plain text: the mark is not part of the first document.
    let txt = dir.path().join("bom.txt");
    std::fs::write(&txt, "\u{feff}first\n\nsecond\n").unwrap();
    let prefix = dir.path().join("text");
    ok(&["write", "--input", p(&txt), "--output", p(&prefix)]);
    assert_eq!(ids(&prefix), expect(&["first", "second"]));
    // A mark on a later line (files joined with `cat`) is named.
    std::fs::write(&jsonl, "{\"text\": \"hi\"}\n\u{feff}{\"text\": \"yo\"}\n").unwrap();
    let out = run(&["write", "--input", p(&jsonl), "--output", p(&prefix)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: {} line 2: not valid JSON: it starts with a UTF-8 byte order mark, which only \
             the first line may carry (",
            jsonl.display()
        )),
        "{err}"
    );
}
