//! Where the example's data comes from: the built-in mixture (web, code, books; written once
//! under `DIR/data`), or a directory of shards written by `shardflow write` (`--data DIR`), one
//! dataset whose vocabulary is the tokenizer's (`--vocab N`) or found by reading every id.

use std::error::Error;
use std::path::Path;

use shardflow::loader::DatasetConfig;
use shardflow::shard::Dataset;
use shardflow::shard::synthetic::SyntheticCorpus;

/// The vocabulary of the built-in mixture: small, so that a CPU step takes milliseconds.
pub const BUILTIN_VOCAB: usize = 512;

/// The datasets to train on and the model's vocabulary size.
pub struct Data {
    pub datasets: Vec<DatasetConfig>,
    pub vocab: usize,
}

/// The built-in mixture with a 512-token vocabulary, written once under `dir/data`.
pub fn builtin(dir: &Path) -> Result<Data, Box<dyn Error>> {
    let mut corpus = SyntheticCorpus::demo();
    for d in &mut corpus.datasets {
        d.vocab = BUILTIN_VOCAB as u32;
        d.documents /= 4;
    }
    let data = dir.join("data");
    if !data.join("web.idx").exists() {
        std::fs::create_dir_all(&data)?;
        corpus.write(&data, |_| {})?;
    }
    let weights = [("web", 0.5), ("code", 0.3), ("books", 0.2)];
    Ok(Data {
        datasets: weights
            .iter()
            .map(|(name, w)| DatasetConfig::new(data.join(name)).with_weight(*w))
            .collect(),
        vocab: BUILTIN_VOCAB,
    })
}

/// The shards in `dir` (`PREFIX.idx/.bin` or a split `PREFIX_00000`, ... series) as one
/// dataset. Without `vocab`, the vocabulary is the largest id in the shards plus one, found by
/// reading them whole; give the tokenizer's size (`shardflow inspect --vocab-size N` checks the
/// shards against it) to skip that.
pub fn from_dir(dir: &Path, vocab: Option<usize>) -> Result<Data, Box<dyn Error>> {
    let shards = Dataset::open_dir(dir)?;
    if shards.is_empty() {
        return Err(format!("{}: the shards hold no sequence", dir.display()).into());
    }
    let largest = (0..shards.len())
        .filter_map(|i| shards.get(i))
        .flat_map(|s| s.iter().max())
        .max()
        .unwrap_or(0);
    if largest < 0 {
        return Err(format!("{}: negative token ids", dir.display()).into());
    }
    let vocab = match vocab {
        Some(v) if (largest as usize) < v => v,
        Some(v) => {
            return Err(format!(
                "{}: id {largest} is outside a vocabulary of {v} (--vocab)",
                dir.display()
            )
            .into());
        }
        None => largest as usize + 1,
    };
    Ok(Data {
        datasets: vec![DatasetConfig::new(dir)],
        vocab,
    })
}
