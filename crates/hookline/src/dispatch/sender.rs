//! Sending one signed request to one endpoint.
//!
//! One pooled hyper client serves every endpoint: keep-alive connections are reused per
//! host, `TCP_NODELAY` is set, HTTPS goes through rustls (HTTP/2 where the receiver offers
//! it). Redirects are never followed: a 3xx is a failed attempt like any other non-2xx.
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
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, dns::Name};
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How much of a response body is kept in the attempt log.
pub const KEPT_BODY_BYTES: usize = 4096;
/// How much more of a response body is read (and dropped) so the connection can be reused.
const DRAINED_BODY_BYTES: usize = 64 * 1024;

/// An endpoint ready to be sent to: URL parsed, secret decoded, headers built.
pub struct Target {
    pub endpoint_id: String,
    /// The endpoint's `updated_at`: a newer version replaces an older one.
    pub version: i64,
    pub uri: Uri,
    pub secret: Secret,
    /// The secret before a rotation, and until when (ms since the epoch) it signs too.
    pub previous: Option<(Secret, i64)>,
    pub headers: HeaderMap,
    pub rate_limit_per_sec: Option<u32>,
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
        let previous = match (&ep.previous_secret, ep.previous_secret_expires_at) {
            (Some(p), Some(until)) => Some((
                Secret::parse(p)
                    .map_err(|e| format!("stored previous secret of {} is invalid: {e}", ep.id))?,
                until.0,
            )),
            _ => None,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &ep.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("stored header name of {} is invalid: {e}", ep.id))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| format!("stored header value of {} is invalid: {e}", ep.id))?;
            headers.insert(name, value);
        }
        Ok(Target {
            endpoint_id: ep.id.clone(),
            version: ep.updated_at.0,
            uri,
            secret,
            previous,
            headers,
            rate_limit_per_sec: ep.rate_limit_per_sec,
        })
    }
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

impl Target {
    /// The secrets that sign a request sent at `now_ms`: the current one, and the previous
    /// one until its overlap ends.
    pub fn signing_secrets(&self, now_ms: i64) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.secret).chain(
            self.previous
                .as_ref()
                .filter(|(_, until)| now_ms < *until)
                .map(|(s, _)| s),
        )
    }
}

/// What one request came to.
#[derive(Debug)]
pub struct SendResult {
    pub status: Option<StatusCode>,
    /// Set when no response arrived (connect, DNS, TLS, timeout) or it could not be read.
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

/// The shared HTTP client.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector<ScreenedResolver>>, Full<Bytes>>,
    guard: Guard,
    timeout: Duration,
    user_agent: HeaderValue,
}

impl Sender {
    /// `guard` resolves every host connected to and applies the SSRF rules.
    pub fn new(connect_timeout: Duration, timeout: Duration, guard: Guard) -> Self {
        let mut http = HttpConnector::new_with_resolver(ScreenedResolver(guard.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Sender {
            client,
            guard,
            timeout,
            user_agent: HeaderValue::from_static(concat!("Hookline/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// Signs and sends `payload` for message `msg_id` to `target`, within the total timeout.
    pub async fn send(&self, target: &Target, msg_id: &str, payload: Bytes) -> SendResult {
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.timeout, self.exchange(target, msg_id, payload)).await;
        let duration = started.elapsed();
        match outcome {
            Ok(Ok((status, body, retry_after))) => SendResult {
                status: Some(status),
                error: None,
                body,
                retry_after,
                duration,
            },
            Ok(Err((status, error))) => SendResult {
                status,
                error: Some(error),
                body: None,
                retry_after: None,
                duration,
            },
            Err(_) => SendResult {
                status: None,
                error: Some(format!("timed out after {} ms", self.timeout.as_millis())),
                body: None,
                retry_after: None,
                duration,
            },
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<(StatusCode, Option<String>, Option<Duration>), (Option<StatusCode>, String)> {
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
        let mut req = Request::post(target.uri.clone())
            .body(Full::new(payload))
            .map_err(|e| (None, format!("building the request: {e}")))?;
        let h = req.headers_mut();
        for (k, v) in &target.headers {
            h.insert(k, v.clone());
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::USER_AGENT, self.user_agent.clone());
        let header = |s: &str| HeaderValue::from_str(s).map_err(|e| (None, format!("header: {e}")));
        h.insert("webhook-id", header(msg_id)?);
        h.insert("webhook-timestamp", HeaderValue::from(now));
        h.insert("webhook-signature", header(&signature)?);

        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| (None, describe(&e)))?;
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
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        let mut read = 0usize;
        while read < KEPT_BODY_BYTES + DRAINED_BODY_BYTES {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        let room = KEPT_BODY_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => {
                    return Err((Some(status), format!("reading the response body: {e}")));
                }
            }
        }
        let body = (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into_owned());
        Ok((status, body, retry_after))
    }
}

/// `Retry-After` as seconds or as an HTTP date; capped at one day.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
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

/// A failed request, in words: the SSRF refusal alone when that is what stopped it (the
/// rest of the chain only says "client error (Connect): dns error"), else the whole chain.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
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
        assert_eq!(parse_retry_after("soon"), None);
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
