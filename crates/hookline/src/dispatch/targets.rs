//! Which addresses an endpoint may point at: never this machine, the private networks it
//! sits in, or the cloud's metadata service (SSRF). `--allow-private-targets` lifts the rules
//! for development and tests.
//!
//! Checked here: literal addresses in every spelling the URL parser normalises (decimal,
//! octal, hex and short IPv4 forms become dotted quads), IPv6 including IPv4-mapped, NAT64
//! and 6to4 forms (the IPv4 inside is judged), `localhost`-style names, and what names
//! resolve to. The rules apply twice:
//!
//! - **At creation** (and on a URL change), the API refuses a URL whose host is such an
//!   address, or resolves to one now (`422`).
//! - **At connect time**, for every new connection, since a name may resolve differently
//!   later (DNS rebinding): the sender's connector resolves the host through [`Guard`], which
//!   drops the forbidden addresses and fails the attempt if none is left; the connection is
//!   made to the addresses it kept, with no second lookup. Literal addresses never reach a
//!   resolver, so the sender checks them itself ([`Guard::check_ip`]) before each request.
//!
//! Both checks ask the same [`Resolve`]r (`server::Config::resolver`): by default
//! [`SystemResolver`], an asynchronous DNS resolver with the system's configuration and a
//! cache; in tests, one that asks a name server on this machine, or none.

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use std::{fmt, io};

/// What a lookup comes to: the host's addresses.
pub type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Turns a host name into addresses. One instance serves the whole server: the check at
/// creation and the sender's connections ask the same one.
///
/// No port: the answer does not depend on it, and the connector adds the URL's.
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    fn resolve(&self, host: &str) -> Lookup;
}

/// The resolver a server asks unless told otherwise: an asynchronous DNS stub resolver
/// (`hickory-resolver`) with the system's configuration (`/etc/resolv.conf`: its name
/// servers, search list, `ndots`, timeout and attempts), after the names in `/etc/hosts`.
///
/// - **No lookup holds a thread.** `getaddrinfo` blocks, so it ran on Tokio's blocking
///   pool, where a name server that stopped answering kept a thread per lookup (for the C
///   library's own timeouts, long after the attempt gave up) until the pool was full; the
///   SQLite store's reads, which run on that pool, then waited behind them. Here a lookup
///   is a future: one that waits costs a timer and a socket, and the rest of the server
///   never notices.
/// - **Answers are kept for their TTL** (at most [`Self::MAX_TTL`], a name that does not
///   exist at most [`Self::MAX_NEGATIVE_TTL`]), and lookups of a name already in flight
///   share its query, so the lanes of an endpoint that open connections together ask once.
///   The sharing is this resolver's own, held until the answer is in the cache: the
///   resolver's pool forgets a query in flight a moment before its cache holds the answer,
///   and a lookup on another thread in that moment asked again.
///   Every answer, kept or fresh, is still screened by [`Guard`] for each new connection.
/// - **A lookup is bounded as a whole** by the timeout given (5 s by default, as long as a
///   connection may take). Each query gets at most a third of it and one retry, so that
///   behind a name server that never answers for one family (some drop `AAAA` questions),
///   the other family's addresses still come back within it.
/// - **`/etc/hosts` first, as the C library does:** a name it lists (for either family) is
///   answered from it alone. Both files are looked at again when they change (checked at
///   most every [`RECHECK`]); a `resolv.conf` that cannot be read means this machine's port
///   53, as it does for the C library, until it can.
///
/// IPv4 and IPv6 are asked for together, IPv4 addresses first (the C library would order
/// them by the host's own routes). One instance belongs to one Tokio runtime: the name
/// servers' connections are tasks spawned on the runtime that first needed them.
#[derive(Clone)]
pub struct SystemResolver {
    inner: Arc<ResolverState>,
}

/// How often, at most, [`SystemResolver`] looks whether the system's files changed.
pub const RECHECK: Duration = Duration::from_secs(5);

const RESOLV_CONF: &str = "/etc/resolv.conf";
const HOSTS: &str = "/etc/hosts";

struct ResolverState {
    servers: Servers,
    timeout: Duration,
    /// Built at the first lookup (reading the system's files waits until a name needs
    /// them), and again when they change.
    current: Mutex<Option<Built>>,
    /// The lookups in flight, by name: a lookup of a name already here waits for its answer.
    /// An entry leaves when its lookup has ended, once the answer is in the cache.
    in_flight: Mutex<HashMap<String, Flight>>,
}

/// A lookup in flight, which any number of lookups of the same name await.
type Flight = Shared<BoxFuture<'static, Result<Vec<IpAddr>, Failed>>>;

/// A lookup's failure as every lookup that shared it gets it (an `io::Error` is not `Clone`).
#[derive(Clone, Debug)]
struct Failed {
    kind: io::ErrorKind,
    message: String,
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<Failed> for io::Error {
    fn from(f: Failed) -> Self {
        io::Error::new(f.kind, f.message)
    }
}

/// A resolver as built from the files as they were.
struct Built {
    resolver: TokioResolver,
    hosts: Arc<Hosts>,
    /// The system's files as they were read (`None` for listed name servers).
    files: Option<FileStamps>,
    checked: Instant,
}

/// What tells that one of the system's two files changed (`None`: missing).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamps {
    resolv_conf: Option<FileStamp>,
    hosts: Option<FileStamp>,
}

/// A file's times of change, of content and of status (a `chmod` that makes it readable;
/// a copy that keeps the old modification time), its inode (a file moved into place) and
/// its length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    status_changed: (i64, i64),
    inode: u64,
    len: u64,
}

impl FileStamps {
    fn read() -> Self {
        FileStamps {
            resolv_conf: FileStamp::of(RESOLV_CONF),
            hosts: FileStamp::of(HOSTS),
        }
    }
}

impl FileStamp {
    #[cfg(unix)]
    fn of(path: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            status_changed: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            len: m.len(),
        })
    }

    #[cfg(not(unix))]
    fn of(path: &str) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            status_changed: (0, 0),
            inode: 0,
            len: m.len(),
        })
    }
}

/// Whose name servers a [`SystemResolver`] asks.
#[derive(Clone, Debug)]
enum Servers {
    /// The system's configuration.
    System,
    /// These (address and port), over UDP and then TCP; no hosts file.
    Listed(Vec<SocketAddr>),
}

impl fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemResolver")
            .field("servers", &self.inner.servers)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl SystemResolver {
    /// How long a lookup may take by default: as long as a connection may.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest an answer is kept, whatever its TTL: a receiver that moves is found
    /// within five minutes even behind a record that claims a day.
    pub const MAX_TTL: Duration = Duration::from_secs(300);
    /// The longest a name that does not exist is remembered as such.
    pub const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);

    /// The system's configuration, each lookup bounded by `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with(Servers::System, timeout)
    }

    /// Asks only `servers` (each an address and port; no hosts file), each lookup bounded by
    /// `timeout`: a dedicated resolver, or one a test runs on this machine.
    pub fn with_servers(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self::with(Servers::Listed(servers), timeout)
    }

    fn with(servers: Servers, timeout: Duration) -> Self {
        SystemResolver {
            inner: Arc::new(ResolverState {
                servers,
                timeout,
                current: Mutex::new(None),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The resolver and hosts for a lookup now, built again if the files changed.
    fn current(&self) -> Result<(TokioResolver, Arc<Hosts>), String> {
        let mut slot = self
            .inner
            .current
            .lock()
            .map_err(|_| "the resolver's state was poisoned by a panic".to_owned())?;
        let now = Instant::now();
        if let Some(built) = slot.as_mut() {
            let fresh = match built.files {
                // Listed name servers: no files to follow.
                None => true,
                Some(_) if now.duration_since(built.checked) < RECHECK => true,
                Some(files) => {
                    built.checked = now;
                    FileStamps::read() == files
                }
            };
            if fresh {
                return Ok(built.handles());
            }
        }
        // (Under the lock: a rebuild reads two small files, once per change of them.)
        match build_resolver(&self.inner.servers, self.inner.timeout, now) {
            Ok(built) => Ok(slot.insert(built).handles()),
            // The files changed into something unusable: go on as they were.
            Err(e) => match slot.as_ref() {
                Some(old) => {
                    tracing::warn!(error = %e, "keeping the DNS configuration as it was");
                    Ok(old.handles())
                }
                None => Err(e),
            },
        }
    }
}

impl Built {
    /// What a lookup uses: the resolver and the hosts file (both cheap to clone).
    fn handles(&self) -> (TokioResolver, Arc<Hosts>) {
        (self.resolver.clone(), self.hosts.clone())
    }
}

fn build_resolver(servers: &Servers, timeout: Duration, now: Instant) -> Result<Built, String> {
    let (config, mut options, hosts, files) = match servers {
        Servers::System => {
            let files = FileStamps::read();
            let (config, options) = match hickory_resolver::system_conf::read_system_conf() {
                Ok(read) => read,
                Err(e) => {
                    // What the C library does without a usable file: ask this machine's port
                    // 53 (until the file changes).
                    tracing::warn!(
                        error = %e,
                        "{RESOLV_CONF} could not be read; asking 127.0.0.1:53 until it can"
                    );
                    (
                        ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                        )]),
                        ResolverOpts::default(),
                    )
                }
            };
            let hosts = Hosts::from_system().unwrap_or_default();
            (config, options, hosts, Some(files))
        }
        Servers::Listed(addrs) => {
            let name_servers = addrs
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            let config = ResolverConfig::from_name_servers(name_servers);
            (config, ResolverOpts::default(), Hosts::default(), None)
        }
    };
    // The hosts file is read here, and asked first, for both families at once.
    options.use_hosts_file = ResolveHosts::Never;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.positive_max_ttl = Some(SystemResolver::MAX_TTL);
    options.negative_max_ttl = Some(SystemResolver::MAX_NEGATIVE_TTL);
    // Both families are awaited together: each query and its one retry must end within
    // the lookup's budget, so that an answer for one family is not lost to the other's wait.
    options.timeout = options.timeout.min(timeout / 3);
    options.attempts = 1;
    let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("starting the DNS resolver: {e}"))?;
    Ok(Built {
        resolver,
        hosts: Arc::new(hosts),
        files,
        checked: now,
    })
}

/// The addresses `/etc/hosts` gives `host`, of both families, if it lists it at all.
fn from_hosts(hosts: &Hosts, host: &str) -> Option<Vec<IpAddr>> {
    let name = Name::from_utf8(host).ok()?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for family in [RecordType::A, RecordType::AAAA] {
        if let Some(found) = hosts.lookup_static_host(&Query::query(name.clone(), family)) {
            ips.extend(found.answers().iter().filter_map(|r| r.data.ip_addr()));
        }
    }
    (!ips.is_empty()).then_some(ips)
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self::new(Self::DEFAULT_TIMEOUT)
    }
}

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str) -> Lookup {
        let current = self.current();
        let state = self.inner.clone();
        let host = host.to_owned();
        Box::pin(async move {
            let (resolver, hosts) =
                current.map_err(|e| io::Error::other(format!("resolving {host:?}: {e}")))?;
            if let Some(ips) = from_hosts(&hosts, &host) {
                return Ok(ips);
            }
            let flight = {
                let mut flights = state
                    .in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match flights.get(&host) {
                    Some(flight) => flight.clone(),
                    None => {
                        // Its own task: a flight ends within the timeout even when every
                        // lookup awaiting it was dropped (an attempt that gave up), so the
                        // next lookup never finds a stale one.
                        let asking = tokio::spawn(ask(resolver, host.clone(), state.clone()));
                        let name = host.clone();
                        let flight = async move {
                            asking.await.unwrap_or_else(|e| {
                                Err(Failed::from(io::Error::other(format!(
                                    "resolving {name:?}: the lookup ended early: {e}"
                                ))))
                            })
                        }
                        .boxed()
                        .shared();
                        flights.insert(host, flight.clone());
                        flight
                    }
                }
            };
            Ok(flight.await?)
        })
    }
}

/// Asks the name servers for `host`'s addresses (within the resolver's timeout), then lets
/// the next lookup of the name ask again (the cache answers it if the answer may be kept).
async fn ask(
    resolver: TokioResolver,
    host: String,
    state: Arc<ResolverState>,
) -> Result<Vec<IpAddr>, Failed> {
    // Its entry goes when the lookup ends, or is dropped unfinished (a panic, a runtime
    // shutting down): a flight that can never end must not answer every later lookup.
    let _landed = Landed {
        state: state.clone(),
        host: &host,
    };
    lookup(&resolver, &host, state.timeout)
        .await
        .map_err(Failed::from)
}

/// Removes a flight's entry when dropped.
struct Landed<'a> {
    state: Arc<ResolverState>,
    host: &'a str,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.state
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.host);
    }
}

/// One lookup of `host` by the resolver, its errors named for the attempt's record.
async fn lookup(
    resolver: &TokioResolver,
    host: &str,
    timeout: Duration,
) -> io::Result<Vec<IpAddr>> {
    let started = Instant::now();
    let no_answer = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "resolving {host:?}: no answer within {} ms",
                started.elapsed().as_millis()
            ),
        )
    };
    match tokio::time::timeout(timeout, resolver.lookup_ip(host)).await {
        Ok(Ok(found)) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in found.iter() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            Ok(ips)
        }
        // The name servers' own timeouts (each query's, its attempts spent) end the
        // same way as the lookup's.
        Ok(Err(NetError::Timeout)) | Err(_) => Err(no_answer()),
        Ok(Err(e)) if e.is_nx_domain() => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("resolving {host:?}: no such name"),
        )),
        Ok(Err(e)) if e.is_no_records_found() => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("resolving {host:?}: the name has no addresses"),
        )),
        Ok(Err(e)) => Err(io::Error::other(format!("resolving {host:?}: {e}"))),
    }
}

/// A target refused by the rules; the message names the host, the address and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// The rules as the sender applies them at connect time: a resolver, and whether private
/// targets are allowed. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Guard {
    resolver: Arc<dyn Resolve>,
    allow_private: bool,
    allow_insecure: bool,
}

impl Guard {
    /// `allow_private`: loopback and private addresses may be targets; `allow_insecure`:
    /// `http://` URLs may be sent to (both for development).
    pub fn new(resolver: Arc<dyn Resolve>, allow_private: bool, allow_insecure: bool) -> Self {
        Guard {
            resolver,
            allow_private,
            allow_insecure,
        }
    }

    /// Refuses an `http://` URL unless this server allows them: an endpoint stored while
    /// they were allowed gets nothing in clear from a server started without.
    pub fn check_scheme(&self, scheme: Option<&str>) -> Result<(), Refused> {
        if scheme == Some("http") && !self.allow_insecure {
            return Err(Refused(
                "http:// URLs are sent to only with --allow-insecure-urls; webhooks go over \
                 https"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Refuses a literal address (an IP in the URL) that may not be a target.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match forbidden(ip) {
            Some(why) if !self.allow_private => Err(Refused(format!(
                "{ip} is {why}; webhooks go to public addresses"
            ))),
            _ => Ok(()),
        }
    }

    /// The addresses to connect to for `host`: what the resolver answers, less those that
    /// may not be targets. Fails if the lookup does or if nothing is left.
    pub async fn addresses(
        &self,
        host: &str,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        if !self.allow_private && local_name(host) {
            return Err(Box::new(Refused(format!(
                "{host:?} names this machine; webhooks go to public addresses"
            ))));
        }
        let ips = self.resolver.resolve(host).await?;
        if ips.is_empty() {
            return Err(Box::new(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host:?} resolves to no address"),
            )));
        }
        if self.allow_private {
            return Ok(ips);
        }
        Ok(public_only(host, ips)?)
    }
}

/// Of the addresses `host` resolved to, those a webhook may go to; refused (naming the first
/// forbidden one) when there are none.
pub fn public_only(host: &str, ips: Vec<IpAddr>) -> Result<Vec<IpAddr>, Refused> {
    let mut first_refused = None;
    let kept: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| match forbidden(*ip) {
            None => true,
            Some(why) => {
                first_refused.get_or_insert((*ip, why));
                false
            }
        })
        .collect();
    match (kept.is_empty(), first_refused) {
        (true, Some((ip, why))) => Err(Refused(format!(
            "{host:?} resolves to {ip}, {why}; webhooks go to public addresses"
        ))),
        (true, None) => Err(Refused(format!("{host:?} resolves to no address"))),
        (false, _) => Ok(kept),
    }
}

/// Why `ip` may not be a webhook target, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let why = match (a, b, c) {
        (0, _, _) => "an unspecified address (0.0.0.0/8)",
        (10, _, _) => "a private address (10.0.0.0/8)",
        (100, 64..=127, _) => "a carrier-grade NAT address (100.64.0.0/10)",
        (127, _, _) => "a loopback address",
        (169, 254, _) => "a link-local address (cloud metadata lives here)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 0, 0) => "an IETF protocol address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 88, 99) => "a 6to4 relay address",
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    };
    Some(why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address: judge that one.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    let why = if ip.is_unspecified() {
        "the unspecified address (::)"
    } else if ip.is_loopback() {
        "the loopback address (::1)"
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        "an IPv4-compatible address (::/96)"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "a unique local address (fc00::/7)"
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        "a link-local or site-local address"
    } else if s[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Where the IPv4 address sits depends on the local prefix length: refuse it whole.
        "a local-use NAT64 address (64:ff9b:1::/48)"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "a documentation address (2001:db8::/32)"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "a discard-only address (100::/64)"
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        "an IETF protocol address (2001::/23)"
    } else {
        return None;
    };
    Some(why)
}

/// Names that mean this machine whatever DNS says.
pub fn local_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "localhost.localdomain"
        || h == "ip6-localhost"
        || h == "ip6-loopback"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_pass_and_private_ones_do_not() {
        for ok in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
        ] {
            assert_eq!(forbidden(ok.parse().unwrap()), None, "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad}");
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forbidden_addresses_are_dropped_and_none_left_is_refused() {
        let kept = public_only(
            "mixed.example",
            ips(&["127.0.0.1", "93.184.216.34", "::1", "2606:4700::1"]),
        )
        .unwrap();
        assert_eq!(kept, ips(&["93.184.216.34", "2606:4700::1"]));
        let refused = public_only("rebind.example", ips(&["127.0.0.1", "10.0.0.1"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "\"rebind.example\" resolves to 127.0.0.1, a loopback address; \
             webhooks go to public addresses"
        );
    }

    /// Answers every name with the same addresses.
    #[derive(Debug)]
    struct Fixed(Vec<IpAddr>);

    impl Resolve for Fixed {
        fn resolve(&self, _host: &str) -> Lookup {
            let ips = self.0.clone();
            Box::pin(async move { Ok(ips) })
        }
    }

    #[test]
    fn the_hosts_file_answers_for_both_families() {
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(
                "127.0.0.1 only4.example\n\
                 127.0.0.2 both.example\n\
                 ::2 both.example\n\
                 ::3 only6.example\n"
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(
            from_hosts(&hosts, "only4.example"),
            Some(ips(&["127.0.0.1"]))
        );
        assert_eq!(
            from_hosts(&hosts, "BOTH.example."),
            Some(ips(&["127.0.0.2", "::2"]))
        );
        assert_eq!(from_hosts(&hosts, "only6.example"), Some(ips(&["::3"])));
        assert_eq!(from_hosts(&hosts, "elsewhere.example"), None);
    }

    #[tokio::test]
    async fn the_system_resolver_answers_from_the_hosts_file() {
        // Every system lists `localhost` in /etc/hosts; no name server is asked.
        let found = SystemResolver::default()
            .resolve("localhost")
            .await
            .unwrap();
        assert!(
            found.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn the_guard_screens_unless_private_targets_are_allowed() {
        let private = Arc::new(Fixed(ips(&["169.254.169.254"])));
        let strict = Guard::new(private.clone(), false, true);
        let e = strict.addresses("meta.example").await.unwrap_err();
        assert!(e.downcast_ref::<Refused>().is_some(), "{e}");
        assert!(
            e.to_string().contains("169.254.169.254, a link-local"),
            "{e}"
        );
        assert!(strict.addresses("localhost").await.is_err());
        assert!(strict.check_ip("10.0.0.1".parse().unwrap()).is_err());
        assert!(strict.check_ip("93.184.216.34".parse().unwrap()).is_ok());

        let open = Guard::new(private, true, true);
        assert_eq!(
            open.addresses("meta.example").await.unwrap(),
            ips(&["169.254.169.254"])
        );
        assert!(open.check_ip("10.0.0.1".parse().unwrap()).is_ok());
    }
}
