//! The CUDA kernels' logic without a GPU: `kernels/*.cu` compiled as C++20 on the host with
//! `tests/cpu_kernels/cuda_on_cpu.hpp` (CUDA's built-ins: thread and block indexes, shared
//! memory, `__syncthreads` over one host thread per CUDA thread, real atomics) and run by
//! `tests/cpu_kernels/driver.cpp` on the conformance cases, against the host reference:
//! `pad_collate` against `collate::pad_host` for the batches the device sinks are checked with
//! (padded and packed, i32 and u32 ids, every field set), and against index arrays that point
//! anywhere; `sketch` against the host sketch, bucket for bucket, its sums in the documented
//! thread order. Each on several grids: the launch's own, one smaller than the data
//! (grid-stride), odd block sizes, more threads than data.
//!
//! The driver is built with `c++ -std=c++20 -O1 -pthread`, with AddressSanitizer and UBSan
//! where they link (a read past any buffer fails the test), into Cargo's target tmp directory,
//! once per source version. Without a C++ compiler each test prints why it skips, unless
//! `SHARDFLOW_REQUIRE_CXX=1` (CI), which makes it fail, as does a build without the sanitizers
//! there. `CXX` picks the compiler.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use shardflow::TokenId;
use shardflow::collate::{CollateConfig, Pool, StagedBatch, pad_host};

use common::conformance;

const REQUIRE: &str = "SHARDFLOW_REQUIRE_CXX";

/// The driver's flags; the sanitizers are tried first.
const FLAGS: &[&str] = &["-std=c++20", "-O1", "-pthread", "-Wall", "-Wextra"];
const SANITIZERS: &[&str] = &["-fsanitize=address,undefined", "-fno-sanitize-recover=all"];

/// The built driver, or the reason there is none (no compiler).
fn driver() -> Option<&'static Path> {
    static DRIVER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = DRIVER.get_or_init(build);
    common::available(REQUIRE, "no C++ compiler", built.as_deref())
}

/// The C++ compiler: `CXX`, else the first of `c++`, `g++`, `clang++` that runs.
fn compiler() -> Result<(String, String), String> {
    let candidates: Vec<String> = match std::env::var("CXX") {
        Ok(cxx) if !cxx.is_empty() => vec![cxx],
        _ => ["c++", "g++", "clang++"].map(String::from).to_vec(),
    };
    for cxx in &candidates {
        if let Ok(out) = Command::new(cxx).arg("--version").output()
            && out.status.success()
        {
            return Ok((
                cxx.clone(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
    }
    Err(format!(
        "none of {candidates:?} runs (set CXX to a C++20 compiler)"
    ))
}

/// Builds the driver into Cargo's target tmp directory, named by a hash of the sources, the
/// compiler and the flags (an existing one is reused, older ones removed). Panics with the
/// compiler's output when the sources do not compile.
fn build() -> Result<PathBuf, String> {
    let (cxx, version) = compiler()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        root.join("tests/cpu_kernels/driver.cpp"),
        root.join("tests/cpu_kernels/cuda_on_cpu.hpp"),
        root.join("kernels/pad_collate.cu"),
        root.join("kernels/sketch.cu"),
    ];
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpu-kernels");
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for sanitize in [true, false] {
        let mut flags: Vec<&str> = FLAGS.to_vec();
        if sanitize {
            flags.extend(SANITIZERS);
        }
        let mut hash = Fnv::default();
        for s in &sources {
            hash.add(&std::fs::read(s).unwrap());
        }
        hash.add(cxx.as_bytes());
        hash.add(version.as_bytes());
        hash.add(flags.join(" ").as_bytes());
        let path = dir.join(format!("driver-{:016x}", hash.0));
        if path.exists() {
            return Ok(path);
        }
        let tmp = dir.join(format!("driver-{:016x}.{}.tmp", hash.0, std::process::id()));
        let out = Command::new(&cxx)
            .args(&flags)
            .arg("-I")
            .arg(root.join("kernels"))
            .arg("-I")
            .arg(root.join("tests/cpu_kernels"))
            .arg(&sources[0])
            .arg("-o")
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
        if out.status.success() {
            std::fs::rename(&tmp, &path).unwrap();
            // Drivers of earlier sources go (one stays per source version otherwise).
            for old in std::fs::read_dir(&dir).unwrap().flatten() {
                let name = old.file_name().to_string_lossy().into_owned();
                if old.path() != path && name.starts_with("driver-") && !name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(old.path());
                }
            }
            if !failures.is_empty() {
                let why = failures.join("\n");
                if std::env::var(REQUIRE).as_deref() == Ok("1") {
                    panic!(
                        "{REQUIRE}=1, but the driver does not build with the sanitizers:\n{why}"
                    );
                }
                eprintln!("note: the kernel driver runs without sanitizers: {why}");
            }
            return Ok(path);
        }
        let _ = std::fs::remove_file(&tmp);
        failures.push(format!(
            "{cxx} {}:\n{}{}",
            flags.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    panic!(
        "the CUDA kernels do not compile as C++ on the host:\n{}",
        failures.join("\n")
    );
}

/// FNV-1a, 64 bits: a hash that stays the same from one toolchain to the next.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One launch for the driver (see driver.cpp for the format).
struct Job(Vec<u32>);

impl Job {
    fn new(kind: u32, (grid, block): (usize, usize)) -> Job {
        Job(vec![kind, grid as u32, block as u32])
    }

    fn word(mut self, w: u32) -> Job {
        self.0.push(w);
        self
    }

    fn array(mut self, a: &[u32]) -> Job {
        self.0.push(a.len() as u32);
        self.0.extend_from_slice(a);
        self
    }
}

/// Runs `jobs` in one driver process: each one's result bytes.
fn run(driver: &Path, jobs: &[Job]) -> Vec<Vec<u8>> {
    let mut child = Command::new(driver)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input: Vec<u8> = jobs
        .iter()
        .flat_map(|j| bytemuck::cast_slice::<u32, u8>(&j.0).to_vec())
        .collect();
    let writer = std::thread::spawn(move || {
        // A driver that dies early closes the pipe: its status and stderr tell why.
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    writer.join().unwrap();
    assert!(
        status.success(),
        "the kernel driver failed ({status}):\n{err}"
    );
    let mut results = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let magic = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
        assert_eq!(magic, 0x600d_f00d, "result {} out of step", results.len());
        let len = u64::from_le_bytes(out[at + 4..at + 12].try_into().unwrap()) as usize;
        results.push(out[at + 12..at + 12 + len].to_vec());
        at += 12 + len;
    }
    assert_eq!(results.len(), jobs.len(), "one result per job");
    results
}

/// Grids for `work` items (cells or values), as (blocks, threads per block): the launch's own
/// (one thread an item, blocks of 256), one much smaller than the data (grid-stride), an odd
/// one, and more threads than items.
fn grids(work: usize, own: (usize, usize)) -> [(usize, usize); 4] {
    [own, (1, 32), (3, 7), (work.div_ceil(64) + 2, 64)]
}

/// `pad_collate`'s inputs for `staged` under `config`, as the CUDA sink builds them
/// (`device::ragged`): ids as their bits, the non-empty pieces of each row, and the kernel's
/// words (pad bits, ignore bits, fields).
struct PadInputs {
    words: [u32; 5],
    tokens: Vec<u32>,
    offsets: Vec<u32>,
    row_pieces: Vec<u32>,
    pieces: Vec<u32>,
}

impl PadInputs {
    fn of<T: TokenId>(staged: &StagedBatch<T>, config: &CollateConfig) -> PadInputs {
        let bits = |t: T| -> u32 { bytemuck::cast_slice::<T, u32>(&[t])[0] };
        let rows = staged.rows;
        let mut row_pieces = Vec::with_capacity(rows + 1);
        let mut pieces = Vec::new();
        let mut next = 0;
        for r in 0..rows {
            row_pieces.push((pieces.len() / 2) as u32);
            while next < staged.docs.len() && staged.docs[next].row as usize == r {
                let d = &staged.docs[next];
                if d.len > 0 {
                    pieces.extend([d.start, d.len]);
                }
                next += 1;
            }
        }
        row_pieces.push((pieces.len() / 2) as u32);
        let pad = T::try_from(config.pad_id).ok().unwrap_or_default();
        let fields = config.attention_mask as u32
            | (config.labels as u32) << 1
            | (config.position_ids as u32) << 2;
        PadInputs {
            words: [
                rows as u32,
                staged.width as u32,
                bits(pad),
                bits(T::IGNORE),
                fields,
            ],
            tokens: staged.tokens.iter().map(|&t| bits(t)).collect(),
            offsets: staged.offsets.to_vec(),
            row_pieces,
            pieces,
        }
    }

    fn job(&self, grid: (usize, usize)) -> Job {
        let mut job = Job::new(1, grid);
        for w in self.words {
            job = job.word(w);
        }
        job.array(&self.tokens)
            .array(&self.offsets)
            .array(&self.row_pieces)
            .array(&self.pieces)
    }
}

/// The fields of a `pad_collate` result: ids, then mask, labels, positions where `fields` has
/// their bits.
fn split(result: &[u8], cells: usize, fields: u32) -> [&[u8]; 4] {
    let mut at = 0;
    let mut take = |len: usize| {
        let part = &result[at..at + len];
        at += len;
        part
    };
    let ids = take(4 * cells);
    let mask = take(if fields & 1 != 0 { cells } else { 0 });
    let labels = take(if fields & 2 != 0 { 4 * cells } else { 0 });
    let positions = take(if fields & 4 != 0 { 4 * cells } else { 0 });
    assert_eq!(at, result.len(), "no bytes past the fields");
    [ids, mask, labels, positions]
}

/// Every conformance batch (`T` ids) through `pad_collate` on four grids equals `pad_host`'s,
/// field for field.
fn pad_collate_conforms<T: TokenId>() {
    let Some(driver) = driver() else { return };
    let pool = Pool::new();
    let mut jobs = Vec::new();
    // Per job: what it was, its fields word, the index of its host batch.
    let mut cases = Vec::new();
    let mut batches = Vec::new();
    for (c, config) in conformance::configs().iter().enumerate() {
        for rows in [1, 2, 5, 9] {
            let seed = (c * 100 + rows) as u64;
            let staged = conformance::staged::<T>(seed, config, rows, &pool);
            let inputs = PadInputs::of(&staged, config);
            let want = pad_host(staged, config, &pool);
            let cells = want.rows * want.width;
            for grid in grids(cells, (cells.div_ceil(256), 256)) {
                jobs.push(inputs.job(grid));
                let what = format!("{} ids, grid {grid:?}, seed {seed}, {config:?}", T::NAME);
                cases.push((what, inputs.words[4], batches.len()));
            }
            batches.push(want_bytes(&want));
        }
    }
    let results = run(driver, &jobs);
    for (result, (what, fields, b)) in results.iter().zip(&cases) {
        let want = &batches[*b];
        let got = split(result, want[0].len() / 4, *fields);
        for (f, name) in ["ids", "attention mask", "labels", "position ids"]
            .iter()
            .enumerate()
        {
            assert_eq!(got[f], &want[f][..], "{name}: {what}");
        }
    }
    assert!(
        results.len() >= 4 * 256,
        "{} launches compared",
        results.len()
    );
}

/// A host batch's ids, mask, labels and positions as bytes (empty when the field is off).
fn want_bytes<T: TokenId>(b: &shardflow::collate::Batch<T>) -> [Vec<u8>; 4] {
    let bytes = |f: &Option<shardflow::collate::PooledBuf<T>>| {
        f.as_ref()
            .map(|f| f.as_bytes().to_vec())
            .unwrap_or_default()
    };
    [
        b.ids.as_bytes().to_vec(),
        b.attention_mask
            .as_ref()
            .map(|m| m.as_bytes().to_vec())
            .unwrap_or_default(),
        bytes(&b.labels),
        bytes(&b.position_ids),
    ]
}

#[test]
fn pad_collate_on_the_cpu_equals_pad_host_for_i32_ids() {
    pad_collate_conforms::<i32>();
}

#[test]
fn pad_collate_on_the_cpu_equals_pad_host_for_u32_ids() {
    pad_collate_conforms::<u32>();
}

#[test]
fn pad_collate_on_the_cpu_keeps_index_arrays_that_point_anywhere_inside_the_buffers() {
    let Some(driver) = driver() else { return };
    let pool = Pool::new();
    // Index arrays of the right lengths (the launch checks those) holding anything: the clamps
    // keep every read inside `tokens` and `pieces` (AddressSanitizer fails the driver
    // otherwise), and every output is a pad, a token of the batch, or a position in the row.
    type Break = fn(&mut PadInputs);
    let breaks: [(&str, Break); 12] = [
        ("a row past the tokens", |p| {
            p.offsets[1] = p.tokens.len() as u32 + 5
        }),
        ("offsets that fall", |p| {
            let n = p.offsets.len();
            p.offsets.swap(1, n - 1);
        }),
        ("every offset u32::MAX", |p| p.offsets.fill(u32::MAX)),
        ("half the tokens", |p| p.tokens.truncate(p.tokens.len() / 2)),
        ("no tokens", |p| p.tokens.clear()),
        ("pieces past the pieces", |p| {
            let n = p.row_pieces.len();
            p.row_pieces[n - 1] = u32::MAX;
            p.row_pieces[0] = 1000;
        }),
        ("piece ranges that fall", |p| p.row_pieces.reverse()),
        ("pieces that wrap", |p| {
            for pair in p.pieces.chunks_mut(2) {
                pair[0] = u32::MAX - 1;
                pair[1] = 5;
            }
        }),
        ("pieces of u32::MAX tokens", |p| {
            for pair in p.pieces.chunks_mut(2) {
                pair[1] = u32::MAX;
            }
        }),
        ("unsorted pieces", |p| p.pieces.reverse()),
        ("half a piece", |p| p.pieces.push(3)),
        ("no pieces", |p| p.pieces.clear()),
    ];
    let mut jobs = Vec::new();
    let mut cases = Vec::new();
    for (c, config) in conformance::configs().iter().enumerate() {
        // Every field on, padded and packed, two widths.
        let all_fields = config.attention_mask && config.labels && config.position_ids;
        if !(all_fields && [7, 33].contains(&config.seq_len)) {
            continue;
        }
        let staged = conformance::staged::<u32>(c as u64, config, 5, &pool);
        for (what, damage) in &breaks {
            let mut inputs = PadInputs::of(&staged, config);
            damage(&mut inputs);
            let cells = staged.rows * staged.width;
            for grid in [(cells.div_ceil(256), 256), (1, 32)] {
                jobs.push(inputs.job(grid));
                let tokens: std::collections::HashSet<u32> =
                    inputs.tokens.iter().copied().collect();
                cases.push((
                    format!("{what}, grid {grid:?}, {config:?}"),
                    tokens,
                    inputs.words,
                ));
            }
        }
    }
    assert!(jobs.len() >= 8 * breaks.len(), "{} launches", jobs.len());
    let results = run(driver, &jobs);
    let word = |b: &[u8], i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
    for (result, (what, tokens, [rows, width, pad, ignore, fields])) in results.iter().zip(&cases) {
        let cells = (*rows * *width) as usize;
        let [ids, mask, labels, positions] = split(result, cells, *fields);
        for (i, &m) in mask.iter().enumerate().take(cells) {
            let (id, label) = (word(ids, i), word(labels, i));
            assert!(id == *pad || tokens.contains(&id), "{what}: id {id} at {i}");
            assert!(m <= 1, "{what}: mask {m} at {i}");
            assert!(
                label == *ignore || tokens.contains(&label),
                "{what}: label {label}"
            );
            assert!(word(positions, i) < *width, "{what}: position at {i}");
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod sketch {
    use shardflow::metrics::device::{bucket_table, initial_counts, sketch_groups, sketches_from};
    use shardflow::metrics::{Mapping, Sketch};

    use super::common::device_suite as suite;
    use super::{Job, driver, grids, run};

    /// The driver's kinds: the kernel as NVRTC compiles it, and with a 16-slot shared table.
    const FULL: u32 = 2;
    const TINY: u32 = 3;

    /// The sketches `sketch.cu` builds from `values` (f32 bits) and their datasets on `grid`,
    /// through the host half the CUDA and wgpu paths share (`metrics::device::sketches_from`).
    fn sketches(
        kind: u32,
        grid: (usize, usize),
        map: &Mapping,
        values: &[u32],
        owners: &[u32],
        names: &[String],
    ) -> shardflow::Result<Vec<Sketch>> {
        let driver = driver().expect("checked by the caller");
        let table = bucket_table(map);
        let counts = initial_counts(names.len(), map.buckets());
        let job = Job::new(kind, grid)
            .word(values.len() as u32)
            .word(names.len() as u32)
            .word(table.len() as u32)
            .array(values)
            .array(owners)
            .array(&table)
            .array(&counts);
        let result = run(driver, &[job]).remove(0);
        let (counts_bytes, partials_bytes) = result.split_at(4 * counts.len());
        let counts: Vec<u32> = bytemuck::pod_collect_to_vec(counts_bytes);
        let partials: Vec<f64> = bytemuck::pod_collect_to_vec(partials_bytes);
        let threads = grid.0 * grid.1;
        assert_eq!(partials.len(), names.len() * threads);
        sketches_from(map, &counts, &partials, threads, names)
    }

    /// The sums in the order the kernel documents: thread g of T adds values g, g + T, ... in
    /// runs of one dataset into its partial of that dataset; the partials add in thread order.
    fn sums_in_thread_order(values: &[u32], owners: &[u32], datasets: usize, t: usize) -> Vec<f64> {
        let mut partials = vec![0.0f64; datasets * t];
        for g in 0..t {
            let mut run: Option<(usize, f64)> = None;
            for i in (g..values.len()).step_by(t) {
                let (d, v) = (owners[i] as usize, f32::from_bits(values[i]));
                if d >= datasets || !v.is_finite() {
                    continue;
                }
                match &mut run {
                    Some((r, sum)) if *r == d => *sum += v as f64,
                    _ => {
                        if let Some((r, sum)) = run {
                            partials[r * t + g] += sum;
                        }
                        run = Some((d, 0.0 + v as f64));
                    }
                }
            }
            if let Some((r, sum)) = run {
                partials[r * t + g] += sum;
            }
        }
        (0..datasets)
            .map(|d| partials[d * t..(d + 1) * t].iter().fold(0.0, |a, p| a + p))
            .collect()
    }

    fn names() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    /// Checks `kind` on the suite's values for `alpha` over `grids`: the host's sketches bucket
    /// for bucket, the sums exactly in the documented order.
    fn conforms(kind: u32, alpha: f64, grids: &[(usize, usize)]) {
        let map = Mapping::new(alpha);
        let (values, owners) = suite::sketch_inputs(&map, &bucket_table(&map));
        for &grid in grids {
            let what = format!("kind {kind}, alpha {alpha}, grid {grid:?}");
            let got = sketches(kind, grid, &map, &values, &owners, &names()).unwrap();
            suite::sketches_equal_the_host(&map, &values, &owners, &got, &what);
            let sums = sums_in_thread_order(&values, &owners, 3, grid.0 * grid.1);
            for (d, (sketch, sum)) in got.iter().zip(sums).enumerate() {
                assert_eq!(sketch.sum.to_bits(), sum.to_bits(), "{what}, dataset {d}");
            }
        }
    }

    #[test]
    fn sketch_on_the_cpu_equals_the_host_sketch_bucket_for_bucket() {
        if driver().is_none() {
            return;
        }
        for alpha in [0.01, 1e-3] {
            let n = suite::sketch_inputs(&Mapping::new(alpha), &bucket_table(&Mapping::new(alpha)))
                .0
                .len();
            conforms(FULL, alpha, &[(sketch_groups(n), 256), (1, 32), (3, 7)]);
        }
        // More threads than values.
        let map = Mapping::new(0.05);
        let n = suite::sketch_inputs(&map, &bucket_table(&map)).0.len();
        conforms(FULL, 0.05, &grids(n, (sketch_groups(n), 256)));
    }

    #[test]
    fn sketch_on_the_cpu_with_a_full_shared_table_spills_to_global_atomics_exactly() {
        if driver().is_none() {
            return;
        }
        // 16 slots for thousands of words: most take their atomics in global memory, some slots
        // hold a word twice.
        conforms(TINY, 0.01, &[(2, 256), (1, 32), (5, 64)]);
    }

    #[test]
    fn sketch_on_the_cpu_refuses_a_nan_by_dataset_and_skips_unknown_datasets() {
        if driver().is_none() {
            return;
        }
        let map = Mapping::new(0.01);
        let names = vec!["web".to_string(), "code".to_string()];
        let values = [1.0f32, f32::NAN, 2.0, -3.0].map(f32::to_bits);
        for grid in [(1, 256), (1, 1)] {
            let e = sketches(FULL, grid, &map, &values, &[0, 1, 0, 0], &names).unwrap_err();
            assert!(e.to_string().contains("dataset code"), "{e}");
            // A dataset index past the names is skipped, NaN or not.
            let got = sketches(FULL, grid, &map, &values, &[0, 7, 9, 0], &names).unwrap();
            assert_eq!((got[0].count, got[0].sum, got[1].count), (2, -2.0, 0));
            assert_eq!((got[0].min, got[0].max), (Some(-3.0), Some(1.0)));
        }
    }
}
