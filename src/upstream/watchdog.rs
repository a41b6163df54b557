//! The per-attempt watchdog that enforces the smaller of a provider's `first_byte` and `idle`
//! timeouts.
//!
//! Pingora 0.9.1 has a single read timeout per upstream attempt, applied alike to the wait for the
//! response header and to each body read. keygate sets it to the larger of the two, so that neither
//! fires early, and arms this watchdog for the smaller one when they differ:
//!
//! - [`Guard::FirstByte`] (`first_byte` < `idle`) runs from the moment the connection is handed to
//!   the request until the response header arrives;
//! - [`Guard::Idle`] (`idle` < `first_byte`) runs from the response header to the end of the body,
//!   its deadline pushed back by every body chunk.
//!
//! It owns a duplicate descriptor of the attempt's upstream socket, so whatever Pingora does with
//! its own descriptor, the watchdog never acts on a number the kernel has since given to another
//! connection. On expiry it shuts the socket down: Pingora's pending read ends with an error, which
//! the proxy reports as a read timeout when [`Watchdog::fired`] says so. A shut-down socket reads
//! EOF, which Pingora's connection pool checks for when a connection is released and when it is
//! reused, so a fired connection is never used again.
//!
//! Body filters run on the downstream side of Pingora's pipe, behind a few buffered tasks, so a
//! client that stops reading also stops the chunks reaching them. On Linux the watchdog therefore
//! asks the kernel before firing (`TCP_INFO`): if the upstream sent data within the limit, or has
//! closed its side, the silence is not the upstream's and nothing is cut.
//!
//! Arming costs a `dup`, a task and a timer per attempt, which is why the proxy arms it only when
//! the two timeouts differ; with them equal Pingora's read timeout is exact on its own.

use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const ARMED: u8 = 0;
const DISARMED: u8 = 1;
const FIRED: u8 = 2;

/// The kernel counts silence in jiffies; below this, a re-check would only spin on rounding.
const MIN_RECHECK: Duration = Duration::from_millis(5);

/// Which of the two timeouts the watchdog stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The wait for the response header.
    FirstByte,
    /// The longest silence between body reads once the header arrived.
    Idle,
}

/// What the watchdog of an attempt must enforce, if anything: the smaller of `first_byte` and
/// `idle`, when Pingora's `read_timeout` (the larger one, possibly capped by the total deadline)
/// does not already cover it.
pub fn plan(
    first_byte: Duration,
    idle: Duration,
    read_timeout: Option<Duration>,
) -> Option<(Guard, Duration)> {
    let (guard, limit) = match first_byte.cmp(&idle) {
        std::cmp::Ordering::Equal => return None,
        std::cmp::Ordering::Less => (Guard::FirstByte, first_byte),
        std::cmp::Ordering::Greater => (Guard::Idle, idle),
    };
    match read_timeout {
        Some(read) if read <= limit => None,
        _ => Some((guard, limit)),
    }
}

/// The watchdog fired before the response it guards completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired(pub Guard);

impl Expired {
    /// The error the attempt ends with: exactly what Pingora's own read timeout would give.
    pub fn error(self) -> Box<Error> {
        Error::explain(ErrorType::ReadTimedout, self.context()).into_up()
    }

    /// Replaces the error Pingora reported when the watchdog shut its socket down.
    pub fn replace(self, cause: Box<Error>) -> Box<Error> {
        Error::because(ErrorType::ReadTimedout, self.context(), cause).into_up()
    }

    fn context(self) -> &'static str {
        match self.0 {
            Guard::FirstByte => "no response header within the first_byte timeout",
            Guard::Idle => "the response stalled past the idle timeout",
        }
    }
}

/// One attempt's watchdog, held in the request context. Dropping it disarms it.
pub struct Watchdog {
    shared: Arc<Shared>,
    /// A task is watching (from arming for `FirstByte`, from the header for `Idle`).
    running: bool,
    /// The body ends only when the upstream closes, so an EOF after firing is the cut, not the end.
    close_delimited: bool,
}

struct Shared {
    guard: Guard,
    limit: Duration,
    state: AtomicU8,
    /// Origin of `last_activity`.
    base: Instant,
    /// Microseconds from `base` to the last sign of life the deadline counts from.
    last_activity: AtomicU64,
    wake: Notify,
    /// Our own descriptor of the upstream socket; only `shutdown` and `getsockopt` touch it.
    socket: TcpStream,
}

impl Watchdog {
    /// Arms a watchdog on the attempt's socket `fd`. A `FirstByte` watchdog starts counting now;
    /// an `Idle` one when [`Watchdog::header_arrived`]. `None` outside a tokio runtime or when the
    /// descriptor cannot be duplicated: Pingora's read timeout (the larger one) still applies.
    pub fn arm(fd: RawFd, guard: Guard, limit: Duration) -> Option<Watchdog> {
        tokio::runtime::Handle::try_current().ok()?;
        // SAFETY: `fd` is the live socket of the session Pingora passes to `connected_to_upstream`;
        // it is only borrowed for the duration of this call, to duplicate it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = match borrowed.try_clone_to_owned() {
            Ok(owned) => TcpStream::from(owned),
            Err(e) => {
                tracing::warn!(error = %e, "could not duplicate the upstream socket; the smaller timeout is not enforced for this attempt");
                return None;
            }
        };
        let mut watchdog = Watchdog {
            shared: Arc::new(Shared {
                guard,
                limit,
                state: AtomicU8::new(ARMED),
                base: Instant::now(),
                last_activity: AtomicU64::new(0),
                wake: Notify::new(),
                socket,
            }),
            running: false,
            close_delimited: false,
        };
        if guard == Guard::FirstByte {
            watchdog.start();
        }
        Some(watchdog)
    }

    pub fn guard(&self) -> Guard {
        self.shared.guard
    }

    /// The response header arrived. `Ok(true)`: keep the watchdog (an `Idle` one now counts);
    /// `Ok(false)`: it is done with; `Err`: a `FirstByte` watchdog fired first, and the attempt is
    /// a timeout (its socket is shut down, so the body could not be read anyway).
    pub fn header_arrived(&mut self, header: &ResponseHeader) -> Result<bool, Expired> {
        if header.status.is_informational() {
            return Ok(true);
        }
        match self.shared.guard {
            Guard::FirstByte => self.disarm().map(|()| false),
            Guard::Idle => match body_framing(header) {
                Framing::None => self.disarm().map(|()| false),
                framing => {
                    self.close_delimited = framing == Framing::UntilClose;
                    self.touch();
                    self.start();
                    Ok(true)
                }
            },
        }
    }

    /// A body chunk passed: the idle deadline starts again from now.
    #[inline]
    pub fn touch(&self) {
        let since = self.shared.base.elapsed().as_micros() as u64;
        self.shared.last_activity.store(since, Ordering::Relaxed);
    }

    /// The body reached its end. `Err` when the watchdog fired and the end may be its own doing:
    /// a close-delimited body read to EOF after the socket was shut down is cut, not complete.
    /// A body framed by length or chunks that reached its end is complete, fired or not (the
    /// client was slow to take its tail).
    pub fn body_ended(&mut self) -> Result<(), Expired> {
        match self.disarm() {
            Err(expired) if self.close_delimited => Err(expired),
            Err(_) => {
                // The task publishes FIRED just before its shutdown; repeating it here makes sure
                // the socket is shut before Pingora offers the connection to its pool, whose
                // check then sees EOF and drops it.
                let _ = self.shared.socket.shutdown(Shutdown::Both);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Whether the watchdog shut the socket down: the attempt's read error is its timeout.
    pub fn fired(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == FIRED
    }

    /// Stops the watchdog; `Err` when it had already fired. Its task ends at once.
    fn disarm(&mut self) -> Result<(), Expired> {
        match self.shared.state.compare_exchange(
            ARMED,
            DISARMED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                if self.running {
                    self.shared.wake.notify_one();
                }
                Ok(())
            }
            Err(FIRED) => Err(Expired(self.shared.guard)),
            Err(_) => Ok(()),
        }
    }

    fn start(&mut self) {
        if !self.running {
            self.running = true;
            tokio::spawn(watch(self.shared.clone()));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.disarm();
    }
}

impl Shared {
    fn due(&self) -> Instant {
        let since = Duration::from_micros(self.last_activity.load(Ordering::Relaxed));
        later(self.base, since.saturating_add(self.limit))
    }
}

/// `t + d`, without the panic of an absurdly long configured timeout.
fn later(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

async fn watch(shared: Arc<Shared>) {
    let mut wake_at = shared.due();
    loop {
        tokio::select! {
            biased;
            _ = shared.wake.notified() => return,
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        if shared.state.load(Ordering::Acquire) != ARMED {
            return;
        }
        let now = Instant::now();
        let due = shared.due();
        if now < due {
            wake_at = due;
            continue;
        }
        match kernel_view(shared.socket.as_raw_fd()) {
            Some(Kernel::Closed) => return,
            Some(Kernel::Silent(silence)) if silence < shared.limit => {
                wake_at = later(now, (shared.limit - silence).max(MIN_RECHECK));
                continue;
            }
            _ => {}
        }
        if shared
            .state
            .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Err(e) = shared.socket.shutdown(Shutdown::Both) {
                // Pingora's own read timeout, the larger one, still ends the attempt.
                tracing::debug!(error = %e, "watchdog could not shut the upstream socket down");
            }
        }
        return;
    }
}

/// What the kernel knows about the upstream side of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// The connection is established and last received data this long ago.
    Silent(Duration),
    /// The upstream closed its side (or the connection is otherwise ending): Pingora reads the
    /// end without help, and firing could only cut a response that completed.
    Closed,
}

#[cfg(target_os = "linux")]
fn kernel_view(fd: RawFd) -> Option<Kernel> {
    const TCP_ESTABLISHED: u8 = 1;
    let info = pingora::protocols::l4::ext::get_tcp_info(fd).ok()?;
    Some(if info.tcpi_state == TCP_ESTABLISHED {
        Kernel::Silent(Duration::from_millis(info.tcpi_last_data_recv.into()))
    } else {
        Kernel::Closed
    })
}

/// Elsewhere only the body filters' view is known; a client that stops reading can look like an
/// idle upstream.
#[cfg(not(target_os = "linux"))]
fn kernel_view(_fd: RawFd) -> Option<Kernel> {
    None
}

/// How the response body ends, following Pingora's HTTP/1 client (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Framed,
    UntilClose,
}

fn body_framing(header: &ResponseHeader) -> Framing {
    if matches!(header.status.as_u16(), 204 | 304) {
        return Framing::None;
    }
    let headers = &header.headers;
    let chunked = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .is_some_and(|v| {
            let last = v.as_bytes().rsplit(|&b| b == b',').next().unwrap_or(b"");
            last.trim_ascii().eq_ignore_ascii_case(b"chunked")
        });
    if chunked {
        return Framing::Framed;
    }
    match headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(0) => Framing::None,
        Some(_) => Framing::Framed,
        None => Framing::UntilClose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream as Stream};

    const MS: Duration = Duration::from_millis(1);

    async fn pair() -> (Stream, Stream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = Stream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn header(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).unwrap();
        }
        h
    }

    fn chunked() -> ResponseHeader {
        header(200, &[("transfer-encoding", "chunked")])
    }

    #[test]
    fn plans_only_when_the_timeouts_differ_and_the_read_timeout_is_larger() {
        let s = Duration::from_secs;
        assert_eq!(plan(s(5), s(5), Some(s(5))), None);
        assert_eq!(plan(s(1), s(5), Some(s(5))), Some((Guard::FirstByte, s(1))));
        assert_eq!(plan(s(5), s(1), Some(s(5))), Some((Guard::Idle, s(1))));
        // the total deadline already capped the read timeout below the smaller one
        assert_eq!(plan(s(1), s(5), Some(s(1))), None);
        assert_eq!(plan(s(5), s(2), Some(s(1))), None);
    }

    #[test]
    fn framing_follows_the_headers() {
        assert_eq!(body_framing(&chunked()), Framing::Framed);
        assert_eq!(
            body_framing(&header(200, &[("transfer-encoding", "gzip, Chunked ")])),
            Framing::Framed
        );
        assert_eq!(
            body_framing(&header(200, &[("content-length", "12")])),
            Framing::Framed
        );
        assert_eq!(
            body_framing(&header(200, &[("content-length", "0")])),
            Framing::None
        );
        assert_eq!(body_framing(&header(204, &[])), Framing::None);
        assert_eq!(body_framing(&header(200, &[])), Framing::UntilClose);
    }

    #[tokio::test]
    async fn a_first_byte_watchdog_ends_the_pending_read() {
        let (mut client, _server) = pair().await;
        let started = Instant::now();
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::FirstByte, 100 * MS).unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert!(started.elapsed() >= 100 * MS);
        assert!(w.fired());
        assert_eq!(w.header_arrived(&chunked()), Err(Expired(Guard::FirstByte)));
    }

    #[tokio::test]
    async fn a_header_in_time_disarms_it() {
        let (mut client, mut server) = pair().await;
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::FirstByte, 100 * MS).unwrap();
        assert_eq!(w.header_arrived(&chunked()), Ok(false));
        tokio::time::sleep(200 * MS).await;
        assert!(!w.fired());
        server.write_all(b"still open").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn dropping_it_disarms_it_and_ends_its_task() {
        let (client, _server) = pair().await;
        let w = Watchdog::arm(client.as_raw_fd(), Guard::FirstByte, 50 * MS).unwrap();
        let shared = Arc::downgrade(&w.shared);
        drop(w);
        tokio::time::sleep(20 * MS).await;
        assert!(shared.upgrade().is_none(), "the task let go of its state");
    }

    #[tokio::test]
    async fn an_idle_watchdog_counts_from_the_header_and_each_chunk() {
        let (mut client, mut server) = pair().await;
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::Idle, 150 * MS).unwrap();
        // before the header, it does not count
        tokio::time::sleep(250 * MS).await;
        assert!(!w.fired());
        assert_eq!(w.header_arrived(&chunked()), Ok(true));
        let mut buf = [0u8; 16];
        for _ in 0..4 {
            tokio::time::sleep(80 * MS).await;
            server.write_all(b"x").await.unwrap();
            client.read_exact(&mut buf[..1]).await.unwrap();
            w.touch();
        }
        assert!(!w.fired());
        let stalled = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert!(stalled.elapsed() >= 140 * MS, "{:?}", stalled.elapsed());
        assert!(w.fired());
        // a chunked body that still reached its end was complete
        assert_eq!(w.body_ended(), Ok(()));
    }

    #[tokio::test]
    async fn a_close_delimited_body_ending_after_it_fired_was_cut() {
        let (mut client, _server) = pair().await;
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::Idle, 50 * MS).unwrap();
        assert_eq!(w.header_arrived(&header(200, &[])), Ok(true));
        let mut buf = [0u8; 16];
        let _ = client.read(&mut buf).await;
        assert_eq!(w.body_ended(), Err(Expired(Guard::Idle)));
    }

    #[tokio::test]
    async fn a_bodiless_response_needs_no_idle_watchdog() {
        let (client, _server) = pair().await;
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::Idle, 50 * MS).unwrap();
        assert_eq!(
            w.header_arrived(&header(200, &[("content-length", "0")])),
            Ok(false)
        );
        tokio::time::sleep(100 * MS).await;
        assert!(!w.fired());
    }

    /// Data the upstream keeps sending while nobody reads it (a slow client upstream of the
    /// filters) is not silence; an upstream that closed is not either.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_kernel_vetoes_a_silence_that_is_not_the_upstreams() {
        let (client, mut server) = pair().await;
        let mut w = Watchdog::arm(client.as_raw_fd(), Guard::Idle, 200 * MS).unwrap();
        assert_eq!(w.header_arrived(&chunked()), Ok(true));
        for _ in 0..15 {
            server.write_all(b"unread").await.unwrap();
            tokio::time::sleep(30 * MS).await;
        }
        assert!(!w.fired(), "the upstream kept talking");
        drop(server);
        tokio::time::sleep(400 * MS).await;
        assert!(!w.fired(), "the upstream closed its side itself");
        drop(client);
    }
}
