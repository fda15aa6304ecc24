//! `shardflow inspect`: per-shard sequence, document and length statistics.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Out;
use crate::shard::{resolve_prefix, shard_prefixes};
use crate::{IndexedShard, LengthStats, Result, Shard};

/// What `inspect` reports of one shard.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub prefix: PathBuf,
    pub dtype: String,
    pub documents: u64,
    #[serde(flatten)]
    pub lengths: LengthStats,
    /// `verified` (the whole .bin matches its hash), `sampled` (the checks on open only),
    /// `none` (no shardflow trailer to check against).
    pub integrity: &'static str,
}

impl Report {
    pub fn of(prefix: &Path, verify: bool) -> Result<Self> {
        let shard = IndexedShard::open(prefix)?;
        let integrity = match (shard.trailer().is_some(), verify) {
            (false, _) => "none",
            (true, false) => "sampled",
            (true, true) => {
                shard.verify()?;
                "verified"
            }
        };
        Ok(Report {
            prefix: resolve_prefix(prefix),
            dtype: shard.dtype().to_string(),
            documents: shard.documents() as u64,
            lengths: LengthStats::of(&shard),
            integrity,
        })
    }
}

pub fn run(paths: &[PathBuf], json: bool, verify: bool) -> Result<ExitCode> {
    let mut prefixes = Vec::new();
    for p in paths {
        if p.is_dir() {
            prefixes.extend(shard_prefixes(p)?);
        } else {
            prefixes.push(p.clone());
        }
    }
    let reports = prefixes
        .iter()
        .map(|p| Report::of(p, verify))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Out::new();
    if json {
        let text = serde_json::to_string_pretty(&reports).expect("reports serialize");
        out.text(&text)?;
        out.text("\n")?;
    } else {
        out.text(&table(&reports))?;
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
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
            "integrity",
        ]
        .map(String::from)
        .to_vec(),
    ];
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
