//! Sending one signed request to one endpoint.
//!
//! Each [`Target`] (an endpoint at one version) keeps its own idle keep-alive HTTP/1.1
//! connections, and an attempt borrows one for its whole exchange and drives it itself: no
//! shared pool to look up, and no second task per connection to hand the request to and the
//! response back from. `TCP_NODELAY` is set; HTTPS goes through rustls. A connection idle for
//! more than [`IDLE_KEEP`] is closed instead of reused, and a request that a reused
//! connection never took (the receiver had closed it meanwhile), or dropped unanswered,
//! goes once more on a new one. Redirects are never followed: a 3xx is a failed attempt
//! like any other non-2xx, whose error says where it pointed.
//!
//! The connector resolves names through the server's [`Guard`] (see [`super::targets`]), not
//! the system directly: every new connection goes to an address the SSRF rules were checked
//! against just then, so a name that now resolves to a private address fails the attempt
//! (as a connect error, retried like any other). URLs with a literal address skip the
//! resolver; they are checked before each request.

use super::targets::{Guard, Refused};
use crate::model::Endpoint;
use bytes::Bytes;
use hookline_signing::Secret;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{HttpConnector, dns::Name};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 4096;
/// How much more of a response body is read (and dropped) so the connection can be reused.
const DRAINED_BODY_BYTES: usize = 64 * 1024;
/// How long an idle connection is kept for the endpoint's next request.
pub const IDLE_KEEP: Duration = Duration::from_secs(90);
/// Idle connections kept per target at most (one per request in flight is the most it uses).
const MAX_IDLE: usize = 256;
const USER_AGENT: &str = concat!("Hookline/", env!("CARGO_PKG_VERSION"));

/// An endpoint ready to be sent to: URL parsed, secret decoded, headers built, and its idle
/// connections.
pub struct Target {
    pub endpoint_id: String,
    /// The endpoint's `updated_at`: a newer version replaces an older one.
    pub version: i64,
    pub uri: Uri,
    pub secret: Secret,
    /// The secrets rotated out, each with the time (ms since the epoch) until which it
    /// signs too.
    pub previous: Vec<(Secret, i64)>,
    pub rate_limit_per_sec: Option<u32>,
    /// The request line's target: the URL's path and query (origin form).
    path: Uri,
    /// Every request's headers but the three `webhook-*` ones: the endpoint's own, `Host`,
    /// `Content-Type`, `User-Agent`.
    headers: HeaderMap,
    /// Keep-alive connections to this endpoint between two requests, the latest last.
    idle: Mutex<Vec<Conn>>,
}

impl Target {
    /// Builds a target from a stored endpoint. Fails only on corrupt stored data (the API
    /// validates all of it before storing).
    pub fn from_endpoint(ep: &Endpoint) -> Result<Self, String> {
        let uri: Uri = ep
            .url
            .parse()
            .map_err(|e| format!("stored url of {} does not parse: {e}", ep.id))?;
        let secret = Secret::parse(&ep.secret)
            .map_err(|e| format!("stored secret of {} is invalid: {e}", ep.id))?;
        let previous = ep
            .previous_secrets
            .iter()
            .map(|p| {
                Secret::parse(&p.secret)
                    .map(|s| (s, p.until.0))
                    .map_err(|e| format!("stored previous secret of {} is invalid: {e}", ep.id))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut headers = HeaderMap::new();
        for (k, v) in &ep.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("stored header name of {} is invalid: {e}", ep.id))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| format!("stored header value of {} is invalid: {e}", ep.id))?;
            headers.insert(name, value);
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("stored url of {} has no host", ep.id))?;
        let secure = uri.scheme_str() == Some("https");
        let host = match uri.port_u16() {
            Some(port) if !(port == 443 && secure || port == 80 && !secure) => {
                format!("{host}:{port}")
            }
            _ => host.to_owned(),
        };
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&host)
                .map_err(|e| format!("stored url of {} has an invalid host: {e}", ep.id))?,
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        let path = match uri.path_and_query() {
            Some(p) if p.as_str() != "/" => Uri::from_parts({
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = Some(p.clone());
                parts
            })
            .map_err(|e| format!("stored url of {} has an invalid path: {e}", ep.id))?,
            _ => Uri::from_static("/"),
        };
        Ok(Target {
            endpoint_id: ep.id.clone(),
            version: ep.updated_at.0,
            uri,
            secret,
            previous,
            rate_limit_per_sec: ep.rate_limit_per_sec,
            path,
            headers,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The secrets that sign a request sent at `now_ms`: the current one, and each one
    /// rotated out until its overlap ends.
    pub fn signing_secrets(&self, now_ms: i64) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.secret).chain(
            self.previous
                .iter()
                .filter(move |(_, until)| now_ms < *until)
                .map(|(s, _)| s),
        )
    }

    /// The latest idle connection not idle for too long; older ones are closed.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        drop_stale(&mut idle);
        idle.pop()
    }

    fn put_idle(&self, mut conn: Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            conn.idle_since = Instant::now();
            idle.push(conn);
        }
    }

    /// Closes the connections idle for longer than [`IDLE_KEEP`].
    pub fn close_stale(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            drop_stale(&mut idle);
        }
    }
}

/// Closes the connections of `idle` idle for longer than [`IDLE_KEEP`].
fn drop_stale(idle: &mut Vec<Conn>) {
    let now = Instant::now();
    idle.retain(|c| now.duration_since(c.idle_since) < IDLE_KEEP);
}

/// Leaves the secrets and the endpoint's headers (often credentials) out.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint_id", &self.endpoint_id)
            .field("version", &self.version)
            .field("uri", &self.uri)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .finish_non_exhaustive()
    }
}

/// What one request came to.
#[derive(Debug)]
pub struct SendResult {
    pub status: Option<StatusCode>,
    /// Set when no answer's status arrived (connect, DNS, TLS, a refused target, the
    /// timeout), and beside the status of a redirect, which is not followed: it says where
    /// the receiver pointed. A body that then broke off or ran out of time sets nothing:
    /// the status stands.
    pub error: Option<String>,
    pub body: Option<String>,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl SendResult {
    pub fn is_success(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(|s| s.is_success())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connector's resolver: the guard's lookup, screened, as `hyper-util` wants it. The
/// addresses it yields (port 0: the connector puts the URL's) are the ones connected to.
#[derive(Clone)]
struct ScreenedResolver(Guard);

impl tower_service::Service<Name> for ScreenedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.0.clone();
        Box::pin(async move {
            let ips = guard.addresses(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

type Connector = HttpsConnector<HttpConnector<ScreenedResolver>>;
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

type Driver = Pin<Box<http1::Connection<Io, Full<Bytes>>>>;

/// One HTTP/1.1 connection: the handle requests go in by, and the connection itself, which
/// whoever waits on a request drives (see [`driven`]).
struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    /// `None` once the connection ended: it is never polled again.
    io: Option<Driver>,
    idle_since: Instant,
}

/// Runs `f` while driving the connection `io` (reading and writing its socket). `Err` when
/// the connection ended (closed or failed) before `f` could finish; `io` is `None` from then.
async fn driven<T>(io: &mut Option<Driver>, f: impl Future<Output = T>) -> Result<T, String> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let Some(conn) = io.as_mut() else {
            return Poll::Ready(Err("the connection closed".to_owned()));
        };
        match conn.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(end) => {
                *io = None;
                // What the connection delivered before it ended is still taken.
                match f.as_mut().poll(cx) {
                    Poll::Ready(out) => Poll::Ready(Ok(out)),
                    Poll::Pending => Poll::Ready(Err(match end {
                        Ok(()) => "the connection closed".to_owned(),
                        Err(e) => error_chain(&e),
                    })),
                }
            }
        }
    })
    .await
}

/// Sends signed requests. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    connector: Connector,
    guard: Guard,
    timeout: Duration,
    /// Cancelled when the server begins to shut down: an answer whose status has come is
    /// not read further (its outcome is known; the rest of its body is only for the record),
    /// so the attempt ends and is recorded within the shutdown's grace.
    stopping: CancellationToken,
}

impl Sender {
    /// `guard` resolves every host connected to and applies the SSRF rules; `stopping` is
    /// the server's shutdown.
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        guard: Guard,
        stopping: CancellationToken,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(ScreenedResolver(guard.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Sender {
            connector,
            guard,
            timeout,
            stopping,
        }
    }

    /// Signs and sends `payload` for message `msg_id` to `target`, within the total timeout.
    /// An answer whose status arrived within it counts by that status, even if its body then
    /// failed to arrive in time or broke off: a `2xx` in time is a success.
    pub async fn send(&self, target: &Target, msg_id: &str, payload: Bytes) -> SendResult {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let outcome = self.exchange(target, msg_id, payload, deadline).await;
        let duration = started.elapsed();
        match outcome {
            Ok((status, body, retry_after, redirect)) => SendResult {
                status: Some(status),
                error: redirect,
                body,
                retry_after,
                duration,
            },
            Err((status, error)) => SendResult {
                status,
                error: Some(error),
                body: None,
                retry_after: None,
                duration,
            },
        }
    }

    /// A new connection to `uri`'s host (through the guard's resolver), handshaken.
    async fn connect(&self, uri: &Uri) -> Result<Conn, String> {
        use tower_service::Service as _;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| describe(&*e))?;
        let stream = connector
            .call(uri.clone())
            .await
            .map_err(|e| describe(&*e))?;
        let (tx, io) = http1::handshake(stream)
            .await
            .map_err(|e| format!("starting HTTP/1.1: {}", error_chain(&e)))?;
        Ok(Conn {
            tx,
            io: Some(Box::pin(io)),
            idle_since: Instant::now(),
        })
    }

    async fn exchange(
        &self,
        target: &Target,
        msg_id: &str,
        payload: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<
        (StatusCode, Option<String>, Option<Duration>, Option<String>),
        (Option<StatusCode>, String),
    > {
        self.guard
            .check_scheme(target.uri.scheme_str())
            .map_err(|refused| (None, refused.to_string()))?;
        // A literal address is connected to as it is, without the resolver: judge it here.
        if let Some(ip) = literal_ip(&target.uri) {
            self.guard
                .check_ip(ip)
                .map_err(|refused| (None, refused.to_string()))?;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let now = now_ms.div_euclid(1000);
        let signature =
            hookline_signing::sign(target.signing_secrets(now_ms), msg_id, now, &payload);
        let header = |s: &str| HeaderValue::from_str(s).map_err(|e| format!("header: {e}"));
        let (id, signature) = (header(msg_id), header(&signature));
        // The request, made again (alike) if it has to go once more on a new connection.
        let build = || -> Result<Request<Full<Bytes>>, String> {
            let mut req = Request::post(target.path.clone())
                .body(Full::new(payload.clone()))
                .map_err(|e| format!("building the request: {e}"))?;
            let h = req.headers_mut();
            h.clone_from(&target.headers);
            h.insert("webhook-id", id.clone()?);
            h.insert("webhook-timestamp", HeaderValue::from(now));
            h.insert("webhook-signature", signature.clone()?);
            Ok(req)
        };

        // Up to the answer's head: connecting, sending, waiting for the status.
        let head = async {
            self.request(target, &build)
                .await
                .map_err(|why| (None::<StatusCode>, why))
        };
        let (mut conn, resp) = match tokio::time::timeout_at(deadline, head).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err((
                    None,
                    format!("timed out after {} ms", self.timeout.as_millis()),
                ));
            }
        };
        let status = resp.status();
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
        {
            resp.headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
        } else {
            None
        };
        let redirect = not_followed(status, resp.headers().get(http::header::LOCATION));
        // The body, within what is left of the timeout. The status stands whatever happens
        // to it; a body cut short only loses its connection (and the rest of its text).
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let mut read = 0usize;
        let mut ended = false;
        let reading = async {
            while read < KEPT_BODY_BYTES + DRAINED_BODY_BYTES {
                match driven(&mut conn.io, body.frame()).await {
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            read += data.len();
                            let room = KEPT_BODY_BYTES.saturating_sub(kept.len());
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Ok(Some(Err(e))) => return Some(format!("it broke off: {}", error_chain(&e))),
                    Err(e) => return Some(format!("it broke off: {e}")),
                }
            }
            None
        };
        let cut_short = tokio::select! {
            // What has come is read first: a shutdown cuts only the wait for more.
            biased;
            read = tokio::time::timeout_at(deadline, reading) => read.unwrap_or_else(|_| {
                Some(format!(
                    "it had not ended {} ms after the request began",
                    self.timeout.as_millis()
                ))
            }),
            () = self.stopping.cancelled() => Some("the server began to shut down".to_owned()),
        };
        if let Some(why) = cut_short {
            tracing::debug!(
                endpoint = %target.endpoint_id, %status,
                "the response body was cut short ({why}); the attempt counts by its status"
            );
        }
        // Only a connection whose response was read to its end can carry the next request
        // (one the receiver will close says so, and its handle is closed by then).
        drop(body);
        if ended && conn.io.is_some() && !conn.tx.is_closed() {
            target.put_idle(conn);
        }
        // Cut: more came than was kept, or the read stopped before the body's end.
        let body = (!kept.is_empty()).then(|| kept_text(&kept, read > kept.len() || !ended));
        Ok((status, body, retry_after, redirect))
    }

    /// Sends the request `build` makes to `target` on an idle connection or a new one, and
    /// waits for the answer's head. A reused connection the receiver closed meanwhile gives
    /// the request back untaken; one it closed (or reset) after the request went, before an
    /// answer's head had come whole, leaves the request unanswered (most often a receiver
    /// whose idle time ran out as it came). Either way it goes once more, on a new
    /// connection: the receiver may have read it, and dedupes by `webhook-id`.
    async fn request(
        &self,
        target: &Target,
        build: &(dyn Fn() -> Result<Request<Full<Bytes>>, String> + Sync),
    ) -> Result<(Conn, http::Response<hyper::body::Incoming>), String> {
        let mut req = build()?;
        let (mut conn, mut reused) = match target.take_idle() {
            Some(c) => (c, true),
            None => (Box::pin(self.connect(&target.uri)).await?, false),
        };
        let resp = loop {
            let ready = driven(&mut conn.io, conn.tx.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                if reused {
                    conn = Box::pin(self.connect(&target.uri)).await?;
                    reused = false;
                    continue;
                }
                let why = match ready {
                    Ok(Err(e)) => error_chain(&e),
                    Err(e) => e,
                    Ok(Ok(())) => "the connection is not ready".to_owned(),
                };
                return Err(why);
            }
            let mut sent = std::pin::pin!(conn.tx.try_send_request(req));
            let answer = match driven(&mut conn.io, sent.as_mut()).await {
                Ok(answer) => answer,
                // The connection ended first: with it gone, the request comes back if it was
                // never written.
                Err(_) => {
                    conn.io = None;
                    sent.await
                }
            };
            match answer {
                Ok(resp) => break resp,
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        req = back;
                        conn = Box::pin(self.connect(&target.uri)).await?;
                        reused = false;
                    }
                    None if reused && closed_unanswered(e.error()) => {
                        req = build()?;
                        conn = Box::pin(self.connect(&target.uri)).await?;
                        reused = false;
                    }
                    _ => return Err(error_chain(&e.into_error())),
                },
            }
        };
        Ok((conn, resp))
    }
}

/// Whether a request's connection ended before an answer's head had come whole: closed
/// (also without TLS's `close_notify`), or reset.
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cause = c.source();
    }
    false
}

/// The kept start of a response body as text to store, at most [`KEPT_BODY_BYTES`] bytes of
/// it: invalid UTF-8 and NUL characters (which a PostgreSQL text column refuses, failing the
/// whole write of outcomes it rides in) become U+FFFD, the same on both engines. When the
/// body went on past what was kept (`cut`), a character the cut split is left out whole,
/// not shown as one the receiver never sent; and should replacements have made the text
/// longer than the bytes it stands for, it ends at the last whole character within the
/// bound.
fn kept_text(kept: &[u8], cut: bool) -> String {
    let kept = if cut {
        &kept[..kept.len() - unfinished_tail(kept)]
    } else {
        kept
    };
    let text = String::from_utf8_lossy(kept);
    let mut text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    };
    if text.len() > KEPT_BODY_BYTES {
        text.truncate(text.floor_char_boundary(KEPT_BODY_BYTES));
    }
    text
}

/// How many bytes at the end of `b` are the start of a UTF-8 character whose other bytes
/// are not there: a prefix of some valid character, and nothing else (0 when `b` ends on
/// a whole character, or on bytes that no character begins with, which stay invalid).
fn unfinished_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        if b[b.len() - back] & 0xC0 == 0x80 {
            continue;
        }
        // The last byte that is not a continuation: what follows it either could still
        // become a character (the input just ended) or cannot.
        return match std::str::from_utf8(&b[b.len() - back..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => back,
            _ => 0,
        };
    }
    0
}

/// The most of a redirect's `Location` an attempt's record keeps.
const KEPT_LOCATION_CHARS: usize = 512;

/// What a redirect (a `3xx` with a `Location`) did not do, for the attempt's record: it is
/// not followed (a receiver may not send Hookline anywhere but the endpoint's own URL), and
/// the usual cause is a URL that moved (`http` to `https`, a trailing slash). `None` for
/// every other answer.
fn not_followed(status: StatusCode, location: Option<&HeaderValue>) -> Option<String> {
    if !status.is_redirection() {
        return None;
    }
    let location = location?;
    let text: String = String::from_utf8_lossy(location.as_bytes())
        .chars()
        .filter(|c| !c.is_control())
        .take(KEPT_LOCATION_CHARS)
        .collect();
    Some(format!(
        "redirected to {text:?}, which is not followed: a webhook goes only to its \
         endpoint's URL (change the endpoint's URL if the receiver moved)"
    ))
}

/// `Retry-After` as seconds or as an HTTP date; capped at one day.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    // Seconds too many for a `u64` are still "a long time": capped like any long wait.
    let seconds = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) if seconds => u64::MAX,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64
        }
    };
    Some(Duration::from_secs(secs.min(86_400)))
}

/// The address in `uri`'s host, when it is one (what the connector would not resolve).
fn literal_ip(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// A failed connection, in words: the SSRF refusal alone when that is what stopped it (the
/// rest of the chain only says "dns error"), else the whole chain.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<Refused>() {
            return refused.to_string();
        }
        cause = c.source();
    }
    error_chain(e)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_says_where_it_pointed_and_nothing_else_does() {
        let at = |v: &'static [u8]| HeaderValue::from_bytes(v).unwrap();
        let said = not_followed(
            StatusCode::MOVED_PERMANENTLY,
            Some(&at(b"https://x.test/h")),
        );
        assert_eq!(
            said.as_deref(),
            Some(
                "redirected to \"https://x.test/h\", which is not followed: a webhook goes only \
                 to its endpoint's URL (change the endpoint's URL if the receiver moved)"
            )
        );
        // What the receiver wrote is kept as text, bounded, without control characters.
        let long = format!("/{}", "a".repeat(2_000));
        let said = not_followed(
            StatusCode::TEMPORARY_REDIRECT,
            Some(&HeaderValue::from_str(&long).unwrap()),
        )
        .unwrap();
        assert!(said.contains(&format!("\"/{}\"", "a".repeat(KEPT_LOCATION_CHARS - 1))));
        let tabbed = not_followed(StatusCode::SEE_OTHER, Some(&at(b"/a\tb"))).unwrap();
        assert!(tabbed.starts_with("redirected to \"/ab\""), "{tabbed}");
        let raw = not_followed(StatusCode::FOUND, Some(&at(b"/x\xff\xfey"))).unwrap();
        assert!(
            raw.starts_with("redirected to \"/x\u{FFFD}\u{FFFD}y\""),
            "{raw}"
        );
        // No `Location`, or not a redirect: nothing to say beside the status.
        assert_eq!(not_followed(StatusCode::NOT_MODIFIED, None), None);
        assert_eq!(not_followed(StatusCode::OK, Some(&at(b"/x"))), None);
        assert_eq!(not_followed(StatusCode::CREATED, Some(&at(b"/x"))), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn a_kept_body_cut_inside_a_character_leaves_it_out_and_stays_within_the_bound() {
        // 4,096 bytes of "€" (three bytes each) end one byte into the 1,366th.
        let euros = "€".repeat(3000);
        let kept = &euros.as_bytes()[..KEPT_BODY_BYTES];
        let text = kept_text(kept, true);
        assert_eq!(text, "€".repeat(1365));
        assert!(text.len() <= KEPT_BODY_BYTES);
        // Cut one and two bytes into a four-byte character, and right after a whole one.
        assert_eq!(kept_text("ab😀".as_bytes().get(..3).unwrap(), true), "ab");
        assert_eq!(kept_text("ab😀".as_bytes().get(..5).unwrap(), true), "ab");
        assert_eq!(kept_text("ab😀".as_bytes(), true), "ab😀");
        // A body that ended there was sent so: its broken end is the receiver's.
        assert_eq!(kept_text(&"ab😀".as_bytes()[..5], false), "ab\u{FFFD}");
        // Bytes no character starts with stay invalid, cut or not; so do starts that no
        // byte could finish (overlong forms, surrogates, past U+10FFFF).
        assert_eq!(kept_text(b"ok\xff", true), "ok\u{FFFD}");
        assert_eq!(kept_text(b"ok\x80", true), "ok\u{FFFD}");
        for (bytes, shown) in [
            (&b"ab\xE0\x80"[..], "ab\u{FFFD}\u{FFFD}"),
            (b"ab\xED\xA0", "ab\u{FFFD}\u{FFFD}"),
            (b"ab\xF0\x80\x80", "ab\u{FFFD}\u{FFFD}\u{FFFD}"),
            (b"ab\xF4\x90", "ab\u{FFFD}\u{FFFD}"),
            (b"ab\xC0", "ab\u{FFFD}"),
            (b"ab\xF5", "ab\u{FFFD}"),
        ] {
            assert_eq!(kept_text(bytes, true), shown, "{bytes:?}");
        }
        // Valid starts of each length, cut: left out.
        for bytes in [
            &b"ab\xC3"[..],
            b"ab\xE2\x82",
            b"ab\xF0\x9F\x98",
            b"ab\xED\x9F",
        ] {
            assert_eq!(kept_text(bytes, true), "ab", "{bytes:?}");
        }
    }

    #[test]
    fn replacements_never_take_a_kept_body_past_the_bound() {
        // Every byte invalid: each becomes three bytes of U+FFFD.
        let kept = vec![0xFFu8; KEPT_BODY_BYTES];
        let text = kept_text(&kept, true);
        assert_eq!(text, "\u{FFFD}".repeat(KEPT_BODY_BYTES / 3));
        let nul = vec![0u8; KEPT_BODY_BYTES];
        assert!(kept_text(&nul, false).len() <= KEPT_BODY_BYTES);
        assert!(!kept_text(&nul, false).contains('\0'));
    }

    #[test]
    fn literal_hosts_are_recognised() {
        let ip = |u: &str| literal_ip(&u.parse().unwrap());
        assert_eq!(
            ip("http://127.0.0.1:8080/x"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ip("http://[::ffff:7f00:1]/"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(ip("https://hooks.example.com/"), None);
    }
}
