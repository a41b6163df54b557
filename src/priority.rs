//! The priority of the threads that work beside the data plane.
//!
//! Two kinds of work run on threads of their own next to the request threads, and both come in
//! bursts that would otherwise take a core from requests in flight:
//! - a policy load: a 100,000-key policy costs seconds of CPU, and at normal priority the request
//!   p99 about doubles while it compiles (`benches/policy_swap.rs`);
//! - the booking and audit threads: each flush folds, commits and writes a quarter of a second's
//!   requests at once, a millisecond or more, which the scheduler let run to its end while a
//!   request on the same core waited (docs/performance.md, "Bookkeeping and tail latency").
//!
//! At [`BACKGROUND_NICENESS`] the kernel serves requests first: a waking request thread takes the
//! core back at once. The background work still gets every cycle the request threads leave idle,
//! and about a tenth of a core when they leave none (a weight of 110 against their 1024), several
//! times what booking takes under full load.
//!
//! A burst the scheduler has already given the core still runs for the slice it was given, a few
//! milliseconds, while a request thread on that core waits. So the bookkeeping loops also cut
//! their bursts into [`Slices`]: every few dozen items they offer the core back, unless they are
//! falling behind. A yielding thread at this niceness waits long for its next turn while request
//! threads keep the core busy, so under full load the yields would let the queues overflow.

use rustix::process::{getpriority_process, setpriority_process};
use rustix::thread::gettid;

/// The niceness of background threads.
pub const BACKGROUND_NICENESS: i32 = 10;

/// Lowers the calling thread, and only it (Linux keeps a niceness per thread), to
/// [`BACKGROUND_NICENESS`]. Only ever lowers: a gateway started nicer than that stays so. A lowered
/// priority cannot be raised back without privileges, so call this on a thread of its own. A
/// failure leaves the thread where it was, which costs requests some latency, never correctness.
pub fn lower_this_thread() {
    let this = Some(gettid());
    let lowered = getpriority_process(this).and_then(|niceness| {
        if niceness >= BACKGROUND_NICENESS {
            return Ok(());
        }
        setpriority_process(this, BACKGROUND_NICENESS)
    });
    if let Err(e) = lowered {
        let thread = std::thread::current();
        tracing::warn!(error = %e, thread = thread.name().unwrap_or("unnamed"), "cannot lower a background thread's priority; its bursts may delay requests on its core");
    }
}

/// Items a background loop handles between offers of its core; a few dozen microseconds of
/// booking or audit lines.
const ITEMS_PER_SLICE: u32 = 64;

/// Counts the items of a background burst and yields the core after every [`ITEMS_PER_SLICE`],
/// so that a request thread waiting on the same core runs after a slice, not after the burst. A
/// yield with nothing else to run returns at once.
#[derive(Debug, Default)]
pub struct Slices {
    items: u32,
}

impl Slices {
    /// Notes one item handled; at the end of a slice, yields unless the loop is `behind` (its
    /// queue filling up), when finishing the burst comes first. Returns whether it yielded.
    pub fn item_done(&mut self, behind: impl FnOnce() -> bool) -> bool {
        self.items += 1;
        if self.items < ITEMS_PER_SLICE {
            return false;
        }
        self.items = 0;
        if behind() {
            return false;
        }
        std::thread::yield_now();
        true
    }
}

/// The niceness of the calling thread.
#[cfg(test)]
pub fn niceness_of_this_thread() -> i32 {
    getpriority_process(Some(gettid())).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_moves_the_calling_thread_down_and_no_other() {
        let starter = niceness_of_this_thread();
        let (before, after) = std::thread::spawn(|| {
            let before = niceness_of_this_thread();
            lower_this_thread();
            (before, niceness_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(
            before, starter,
            "a new thread starts at its starter's priority"
        );
        assert_eq!(after, before.max(BACKGROUND_NICENESS));
        assert_eq!(
            niceness_of_this_thread(),
            starter,
            "only the caller is lowered"
        );
    }

    #[test]
    fn a_burst_offers_its_core_once_a_slice() {
        let mut slices = Slices::default();
        let yields: Vec<u32> = (1..=3 * ITEMS_PER_SLICE)
            .filter(|_| slices.item_done(|| false))
            .collect();
        assert_eq!(
            yields,
            [ITEMS_PER_SLICE, 2 * ITEMS_PER_SLICE, 3 * ITEMS_PER_SLICE]
        );
    }

    #[test]
    fn a_burst_that_falls_behind_keeps_its_core() {
        let mut slices = Slices::default();
        assert!(!(1..=3 * ITEMS_PER_SLICE).any(|_| slices.item_done(|| true)));
        // Caught up, it yields again at the end of the next slice.
        assert_eq!(
            (1..=ITEMS_PER_SLICE)
                .filter(|_| slices.item_done(|| false))
                .count(),
            1
        );
    }
}
