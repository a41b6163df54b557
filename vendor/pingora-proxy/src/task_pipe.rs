// keygate patch: this module is keygate's, not Cloudflare's (vendor/README.md).

//! The bounded pipe that carries `HttpTask`s between the two halves of an HTTP/1 proxy.
//!
//! Each proxied HTTP/1 request holds two pipes for its whole life. tokio's `mpsc` channel
//! allocates its slots 32 at a time, whatever the bound, and pads its shared state to cache
//! lines: about 2 KB a channel for a pipe that holds 4 tasks at most, and most of an open
//! stream's memory after its buffers. This pipe keeps the part of tokio's API the proxy uses
//! (`reserve`, `try_reserve`, `Permit::send`, `send`, `recv`, `is_closed`) over one small
//! allocation, and allocates its queue on the first task, at the bound.
//!
//! One sender and one receiver, as the proxy uses them; both may be polled from any task. Every
//! future here holds no state between polls, so each may be dropped in a `select!` and polled
//! afresh without losing a task or a place in line.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A pipe that holds at most `bound` tasks, counting those reserved but not yet sent.
pub(crate) fn channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            reserved: 0,
            bound: bound.max(1),
            sender_alive: true,
            receiver_alive: true,
            receiver_waker: None,
            sender_waker: None,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    queue: VecDeque<T>,
    reserved: usize,
    bound: usize,
    sender_alive: bool,
    receiver_alive: bool,
    receiver_waker: Option<Waker>,
    sender_waker: Option<Waker>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock, but a poisoned pipe is still a consistent one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// Wakes a parked end once the lock is released, so the woken task never waits on it.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The receiver is gone; the task that could not be sent comes back.
pub(crate) struct SendError<T>(pub T);

/// Why a slot could not be reserved at once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    Full,
    Closed,
}

/// The sending end.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A slot reserved in the pipe: sending through it cannot fail or wait. Dropped unused, it gives
/// the slot back.
pub(crate) struct Permit<'a, T> {
    sender: &'a Sender<T>,
}

/// The receiving end.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    fn poll_reserve(&self, cx: Option<&Context<'_>>) -> Poll<Result<Permit<'_, T>, TrySendError>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Poll::Ready(Err(TrySendError::Closed));
        }
        if state.queue.len() + state.reserved < state.bound {
            state.reserved += 1;
            return Poll::Ready(Ok(Permit { sender: self }));
        }
        if let Some(cx) = cx {
            park(&mut state.sender_waker, cx);
        }
        Poll::Pending
    }

    /// Waits for a free slot; fails once the receiver is gone.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        poll_fn(|cx| self.poll_reserve(Some(cx)))
            .await
            .map_err(|_| SendError(()))
    }

    /// Reserves a slot if one is free now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError> {
        match self.poll_reserve(None) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(TrySendError::Full),
        }
    }

    /// Waits for a free slot and sends `task` through it.
    pub(crate) async fn send(&self, task: T) -> Result<(), SendError<T>> {
        match self.reserve().await {
            Ok(permit) => {
                permit.send(task);
                Ok(())
            }
            Err(_) => Err(SendError(task)),
        }
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.lock().receiver_alive
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let parked = {
            let mut state = self.shared.lock();
            state.sender_alive = false;
            state.receiver_waker.take()
        };
        wake(parked);
    }
}

impl<T> Permit<'_, T> {
    /// Sends `task` in the reserved slot. A task sent after the receiver is gone is dropped, as
    /// tokio's permits do.
    pub(crate) fn send(self, task: T) {
        let parked = {
            let mut state = self.sender.shared.lock();
            state.reserved -= 1;
            if state.receiver_alive {
                if state.queue.capacity() == 0 {
                    let bound = state.bound;
                    state.queue.reserve_exact(bound);
                }
                state.queue.push_back(task);
                state.receiver_waker.take()
            } else {
                None
            }
        };
        // The slot now holds the task: nothing to give back.
        std::mem::forget(self);
        wake(parked);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        let parked = {
            let mut state = self.sender.shared.lock();
            state.reserved -= 1;
            state.sender_waker.take()
        };
        wake(parked);
    }
}

impl<T> Receiver<T> {
    /// The next task; `None` once the sender is gone and every task sent has been received.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(task) = state.queue.pop_front() {
                let parked = state.sender_waker.take();
                drop(state);
                wake(parked);
                return Poll::Ready(Some(task));
            }
            if !state.sender_alive {
                return Poll::Ready(None);
            }
            park(&mut state.receiver_waker, cx);
            Poll::Pending
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (queued, parked) = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            // Tasks still queued go now, not when the sender goes.
            (std::mem::take(&mut state.queue), state.sender_waker.take())
        };
        drop(queued);
        wake(parked);
    }
}

impl<T> fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task pipe closed")
    }
}

impl<T> std::error::Error for SendError<T> {}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full => "task pipe full",
            TrySendError::Closed => "task pipe closed",
        })
    }
}

impl std::error::Error for TrySendError {}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn tasks_arrive_in_order_and_the_end_after_the_last() {
        let (tx, mut rx) = channel::<u32>(4);
        for i in 0..4 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        for i in 0..4 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_bound_counts_reserved_slots_and_an_unused_permit_gives_its_slot_back() {
        let (tx, mut rx) = channel::<u32>(2);
        let first = tx.try_reserve().unwrap();
        tx.send(1).now_or_never().unwrap().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        assert!(tx.reserve().now_or_never().is_none());
        drop(first);
        let again = tx.try_reserve().unwrap();
        again.send(2);
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        assert_eq!(rx.recv().await, Some(1));
        tx.try_reserve().unwrap().send(3);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_waiting_sender_is_woken_when_the_receiver_takes_a_task() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        let sender = tokio::spawn(async move {
            tx.send(2).await.unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(1));
        let tx = sender.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_sender_going() {
        let (tx, mut rx) = channel::<u32>(4);
        let receiver = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send(7).await.unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_gone_receiver_closes_the_pipe_and_wakes_a_waiting_sender() {
        let (tx, rx) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        let sender = tokio::spawn(async move {
            let result = tx.send(2).await;
            (result.map_err(|e| e.0), tx.is_closed())
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(sender.await.unwrap(), (Err(2), true));
    }

    #[tokio::test]
    async fn a_dropped_receive_loses_no_task() {
        let (tx, mut rx) = channel::<u32>(2);
        assert!(rx.recv().now_or_never().is_none());
        tx.send(5).await.unwrap();
        assert_eq!(rx.recv().await, Some(5));
    }
}
