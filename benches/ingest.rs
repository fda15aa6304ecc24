//! Text to shards: Hugging Face `tokenizers`' own `encode_batch`, shardflow's fast byte-level
//! BPE engine alone, and the whole `shardflow write` command, on the same texts in one run, at
//! 1 and 2 threads; the ids of both engines compared on the whole corpus; the command's
//! peak RSS on a 1 GB input.
//!
//! `cargo bench --features cli --bench ingest` (release). The setup, cached in
//! `target/bench-ingest/` and made from nothing downloaded:
//!
//! - `corpus.jsonl`: real prose, the paragraphs of the files under `/usr/share/doc` (gzip ones
//!   unpacked), in sorted path order, until `SHARDFLOW_BENCH_INGEST_MB` (default 55) MB;
//! - `tokenizer.json`: a 32k byte-level BPE (GPT-2's pre-tokenizer, `<|endoftext|>` special)
//!   trained on it by the `tokenizers` trainer.
//!
//! Each figure is the best of `SHARDFLOW_BENCH_REPEAT` (default 2) runs. The 1 GB RSS run
//! repeats the corpus into `corpus_1g.jsonl`; `SHARDFLOW_BENCH_RSS_MB=0` leaves it out.
//! The results are printed and written to `target/bench-ingest/results.json`.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use shardflow::ingest::encode::{Encoder, Engine};
use tokenizers::Tokenizer;

#[path = "../tests/common/bpe.rs"]
mod bpe;

use bpe::EOT;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("bench-ingest")
}

/// Files under `dir`, recursively, in sorted path order.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            files_under(&path, out);
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

/// The paragraphs of the system's documentation as JSON lines, until `bytes` of text.
fn make_corpus(path: &Path, bytes: usize) {
    let mut files = Vec::new();
    files_under(Path::new("/usr/share/doc"), &mut files);
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut written = 0;
    'files: for file in files {
        let Ok(raw) = std::fs::read(&file) else {
            continue;
        };
        let data = if file.extension().is_some_and(|e| e == "gz") {
            let mut text = Vec::new();
            if flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut text)
                .is_err()
            {
                continue;
            }
            text
        } else {
            raw
        };
        let Ok(text) = String::from_utf8(data) else {
            continue;
        };
        for paragraph in text.split("\n\n") {
            let paragraph = paragraph.trim_matches('\n');
            if paragraph.trim().len() < 20 {
                continue;
            }
            serde_json::to_writer(&mut out, &serde_json::json!({ "text": paragraph })).unwrap();
            out.write_all(b"\n").unwrap();
            written += paragraph.len();
            if written >= bytes {
                break 'files;
            }
        }
    }
    out.into_inner().unwrap().sync_all().unwrap();
    assert!(
        written >= bytes,
        "/usr/share/doc holds only {written} bytes of text"
    );
    std::fs::rename(tmp, path).unwrap();
}

fn read_texts(path: &Path) -> Vec<String> {
    BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            v["text"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The best (shortest) of `repeat` timings of `f`, and its last result.
fn best_of<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    (best, last.expect("at least one run"))
}

/// The fast engine alone on `threads` threads: documents taken in chunks of 64 from a
/// shared counter, one session and one reused id buffer per thread, nothing kept. Returns
/// the number of ids.
fn fast_alone(encoder: &Encoder, texts: &[String], threads: usize) -> u64 {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut session = encoder.session();
                    let mut ids = Vec::new();
                    let mut count = 0u64;
                    loop {
                        let start = next.fetch_add(64, Ordering::Relaxed);
                        if start >= texts.len() {
                            return count;
                        }
                        for text in texts.iter().skip(start).take(64) {
                            ids.clear();
                            session.encode(text, &mut ids).unwrap();
                            count += ids.len() as u64;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// The fast engine's ids of each text (one session), to compare with `tokenizers`'.
fn fast_ids(encoder: &Encoder, texts: &[String]) -> Vec<Vec<u32>> {
    let mut session = encoder.session();
    texts
        .iter()
        .map(|text| {
            let mut ids = Vec::new();
            session.encode(text, &mut ids).unwrap();
            ids
        })
        .collect()
}

/// `tokenizers`' `encode_batch` on a rayon pool of `threads` threads.
fn hf_batch(tokenizer: &Tokenizer, texts: &[String], threads: usize) -> Vec<Vec<u32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    pool.install(|| tokenizer.encode_batch_fast(inputs, true))
        .unwrap()
        .into_iter()
        .map(|e| e.get_ids().to_vec())
        .collect()
}

/// What one `shardflow write` run took: wall seconds (process start to exit), the seconds it
/// reports for the ingest itself (reading, encoding, writing; the tokenizer's load is before),
/// its peak RSS in MiB.
struct CommandRun {
    /// Tokens written (documents' ids and end-of-text ids).
    tokens: u64,
    wall: f64,
    ingest: f64,
    max_rss_mib: f64,
}

fn command(input: &Path, tokenizer: &Path, threads: usize, out: &Path) -> CommandRun {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .args(["write", "--field", "text", "--eod", EOT, "--engine", "fast"])
        .arg("--input")
        .arg(input)
        .arg("--tokenizer")
        .arg(tokenizer)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--output")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        pipe.read_to_string(&mut stderr).unwrap();
        stderr
    });
    // The peak RSS of the command's own memory: VmHWM of /proc/PID/status, read until it
    // exits (it only grows). Not the rusage of the child: Linux counts there what the process
    // held before its exec, a copy of this bench's memory.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let wall = t.elapsed().as_secs_f64();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "shardflow write failed: {stderr}");
    // "N documents, T tokens in S s: R tokens/s (engine fast)"
    let ingest = stderr
        .lines()
        .find_map(|l| {
            l.split(" tokens in ")
                .nth(1)?
                .split(" s:")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no timing line in: {stderr}"));
    let tokens = stderr
        .lines()
        .find_map(|l| {
            let before = l.split(" tokens in ").next()?;
            before.rsplit(", ").next()?.replace(' ', "").parse().ok()
        })
        .unwrap_or_else(|| panic!("no token count in: {stderr}"));
    CommandRun {
        tokens,
        wall,
        ingest,
        max_rss_mib: peak_kib as f64 / 1024.0,
    }
}

fn mtok(tokens: u64, seconds: f64) -> f64 {
    tokens as f64 / seconds / 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.jsonl");
    let tokenizer_path = dir.join("tokenizer.json");
    let repeat = env_usize("SHARDFLOW_BENCH_REPEAT", 2);
    if !corpus.exists() {
        let mb = env_usize("SHARDFLOW_BENCH_INGEST_MB", 55);
        eprintln!(
            "setup: {mb} MB of prose from /usr/share/doc into {}",
            corpus.display()
        );
        make_corpus(&corpus, mb << 20);
    }
    let texts = read_texts(&corpus);
    let bytes: usize = texts.iter().map(String::len).sum();
    if !tokenizer_path.exists() {
        eprintln!("setup: training a 32k byte-level BPE on the corpus (minutes)");
        let t = Instant::now();
        bpe::train_byte_level(texts.iter(), 32_000, 2)
            .save(&tokenizer_path, false)
            .unwrap();
        eprintln!("setup: trained in {:.0} s", t.elapsed().as_secs_f64());
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path).unwrap();
    let (load_s, fast) = best_of(1, || {
        Encoder::from_file(&tokenizer_path)
            .unwrap()
            .with_engine(Engine::Fast)
            .unwrap()
    });
    println!(
        "corpus: {} documents, {:.1} MB; tokenizer: {} ids, loaded and compiled in {:.3} s",
        texts.len(),
        bytes as f64 / 1e6,
        tokenizer.get_vocab_size(true),
        load_s
    );

    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();
    let mut reference_ids: Option<Vec<Vec<u32>>> = None;
    for threads in [1, 2] {
        let (hf_s, hf_ids) = best_of(repeat, || hf_batch(&tokenizer, &texts, threads));
        let tokens: u64 = hf_ids.iter().map(|ids| ids.len() as u64).sum();
        let (fast_s, fast_tokens) = best_of(repeat, || fast_alone(&fast, &texts, threads));
        assert_eq!(fast_tokens, tokens, "the engines' token counts differ");
        match &reference_ids {
            Some(reference) => {
                assert!(
                    reference == &hf_ids,
                    "tokenizers' ids depend on its thread count"
                )
            }
            None => {
                let fast_ids = fast_ids(&fast, &texts);
                assert_eq!(hf_ids.len(), fast_ids.len());
                let mismatch = hf_ids.iter().zip(&fast_ids).position(|(a, b)| a != b);
                if let Some(i) = mismatch {
                    panic!(
                        "document {i}: the fast engine's ids differ from tokenizers': {:?}",
                        texts[i]
                    );
                }
            }
        }
        reference_ids = Some(hf_ids);
        let out = dir.join(format!("out{threads}"));
        std::fs::create_dir_all(&out).unwrap();
        let runs: Vec<CommandRun> = (0..repeat.max(1))
            .map(|_| command(&corpus, &tokenizer_path, threads, &out.join("corpus")))
            .collect();
        let ingest_s = runs.iter().map(|r| r.ingest).fold(f64::INFINITY, f64::min);
        let wall_s = runs.iter().map(|r| r.wall).fold(f64::INFINITY, f64::min);
        // The command stores each document's ids and one end-of-text id.
        let command_tokens = tokens + texts.len() as u64;
        let row = serde_json::json!({
            "threads": threads,
            "tokens": tokens,
            "hf_encode_batch_mtok_s": mtok(tokens, hf_s),
            "fast_engine_mtok_s": mtok(tokens, fast_s),
            "fast_over_hf": hf_s / fast_s,
            "command_mtok_s": mtok(command_tokens, ingest_s),
            "command_over_engine": fast_s / ingest_s * command_tokens as f64 / tokens as f64,
            "command_wall_mtok_s": mtok(command_tokens, wall_s),
            "command_wall_over_engine": fast_s / wall_s * command_tokens as f64 / tokens as f64,
            "command_max_rss_mib": runs.iter().map(|r| r.max_rss_mib).fold(0.0, f64::max),
        });
        rows.push(row.clone());
        results.insert(format!("threads_{threads}"), row);
    }
    println!(
        "{:>7} | {:>16} | {:>12} | {:>7} | {:>14} | {:>9} | {:>13} | {:>9}",
        "threads",
        "hf encode_batch",
        "fast engine",
        "fast/hf",
        "write (ingest)",
        "/engine",
        "write (wall)",
        "/engine"
    );
    for r in &rows {
        println!(
            "{:>7} | {:>10.3} M/s | {:>8.3} M/s | {:>6.2}x | {:>10.3} M/s | {:>9.3} | {:>9.3} M/s | {:>9.3}",
            r["threads"],
            r["hf_encode_batch_mtok_s"].as_f64().unwrap(),
            r["fast_engine_mtok_s"].as_f64().unwrap(),
            r["fast_over_hf"].as_f64().unwrap(),
            r["command_mtok_s"].as_f64().unwrap(),
            r["command_over_engine"].as_f64().unwrap(),
            r["command_wall_mtok_s"].as_f64().unwrap(),
            r["command_wall_over_engine"].as_f64().unwrap(),
        );
    }
    println!(
        "ids: the fast engine's equal tokenizers' for all {} documents",
        texts.len()
    );

    let rss_mb = env_usize("SHARDFLOW_BENCH_RSS_MB", 1024);
    if rss_mb > 0 {
        let big = dir.join(format!("corpus_{rss_mb}m.jsonl"));
        if !big.exists() {
            let tmp = big.with_extension("tmp");
            let mut out = BufWriter::new(std::fs::File::create(&tmp).unwrap());
            let one = std::fs::read(&corpus).unwrap();
            let mut written = 0;
            while written < rss_mb << 20 {
                out.write_all(&one).unwrap();
                written += one.len();
            }
            out.into_inner().unwrap().sync_all().unwrap();
            std::fs::rename(tmp, &big).unwrap();
        }
        let size = std::fs::metadata(&big).unwrap().len();
        let out = dir.join("out_big");
        std::fs::create_dir_all(&out).unwrap();
        let run = command(&big, &tokenizer_path, 2, &out.join("big"));
        let engine = rows
            .last()
            .map_or(f64::NAN, |r| r["fast_engine_mtok_s"].as_f64().unwrap());
        let wall_rate = mtok(run.tokens, run.wall);
        println!(
            "write on {:.2} GB at 2 threads: {:.1} s, {:.3} M tokens/s wall-clock ({:.3} of the \
             engine alone), peak RSS {:.0} MiB (on {:.0} MB: {:.0} MiB)",
            size as f64 / 1e9,
            run.wall,
            wall_rate,
            wall_rate / engine,
            run.max_rss_mib,
            bytes as f64 / 1e6,
            rows.last()
                .map_or(0.0, |r| r["command_max_rss_mib"].as_f64().unwrap()),
        );
        results.insert(
            "big".into(),
            serde_json::json!({"bytes": size, "tokens": run.tokens, "seconds": run.wall,
                "wall_mtok_s": wall_rate, "wall_over_engine": wall_rate / engine,
                "max_rss_mib": run.max_rss_mib}),
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(results)).unwrap(),
    )
    .unwrap();
}
