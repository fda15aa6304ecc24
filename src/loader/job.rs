//! The sequential side of the loader: turning the plan into jobs (one per batch), padded or
//! packed. Cheap: it reads sequence lengths from the index, never token data.

use crate::collate::{DocRef, PIECES_PER_ROW, Pool, PooledBuf};
use crate::error::{Error, Result};
use crate::order::{Plan, Planner, Row};
use crate::shard::Dataset;
use crate::transform::{BadSamplePolicy, Shape, TransformConfig};

/// One piece of work: the rows (padded) or document pieces (packed) of one batch.
pub(crate) struct Job {
    /// The loader's batch index (equal to the plan step when padding).
    pub batch: u64,
    pub rows: usize,
    pub packed: bool,
    /// Padded: one per row, `len` filled in by the worker. Packed: the pieces, with lengths.
    pub pieces: PooledBuf<DocRef>,
    /// Where the stream stands once this batch is delivered.
    pub after: Position,
}

/// The stream position after a batch: the plan step to resume the planner at, and when packing
/// the rows of that step already consumed and the tokens of the next row's document already
/// emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Batches delivered.
    pub batches: u64,
    /// The plan step to resume the planner at.
    pub plan_step: u64,
    /// Packing: rows of `plan_step` consumed.
    pub rows_taken: u64,
    /// Packing: tokens of the next row's document already emitted.
    pub doc_offset: u64,
}

/// Makes jobs from a planner.
pub(crate) struct Scheduler {
    pub planner: Planner,
    pub pool: Pool,
    pub datasets: Vec<Dataset>,
    pub transform: TransformConfig,
    pub seq_len: usize,
    pub local_batch: usize,
    pub pack: Option<Packer>,
    pub batch: u64,
    rows: Vec<Row>,
    scratch: Vec<DocRef>,
    advisor: Option<Advisor>,
}

/// Plan-driven prefetch: a copy of the planner running `ahead` steps in front of the
/// scheduler, asking the kernel to read each row's bytes (`MADV_WILLNEED`) as it plans them, so
/// that by the time a worker decodes a sample its pages are on their way or in the page cache.
/// It reads nothing itself and never touches the stream.
///
/// Its cost does not depend on `ahead`: it starts level with the scheduler and advises two
/// steps for each step the scheduler takes until it is `ahead` steps in front, then one; at the
/// end of the stream it stops.
pub(crate) struct Advisor {
    planner: Planner,
    datasets: Vec<Dataset>,
    rows: Vec<Row>,
    /// Steps to stay in front of the scheduler.
    ahead: u64,
    /// The scheduler's next step when it was last followed.
    last: u64,
    /// Whether the stream has ended.
    done: bool,
}

impl Advisor {
    /// An advisor that works its way to `ahead` steps in front of `planner`, having advised
    /// the step the scheduler plans next.
    fn new(planner: &Planner, datasets: &[Dataset], ahead: usize) -> Self {
        let mut a = Advisor {
            planner: planner.clone(),
            datasets: datasets.to_vec(),
            rows: Vec::new(),
            ahead: ahead as u64,
            last: planner.step(),
            done: false,
        };
        a.step();
        a
    }

    /// Advises the steps before `scheduled + ahead` (`scheduled`: the scheduler's next step),
    /// at most two for each step the scheduler took since the last call (a packed batch can
    /// take several).
    fn follow(&mut self, scheduled: u64) {
        if self.done {
            return;
        }
        if self.planner.step() < scheduled {
            // Behind the scheduler: the steps it planned already are not worth advising.
            self.planner.skip_to(scheduled);
        }
        let budget = scheduled.saturating_sub(self.last).max(1).saturating_mul(2);
        self.last = scheduled;
        for _ in 0..budget {
            if self.done || self.planner.step() >= scheduled.saturating_add(self.ahead) {
                return;
            }
            self.step();
        }
    }

    /// Advises the next step's rows.
    fn step(&mut self) {
        self.done = !self.planner.next_rows(&mut self.rows);
        if !self.done {
            for row in &self.rows {
                self.datasets[row.dataset as usize].will_need(row.sample as usize);
            }
        }
    }
}

/// The packer's place in the plan's rows.
pub(crate) struct Packer {
    rows: Vec<Row>,
    plan_step: u64,
    next: usize,
    offset: usize,
    fresh: bool,
    /// Per dataset, the empty documents drawn in a row: a dataset whose run reaches twice its
    /// size has shown that a whole epoch of it is empty.
    empty_runs: Vec<u64>,
}

impl Packer {
    /// A packer at `rows_taken` rows and `doc_offset` tokens into the planner's next step.
    pub fn at(rows_taken: u64, doc_offset: u64) -> Self {
        Packer {
            rows: Vec::new(),
            plan_step: 0,
            next: rows_taken as usize,
            offset: doc_offset as usize,
            fresh: true,
            empty_runs: Vec::new(),
        }
    }

    /// Makes sure a document is at hand, planning the next step when the current one is spent;
    /// `false` at the end of the stream.
    fn has_doc(&mut self, planner: &mut Planner) -> bool {
        while self.fresh || self.next == self.rows.len() {
            if !self.fresh {
                self.next = 0;
                self.offset = 0;
            }
            self.plan_step = planner.step();
            if !planner.next_rows(&mut self.rows) {
                return false;
            }
            self.fresh = false;
            if self.next >= self.rows.len() {
                // Resumed at the end of a step: that step is spent.
                self.next = self.rows.len();
            }
        }
        true
    }

    /// Takes up to `room` tokens of the current document (`len` tokens after the transforms)
    /// from where its last piece ended, moving on to the next document once it is used up.
    /// Returns the document offset the piece starts at and its length.
    fn advance(&mut self, len: usize, room: usize) -> (usize, usize) {
        let (offset, take) = (self.offset, (len - self.offset).min(room));
        self.offset += take;
        if self.offset == len {
            self.next += 1;
            self.offset = 0;
        }
        (offset, take)
    }

    /// The stream position once `batches` batches are delivered, the last ending here.
    fn position(&self, batches: u64) -> Position {
        Position {
            batches,
            plan_step: self.plan_step,
            rows_taken: self.next as u64,
            doc_offset: self.offset as u64,
        }
    }
}

impl Scheduler {
    pub fn new(
        planner: Planner,
        pool: Pool,
        datasets: Vec<Dataset>,
        transform: TransformConfig,
        seq_len: usize,
        pack: Option<Packer>,
        batch: u64,
    ) -> Self {
        let local_batch = planner.plan().config().local_batch;
        Scheduler {
            planner,
            pool,
            datasets,
            transform,
            seq_len,
            local_batch,
            pack,
            batch,
            rows: Vec::new(),
            scratch: Vec::new(),
            advisor: None,
        }
    }

    /// Turns on plan-driven prefetch `ahead` steps in front of the scheduler (0: off).
    pub fn read_ahead(mut self, ahead: usize) -> Self {
        self.advisor = (ahead > 0).then(|| Advisor::new(&self.planner, &self.datasets, ahead));
        self
    }

    /// The next job, `None` at the end of the stream.
    pub fn next_job(&mut self) -> Result<Option<Job>> {
        let job = if self.pack.is_some() {
            self.next_packed()?
        } else {
            self.next_padded()
        };
        if job.is_some() {
            self.batch += 1;
            if let Some(a) = &mut self.advisor {
                a.follow(self.planner.step());
            }
        }
        Ok(job)
    }

    fn next_padded(&mut self) -> Option<Job> {
        if !self.planner.next_rows(&mut self.rows) {
            return None;
        }
        let mut pieces = self.pool.take::<DocRef>(self.rows.len());
        for (r, (row, piece)) in self.rows.iter().zip(pieces.iter_mut()).enumerate() {
            *piece = DocRef {
                sample: row.sample,
                epoch: row.epoch,
                dataset: row.dataset,
                row: r as u32,
                ..DocRef::default()
            };
        }
        let after = Position {
            batches: self.batch + 1,
            plan_step: self.planner.step(),
            rows_taken: 0,
            doc_offset: 0,
        };
        Some(Job {
            batch: self.batch,
            rows: self.rows.len(),
            packed: false,
            pieces,
            after,
        })
    }

    /// Fills up to `local_batch` rows of `seq_len` tokens with document pieces.
    fn next_packed(&mut self) -> Result<Option<Job>> {
        let Scheduler {
            planner,
            pool,
            datasets,
            transform,
            pack,
            scratch: out,
            batch,
            ..
        } = self;
        let batch = *batch;
        let (b, t) = (self.local_batch, self.seq_len);
        out.clear();
        let mut any = false;
        let mut used_rows = 0;
        let p = pack.as_mut().expect("next_packed runs only when packing");
        'rows: for row in 0..b {
            let mut col = 0;
            while col < t {
                if !p.has_doc(planner) {
                    break 'rows;
                }
                any = true;
                let r = p.rows[p.next];
                let (doc_len, flags) =
                    doc_len(datasets, transform, &r).map_err(|reason| Error::Sample {
                        step: batch,
                        dataset: planner.plan().names()[r.dataset as usize].clone(),
                        sample: r.sample,
                        reason,
                    })?;
                note_emptiness(p, planner.plan(), r.dataset as usize, doc_len)?;
                let (doc_offset, take) = p.advance(doc_len, t - col);
                if take > 0 || (doc_offset == 0 && flags != 0) {
                    out.push(DocRef {
                        sample: r.sample,
                        epoch: r.epoch,
                        dataset: r.dataset,
                        row: row as u32,
                        start: col as u32,
                        len: take as u32,
                        doc_offset: doc_offset as u32,
                        flags,
                        doc_len: doc_len as u32,
                        reserved: 0,
                    });
                }
                used_rows = row + 1;
                col += take;
            }
        }
        if !any {
            return Ok(None);
        }
        // Pieces per packed batch vary with document lengths; one size class serves them all.
        let mut pieces = pool.take_within::<DocRef>(out.len(), PIECES_PER_ROW * b);
        pieces.copy_from_slice(out);
        Ok(Some(Job {
            batch,
            rows: used_rows,
            packed: true,
            pieces,
            after: p.position(batch + 1),
        }))
    }
}

/// Counts a packed document's emptiness; fails when every dataset has drawn empty documents for
/// twice its size in a row (a whole epoch of each is empty), because no row could ever fill.
fn note_emptiness(p: &mut Packer, plan: &Plan, dataset: usize, len: usize) -> Result<()> {
    let lens = plan.lens();
    if p.empty_runs.len() != lens.len() {
        p.empty_runs = vec![0; lens.len()];
    }
    if len > 0 {
        p.empty_runs[dataset] = 0;
        return Ok(());
    }
    p.empty_runs[dataset] += 1;
    if p.empty_runs[dataset] < lens[dataset].saturating_mul(2) {
        return Ok(());
    }
    if p.empty_runs
        .iter()
        .zip(lens)
        .all(|(&run, &n)| run >= n.saturating_mul(2))
    {
        return Err(Error::Config(format!(
            "packing cannot fill a row: a whole epoch of every dataset ({}) gives empty documents \
             after the transforms (empty sequences, or samples dropped or skipped)",
            plan.names().join(", ")
        )));
    }
    Ok(())
}

/// The transformed length of a row's document when packing, with its flags; a document the
/// policies drop or skip has length 0. The skip limit is enforced where batches are delivered.
pub(crate) fn doc_len(
    datasets: &[Dataset],
    t: &TransformConfig,
    r: &Row,
) -> Result<(usize, u32), String> {
    let raw = datasets[r.dataset as usize]
        .sequence_len(r.sample as usize)
        .ok_or_else(|| format!("sample {} is outside the dataset", r.sample))?;
    match t.shape(raw, t.max_len.unwrap_or(usize::MAX)) {
        Ok(Shape::Keep { content, truncated }) => Ok((
            content + t.extra(),
            if truncated { DocRef::TRUNCATED } else { 0 },
        )),
        Ok(Shape::Dropped) => Ok((0, DocRef::DROPPED)),
        Err(reason) => match t.bad_samples {
            BadSamplePolicy::Error => Err(reason),
            BadSamplePolicy::Skip { .. } => Ok((0, DocRef::SKIPPED)),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::order::{DatasetSpec, OrderConfig, StreamLimit};

    /// A planner over one dataset of 10 samples, 2 rows per step, ending after `steps` steps.
    fn planner(steps: u64) -> Planner {
        let plan = OrderConfig {
            local_batch: 2,
            limit: StreamLimit::Samples(2 * steps),
            ..Default::default()
        }
        .init(vec![DatasetSpec::new("d", 10, 1.0)])
        .unwrap();
        Planner::new(Arc::new(plan))
    }

    #[test]
    fn the_advisor_works_its_way_ahead_at_two_steps_per_job_whatever_the_read_ahead() {
        let datasets = [Dataset::from_shards(Vec::new())];
        for ahead in [1, 4, 4096, usize::MAX] {
            let mut a = Advisor::new(&planner(1000), &datasets, ahead);
            // Level with the scheduler: its first step advised, nothing more.
            assert_eq!(a.planner.step(), 1, "read-ahead {ahead}");
            for scheduled in 1..=20u64 {
                a.follow(scheduled);
                let want = (1 + 2 * scheduled).min(scheduled.saturating_add(ahead as u64));
                assert_eq!(a.planner.step(), want.max(1), "read-ahead {ahead}");
            }
        }
        // At the end of the stream it stops, however far ahead it was asked to go.
        let mut a = Advisor::new(&planner(3), &datasets, usize::MAX);
        for scheduled in 1..=5 {
            a.follow(scheduled);
        }
        assert_eq!((a.planner.step(), a.done), (3, true));
        // A scheduler that takes several steps per batch (packing) is followed from where it
        // stands, two steps for each of its own.
        let mut a = Advisor::new(&planner(1000), &datasets, 4);
        a.follow(10);
        assert_eq!(a.planner.step(), 14);
        a.follow(11);
        assert_eq!(a.planner.step(), 15);
    }
}
