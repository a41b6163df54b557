//! The data plane's client connections: how many may be open at once, how long a request head
//! may take to arrive, and how long a kept-alive connection may sit idle.
//!
//! Pingora times out each read of a connection's first request head separately, so a client
//! that trickles a byte now and then is never cut, and it reads the next head of a kept-alive
//! connection with no timeout at all. Either way a client holds a task, a buffer and a descriptor
//! for as long as it likes without ever presenting a key. [`Connections`] therefore takes
//! Pingora's place as the listener's application:
//!
//! - it admits at most `server.max_connections` connections at once; one past the limit is
//!   answered 503 `connection_limit_exceeded` and closed at once, before anything is read from
//!   it, so it neither waits in the accept queue nor holds a descriptor for long;
//! - it runs each connection's HTTP/1.1 request loop, handing every request to the proxy: a
//!   request head must arrive whole within `server.header_timeout` of the connection's
//!   acceptance or, on a kept-alive connection, of the next request's first byte, and a
//!   kept-alive connection whose next request does not start within `server.keepalive_timeout`
//!   is closed.
//!
//! The proxy marks each request's head as read through the connection's stream, which this module
//! wraps ([`ClientStream`], [`head_received`]); a head deadline that passes first drops the
//! request unread, and the connection with it. Between requests a kept-alive connection holds its
//! socket and this loop's state only: Pingora's session and its header buffer are made once the
//! next request's first byte is in.
//!
//! After most upstream failures Pingora drops the request's session, and with it the connection,
//! whatever the application says about reusing it, although keygate's answer went out whole and
//! said `keep-alive`; the client's next request on it would then fail. So when keygate answers a
//! failure itself on a connection that can carry the next request ([`can_carry_next`]), it marks
//! the stream ([`keep_after_answer`]), whose drop then hands the socket back to the request loop
//! instead of closing it.
//!
//! The data plane listens on plain TCP, so the loop speaks HTTP/1.x only; Pingora's own loop would
//! also look for h2c and TLS ALPN, which the data plane does not offer.

use crate::policy::startup::ServerSettings;
use crate::proxy::refusal::{self, Refusal};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v1::server::HttpSession as HttpSessionV1;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `max_connections` however many descriptors the process may open: each idle
/// connection costs memory too.
const DEFAULT_MAX_CONNECTIONS_CAP: usize = 10_000;
/// How long writing the refusal to a connection past the limit may take.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often at most refused connections are logged: a flood of them must not become a flood of
/// log lines.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The connection settings of the policy's `server` section, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_settings(server: &ServerSettings) -> ConnectionLimits {
        ConnectionLimits {
            keepalive_timeout: server
                .keepalive_timeout
                .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
            header_timeout: server.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT),
            max_connections: server
                .max_connections
                .unwrap_or_else(default_max_connections),
        }
    }
}

/// Raises the process's soft open-file limit to its hard limit, as servers that hold thousands of
/// connections do: distributions ship a soft limit of 1,024 for compatibility with `select`,
/// which keygate does not use. Returns the soft limit in force afterwards.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = open_file_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}

/// The process's open-file limit, soft and hard, if it can be read.
fn open_file_limit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// Descriptors kept beside two per connection: the usage database, logs, the admin API's
/// connections, Redis.
const DESCRIPTOR_HEADROOM: usize = 256;

/// Grows the process's descriptor table at once to hold every descriptor `max_connections` can
/// need: a client's and a provider's per connection, and [`DESCRIPTOR_HEADROOM`]. Linux grows the
/// table as descriptors are opened, doubling it, and in a process of several threads each growth
/// waits for an RCU grace period inside the `accept` or `connect` that needed it: the data plane's
/// thread served nothing for 10 to 30 ms each time the open streams doubled (docs/performance.md,
/// Concurrency). A table never shrinks, so after this it does not grow again. Returns the highest
/// descriptor the table now holds.
pub fn reserve_descriptor_table(max_connections: usize) -> io::Result<usize> {
    let wanted = max_connections
        .saturating_mul(2)
        .saturating_add(DESCRIPTOR_HEADROOM);
    let limit = open_file_limit().ok_or_else(io::Error::last_os_error)?;
    let allowed = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let highest = wanted.min(allowed).saturating_sub(1);
    let Ok(highest_fd) = libc::c_int::try_from(highest) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let file = std::fs::File::open("/dev/null")?;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this function owns onto the lowest free
    // number at or above `highest_fd`; the duplicate is closed at once and never used.
    unsafe {
        let duplicate = libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_DUPFD_CLOEXEC,
            highest_fd,
        );
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(duplicate);
    }
    Ok(highest)
}

/// Half the process's open-file limit, at most [`DEFAULT_MAX_CONNECTIONS_CAP`]: every proxied
/// request needs a second descriptor for its provider connection, and the usage database and
/// logs need theirs, so a full house of clients must not take them all.
pub fn default_max_connections() -> usize {
    let Some(limit) = open_file_limit().filter(|l| l.rlim_cur != libc::RLIM_INFINITY) else {
        return DEFAULT_MAX_CONNECTIONS_CAP;
    };
    usize::try_from(limit.rlim_cur / 2)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS_CAP)
        .clamp(1, DEFAULT_MAX_CONNECTIONS_CAP)
}

/// The data plane listener's application: the HTTP application `A` (the proxy) behind the
/// connection limits; see the module docs.
pub struct Connections<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
    open: AtomicUsize,
    /// The whole answer to a connection past the limit, rendered once.
    refusal: Bytes,
    refusals: RefusalLog,
}

impl<A> Connections<A> {
    pub fn new(app: A, limits: ConnectionLimits) -> Connections<A> {
        Connections {
            app: Arc::new(app),
            limits,
            open: AtomicUsize::new(0),
            refusal: refusal::closing_response(&Refusal::ConnectionLimit),
            refusals: RefusalLog::new(),
        }
    }

    fn admit(&self) -> Option<Slot<'_>> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(&self.open))
    }

    /// Answers a connection past the limit without reading from it (reading could take as long as
    /// the client likes, holding the descriptor the limit protects) and closes it.
    async fn refuse(&self, mut stream: Stream) {
        self.refusals.count(self.limits.max_connections);
        let answer = async {
            stream.write_all(&self.refusal).await?;
            AsyncWriteExt::shutdown(&mut stream).await
        };
        if let Err(e) = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, answer)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        {
            tracing::debug!(error = %e, "could not answer a connection past max_connections");
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Connections<A> {
    /// Serves one connection's requests until it closes, breaks, or overstays a deadline.
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let shared = Arc::new(Shared::default());
        let mut client = ClientStream::new(stream, shared.clone());
        let mut head_deadline = Instant::now() + self.limits.header_timeout;
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut shutting_down = shutdown.clone();
        loop {
            client.handed = 0;
            shared.head_pending.store(true, Ordering::Relaxed);
            shared.keep.store(false, Ordering::Relaxed);
            let request = self.next_request(client, persistent.take(), shutdown);
            let served = tokio::select! {
                biased;
                served = request => served,
                () = head_overdue(&shared.head_pending, head_deadline) => return,
            };
            client = match served {
                Some(served) => {
                    let (stream, settings) = served.consume();
                    persistent = settings;
                    // This loop made the stream, so it gets back what it made.
                    let Ok(client) = stream.into_any().downcast::<ClientStream>() else {
                        return;
                    };
                    client
                }
                None => match shared.take_kept() {
                    Some((stream, read_filled)) => {
                        let mut client = ClientStream::new(stream, shared.clone());
                        client.read_filled = read_filled;
                        client
                    }
                    None => return,
                },
            };
            let next = tokio::select! {
                biased;
                next = tokio::time::timeout(self.limits.keepalive_timeout, client.await_next_request()) => next,
                _ = shutting_down.wait_for(|down| *down) => return,
            };
            // Idle too long, closed by the client, or broken.
            if !matches!(next, Ok(Ok(true))) {
                return;
            }
            head_deadline = Instant::now() + self.limits.header_timeout;
        }
    }

    /// The proxy's future for the connection's next request. Not async: the session is made here
    /// and moved into the proxy's own future, so the connection's future, which lives as long as
    /// the connection, keeps no copy of it.
    fn next_request<'a>(
        &'a self,
        client: Box<ClientStream>,
        persistent: Option<HttpPersistentSettings>,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        let mut http1 = HttpSessionV1::new(client);
        // The provider gets canonical header names whatever the client sent (`proxy::head`), so
        // the client's spelling is not kept to begin with.
        http1.set_keep_header_case(false);
        let mut session = ServerSession::H1(http1);
        match persistent {
            Some(settings) => settings.apply_to_session(&mut session),
            // Kept alive with no timeout of Pingora's own: the loop's head deadline bounds the
            // wait, and a longer `header_timeout` must not be cut short by Pingora's default.
            None => session.set_keepalive(Some(0)),
        }
        self.app.process_new_http(session, shutdown)
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            self.refuse(stream).await;
            return None;
        };
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Completes when `deadline` passes with the request head still unread, and never otherwise.
async fn head_overdue(pending: &AtomicBool, deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    if !pending.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Ends the request head's deadline: called by the proxy as soon as Pingora has read the head.
pub fn head_received(session: &ServerSession) {
    if let Some(client) = client_stream(session) {
        client.shared.head_pending.store(false, Ordering::Relaxed);
    }
}

/// Whether the connection can carry the client's next request once keygate has answered this
/// one itself: neither side asked to close, the request was read to its end, and nothing past
/// it was (a pipelined request read along with it would be lost with Pingora's session). A body
/// sent chunked cannot be told from what follows it here, so it counts as not verifiable.
pub fn can_carry_next(session: &mut ServerSession) -> bool {
    if session.get_keepalive().is_none() || !session.is_body_done() {
        return false;
    }
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let (Some(client), Some(h1)) = (client_stream(session), session.as_http1()) else {
        return false;
    };
    let consumed = h1.get_headers_raw_bytes().len() + session.body_bytes_read();
    client.handed == consumed as u64
}

/// Keeps the connection for the client's next request after keygate's own answer to this one,
/// even where Pingora drops the session after a failure whatever the application says: call it
/// once the answer is written whole, and only if [`can_carry_next`] said so before it was.
pub fn keep_after_answer(session: &ServerSession) {
    if let Some(client) = client_stream(session) {
        client.shared.keep.store(true, Ordering::Relaxed);
    }
}

fn client_stream(session: &ServerSession) -> Option<&ClientStream> {
    session
        .stream()
        .and_then(|stream| stream.as_ref().as_any().downcast_ref::<ClientStream>())
}

/// One admitted connection, counted until it drops.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Warns that connections are being refused, at most once per [`REFUSAL_WARNING_INTERVAL`], with
/// how many were since the last warning.
struct RefusalLog {
    started: Instant,
    refused: AtomicU64,
    next_warning_ms: AtomicU64,
}

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            started: Instant::now(),
            refused: AtomicU64::new(0),
            next_warning_ms: AtomicU64::new(0),
        }
    }

    fn count(&self, max_connections: usize) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_warning_ms.load(Ordering::Relaxed);
        let next = now_ms.saturating_add(REFUSAL_WARNING_INTERVAL.as_millis() as u64);
        if now_ms >= due
            && self
                .next_warning_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::warn!(
                max_connections,
                refused,
                "server.max_connections reached: new connections are answered 503 and closed"
            );
        }
    }
}

/// What a connection's request loop shares with its stream, which the proxy reaches.
#[derive(Debug, Default)]
struct Shared {
    /// The current request's head is not read yet: its deadline runs.
    head_pending: AtomicBool,
    /// The current request was answered whole and the socket outlives its session.
    keep: AtomicBool,
    /// Where a kept socket goes when Pingora drops the session holding it, with its stream's
    /// [`ClientStream::read_filled`].
    kept: Mutex<Option<(Stream, bool)>>,
}

impl Shared {
    fn take_kept(&self) -> Option<(Stream, bool)> {
        if !self.keep.load(Ordering::Relaxed) {
            return None;
        }
        self.kept.lock().ok()?.take()
    }
}

/// A client connection's stream as Pingora sees it: the socket, plus what the request loop and
/// the proxy share about the request on it.
#[derive(Debug)]
pub struct ClientStream {
    /// Dropped with the stream, or moved to [`Shared::kept`] if the connection is kept.
    inner: ManuallyDrop<Stream>,
    /// The last read from the socket filled the buffer it was given, which leaves the socket's
    /// readiness set whether or not more is there: see [`ClientStream::await_next_request`].
    read_filled: bool,
    /// Bytes handed to Pingora since the current request began.
    handed: u64,
    shared: Arc<Shared>,
}

impl ClientStream {
    fn new(inner: Stream, shared: Arc<Shared>) -> Box<ClientStream> {
        Box::new(ClientStream {
            inner: ManuallyDrop::new(inner),
            read_filled: false,
            handed: 0,
            shared,
        })
    }

    /// Waits for the next request without reading it, so that the read that parses its head
    /// takes it straight from the socket into Pingora's buffer; false at the end of the stream.
    /// Cancelling it loses nothing.
    ///
    /// The socket's readiness is enough, and costs no system call, unless the last read filled
    /// its buffer: then the readiness may be left from it, and only a peek tells whether the
    /// client sent more. Either way a closed connection is found by the request's first read,
    /// which Pingora takes quietly for a client that went away. A stream that is not one of
    /// Pingora's sockets cannot be waited on so (`Unsupported`), and its connection is closed
    /// after each request.
    async fn await_next_request(&self) -> io::Result<bool> {
        let Some(socket) = (**self.inner).as_any().downcast_ref::<L4Stream>() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        if self.read_filled {
            socket.peek_readable().await
        } else {
            socket.readable().await.map(|()| true)
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken or dropped here only, once, and never used after.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        if self.shared.keep.load(Ordering::Relaxed) {
            if let Ok(mut kept) = self.shared.kept.lock() {
                *kept = Some((inner, self.read_filled));
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let wanted = buf.remaining();
        let before = buf.filled().len();
        let read = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        this.handed += got as u64;
        this.read_filled = got > 0 && got == wanted;
        read
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Peeking is for telling HTTP/2 from HTTP/1, which this loop does not do; a peek would also have
/// to account for a kept first byte.
impl Peek for ClientStream {}

#[cfg(test)]
mod tests {
    use super::{ClientStream, Shared};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected client and the server's stream of it.
    async fn connection() -> (tokio::net::TcpStream, Box<ClientStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let stream = pingora::protocols::l4::stream::Stream::from(socket);
        let stream = ClientStream::new(Box::new(stream), Arc::new(Shared::default()));
        (client, stream)
    }

    #[tokio::test]
    async fn waiting_for_the_next_request_reads_none_of_it() {
        let (mut client, mut stream) = connection().await;
        let request = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
        client.write_all(request).await.unwrap();
        assert!(stream.await_next_request().await.unwrap());
        assert_eq!(stream.handed, 0);
        let mut head = vec![0; request.len()];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(head, request);
        assert_eq!(stream.handed, request.len() as u64);
    }

    /// A connection whose stream's last read took all the client sent and filled its buffer.
    async fn connection_after_a_read_that_filled_its_buffer(
    ) -> (tokio::net::TcpStream, Box<ClientStream>) {
        let (mut client, mut stream) = connection().await;
        client.write_all(b"0123456789").await.unwrap();
        let mut whole = [0; 10];
        stream.read_exact(&mut whole).await.unwrap();
        assert!(stream.read_filled, "the read filled its buffer");
        (client, stream)
    }

    #[tokio::test]
    async fn after_a_read_that_filled_its_buffer_the_wait_lasts_until_the_client_sends() {
        let (mut client, mut stream) = connection_after_a_read_that_filled_its_buffer().await;
        // The socket's readiness is left from that read: only a peek shows nothing came since.
        let idle = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            stream.await_next_request(),
        );
        assert!(idle.await.is_err(), "the wait ended with nothing sent");
        client.write_all(b"GET").await.unwrap();
        assert!(stream.await_next_request().await.unwrap());
        let mut next = [0; 3];
        stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"GET");
    }

    #[tokio::test]
    async fn after_a_read_that_filled_its_buffer_a_closed_connection_is_reported() {
        let (client, stream) = connection_after_a_read_that_filled_its_buffer().await;
        drop(client);
        assert!(!stream.await_next_request().await.unwrap());
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise_open_file_limit`.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            if limit.rlim_max > 1024 {
                let lowered = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: limit.rlim_max,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
            }
        }
        assert_eq!(super::raise_open_file_limit(), Some(limit.rlim_max));
    }

    /// The size of this process's descriptor table, as the kernel reports it.
    fn descriptor_table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_descriptor_table_is_grown_for_two_descriptors_a_connection() {
        super::raise_open_file_limit();
        let max_connections = 3_000;
        assert!(descriptor_table_size() < 2 * max_connections);
        let highest = super::reserve_descriptor_table(max_connections).unwrap();
        assert_eq!(
            highest,
            2 * max_connections + super::DESCRIPTOR_HEADROOM - 1
        );
        assert!(
            descriptor_table_size() > highest,
            "{}",
            descriptor_table_size()
        );
    }
}
