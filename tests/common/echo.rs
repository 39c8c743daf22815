//! A tiny HTTP/1.1 upstream that answers every request with a JSON echo of its method, target,
//! headers and body size, and counts what it saw. `?delay_ms=N` delays the answer, `?download_bytes=N` answers
//! with N streamed zero bytes instead; a request
//! with `Upgrade: websocket` is switched (101) and then echoes raw bytes back.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header names in lower case, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
}

#[allow(dead_code)]
impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
pub struct Record {
    pub count: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
}

/// Requests kept in `Record::seen`; older ones are dropped so a long run stays small.
const KEEP_SEEN: usize = 1000;

impl Record {
    fn push(&self, seen: Seen) {
        let mut all = self.seen.lock().unwrap();
        if all.len() >= KEEP_SEEN {
            all.drain(..KEEP_SEEN / 2);
        }
        all.push(seen);
    }
}

/// A response body of `remaining` zero bytes, produced 64 KiB at a time (never held whole).
pub struct Zeros {
    remaining: u64,
}

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        const CHUNK: u64 = 64 * 1024;
        if self.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK);
        self.remaining -= n;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(
            vec![0u8; n as usize],
        )))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

type EchoBody = Either<Full<Bytes>, Zeros>;

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(
    req: Request<Incoming>,
    record: Arc<Record>,
) -> Result<Response<EchoBody>, hyper::Error> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let delay_ms = query_number(&req, "delay_ms");
    let download = query_number(&req, "download_bytes");
    let wants_upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && query_number(&req, "refuse_upgrade") == 0;
    record.count.fetch_add(1, Ordering::SeqCst);

    if wants_upgrade {
        record.push(Seen {
            method,
            target,
            headers,
            body_bytes: 0,
        });
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap());
    }

    let mut body = req.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let json = serde_json::json!({
        "method": method,
        "target": target,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    record.push(Seen {
        method,
        target,
        headers,
        body_bytes,
    });
    if download > 0 {
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Either::Right(Zeros {
                remaining: download,
            }))
            .unwrap());
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Either::Left(Full::new(Bytes::from(json.to_string()))))
        .unwrap())
}

/// Serve on an already bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, record: Arc<Record>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let record = record.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, record.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// An echo upstream on its own thread and runtime; stops when dropped.
#[allow(dead_code)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    _runtime: tokio::runtime::Runtime,
}

#[allow(dead_code)]
impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("echo runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind echo upstream");
        let addr = listener.local_addr().expect("echo addr");
        let record = Arc::new(Record::default());
        runtime.spawn(serve(listener, record.clone()));
        EchoUpstream {
            addr,
            record,
            _runtime: runtime,
        }
    }

    /// How many requests reached the upstream.
    pub fn count(&self) -> usize {
        self.record.count.load(Ordering::SeqCst)
    }

    /// The most recent request the upstream saw.
    pub fn last(&self) -> Seen {
        self.record
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}
