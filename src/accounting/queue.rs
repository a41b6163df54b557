//! The accounting threads' bounded mailboxes, which take memory only for what they hold.
//!
//! std's `sync_channel` allocates and writes every slot when it is made, so a queue sized for a
//! burst of tens of thousands of records was resident in an idle gateway: megabytes for each
//! queue. This one is std's unbounded channel, which allocates its slots a block at a time as
//! messages arrive and frees them as they are taken, with a count of the messages in it for the
//! bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError, TrySendError};
use std::sync::Arc;

/// A queue that holds at most `capacity` messages.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            queued: queued.clone(),
            capacity,
        },
        Receiver { rx, queued },
    )
}

pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

impl<T> Sender<T> {
    /// Queues `message` unless the queue is full or its receiver gone. Never blocks.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(TrySendError::Full(message));
        }
        self.tx.send(message).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            TrySendError::Disconnected(e.0)
        })
    }

    /// Queues `message` whether or not the queue is full: for the rare message that must not be
    /// lost to a full queue (a flush that someone waits for).
    pub fn send_past_the_bound(&self, message: T) -> Result<(), T> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(message).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            e.0
        })
    }
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let message = self.rx.try_recv()?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Ok(message)
    }

    /// How many messages wait to be taken.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_until_a_message_is_taken() {
        let (tx, rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.backlog(), 2, "the refused message is not counted");
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.backlog(), 1);
        tx.try_send(4).unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_message_past_the_bound_still_arrives_and_counts() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).unwrap();
        tx.send_past_the_bound(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(2));
        tx.try_send(3).unwrap();
    }

    #[test]
    fn a_gone_receiver_gives_the_message_back_and_frees_its_place() {
        let (tx, rx) = bounded(1);
        drop(rx);
        assert!(matches!(tx.try_send(1), Err(TrySendError::Disconnected(1))));
        assert_eq!(tx.queued.load(Ordering::Relaxed), 0);
    }
}
