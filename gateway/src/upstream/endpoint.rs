//! One upstream address: parsed once from config, resolved off the request path.

use super::state::EndpointState;
use arc_swap::ArcSwapOption;
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// An upstream `scheme://host:port/prefix`. The peer is built once per resolution, because
/// `HttpPeer::new` with a host name would do blocking DNS (and panic on failure) on a worker.
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix from the base URL, without a trailing slash ("" for none).
    pub prefix: String,
    /// The `Host` header value: the port is left out when it is the scheme's default.
    pub authority: String,
    /// `host:port`, for metrics labels and admin output.
    pub label: String,
    connect_timeout: Duration,
    /// The host is a name to resolve (not an IP literal, not an address discovery found).
    resolves: bool,
    peer: ArcSwapOption<HttpPeer>,
    /// Latency, load, cooldown, ejection and health, kept across reloads with the endpoint.
    pub state: EndpointState,
}

impl Endpoint {
    /// Parses `host:port`, `http://host[:port][/prefix]` or `https://host[:port][/prefix]`.
    pub fn parse(
        text: &str,
        connect_timeout: Duration,
        ewma_decay: Duration,
    ) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if text.contains("://") {
            return Err(format!(
                "unsupported scheme in {text:?} (expected http:// or https://)"
            ));
        } else {
            (false, text)
        };
        let (hostport, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if prefix == "/v1" || prefix.ends_with("/v1") {
            return Err(format!(
                "{text:?} includes the API path /v1; give the base address only (e.g. https://api.openai.com), each provider kind appends its own path"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(hostport, default_port)
            .ok_or_else(|| format!("invalid address {text:?} (expected host:port or a URL)"))?;
        if host.is_empty() {
            return Err(format!("missing host in {text:?}"));
        }
        let authority = if port == default_port {
            host_for_header(&host)
        } else {
            format!("{}:{port}", host_for_header(&host))
        };
        let mut endpoint = Endpoint {
            tls,
            label: format!("{}:{port}", host_for_header(&host)),
            host,
            port,
            prefix: prefix.to_string(),
            authority,
            connect_timeout,
            resolves: false,
            peer: ArcSwapOption::empty(),
            state: EndpointState::new(ewma_decay),
        };
        match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => endpoint.set_address(SocketAddr::new(ip, port)),
            Err(_) => endpoint.resolves = true,
        }
        Ok(endpoint)
    }

    /// One address of a discovered service: named `name` (Host and SNI), reached at `addr`.
    pub fn discovered(
        name: &str,
        addr: SocketAddr,
        tls: bool,
        connect_timeout: Duration,
        ewma_decay: Duration,
    ) -> Endpoint {
        let default_port = if tls { 443 } else { 80 };
        let endpoint = Endpoint {
            tls,
            host: name.to_string(),
            port: addr.port(),
            prefix: String::new(),
            authority: if addr.port() == default_port {
                name.to_string()
            } else {
                format!("{name}:{}", addr.port())
            },
            label: addr.to_string(),
            connect_timeout,
            resolves: false,
            peer: ArcSwapOption::empty(),
            state: EndpointState::new(ewma_decay),
        };
        endpoint.set_address(addr);
        endpoint
    }

    /// True when the host is a name that DNS must turn into an address.
    pub fn needs_dns(&self) -> bool {
        self.resolves
    }

    /// The address connections go to, once known.
    pub fn address(&self) -> Option<SocketAddr> {
        match self.peer.load().as_ref()?._address {
            pingora::protocols::l4::socket::SocketAddr::Inet(addr) => Some(addr),
            _ => None,
        }
    }

    /// Resolves the host name; on failure the previous address (if any) is kept.
    pub async fn resolve(&self) -> Result<(), String> {
        if !self.needs_dns() {
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        let mut addrs = tokio::time::timeout(Duration::from_secs(5), lookup)
            .await
            .map_err(|_| format!("resolving {}: timed out", self.host))?
            .map_err(|e| format!("resolving {}: {e}", self.host))?;
        let addr = addrs
            .next()
            .ok_or_else(|| format!("resolving {}: no addresses", self.host))?;
        if self.address() != Some(addr) {
            self.set_address(addr);
        }
        Ok(())
    }

    fn set_address(&self, addr: SocketAddr) {
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout * 2);
        // Idle pooled connections are dropped after this, before most servers close them.
        peer.options.idle_timeout = Some(Duration::from_secs(55));
        self.peer.store(Some(Arc::new(peer)));
    }

    /// The peer to connect to, or `None` while the host name has not resolved.
    pub fn peer(&self) -> Option<Arc<HttpPeer>> {
        self.peer.load_full()
    }

    /// Same address and connection settings: a reload may keep this endpoint's state.
    pub fn same_as(&self, other: &Endpoint) -> bool {
        self.tls == other.tls
            && self.resolves == other.resolves
            && self.host == other.host
            && self.port == other.port
            && self.prefix == other.prefix
            && self.connect_timeout == other.connect_timeout
            && self.state.latency.decay() == other.state.latency.decay()
    }
}

fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => {
            Some((text.to_string(), default_port)).filter(|_| text.parse::<IpAddr>().is_ok())
        }
        None => Some((text.to_string(), default_port)),
    }
}

fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn parse(text: &str) -> Result<Endpoint, String> {
        Endpoint::parse(text, T, T)
    }

    #[test]
    fn parses_forms() {
        let e = parse("127.0.0.1:8000").unwrap();
        assert!(!e.tls && e.port == 8000 && e.authority == "127.0.0.1:8000");
        assert!(e.peer().is_some(), "IP literals need no DNS");

        let e = parse("https://api.openai.com").unwrap();
        assert!(e.tls && e.port == 443 && e.authority == "api.openai.com");
        assert!(e.needs_dns() && e.peer().is_none());

        let e = parse("http://gpu.internal:8080/proxy/").unwrap();
        assert_eq!(
            (e.prefix.as_str(), e.label.as_str()),
            ("/proxy", "gpu.internal:8080")
        );

        let e = parse("http://[::1]:9000").unwrap();
        assert_eq!(e.authority, "[::1]:9000");
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(parse("ftp://x").is_err());
        assert!(parse("https://api.openai.com/v1")
            .err()
            .is_some_and(|e| e.contains("/v1")));
        assert!(parse("host:notaport").is_err());
        assert!(parse(":80").is_err());
    }
}
