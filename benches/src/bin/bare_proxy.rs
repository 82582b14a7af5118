//! `bare-proxy`: the smallest Pingora reverse proxy, forwarding everything to one upstream.
//! It is the benchmark's baseline: whatever Tollgate costs beyond it is Tollgate's own work.

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[derive(Parser)]
#[command(
    name = "bare-proxy",
    about = "A minimal Pingora reverse proxy to one upstream"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Plain-HTTP upstream that receives every request.
    #[arg(long)]
    upstream: SocketAddr,
    /// Pingora worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

struct BareProxy {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let cli = Cli::parse();
    // Per-process paths, so this can run beside Tollgate and other Pingora servers.
    let scratch = std::env::temp_dir().join(format!("bare-proxy-{}", std::process::id()));
    let conf = ServerConf {
        threads: usize::from(cli.threads),
        // Benchmark children are killed, never drained: no reason to linger on SIGTERM.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: scratch.with_extension("pid").display().to_string(),
        upgrade_sock: scratch.with_extension("sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service_with_name(
        &server.configuration,
        BareProxy {
            upstream: cli.upstream,
        },
        "bare-proxy",
    );
    proxy.add_tcp(&cli.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
