//! The `--data` argument of `plan` and `bench`: `[NAME=]PATH[:WEIGHT]`, where PATH is a shard
//! prefix (`data/web`, or `data/web.idx`) or a directory of shards (one dataset over all of
//! them), or, for `plan`, `NAME=SIZE[:WEIGHT]`: a dataset of SIZE samples with no file.
//!
//! A dataset is named NAME, or after its prefix's or directory's file name. When two of those
//! names collide (`a/web` and `b/web`), each of them is named by its path as given instead.

use std::path::{Path, PathBuf};

use crate::order::{DatasetSpec, Shuffle};
use crate::shard::{Dataset, prefix_name, resolve_prefix};
use crate::{Error, Result};

/// One parsed `--data` value.
#[derive(Debug)]
pub struct DataArg {
    /// The name given with `NAME=`.
    name: Option<String>,
    /// What the name defaults to.
    default_name: String,
    /// The path as given, for naming it when default names collide.
    path_name: String,
    target: Target,
    weight: f64,
}

#[derive(Debug)]
enum Target {
    Size(u64),
    Data(Dataset),
}

/// Parses every `--data` value: sizes are allowed only when `sizes` is set.
///
/// # Errors
///
/// [`Error::Config`] naming the value for an empty name, a size without a name or too large,
/// a weight that is not a number, two weights, a URL; a shard's open error.
pub fn parse_all(specs: &[String], sizes: bool) -> Result<Vec<DataArg>> {
    let mut args = specs
        .iter()
        .map(|s| parse(s, sizes))
        .collect::<Result<Vec<_>>>()?;
    // Default names that collide are replaced by the paths as given.
    let defaults: Vec<String> = args
        .iter()
        .filter(|a| a.name.is_none())
        .map(|a| a.default_name.clone())
        .collect();
    for a in args.iter_mut().filter(|a| a.name.is_none()) {
        if defaults.iter().filter(|d| **d == a.default_name).count() > 1 {
            a.name = Some(a.path_name.clone());
        }
    }
    Ok(args)
}

impl DataArg {
    /// The dataset's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.default_name)
    }

    /// The mixture weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The dataset as the order sees it.
    pub fn spec(&self) -> DatasetSpec {
        let len = match &self.target {
            Target::Size(n) => *n,
            Target::Data(d) => d.len() as u64,
        };
        DatasetSpec::new(self.name(), len, self.weight)
    }

    /// The shards, for a dataset given by path (`None` for a size).
    pub fn dataset(&self) -> Option<&Dataset> {
        match &self.target {
            Target::Data(d) => Some(d),
            Target::Size(_) => None,
        }
    }
}

/// The `--shuffle` value parser of `plan`: `none`, `full` or `block:N` (N >= 1), checked while
/// the arguments are parsed, so a bad value is a usage error (status 2) in clap's words.
///
/// # Errors
///
/// What the value should be.
pub fn shuffle_arg(s: &str) -> std::result::Result<Shuffle, String> {
    match s {
        "none" => Ok(Shuffle::None),
        "full" => Ok(Shuffle::Full),
        _ => s
            .strip_prefix("block:")
            .and_then(|n| n.parse().ok())
            .filter(|&n: &u64| n > 0)
            .map(Shuffle::Block)
            .ok_or_else(|| "expected none, full or block:N with N >= 1".into()),
    }
}

/// The URL scheme `spec` starts with (after an optional `NAME=`), as in `s3://bucket/web`.
fn url_scheme(spec: &str) -> Option<&str> {
    let (head, _) = spec.split_once("://")?;
    let scheme = match head.split_once('=') {
        Some((name, scheme)) if !name.contains(['/', '\\']) => scheme,
        _ => head,
    };
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn parse(spec: &str, sizes: bool) -> Result<DataArg> {
    let bad = |why: String| Error::Config(format!("--data {spec}: {why}"));
    if let Some(scheme) = url_scheme(spec)
        && !Path::new(spec).exists()
    {
        return Err(bad(format!(
            "{scheme}:// URLs are not supported; give a local shard prefix or directory (copy \
             the shards to a local or mounted file system first)"
        )));
    }
    let (body, weight) = match spec.rsplit_once(':') {
        Some((body, w)) => match w.trim().parse::<f64>() {
            Ok(w) => (body, w),
            Err(_) if Path::new(spec).exists() || shard_exists(Path::new(spec)) => (spec, 1.0),
            Err(_) => return Err(bad(format!("the weight {w} is not a number"))),
        },
        None => (spec, 1.0),
    };
    let (name, rest) = match body.split_once('=') {
        Some((name, rest)) if !name.contains(['/', '\\']) => (Some(name), rest),
        _ => (None, body),
    };
    if name.is_some_and(str::is_empty) {
        return Err(bad("the dataset name before '=' is empty".into()));
    }
    if rest.is_empty() {
        return Err(bad("no shard, directory or size given".into()));
    }
    let numeric = rest.bytes().all(|b| b.is_ascii_digit());
    let signed = rest
        .strip_prefix('-')
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if sizes && (numeric || signed) && !shard_exists(Path::new(rest)) {
        let size: u64 = rest
            .parse()
            .map_err(|_| bad(format!("the size {rest} is not a whole number below 2^64")))?;
        let name = name.ok_or_else(|| {
            bad(format!(
                "a dataset of {size} samples needs a name, like NAME={size}"
            ))
        })?;
        return Ok(DataArg {
            name: Some(name.to_string()),
            default_name: name.to_string(),
            path_name: name.to_string(),
            target: Target::Size(size),
            weight,
        });
    }
    let path = PathBuf::from(rest);
    if rest.contains(':') && !path.exists() && !shard_exists(&path) {
        // `a=10:1:2`: two weights, or a size or path with a stray colon.
        let forms = if sizes {
            "[NAME=]PATH[:WEIGHT] or NAME=SIZE[:WEIGHT]"
        } else {
            "[NAME=]PATH[:WEIGHT]"
        };
        return Err(bad(format!(
            "{rest} is {} a shard or directory; a dataset takes one weight: {forms}",
            if sizes { "neither a size nor" } else { "not" }
        )));
    }
    let (data, default_name, path_name) = if path.is_dir() {
        let trimmed = rest.trim_end_matches(['/', '\\']);
        let dir_name = Path::new(trimmed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trimmed.to_string());
        (Dataset::open_dir(&path)?, dir_name, trimmed.to_string())
    } else {
        let prefix = resolve_prefix(&path);
        let shown = prefix.display().to_string();
        (Dataset::open(&[&prefix])?, prefix_name(&prefix), shown)
    };
    Ok(DataArg {
        name: name.map(str::to_string),
        default_name,
        path_name,
        target: Target::Data(data),
        weight,
    })
}

/// Whether `prefix` names a shard (its `.idx` exists).
fn shard_exists(prefix: &Path) -> bool {
    crate::shard::shard_paths(&resolve_prefix(prefix))
        .0
        .exists()
}
