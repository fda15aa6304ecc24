//! Rank, world size and local rank as launchers set them ([`World::from_env`]), and the job id
//! that names a job's file store ([`JobId::from_env`]).

use std::time::Duration;

use crate::error::{Error, Result};

/// The duration the environment variable `var` gives in seconds (a positive number, fractions
/// allowed), `None` when it is unset.
///
/// # Errors
///
/// [`Error::Environment`] naming the variable when it is set but not a positive number.
pub(crate) fn seconds_from_env(var: &str) -> Result<Option<Duration>> {
    let Ok(secs) = std::env::var(var) else {
        return Ok(None);
    };
    secs.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map(Some)
        .ok_or_else(|| {
            Error::Environment(format!("{var}={secs} is not a positive number of seconds"))
        })
}

/// Where this process sits in a job of several processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct World {
    /// This process's rank, in `0..size`.
    pub rank: usize,
    /// Number of processes.
    pub size: usize,
    /// The rank among the processes of this host (picks the GPU).
    pub local_rank: usize,
}

/// A launcher's variables: (launcher, rank, world size, local rank).
const LAUNCHERS: [(&str, &str, &str, &str); 3] = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    (
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
];

impl World {
    /// A world of one: rank 0 of 1.
    pub const SOLO: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
    };

    /// The world that torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), SLURM (`SLURM_PROCID`,
    /// `SLURM_NTASKS`, `SLURM_LOCALID`) or Open MPI (`OMPI_COMM_WORLD_RANK`, `_SIZE`,
    /// `_LOCAL_RANK`) describes; [`World::SOLO`] when none of them is set. `shardflow launch`
    /// sets torchrun's.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] naming the variables it saw for a half-set launcher (rank without
    /// size, say), a value that is not a number, a rank outside the world, or two launchers that
    /// describe different worlds.
    pub fn from_env() -> Result<World> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] over any source of variables (for tests).
    ///
    /// # Errors
    ///
    /// As [`World::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        let mut found: Vec<(&str, World)> = Vec::new();
        for (launcher, rank, size, local) in LAUNCHERS {
            let seen: Vec<(&str, String)> = [rank, size, local]
                .into_iter()
                .filter_map(|n| var(n).map(|v| (n, v)))
                .collect();
            if seen.is_empty() {
                continue;
            }
            let shown = || {
                seen.iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let get = |name: &str, required: bool| -> Result<Option<usize>> {
                match seen.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.trim().parse().map(Some).map_err(|_| {
                        Error::Environment(format!(
                            "{launcher}: {name}={v} is not a whole number (saw {})",
                            shown()
                        ))
                    }),
                    None if required => Err(Error::Environment(format!(
                        "{launcher}: {name} is not set, though {} is: set all of {rank}, {size} \
                         (and {local})",
                        shown()
                    ))),
                    None => Ok(None),
                }
            };
            let r = get(rank, true)?.expect("required");
            let s = get(size, true)?.expect("required");
            // The local rank is optional: a single host's rank is its local rank.
            let l = get(local, false)?.unwrap_or(r);
            if s == 0 || r >= s {
                return Err(Error::Environment(format!(
                    "{launcher}: rank {r} lies outside a world of {s} (saw {})",
                    shown()
                )));
            }
            if l > r {
                return Err(Error::Environment(format!(
                    "{launcher}: local rank {l} exceeds the global rank {r} (saw {})",
                    shown()
                )));
            }
            found.push((
                launcher,
                World {
                    rank: r,
                    size: s,
                    local_rank: l,
                },
            ));
        }
        match found.as_slice() {
            [] => Ok(World::SOLO),
            [(_, first), rest @ ..] => {
                if let Some((other, w)) = rest.iter().find(|(_, w)| w != first) {
                    return Err(Error::Environment(format!(
                        "{} says rank {} of {} (local {}), {other} says rank {} of {} (local {}): \
                         which launcher started this process?",
                        found[0].0,
                        first.rank,
                        first.size,
                        first.local_rank,
                        w.rank,
                        w.size,
                        w.local_rank
                    )));
                }
                Ok(*first)
            }
        }
    }
}

/// The environment variable that names the job explicitly; it wins over every launcher's.
pub const JOB_ENV: &str = "SHARDFLOW_JOB";

/// The job id variables, in the order [`JobId::from_env`] reads them: (variable, prefix).
/// SLURM's step id joins its job id, so two `srun` steps of one allocation are two jobs.
const JOB_VARS: [(&str, &str); 5] = [
    (JOB_ENV, ""),
    ("TORCHELASTIC_RUN_ID", "torchrun-"),
    ("SLURM_JOB_ID", "slurm-"),
    ("PMIX_NAMESPACE", "pmix-"),
    ("OMPI_MCA_orte_ess_jobid", "ompi-"),
];

/// A job id, as a launcher gives it, and the variable it came from.
///
/// It names the job's directory in the file store (`ROOT/job-ID/`), so that two jobs never meet
/// there. It need not be unique across runs: [`crate::collective::FileStore`] tells this run's
/// records from an earlier run's by a nonce of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobId {
    /// The id, as a file name: characters other than letters, digits, `.`, `_` and `-` become
    /// `_`.
    pub id: String,
    /// The variable it came from (`SLURM_JOB_ID`, ...).
    pub from: &'static str,
}

impl JobId {
    /// The job id from, in order: `SHARDFLOW_JOB` (as is); torchrun's `TORCHELASTIC_RUN_ID`
    /// (`torchrun-ID`; its default `none` does not count); SLURM's `SLURM_JOB_ID` with
    /// `SLURM_STEP_ID` (`slurm-JOB.STEP`); PMIx's `PMIX_NAMESPACE` (`pmix-NS`, set by Open MPI 5
    /// and other PMIx launchers); Open MPI 4's `OMPI_MCA_orte_ess_jobid` (`ompi-ID`). `None` when
    /// none of them is set.
    pub fn from_env() -> Option<JobId> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`JobId::from_env`] over any source of variables (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<JobId> {
        JOB_VARS.into_iter().find_map(|(name, prefix)| {
            let value = var(name)?;
            let value = value.trim();
            if value.is_empty() || (name == "TORCHELASTIC_RUN_ID" && value == "none") {
                return None;
            }
            let mut id = format!("{prefix}{value}");
            if name == "SLURM_JOB_ID"
                && let Some(step) = var("SLURM_STEP_ID").filter(|s| !s.trim().is_empty())
            {
                id = format!("{id}.{}", step.trim());
            }
            let mut id: String = id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if id.starts_with('.') {
                id.replace_range(..1, "_");
            }
            id.truncate(200);
            Some(JobId { id, from: name })
        })
    }
}
