//! Cuts off clients that send a request head (request line and headers) slower than
//! `limits.header_read_timeout_seconds`: pingora alone only bounds each single read.
//!
//! [`HeadTimeoutApp`] wraps the proxy's pingora app. It wraps every accepted connection in a
//! [`HeadTimedStream`] and runs the HTTP/1 keep-alive loop itself, so that it can tell the stream
//! when a new request begins. The stream watches the bytes pingora reads: from the start of a
//! request until the empty line that ends its head, a timer runs; when it fires before the empty
//! line arrived, the read fails and pingora closes the connection. After the head, reads pass
//! through untouched (request bodies have their own timeout, `limits.body_read_timeout_seconds`).
//!
//! The clock starts at the accept for a connection's first request (a connection that never
//! sends anything is cut off too) and at the first byte for later requests on a kept-alive
//! connection (the idle wait between requests is pingora's keep-alive timeout, 60 s).

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Finds the end of a request head in a byte stream: the first empty line after a non-empty
/// one. Leading empty lines (which RFC 9112 §2.2 lets a server ignore) do not count; a bare LF
/// ends a line like CRLF does, as pingora's parser accepts both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadScanner {
    /// A non-CR/LF byte has been seen since the request began.
    started: bool,
    /// Bytes other than CR on the current line.
    line_len: usize,
}

impl HeadScanner {
    /// Feed the next bytes; the offset just past the head's final LF if the head ends in them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if self.started && self.line_len == 0 => return Some(i + 1),
                b'\n' => self.line_len = 0,
                b'\r' => {}
                _ => {
                    self.started = true;
                    self.line_len += 1;
                }
            }
        }
        None
    }
}

#[derive(Debug)]
enum Phase {
    /// Between requests: the clock starts with the next byte.
    Idle,
    /// Inside a request head, which must be complete by the timer.
    Head,
    /// The head arrived; reads pass through until the next request begins.
    Passing,
}

/// A downstream connection whose request heads must arrive within a deadline.
pub struct HeadTimedStream {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    scanner: HeadScanner,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set by [`HeadTimeoutApp`] when pingora is about to read the next request on this
    /// connection.
    next_request: Arc<AtomicBool>,
    timeouts: prometheus::IntCounter,
}

impl std::fmt::Debug for HeadTimedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadTimedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl HeadTimedStream {
    /// Wrap a freshly accepted connection; its first head's clock starts now.
    fn new(
        inner: Stream,
        limit: Duration,
        next_request: Arc<AtomicBool>,
        timeouts: prometheus::IntCounter,
    ) -> Self {
        HeadTimedStream {
            inner,
            limit,
            phase: Phase::Head,
            scanner: HeadScanner::default(),
            timer: Some(Box::pin(tokio::time::sleep(limit))),
            next_request,
            timeouts,
        }
    }

    fn timed_out(&mut self) -> io::Error {
        self.timer = None;
        self.phase = Phase::Passing;
        self.timeouts.inc();
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("request head not received within {:?}", self.limit),
        )
    }
}

impl AsyncRead for HeadTimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.next_request.load(Ordering::Relaxed) {
            this.next_request.store(false, Ordering::Relaxed);
            this.phase = Phase::Idle;
            this.scanner = HeadScanner::default();
            this.timer = None;
        }
        if let Phase::Passing = this.phase {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if let Phase::Idle = this.phase {
                    this.phase = Phase::Head;
                    this.timer = Some(Box::pin(tokio::time::sleep(this.limit)));
                }
                if this.scanner.feed(fresh).is_some() {
                    this.phase = Phase::Passing;
                    this.timer = None;
                } else if this.timer.as_ref().is_some_and(|t| t.is_elapsed()) {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .timer
                    .as_mut()
                    .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(this.timed_out()))
                } else {
                    Poll::Pending
                }
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for HeadTimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadTimedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadTimedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadTimedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadTimedStream {
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

impl GetProxyDigest for HeadTimedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadTimedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadTimedStream {
    /// Not offered: bytes peeked past the wrapper would escape the head scan.
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}

/// The proxy's pingora app with request-head deadlines on every HTTP/1 connection.
pub struct HeadTimeoutApp<A> {
    inner: Arc<A>,
    /// How long a whole request head may take.
    limit: Duration,
    /// Counts connections closed for a late head.
    timeouts: prometheus::IntCounter,
}

impl<A> HeadTimeoutApp<A> {
    pub fn new(inner: A, limit: Duration, timeouts: prometheus::IntCounter) -> Self {
        HeadTimeoutApp {
            inner: Arc::new(inner),
            limit,
            timeouts,
        }
    }
}

/// Idle time allowed between requests on a kept-alive connection (pingora's own default).
const KEEPALIVE_SECONDS: u64 = 60;

#[async_trait]
impl<A> ServerApp for HeadTimeoutApp<A>
where
    A: HttpServerApp + ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let next_request = Arc::new(AtomicBool::new(false));
        let stream: Stream = Box::new(HeadTimedStream::new(
            stream,
            self.limit,
            next_request.clone(),
            self.timeouts.clone(),
        ));
        // The HTTP/1 keep-alive loop of pingora's own `ServerApp` for HTTP apps (portcullis
        // serves neither h2c nor TLS downstream), with the wrapper told where requests begin.
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_SECONDS)
        });
        let mut reused = self.inner.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            next_request.store(true, Ordering::Relaxed);
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.inner.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScanner;

    fn end(chunks: &[&[u8]]) -> Option<(usize, usize)> {
        let mut s = HeadScanner::default();
        chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| s.feed(c).map(|at| (i, at)))
    }

    #[test]
    fn finds_the_empty_line_that_ends_a_head() {
        assert_eq!(
            end(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"]),
            Some((0, 27))
        );
        assert_eq!(end(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some((0, 24)));
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: a\r\n\n"]), Some((0, 26)));
    }

    #[test]
    fn the_end_may_be_split_across_reads_in_any_place() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 1..head.len() {
            let (a, b) = head.split_at(cut);
            let expected = if cut == head.len() {
                (0, cut)
            } else {
                (1, head.len() - cut)
            };
            assert_eq!(end(&[a, b]), Some(expected), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(end(&bytes), Some((head.len() - 1, 1)));
    }

    #[test]
    fn an_unfinished_head_or_leading_empty_lines_do_not_end_it() {
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(end(&[b"\r\n\r\n", b"\n"]), None);
        assert_eq!(end(&[b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some((1, 18)));
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nX: \r\r\r\n"]), None);
    }
}
