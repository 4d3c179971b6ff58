//! The benchmark's receiver: a bare hyper HTTP/1.1 server on 127.0.0.1 that verifies every
//! signature and records, per delivery, when it arrived.
//!
//! Paths say how to answer: `/ok/{n}` answers `200`; `/down/{n}` answers `503` while the
//! sink is switched down, `200` after. Hanging endpoints point at a [`Holder`] instead, and
//! endpoints that only add load beside the measured ones at a sink [`Apart`].

use bytes::Bytes;
use hookline_signing::Verifier;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// What the sink has seen.
#[derive(Default)]
pub struct Tally {
    /// Deliveries seen per (path, message id): 1 for each, more for duplicates.
    pub seen: HashMap<(String, String), u32>,
    /// Request-sent → receipt, in microseconds, for first receipts only.
    pub latencies_us: Vec<u64>,
    /// Each of `latencies_us`' intended send time, in microseconds since the sink's epoch.
    pub sent_us: Vec<u64>,
    /// When the last first receipt arrived.
    pub last_receipt: Option<Instant>,
    /// Every first receipt's time, in microseconds since the sink's epoch.
    pub receipts_us: Vec<u64>,
    epoch: Option<Instant>,
}

impl Tally {
    /// The first receipt at or after `t`.
    pub fn first_receipt_after(&self, t: Instant) -> Option<Instant> {
        let epoch = self.epoch?;
        let from = t.saturating_duration_since(epoch).as_micros() as u64;
        self.receipts_us
            .iter()
            .filter(|&&r| r >= from)
            .min()
            .map(|&r| epoch + Duration::from_micros(r))
    }
}

/// The sink's shared state.
pub struct Sink {
    pub addr: SocketAddr,
    /// The zero of the `sent_us` clock that producers embed in `data`.
    pub epoch: Instant,
    pub tally: Mutex<Tally>,
    pub requests: AtomicU64,
    /// Body bytes of the requests whose signature verified.
    pub body_bytes: AtomicU64,
    pub bad_signatures: AtomicU64,
    pub down: AtomicBool,
    verifier: Verifier,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    sent_us: Option<u64>,
}

impl Sink {
    /// Starts the sink; it runs until the process ends. Its tally is sized up front for
    /// `expected` deliveries: a table that grew during the phase would rehash every entry
    /// under the tally's lock, and every delivery arriving meanwhile would wait, its latency
    /// counting the measuring side's own pause (tens of milliseconds at 57,000 entries).
    pub async fn start(
        verifier: Verifier,
        epoch: Instant,
        expected: usize,
    ) -> std::io::Result<Arc<Sink>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sink = Arc::new(Sink {
            addr: listener.local_addr()?,
            epoch,
            tally: Mutex::new(Tally {
                seen: HashMap::with_capacity(expected),
                latencies_us: Vec::with_capacity(expected),
                sent_us: Vec::with_capacity(expected),
                receipts_us: Vec::with_capacity(expected),
                last_receipt: None,
                epoch: Some(epoch),
            }),
            requests: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            down: AtomicBool::new(false),
            verifier,
        });
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(sink)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if path.starts_with("/down/") && self.down.load(Ordering::Acquire) {
            return reply(StatusCode::SERVICE_UNAVAILABLE);
        }
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return reply(StatusCode::BAD_REQUEST);
        };
        let arrived = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let now = chrono::Utc::now().timestamp();
        if self
            .verifier
            .verify(
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
                &body,
                now,
            )
            .is_err()
        {
            self.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return reply(StatusCode::UNAUTHORIZED);
        }
        self.body_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let Ok(env) = serde_json::from_slice::<Envelope>(&body) else {
            return reply(StatusCode::BAD_REQUEST);
        };
        let sent_us = env.data.and_then(|d| d.sent_us);
        if let Ok(mut t) = self.tally.lock() {
            let n = t.seen.entry((path, env.id)).or_insert(0);
            *n += 1;
            if *n == 1 {
                let at = arrived.duration_since(self.epoch).as_micros() as u64;
                if let Some(sent) = sent_us {
                    t.latencies_us.push(at.saturating_sub(sent));
                    t.sent_us.push(sent);
                }
                t.receipts_us.push(at);
                t.last_receipt = Some(arrived);
            }
        }
        reply(StatusCode::OK)
    }

    /// The mean body size of the requests whose signature verified.
    pub fn mean_body_bytes(&self) -> f64 {
        let verified = self
            .requests
            .load(Ordering::Relaxed)
            .saturating_sub(self.bad_signatures.load(Ordering::Relaxed));
        self.body_bytes.load(Ordering::Relaxed) as f64 / verified.max(1) as f64
    }

    /// Gives the tally's memory back once its phase has been read. The sink itself keeps
    /// running until the process ends, and a run starts one per phase and per raw reference,
    /// each sized for all it will see.
    pub fn release(&self) {
        if let Ok(mut t) = self.tally.lock() {
            *t = Tally::default();
        }
    }

    /// Distinct deliveries seen so far.
    pub fn distinct(&self) -> usize {
        self.tally.lock().map(|t| t.seen.len()).unwrap_or(0)
    }
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Where a hanging endpoint points: a listener on a thread of its own that accepts
/// connections and never reads or answers them, until the holder is dropped. It is kept
/// apart from the sink on purpose: requests held in the sink's runtime, which also receives
/// and stamps the healthy deliveries and paces the load, slowed the measure of the healthy
/// endpoints themselves (BENCHMARKS.md, the tenth host).
pub struct Holder {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Holder {
    pub fn start() -> std::io::Result<Holder> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-holder".into())
            .spawn(move || {
                let mut held = Vec::new();
                while !stopped.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((conn, _)) => held.push(conn),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })?;
        Ok(Holder {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sink on a thread and runtime of its own, for endpoints that only add load beside the
/// measured ones (the isolation control's additional healthy endpoint): their deliveries
/// are verified and answered as the sink's are, without taking the main sink's runtime,
/// which stamps the measured deliveries' arrivals and sends the load. Stopped when dropped.
pub struct Apart {
    pub sink: Arc<Sink>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Apart {
    pub fn start(verifier: Verifier, expected: usize) -> std::io::Result<Apart> {
        let (ready, started) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-sink-apart".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Sink::start(verifier, Instant::now(), expected).await {
                        Ok(sink) => {
                            let _ = ready.send(Ok(sink));
                            let _ = stopped.await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            })?;
        let sink = started
            .recv()
            .map_err(|_| std::io::Error::other("the sink apart ended before it started"))??;
        Ok(Apart {
            sink,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_signing::Secret;

    /// The tally holds the phase's deliveries without growing: no rehash under its lock while
    /// the deliveries it times are arriving.
    #[tokio::test]
    async fn the_tally_is_sized_for_the_deliveries_expected() {
        let secret = Secret::from_bytes(&[7; 32]).expect("a 32-byte secret");
        let sink = Sink::start(Verifier::new(vec![secret]), Instant::now(), 60_000)
            .await
            .expect("starting the sink");
        let t = sink.tally.lock().expect("the tally");
        assert!(t.seen.capacity() >= 60_000, "seen: {}", t.seen.capacity());
        for v in [&t.latencies_us, &t.sent_us, &t.receipts_us] {
            assert!(v.capacity() >= 60_000, "{}", v.capacity());
        }
        drop(t);
        // Once the phase is read, the memory goes back.
        sink.release();
        let t = sink.tally.lock().expect("the tally");
        assert_eq!(t.seen.capacity(), 0);
        assert_eq!(t.latencies_us.capacity(), 0);
    }
}
