//! `shardflow inspect`: per-shard sequence, document, length and token id statistics, and a
//! check of every id against a vocabulary size.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{Out, note};
use crate::shard::{resolve_prefix, shard_prefixes};
use crate::{Dtype, IndexedShard, LengthStats, Result, Shard};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Shard prefixes (PREFIX.idx + PREFIX.bin; `PREFIX.idx` is accepted too), or directories
    /// of shards.
    #[arg(required = true)]
    prefixes: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Read every .bin whole and check it against the hash its .idx records; the smallest and
    /// largest id are then those of the whole .bin, not only of the sequences the .idx names.
    #[arg(long)]
    verify: bool,
    /// Fail (status 1, after the report) when a token id is negative or not below N, naming
    /// the first such id of each shard: its sequence and position.
    #[arg(long, value_name = "N")]
    vocab_size: Option<u64>,
}

/// What `inspect` reports of one shard.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub prefix: PathBuf,
    pub dtype: String,
    pub documents: u64,
    #[serde(flatten)]
    pub lengths: LengthStats,
    /// The smallest token id (`None` for a shard without tokens).
    pub min_id: Option<i64>,
    /// The largest token id.
    pub max_id: Option<i64>,
    /// `verified` (the whole .bin matches its hash), `sampled` (the checks on open only),
    /// `none` (no shardflow trailer to check against).
    pub integrity: &'static str,
}

/// The first token id of a shard outside `0..vocab_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfVocab {
    /// The sequence that holds it.
    pub sequence: usize,
    /// Its 0-based position in the sequence.
    pub position: usize,
    /// The id.
    pub id: i64,
}

impl Report {
    /// The report of the shard at `prefix` (`verify`: hash the whole .bin and take the id range
    /// from all of it).
    ///
    /// # Errors
    ///
    /// [`IndexedShard::open`]'s and [`IndexedShard::verify`]'s.
    pub fn of(prefix: &Path, verify: bool) -> Result<Self> {
        Self::checked(prefix, verify, None).map(|(report, _)| report)
    }

    /// [`Report::of`], and the first id outside `0..vocab_size` when one is given, found in
    /// the same pass over the sequences.
    ///
    /// # Errors
    ///
    /// As [`Report::of`].
    pub fn checked(
        prefix: &Path,
        verify: bool,
        vocab_size: Option<u64>,
    ) -> Result<(Self, Option<OutOfVocab>)> {
        let shard = IndexedShard::open(prefix)?;
        let integrity = match (shard.trailer().is_some(), verify) {
            (false, _) => "none",
            (true, false) => "sampled",
            (true, true) => {
                shard.verify()?;
                "verified"
            }
        };
        let dtype = shard.dtype();
        let limit = vocab_size.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut ids = IdRange::default();
        let mut bad = None;
        for i in 0..shard.len() {
            let seq = shard.get(i).expect("i is below the shard's length");
            let range = IdRange::of(seq.as_bytes(), dtype);
            if let (Some(limit), None) = (limit, &bad)
                && range.outside(limit)
            {
                let position = seq
                    .iter()
                    .position(|id| id < 0 || id >= limit)
                    .expect("the sequence's id range passes the limit");
                bad = Some(OutOfVocab {
                    sequence: i,
                    position,
                    id: seq.get(position).expect("the position is in the sequence"),
                });
            }
            ids = ids.merge(range);
        }
        if verify {
            // Bytes no sequence names count too: a checked .bin holds nothing unexamined.
            ids = IdRange::of(shard.bin_bytes(), dtype);
        }
        let report = Report {
            prefix: resolve_prefix(prefix),
            dtype: dtype.to_string(),
            documents: shard.documents() as u64,
            lengths: LengthStats::of(&shard),
            min_id: ids.bounds().map(|(lo, _)| lo),
            max_id: ids.bounds().map(|(_, hi)| hi),
            integrity,
        };
        Ok((report, bad))
    }
}

/// The smallest and largest of some token ids (empty: no ids).
#[derive(Debug, Clone, Copy)]
struct IdRange {
    min: i64,
    max: i64,
}

impl Default for IdRange {
    fn default() -> Self {
        IdRange {
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl IdRange {
    /// The range of the ids stored back to back in `bytes` (a trailing partial id is ignored).
    fn of(bytes: &[u8], dtype: Dtype) -> Self {
        // One loop per dtype, so that each compiles to a plain vectorizable min/max.
        fn fold<const N: usize>(bytes: &[u8], read: impl Fn([u8; N]) -> i64) -> IdRange {
            bytes
                .chunks_exact(N)
                .map(|c| read(c.try_into().expect("chunks_exact yields N bytes")))
                .fold(IdRange::default(), |r, id| IdRange {
                    min: r.min.min(id),
                    max: r.max.max(id),
                })
        }
        match dtype {
            Dtype::U8 => fold::<1>(bytes, |b| b[0] as i64),
            Dtype::I8 => fold::<1>(bytes, |b| b[0] as i8 as i64),
            Dtype::I16 => fold::<2>(bytes, |b| i16::from_le_bytes(b) as i64),
            Dtype::U16 => fold::<2>(bytes, |b| u16::from_le_bytes(b) as i64),
            Dtype::I32 => fold::<4>(bytes, |b| i32::from_le_bytes(b) as i64),
            Dtype::U32 => fold::<4>(bytes, |b| u32::from_le_bytes(b) as i64),
            Dtype::I64 => fold::<8>(bytes, i64::from_le_bytes),
        }
    }

    fn merge(self, other: IdRange) -> IdRange {
        IdRange {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// `(min, max)`, or `None` when no id was seen.
    fn bounds(self) -> Option<(i64, i64)> {
        (self.min <= self.max).then_some((self.min, self.max))
    }

    /// Whether an id lies outside `0..limit`.
    fn outside(self, limit: i64) -> bool {
        self.bounds().is_some_and(|(lo, hi)| lo < 0 || hi >= limit)
    }
}

pub fn run(args: InspectArgs) -> Result<ExitCode> {
    let mut prefixes = Vec::new();
    for p in &args.prefixes {
        if p.is_dir() {
            prefixes.extend(shard_prefixes(p)?);
        } else {
            prefixes.push(p.clone());
        }
    }
    let mut reports = Vec::with_capacity(prefixes.len());
    let mut bad = Vec::new();
    for p in &prefixes {
        let (report, out_of_vocab) = Report::checked(p, args.verify, args.vocab_size)?;
        if let Some(o) = out_of_vocab {
            bad.push((report.prefix.clone(), o));
        }
        reports.push(report);
    }
    let mut out = Out::new();
    if args.json {
        let text = serde_json::to_string_pretty(&reports).expect("reports serialize");
        out.text(&text)?;
        out.text("\n")?;
    } else {
        out.text(&table(&reports))?;
    }
    out.finish()?;
    let Some(n) = args.vocab_size else {
        return Ok(ExitCode::SUCCESS);
    };
    for (prefix, o) in &bad {
        note(format_args!(
            "error: {}: sequence {} position {}: token id {} is outside the vocabulary \
             (--vocab-size {n}: ids 0..{n})",
            prefix.display(),
            o.sequence,
            o.position,
            o.id
        ));
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The reports as an aligned text table.
pub fn table(reports: &[Report]) -> String {
    let mut rows = vec![
        [
            "shard",
            "dtype",
            "sequences",
            "documents",
            "tokens",
            "min",
            "mean",
            "p50",
            "p95",
            "max",
            "min_id",
            "max_id",
            "integrity",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let id = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in reports {
        let l = &r.lengths;
        rows.push(vec![
            r.prefix.display().to_string(),
            r.dtype.clone(),
            l.sequences.to_string(),
            r.documents.to_string(),
            l.tokens.to_string(),
            l.min.to_string(),
            format!("{:.1}", l.mean),
            l.p50.to_string(),
            l.p95.to_string(),
            l.max.to_string(),
            id(r.min_id),
            id(r.max_id),
            r.integrity.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
