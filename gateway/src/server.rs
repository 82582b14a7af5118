//! Assembles the Pingora server: the data-plane proxy, the admin listener and the control
//! plane, with settings that suit a gateway rather than Pingora's defaults.

use crate::admin::Admin;
use crate::config::Runtime;
use crate::control::{resolve_endpoints, Control};
use crate::drain::Drain;
use crate::health::HealthChecker;
use crate::idle::IdleDeadline;
use crate::ledger::LedgerCloser;
use crate::metrics::Metrics;
use crate::pipeline::{CacheEngine, CacheStore, Engines, Extensions, Flights, Pipelines};
use crate::proxy::Gateway;
use crate::router::Strategy;
use crate::scrape::LoadScraper;
use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tollgate_plugins::cache::{MemoryStore, RedisStore};
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::limits::Limiter;

/// Every open stream holds two sockets (client and upstream), so the default soft limit of
/// 1,024 open files would cap a gateway near 500 streams; raise it to the hard limit, as
/// nginx's `worker_rlimit_nofile` and Go's runtime do.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            soft == limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        log::info!("open-file limit: {}", limit.rlim_cur);
    } else {
        log::warn!(
            "could not raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Fails fast when a listen address is taken: Pingora itself would retry binding forever.
fn check_bindable(addrs: &[SocketAddr]) -> Result<(), String> {
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        socket
            .and_then(|s| {
                // As Pingora does, so sockets in TIME_WAIT from a previous run do not count.
                s.set_reuseaddr(true)?;
                s.bind(*addr)?;
                s.listen(1).map(drop)
            })
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

/// Runs the gateway until SIGTERM (drain, then exit) or SIGINT (exit now). Returns only when
/// it cannot start.
pub fn run(config_path: PathBuf, runtime: Runtime, extensions: Extensions) -> Result<(), String> {
    let mut addrs = runtime.server.listen.clone();
    addrs.push(runtime.server.admin_listen);
    // Resolve host names before serving, so the first requests do not fail on DNS.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))?
        .block_on(async {
            check_bindable(&addrs)?;
            resolve_endpoints(&runtime).await;
            Ok::<(), String>(())
        })?;
    log::info!("starting tollgate\n{}", runtime.summary());
    if runtime
        .models
        .iter()
        .any(|m| m.context.is_some() || m.strategy == Strategy::Cost)
    {
        crate::tokens::warm_up();
    }

    raise_open_file_limit();
    let settings = &runtime.server;
    let scratch = std::env::temp_dir().join(format!("tollgate-{}", std::process::id()));
    let grace_seconds = settings.shutdown_grace.as_secs_f64().ceil() as u64;
    let drain = Arc::new(Drain::new(Duration::from_secs(grace_seconds)));
    let conf = ServerConf {
        threads: settings.threads,
        // Pingora sleeps this long after SIGTERM while in-flight requests finish.
        grace_period_seconds: Some(grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        // Per-process paths, so several gateways can run side by side.
        pid_file: scratch.with_extension("pid").display().to_string(),
        upgrade_sock: scratch.with_extension("sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let listen = settings.listen.clone();
    let admin_listen = settings.admin_listen;
    let h2c = settings.h2c;
    let client_idle_timeout = settings.client_idle_timeout;
    // Lives as long as the process, across reloads, like the ledger.
    let cache = match (runtime.cache, &runtime.shared_state) {
        (Some(c), Some(shared)) if c.shared => Some(CacheStore::Redis(Arc::new(
            RedisStore::new(shared.redis.expose(), shared.timeout)
                .map_err(|e| format!("cannot start: {e}"))?,
        ))),
        (Some(c), _) => Some(CacheStore::Memory(Arc::new(MemoryStore::new(
            c.max_bytes.try_into().unwrap_or(usize::MAX),
        )))),
        (None, _) => None,
    }
    .map(|store| CacheEngine {
        store,
        flights: Arc::new(Flights::default()),
    });
    let ledger = match &runtime.ledger {
        Some(config) => {
            let ledger = Ledger::open(config.clone()).map_err(|e| format!("cannot start: {e}"))?;
            log::info!("usage ledger at {}", config.path.display());
            Some(ledger)
        }
        None => None,
    };
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let metrics = Arc::new(Metrics::new());
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));

    let limiter = Arc::new(match &runtime.load().shared_state {
        Some(shared) => {
            metrics.register_shared_state();
            Limiter::redis(shared.redis.expose(), shared.on_error, shared.timeout)
                .map_err(|e| format!("cannot start: {e}"))?
        }
        None => Limiter::in_process(),
    });
    let pipelines = Pipelines::new(Engines {
        metrics: metrics.clone(),
        limiter: limiter.clone(),
        ledger: ledger.clone(),
        cache,
        extensions: extensions.clone(),
    });
    let gateway = Gateway::new(runtime.clone(), connector, pipelines, drain.clone());
    let mut app = http_proxy(&server.configuration, gateway);
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    app.server_options = Some(options);
    let mut proxy = Service::new(
        "tollgate".to_string(),
        IdleDeadline::new(app, client_idle_timeout, h2c),
    );
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }

    let health = GenBackgroundService::new(
        "tollgate health checks".to_string(),
        Arc::new(HealthChecker::new(runtime.clone())),
    );
    let scraper = GenBackgroundService::new(
        "tollgate load metrics".to_string(),
        Arc::new(LoadScraper::new(
            runtime.clone(),
            Connector::new(Some(ConnectorOptions::from_server_conf(
                &server.configuration,
            ))),
        )),
    );
    let control = Arc::new(Control::new(
        config_path,
        runtime,
        metrics.clone(),
        drain,
        extensions,
    ));
    let mut admin = Service::new(
        "tollgate admin".to_string(),
        Admin::new(control.clone(), metrics.clone(), ledger.clone(), limiter),
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(GenBackgroundService::new(
        "tollgate control".to_string(),
        control,
    ));
    server.add_service(health);
    server.add_service(scraper);
    if let Some(ledger) = ledger {
        server.add_service(GenBackgroundService::new(
            "tollgate ledger".to_string(),
            Arc::new(LedgerCloser {
                ledger,
                in_flight: metrics.in_flight.clone(),
            }),
        ));
    }
    server.run_forever();
}
