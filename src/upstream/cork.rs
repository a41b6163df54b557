//! Sending a request's head and body upstream in one TCP segment.
//!
//! Pingora's HTTP/1 client writes the request head and flushes it, then writes the body: two
//! `send`s where one would do. Each send wakes the receiving side, and on loopback or between
//! VMs the wake-up costs more than the bytes; in a profile of keygate under load the sends were
//! over a third of its CPU. keygate has the whole body before it connects upstream (it reads it
//! to route by model), so it knows a body follows the head.
//!
//! [`join_head_and_body`] corks the socket (`TCP_CORK`: the kernel holds partial segments) just
//! before Pingora writes the head, and spawns a task that uncorks it. That task runs once the
//! request's task yields, which it first does to wait for the response, after both writes: the
//! kernel then sends head and body together. On a work-stealing runtime another thread may run
//! the task earlier; the head then leaves alone, as it would have anyway. The kernel never holds
//! corked data longer than 200 ms, whatever happens to the task.
//!
//! The task uncorks by descriptor number. Should the connection have closed by then and its
//! number gone to a new socket, clearing `TCP_CORK` there is harmless: keygate corks a socket only
//! here, right before the writes this task is for.

use std::os::fd::{BorrowedFd, RawFd};

/// Holds what is written to the upstream socket `fd` until the writing task next yields; see
/// the module documentation. Errors (the descriptor is not TCP) leave the socket as it was.
pub fn join_head_and_body(fd: RawFd) {
    if set_cork(fd, true).is_err() {
        return;
    }
    tokio::spawn(async move {
        let _ = set_cork(fd, false);
    });
}

fn set_cork(fd: RawFd, on: bool) -> rustix::io::Result<()> {
    // SAFETY: the descriptor is only borrowed for this one `setsockopt`; on a number that no
    // longer belongs to the connection, the call fails or clears a cork (module documentation).
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::net::sockopt::set_tcp_cork(socket, on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[tokio::test(flavor = "current_thread")]
    async fn head_and_body_leave_together_once_the_task_yields() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nodelay(true).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];

        join_head_and_body(client.as_raw_fd());
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            server.read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "the head alone must stay corked"
        );
        client.write_all(b"ping").unwrap();

        tokio::task::yield_now().await;
        // Well within the 200 ms after which the kernel would send corked data by itself.
        server.set_nonblocking(false).unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let n = server.read(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nping",
            "head and body arrive in one read"
        );

        // Uncorked: a later write leaves at once.
        client.write_all(b"next").unwrap();
        let n = server.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"next");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_descriptor_that_is_not_tcp_spawns_nothing() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let file = std::fs::File::open("/dev/null").unwrap();
        join_head_and_body(file.as_raw_fd());
        assert_eq!(metrics.num_alive_tasks(), 0);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        join_head_and_body(client.as_raw_fd());
        assert_eq!(
            metrics.num_alive_tasks(),
            1,
            "a TCP socket gets its uncork task"
        );
    }
}
