//! Other proxies measured in the same run, when installed: nginx as the classic reverse proxy,
//! LiteLLM as the gateway users most often compare us with.

use std::env;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;

use crate::launch::{local, PROVIDER_MODEL, PUBLIC_MODEL};
use crate::load::BENCH_KEY;
use crate::procs::{free_port, get_is_ok, Procs};

/// LiteLLM imports a large Python tree before it listens.
const LITELLM_START_TIMEOUT: Duration = Duration::from_secs(120);
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    Nginx,
    Litellm,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Litellm => "litellm",
        }
    }

    /// The model name clients send: nginx passes the body on untouched, LiteLLM maps a
    /// public name as Tollgate does.
    pub fn model(self) -> &'static str {
        match self {
            Peer::Nginx => PROVIDER_MODEL,
            Peer::Litellm => PUBLIC_MODEL,
        }
    }

    fn program(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Litellm => "litellm",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Peer::Nginx => "apt-get install nginx-light",
            Peer::Litellm => "pip install 'litellm[proxy]'",
        }
    }

    fn missing(self) -> String {
        format!(
            "--with {} needs `{}` on PATH; install it with: {}",
            self.name(),
            self.program(),
            self.install_hint()
        )
    }

    /// Starts the peer in front of `mock` with `workers` worker processes; returns the
    /// address clients call.
    pub fn start(
        self,
        procs: &mut Procs,
        mock: SocketAddr,
        workers: u16,
    ) -> Result<SocketAddr, String> {
        let program = on_path(self.program()).ok_or_else(|| self.missing())?;
        let listen = local(free_port()?);
        let dir = procs.dir().join(self.name());
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let config_path = dir.join("config");
        let config_arg = path_str(&config_path)?;
        let (config, args, ready_path, timeout) = match self {
            Peer::Nginx => (
                nginx_config(&dir, listen, mock, workers),
                vec![
                    "-p".to_owned(),
                    path_str(&dir)?,
                    "-c".to_owned(),
                    config_arg,
                ],
                "/nginx-ready",
                NGINX_START_TIMEOUT,
            ),
            Peer::Litellm => (
                litellm_config(mock),
                [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &listen.port().to_string(),
                    "--num_workers",
                    &workers.to_string(),
                    "--config",
                    &config_arg,
                ]
                .map(str::to_owned)
                .to_vec(),
                "/health/liveliness",
                LITELLM_START_TIMEOUT,
            ),
        };
        fs::write(&config_path, config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.spawn(self.name(), &program, &args)?;
        procs.wait_until(self.name(), timeout, || {
            get_is_ok(listen, ready_path).then_some(())
        })?;
        Ok(listen)
    }
}

fn path_str(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// The first `program` in `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let dirs = env::var_os("PATH")?;
    env::split_paths(&dirs)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// nginx as a tuned streaming reverse proxy: upstream keep-alive, no response buffering
/// (streams pass chunk by chunk), request bodies up to 2 MiB held in memory.
fn nginx_config(dir: &Path, listen: SocketAddr, mock: SocketAddr, workers: u16) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_max_body_size 8m;
  client_body_buffer_size 2m;
  upstream mock {{ server {mock}; keepalive 256; }}
  server {{
    listen {listen};
    location = /nginx-ready {{ return 200 \"ok\\n\"; }}
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }}
  }}
}}
"
    )
}

/// LiteLLM's proxy with one OpenAI-compatible deployment, the mock, and the benchmark's key
/// as its master key (LiteLLM refuses to start without one).
fn litellm_config(mock: SocketAddr) -> String {
    format!(
        "model_list:
  - model_name: {PUBLIC_MODEL}
    litellm_params:
      model: openai/{PROVIDER_MODEL}
      api_base: http://{mock}/v1
      api_key: sk-mock
general_settings:
  master_key: {BENCH_KEY}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_streams_unbuffered_over_kept_alive_upstream_connections() {
        let conf = nginx_config(Path::new("/tmp/x"), local(8080), local(7070), 2);
        assert!(conf.contains("worker_processes 2;"));
        assert!(conf.contains("listen 127.0.0.1:8080;"));
        assert!(conf.contains("server 127.0.0.1:7070; keepalive 256;"));
        assert!(conf.contains("proxy_buffering off;"));
        assert!(conf.contains("proxy_set_header Connection \"\";"));
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
    }

    #[test]
    fn litellm_maps_the_public_model_to_the_mock() {
        let conf = litellm_config(local(7070));
        assert!(conf.contains("model_name: bench-model"));
        assert!(conf.contains("model: openai/mock-gpt"));
        assert!(conf.contains("api_base: http://127.0.0.1:7070/v1"));
        assert!(conf.contains(&format!("master_key: {BENCH_KEY}")));
    }

    #[test]
    fn programs_are_found_on_the_path_or_named_with_their_install_command() {
        assert!(on_path("sh").is_some());
        assert_eq!(on_path("no-such-program-tollgate"), None);
        assert!(Peer::Litellm
            .missing()
            .contains("pip install 'litellm[proxy]'"));
        assert!(Peer::Nginx.missing().contains("--with nginx needs `nginx`"));
    }
}
