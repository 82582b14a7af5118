//! Real processes on loopback: the `tollgate` binary as gateway and as mock providers.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// The provider credential every test config uses: it must never leak.
pub const UPSTREAM_KEY: &str = "sk-upstream-SECRET-7f3a9c";
/// The gateway's environment carries the key too, for configs that say `${...}`.
pub const UPSTREAM_KEY_VAR: &str = "TOLLGATE_E2E_UPSTREAM_KEY";

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-e2e-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A mock provider process (`tollgate mock ...`).
pub struct Mock {
    child: Child,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start(flags: &[&str]) -> Mock {
        Self::start_at("127.0.0.1:0", flags)
    }

    /// A mock listening on `listen` (an address and port the test chose).
    pub fn start_at(listen: &str, flags: &[&str]) -> Mock {
        let mut child = Command::new(BIN)
            .args(["mock", "--listen", listen])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tollgate mock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected mock output {line:?}"))
            .parse()
            .unwrap();
        Mock { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What this mock received, oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        let v: Value = reqwest::get(format!("{}/mock/requests", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"].as_array().unwrap().clone()
    }

    /// Changes the running mock's behaviour (`POST /mock/config`).
    pub async fn configure(&self, patch: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/mock/config", self.url()))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// Forgets the recorded requests.
    pub async fn clear(&self) {
        reqwest::Client::new()
            .delete(format!("{}/mock/requests", self.url()))
            .send()
            .await
            .unwrap();
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/mock/stats", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A port nobody listens on (connection refused).
pub fn dead_port() -> u16 {
    free_port()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process (`tollgate serve`), its config file and its log.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    server_section: String,
    _dir: TempDir,
}

impl Gateway {
    /// Starts a gateway with `body` (providers, models, keys) under a generated `server:`.
    pub async fn start(body: &str) -> Gateway {
        Self::start_with(body, "").await
    }

    /// As `start`, with extra lines for the `server:` section (two-space indented).
    pub async fn start_with(body: &str, server_extra: &str) -> Gateway {
        Self::start_env(body, server_extra, &[]).await
    }

    /// As `start_with`, with extra environment variables for the gateway process.
    pub async fn start_env(body: &str, server_extra: &str, envs: &[(&str, &str)]) -> Gateway {
        Self::start_bin(BIN, body, server_extra, envs).await
    }

    /// As `start_env`, running `bin` (a build of the gateway with plugins of its own).
    pub async fn start_bin(
        bin: &str,
        body: &str,
        server_extra: &str,
        envs: &[(&str, &str)],
    ) -> Gateway {
        for _ in 0..3 {
            let dir = TempDir::new("gw");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let server_section = format!(
                "server:\n  listen: [\"{addr}\"]\n  admin_listen: \"{admin}\"\n  threads: 2\n  shutdown_grace: 1s\n{server_extra}"
            );
            let config = dir.0.join("tollgate.yaml");
            std::fs::write(&config, format!("{server_section}{body}")).unwrap();
            let log = dir.0.join("gateway.log");
            let child = Command::new(bin)
                .args(["serve", "--config"])
                .arg(&config)
                .env("RUST_LOG", "debug")
                .env(UPSTREAM_KEY_VAR, UPSTREAM_KEY)
                .envs(envs.iter().copied())
                .stdout(Stdio::from(
                    std::fs::File::create(dir.0.join("stdout.log")).unwrap(),
                ))
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .expect("spawn tollgate serve");
            let mut gw = Gateway {
                child: Some(child),
                addr,
                admin,
                config,
                log,
                server_section,
                _dir: dir,
            };
            if gw.wait_ready().await {
                return gw;
            }
            eprintln!("gateway did not start, retrying:\n{}", gw.log());
        }
        panic!("the gateway did not start three times in a row");
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let admin_up = reqwest::get(format!("http://{}/healthz", self.admin))
                .await
                .is_ok_and(|r| r.status() == 200);
            if admin_up && std::net::TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /v1/chat/completions` without a key.
    pub async fn chat(&self, model: &str, stream: bool) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .json(&chat_body(model, stream))
            .send()
            .await
            .unwrap()
    }

    /// `POST /admin/reload`.
    pub async fn reload(&self) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /admin/providers`: the endpoint of `provider` at `addr`.
    pub async fn endpoint_state(&self, provider: &str, addr: SocketAddr) -> Value {
        let v: Value = reqwest::get(self.admin_url("/admin/providers"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let p = v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == provider)
            .unwrap_or_else(|| panic!("no provider {provider} in {v}"))
            .clone();
        p["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("no endpoint {addr} in {p}"))
            .clone()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything the gateway has logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Everything the gateway has printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log.with_file_name("stdout.log")).unwrap_or_default()
    }

    /// Replaces the providers/models/keys part of the config file, keeping `server:`.
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config, format!("{}{body}", self.server_section)).unwrap();
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// The process's resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

/// One provider block pointing at `url`, with the shared upstream key.
pub fn provider(name: &str, url: &str) -> String {
    format!(
        "  - {{ name: {name}, kind: openai, base_url: \"{url}\", api_key: \"{UPSTREAM_KEY}\" }}\n"
    )
}

pub fn chat_body(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
}

/// Asserts an OpenAI-shaped error and returns its `error` object.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: Option<&str>) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert!(resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")));
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("a JSON error body");
    let error = body["error"].clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{body}");
    }
    error
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
