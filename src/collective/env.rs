//! Rank, world size and local rank as launchers set them: [`World::from_env`].

use crate::error::{Error, Result};

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
