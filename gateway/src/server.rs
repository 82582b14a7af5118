//! Assembles the Pingora server: the data-plane proxy, the admin listener and the control
//! plane, with settings that suit a gateway rather than Pingora's defaults.

use crate::admin::Admin;
use crate::config::Runtime;
use crate::control::{resolve_endpoints, Control};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use arc_swap::ArcSwap;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs the gateway until SIGTERM (drain, then exit) or SIGINT (exit now).
pub fn run(config_path: PathBuf, runtime: Runtime) {
    // Resolve host names before serving, so the first requests do not fail on DNS.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(resolve_endpoints(&runtime));
    log::info!("starting tollgate\n{}", runtime.summary());

    let settings = &runtime.server;
    let scratch = std::env::temp_dir().join(format!("tollgate-{}", std::process::id()));
    let conf = ServerConf {
        threads: settings.threads,
        // Pingora sleeps this long after SIGTERM while in-flight requests finish.
        grace_period_seconds: Some(settings.shutdown_grace.as_secs_f64().ceil() as u64),
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
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let metrics = Arc::new(Metrics::new());
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));

    let gateway = Gateway::new(runtime.clone(), connector, metrics.clone());
    let mut proxy = http_proxy_service_with_name(&server.configuration, gateway, "tollgate");
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }

    let control = Arc::new(Control::new(config_path, runtime, metrics.clone()));
    let mut admin = Service::new(
        "tollgate admin".to_string(),
        Admin::new(control.clone(), metrics),
    );
    admin.add_tcp(&admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(GenBackgroundService::new(
        "tollgate control".to_string(),
        control,
    ));
    server.run_forever();
}
