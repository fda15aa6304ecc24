//! The recycling of a device sink's slots of device buffers: a slot is lent to one batch
//! ([`Lease`]) and comes back when the batch is dropped; an upload picks the slot it writes
//! ([`pick`]), preferring one the device is done with, so that the copies of a batch overlap
//! the consumer's step on the last one.

use std::sync::{Arc, Mutex, MutexGuard};

use super::SinkStats;
use super::ragged::SlotSizes;
use crate::error::Result;

/// One batch's device buffers, recycled from batch to batch by [`Slots`].
pub(crate) trait Slot: Send + Sized + 'static {
    /// Device buffers in a slot.
    const BUFFERS: u64;

    /// The element counts the slot holds.
    fn sizes(&self) -> &SlotSizes;

    /// Whether the device is done with the slot's last batch, its consumer's work included, so
    /// that reusing it waits for nothing. Asked with the sink's slots locked: it must not block.
    /// A sink that cannot tell answers `true` (its [`Slot::reuse`] waits instead).
    fn idle(&self) -> bool {
        true
    }

    /// Readies a free slot for another batch: returns once the device's last use of it (and of
    /// the staging memory it keeps) is done, as far as this sink's ordering needs.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when the device is lost.
    fn reuse(&mut self) -> Result<()>;

    /// Called when the batch holding the slot is dropped: whether the slot may be reused (a slot
    /// whose release cannot be ordered on the device is dropped instead).
    fn release(&mut self) -> bool {
        true
    }
}

/// The slots a sink makes at most while its free slots are all still in use on the device:
/// the batch the consumer's step is reading, the one being written, and one spare for a host
/// that runs a step ahead of the device. Past it, an upload reuses the oldest free slot and
/// the device orders its kernel after that slot's last consumer. (A slot is always made when
/// none is free: the caller holds them all.)
pub(crate) const MAX_SLOTS: usize = 3;

/// What an upload does for its slot, as [`pick`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Reuse the free slot at this index (oldest first); `busy` when the device was still using
    /// it.
    Reuse { index: usize, busy: bool },
    /// Make a new slot.
    Make,
}

/// The slot choice of an upload. `free` lists the free slots, oldest released first, as
/// (fits the batch, idle on the device); `live` counts every slot the sink holds (free or lent).
///
/// The oldest idle slot that fits; else a new slot, when none fits or when fewer than `max`
/// are live; else the oldest that fits, busy: its release was queued first, so it is the one
/// most likely done. For `max = 3`:
///
/// | free (fits, idle)        | live | pick                  |
/// |--------------------------|------|-----------------------|
/// | (yes, no), (yes, yes)    | 2    | reuse 1               |
/// | (yes, no)                | 2    | make                  |
/// | (yes, no), (yes, no)     | 3    | reuse 0, busy         |
/// | (no, yes)                | 3    | make (the small goes) |
/// | none                     | 3    | make                  |
pub(crate) fn pick(free: impl IntoIterator<Item = (bool, bool)>, live: usize, max: usize) -> Pick {
    let mut oldest_fit = None;
    for (index, (fits, idle)) in free.into_iter().enumerate() {
        if fits && idle {
            return Pick::Reuse { index, busy: false };
        }
        if fits && oldest_fit.is_none() {
            oldest_fit = Some(index);
        }
    }
    match oldest_fit {
        Some(index) if live >= max => Pick::Reuse { index, busy: true },
        _ => Pick::Make,
    }
}

/// A sink's slots: the free ones, oldest released first, and how many exist.
struct Home<S> {
    free: Vec<S>,
    live: usize,
}

impl<S> Home<S> {
    /// Removes every free slot, for the caller to drop outside the lock.
    fn take_all(&mut self) -> Vec<S> {
        self.live -= self.free.len();
        std::mem::take(&mut self.free)
    }
}

/// A device sink's slots of device buffers and its counters. A slot is lent to one batch
/// ([`Lease`]) and comes back when the batch is dropped; an upload takes the oldest free slot
/// that fits its batch and that the device is done with, or makes one sized for the largest
/// batch (see [`pick`]). A caller that holds each batch while the next is written uses two
/// slots (a third only if the slot released last is still in use when the next upload
/// begins); one that drops each batch before the next (`for batch in loader { step(batch) }`)
/// uses two as well while its steps run on the device, so that the copies of batch k + 1
/// overlap step k, and up to [`MAX_SLOTS`] when its host runs ahead of the device.
pub(crate) struct Slots<S: Slot> {
    home: Arc<Mutex<Home<S>>>,
    stats: Mutex<SinkStats>,
    max: usize,
}

impl<S: Slot> Default for Slots<S> {
    fn default() -> Self {
        Self::with_max(MAX_SLOTS)
    }
}

impl<S: Slot> Slots<S> {
    /// No slots yet; at most `max` made while the free ones are busy.
    pub fn with_max(max: usize) -> Self {
        Slots {
            home: Arc::new(Mutex::new(Home {
                free: Vec::new(),
                live: 0,
            })),
            stats: Mutex::new(SinkStats::default()),
            max,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SinkStats {
        *self.stats_mut()
    }

    /// The counters, to add an upload to.
    pub fn stats_mut(&self) -> MutexGuard<'_, SinkStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn home(&self) -> MutexGuard<'_, Home<S>> {
        self.home.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot that fits `need`, readied for reuse; or a new one from `make`, sized for
    /// `need` and `bound` together (later batches fit it too). See [`pick`].
    ///
    /// # Errors
    ///
    /// What [`Slot::reuse`] or `make` returns.
    pub fn acquire(
        &self,
        need: &SlotSizes,
        bound: &SlotSizes,
        make: impl FnOnce(SlotSizes) -> Result<S>,
    ) -> Result<Lease<S>> {
        let (picked, busy, stale) = {
            let mut home = self.home();
            let choice = pick(
                home.free.iter().map(|s| (s.sizes().holds(need), s.idle())),
                home.live,
                self.max,
            );
            let fitting = home.free.iter().any(|s| s.sizes().holds(need));
            let busy = fitting && !matches!(choice, Pick::Reuse { busy: false, .. });
            match choice {
                Pick::Reuse { index, .. } => (Some(home.free.remove(index)), busy, Vec::new()),
                // Free slots too small for this batch go (dropped below, unlocked: a slot's
                // drop may wait for the device); the new one fits the largest batch.
                Pick::Make if !fitting => {
                    let stale = home.take_all();
                    home.live += 1;
                    (None, busy, stale)
                }
                Pick::Make => {
                    home.live += 1;
                    (None, busy, Vec::new())
                }
            }
        };
        drop(stale);
        if busy {
            self.stats_mut().busy_slots += 1;
        }
        let slot = match picked {
            Some(mut slot) => {
                if busy {
                    self.stats_mut().busy_reuses += 1;
                }
                match slot.reuse() {
                    Ok(()) => slot,
                    Err(e) => {
                        self.home().live -= 1;
                        return Err(e);
                    }
                }
            }
            None => match make(need.max(bound)) {
                Ok(slot) => {
                    let mut stats = self.stats_mut();
                    stats.slots_created += 1;
                    stats.buffers_created += S::BUFFERS;
                    slot
                }
                Err(e) => {
                    self.home().live -= 1;
                    return Err(e);
                }
            },
        };
        Ok(Lease {
            slot: Some(slot),
            home: self.home.clone(),
        })
    }
}

/// A slot lent to one batch; it goes back to its sink's free slots when dropped (if
/// [`Slot::release`] allows).
pub(crate) struct Lease<S: Slot> {
    /// Always `Some` until dropped.
    slot: Option<S>,
    home: Arc<Mutex<Home<S>>>,
}

impl<S: Slot> std::ops::Deref for Lease<S> {
    type Target = S;

    fn deref(&self) -> &S {
        self.slot
            .as_ref()
            .expect("a lease holds its slot until dropped")
    }
}

impl<S: Slot> std::ops::DerefMut for Lease<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.slot
            .as_mut()
            .expect("a lease holds its slot until dropped")
    }
}

impl<S: Slot> Drop for Lease<S> {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        let released = slot.release();
        let mut home = self.home.lock().unwrap_or_else(|e| e.into_inner());
        if released {
            home.free.push(slot);
        } else {
            home.live -= 1;
            drop(home);
            drop(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_upload_takes_the_oldest_idle_slot_then_makes_one_then_reuses_the_oldest_busy_one() {
        let (yes, no) = (true, false);
        // The table of `pick`'s docs.
        assert_eq!(
            pick([(yes, no), (yes, yes)], 2, 3),
            Pick::Reuse {
                index: 1,
                busy: false
            }
        );
        assert_eq!(pick([(yes, no)], 2, 3), Pick::Make);
        assert_eq!(
            pick([(yes, no), (yes, no)], 3, 3),
            Pick::Reuse {
                index: 0,
                busy: true
            }
        );
        assert_eq!(pick([(no, yes)], 3, 3), Pick::Make);
        assert_eq!(pick([], 3, 3), Pick::Make);
        // A slot too small for the batch is never reused, idle or not.
        assert_eq!(
            pick([(no, yes), (yes, no), (yes, no)], 3, 3),
            Pick::Reuse {
                index: 1,
                busy: true
            }
        );
    }

    /// A device the test drives: the slots it is still using, by id.
    #[derive(Default)]
    struct Device {
        busy: Mutex<HashSet<usize>>,
        made: AtomicUsize,
        dropped: AtomicUsize,
        reused: Mutex<Vec<usize>>,
    }

    struct Fake {
        id: usize,
        sizes: SlotSizes,
        device: Arc<Device>,
    }

    impl Slot for Fake {
        const BUFFERS: u64 = 1;

        fn sizes(&self) -> &SlotSizes {
            &self.sizes
        }

        fn idle(&self) -> bool {
            !self.device.busy.lock().unwrap().contains(&self.id)
        }

        fn reuse(&mut self) -> Result<()> {
            self.device.reused.lock().unwrap().push(self.id);
            Ok(())
        }

        /// The consumer's step is queued behind the slot: busy until the test says otherwise.
        fn release(&mut self) -> bool {
            self.device.busy.lock().unwrap().insert(self.id);
            true
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.device.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn sizes(tokens: usize) -> SlotSizes {
        SlotSizes {
            tokens,
            rows: 2,
            pieces: 4,
            cells: tokens,
        }
    }

    fn upload(slots: &Slots<Fake>, device: &Arc<Device>, tokens: usize) -> Lease<Fake> {
        slots
            .acquire(&sizes(tokens), &sizes(tokens), |sizes| {
                let id = device.made.fetch_add(1, Ordering::SeqCst);
                Ok(Fake {
                    id,
                    sizes,
                    device: device.clone(),
                })
            })
            .unwrap()
    }

    #[test]
    fn a_loop_that_drops_each_batch_before_the_next_keeps_two_slots_while_the_device_lags() {
        // `for batch in loader { step(batch) }` where each step runs on the device until the
        // next batch has been uploaded: batch k + 1 must not wait for step k.
        let device = Arc::new(Device::default());
        let slots = Slots::<Fake>::default();
        let mut ids = Vec::new();
        for _ in 0..10 {
            let batch = upload(&slots, &device, 64);
            ids.push(batch.id);
            let step = batch.id;
            drop(batch); // released behind its step, still running
            // The device finishes every step but the last one.
            device.busy.lock().unwrap().retain(|&id| id == step);
        }
        assert_eq!(ids, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        let stats = slots.stats();
        assert_eq!(stats.slots_created, 2, "{stats:?}");
        assert_eq!((stats.busy_slots, stats.busy_reuses), (1, 0), "{stats:?}");
        // Only idle slots were reused.
        assert_eq!(device.reused.lock().unwrap().len(), 8);
    }

    #[test]
    fn a_host_far_ahead_of_the_device_makes_max_slots_then_reuses_the_oldest_busy_one() {
        let device = Arc::new(Device::default());
        let slots = Slots::<Fake>::default();
        let ids: Vec<usize> = (0..7).map(|_| upload(&slots, &device, 64).id).collect();
        // Nothing ever completes: three slots, then round robin from the oldest released.
        assert_eq!(ids, [0, 1, 2, 0, 1, 2, 0]);
        let stats = slots.stats();
        assert_eq!(stats.slots_created, MAX_SLOTS as u64, "{stats:?}");
        assert_eq!((stats.busy_slots, stats.busy_reuses), (6, 4), "{stats:?}");
    }

    #[test]
    fn a_caller_holding_each_batch_while_the_next_is_written_uses_two_idle_slots() {
        let device = Arc::new(Device::default());
        let slots = Slots::<Fake>::default();
        let mut held = None;
        let mut ids = Vec::new();
        for _ in 0..6 {
            let next = upload(&slots, &device, 64);
            ids.push(next.id);
            held = Some(next);
            device.busy.lock().unwrap().clear();
        }
        drop(held);
        assert_eq!(ids, [0, 1, 0, 1, 0, 1]);
        assert_eq!(slots.stats().slots_created, 2);
        assert_eq!(slots.stats().busy_slots, 0);
    }

    #[test]
    fn slots_too_small_for_a_batch_are_dropped_and_no_longer_count() {
        let device = Arc::new(Device::default());
        let slots = Slots::<Fake>::default();
        drop((upload(&slots, &device, 64), upload(&slots, &device, 64)));
        device.busy.lock().unwrap().clear();
        // A wider batch: both free slots are too small, dropped, and a new one made.
        let wide = upload(&slots, &device, 128);
        assert_eq!(wide.id, 2);
        assert_eq!(device.dropped.load(Ordering::SeqCst), 2);
        drop(wide);
        // Two more while it is busy: the live count is 1, so both are made, not reused busy.
        let a = upload(&slots, &device, 128);
        let b = upload(&slots, &device, 128);
        assert_eq!((a.id, b.id), (3, 4));
        // A failed make is not counted either.
        drop((a, b));
        assert!(
            slots
                .acquire(&sizes(1 << 20), &sizes(1 << 20), |_| Err(
                    crate::Error::Config("no memory".into())
                ))
                .is_err()
        );
        assert_eq!(
            slots.home().live,
            0,
            "the too-small slots went, the failed make too"
        );
    }
}
