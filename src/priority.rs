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
}
