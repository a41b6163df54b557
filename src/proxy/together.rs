//! Writes that go together: under moderate load, a request yields once before it sends to its
//! provider (in the route step) and once before it answers its client (in the respond step).
//!
//! A request that yields resumes after the runtime's next look at its sockets, together with
//! the other requests that became ready in the same turn and reached the same point. Their writes
//! then go out back to back, so a peer that sleeps between requests (a provider's server, a
//! client's event loop holding many connections) is woken once for all of them rather than once
//! each. On a virtual machine, waking a process on another vCPU is among the dearest parts of a
//! request (docs/performance.md, Concurrency).
//!
//! The wait costs a turn of the runtime and one more poll of the request, so a request waits only
//! while its endpoint has [`IN_FLIGHT_PER_THREAD`] requests in flight per data-plane thread. With
//! fewer there is too little to gather. With more, each turn finds so many requests ready that
//! their writes come close together anyway, and the wait then cost more than it saved in the
//! profile-guided build on a shared core.

use super::ctx::RequestCtx;
use std::ops::RangeInclusive;

/// Requests in flight to one endpoint, per data-plane thread, for which a request waits for the
/// others before each write.
const IN_FLIGHT_PER_THREAD: RangeInclusive<u32> = 16..=256;

/// The in-flight counts of an endpoint for which writes go together, on `threads` data-plane
/// threads.
pub fn in_flight_range(threads: usize) -> RangeInclusive<u32> {
    let threads = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
    let (from, to) = IN_FLIGHT_PER_THREAD.into_inner();
    from.saturating_mul(threads)..=to.saturating_mul(threads)
}

/// Yields once if the request's endpoint has a number of requests in flight in `range`, so that
/// the write that follows goes out with the others ready in this turn of the runtime.
pub async fn wait_for_the_others(ctx: &RequestCtx, range: &RangeInclusive<u32>) {
    let due = ctx
        .upstream
        .current()
        .is_some_and(|attempt| range.contains(&attempt.state.in_flight()));
    if due {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_wait_for_each_other_only_while_an_endpoint_has_a_moderate_load() {
        let one_thread = in_flight_range(1);
        assert_eq!(one_thread, IN_FLIGHT_PER_THREAD);
        assert!(!one_thread.contains(&1), "alone in flight");
        assert!(!one_thread.contains(&15));
        assert!(one_thread.contains(&16));
        assert!(one_thread.contains(&256));
        assert!(!one_thread.contains(&257), "writes close together already");

        assert_eq!(in_flight_range(4), 64..=1024);
        assert_eq!(in_flight_range(0), one_thread);
        assert_eq!(in_flight_range(usize::MAX), u32::MAX..=u32::MAX);
    }
}
