//! The scheduling priority of the accounting threads.
//!
//! The booking and audit threads work in bursts: each flush folds, commits and writes a quarter
//! of a second's requests at once, a millisecond or more of CPU. At the data plane's own priority
//! the scheduler lets such a burst run to its end while a data-plane thread on the same core waits,
//! and every request in flight there waits with it: at one connection, one request in a hundred
//! took a millisecond more. Lowered, a burst gives the core back as soon as a data-plane thread
//! can run. Under full load it still gets about a tenth of a core, several times what booking
//! takes (docs/performance.md, "Bookkeeping and tail latency").

use rustix::process::{getpriority_process, setpriority_process};
use rustix::thread::gettid;

/// How many nice steps the accounting threads sit below the thread that starts them: at nice 10
/// against a data-plane thread's 0, the kernel weighs them 110 against 1024.
pub const STEPS_BELOW: i32 = 10;

/// The lowest priority (highest nice value) Linux has.
const LOWEST: i32 = 19;

/// Lowers the calling thread, and only it (Linux keeps a nice value per thread), by
/// [`STEPS_BELOW`]. A failure leaves the thread where it was: its flushes may then delay requests
/// on its core, but no record is lost.
pub fn lower_this_thread() {
    let this = Some(gettid());
    let lowered = getpriority_process(this)
        .and_then(|nice| setpriority_process(this, (nice + STEPS_BELOW).min(LOWEST)));
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "cannot lower an accounting thread's priority; its flushes may delay requests on its core");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::audit::{AuditTarget, AuditWriter};
    use crate::accounting::Recorder;

    fn nice_of_this_thread() -> i32 {
        getpriority_process(Some(gettid())).unwrap()
    }

    /// The nice value of every thread of this process whose name starts with `prefix`.
    fn nice_of_threads(prefix: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
                continue; // the thread ended while we looked
            };
            if !comm.starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
                continue;
            };
            // After the name in parentheses, the nice value is the 17th field.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(after_name.split(' ').nth(16).unwrap().parse().unwrap());
        }
        found
    }

    #[test]
    fn lowering_moves_the_calling_thread_down_and_no_other() {
        let starter = nice_of_this_thread();
        let (before, after) = std::thread::spawn(|| {
            let before = nice_of_this_thread();
            lower_this_thread();
            (before, nice_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(
            before, starter,
            "a new thread starts at its starter's priority"
        );
        assert_eq!(after, (before + STEPS_BELOW).min(LOWEST));
        assert_eq!(nice_of_this_thread(), starter);
    }

    #[test]
    fn the_booking_and_audit_threads_run_below_the_thread_that_starts_them() {
        let dir = tempfile::tempdir().unwrap();
        let target = AuditTarget::File(dir.path().join("audit.jsonl"));
        let writer = AuditWriter::open(&target).unwrap();
        let dropped = prometheus::IntCounter::new("dropped", "lines").unwrap();
        let expected = (nice_of_this_thread() + STEPS_BELOW).min(LOWEST);
        let recorder = Recorder::start(None, Some((target, writer)), dropped);
        // Each thread lowers itself as it starts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lowered = |prefix: &str| {
            let nices = nice_of_threads(prefix);
            !nices.is_empty() && nices.iter().all(|&nice| nice == expected)
        };
        while !(lowered("keygate-account") && lowered("keygate-audit")) {
            assert!(
                std::time::Instant::now() < deadline,
                "accounting {:?}, audit {:?}, expected {expected}",
                nice_of_threads("keygate-account"),
                nice_of_threads("keygate-audit")
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(recorder);
    }
}
