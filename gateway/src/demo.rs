//! `tollgate demo`: the gateway with in-process mock providers, ready for curl.

use crate::pipeline::Extensions;
use crate::{config, server};
use std::fmt::Write as _;
use std::net::SocketAddr;
use tollgate_mock::{MockConfig, MockKind};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Data-plane address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
}

/// The upstream key the OpenAI-like mock demands: shows the gateway injects credentials.
const DEMO_UPSTREAM_KEY: &str = "sk-demo-upstream";

pub fn run(args: DemoArgs) -> Result<(), String> {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let spawn = |cfg: MockConfig| {
        tollgate_mock::spawn(any_port, cfg).map_err(|e| format!("starting a mock provider: {e}"))
    };
    let openai = spawn(MockConfig {
        api_key: Some(DEMO_UPSTREAM_KEY.into()),
        tokens_per_sec: 20.0,
        models: vec!["gpt-4o-mini".into(), "text-embedding-3-small".into()],
        ..MockConfig::default()
    })?;
    let flaky = spawn(MockConfig {
        error_rate: 1.0,
        error_status: 503,
        ..MockConfig::default()
    })?;
    let claude = spawn(MockConfig {
        kind: MockKind::Anthropic,
        tokens_per_sec: 20.0,
        models: vec!["claude-sonnet-4-5".into()],
        ..MockConfig::default()
    })?;
    let triton = spawn(MockConfig {
        kind: MockKind::Triton,
        tokens_per_sec: 40.0,
        models: vec!["llama-3.1-8b-trtllm".into()],
        ..MockConfig::default()
    })?;
    let gpu: Vec<_> = (0..2)
        .map(|_| {
            spawn(MockConfig {
                kind: MockKind::Vllm,
                tokens_per_sec: 40.0,
                models: vec!["meta-llama/Llama-3.1-8B-Instruct".into()],
                ..MockConfig::default()
            })
        })
        .collect::<Result<_, _>>()?;

    let dir = std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let yaml = format!(
        r#"# Written by `tollgate demo`: edit it and the gateway reloads within a second.
server:
  listen: ["{listen}"]
  admin_listen: "{admin}"
  shutdown_grace: 1s
providers:
  - name: openai-mock
    kind: openai
    base_url: http://{openai}
    api_key: {DEMO_UPSTREAM_KEY}
  - name: flaky-mock
    kind: openai
    base_url: http://{flaky}
  - name: llama-gpu
    kind: vllm
    endpoints: ["{gpu0}", "{gpu1}"]
    health_check: {{ path: /health, every: 2s }}
  - name: anthropic-mock
    kind: anthropic
    base_url: http://{claude}
  - name: triton-gpu
    kind: triton
    base_url: http://{triton}
models:
  - name: gpt-4o-mini
    targets: [{{ provider: openai-mock, model: gpt-4o-mini }}]
  - name: llama-3.1-8b
    targets: [{{ provider: llama-gpu, model: meta-llama/Llama-3.1-8B-Instruct }}]
  - name: support-bot
    targets:
      - {{ provider: flaky-mock, model: gpt-4o }}
      - {{ provider: llama-gpu, model: meta-llama/Llama-3.1-8B-Instruct }}
  - name: text-embedding-3-small
    targets: [{{ provider: openai-mock, model: text-embedding-3-small }}]
  - name: claude
    targets:
      - {{ provider: flaky-mock, model: gpt-4o }}
      - {{ provider: anthropic-mock, model: claude-sonnet-4-5 }}
  - name: triton-llama
    targets: [{{ provider: triton-gpu, model: llama-3.1-8b-trtllm, prompt_template: llama3 }}]
plugins:
  ledger: {{ path: "{ledger}" }}
  cache: {{ ttl: 10m }}
"#,
        listen = args.listen,
        admin = args.admin_listen,
        openai = openai.addr(),
        flaky = flaky.addr(),
        gpu0 = gpu[0].addr(),
        gpu1 = gpu[1].addr(),
        claude = claude.addr(),
        triton = triton.addr(),
        ledger = dir.join("usage.db").display(),
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let runtime = config::load(&path, None).map_err(|e| e.to_string())?;
    println!("{}", instructions(&args, &path.display().to_string()));
    // The mocks live as long as the process: their handles stay alive across `run`.
    let _mocks = (openai, flaky, gpu, claude, triton);
    server::run(path, runtime, Extensions::default())
}

fn instructions(args: &DemoArgs, config_path: &str) -> String {
    let gw = format!("http://{}", args.listen);
    let admin = format!("http://{}", args.admin_listen);
    let mut out = String::new();
    let _ = writeln!(out, "Tollgate demo: gateway on {gw}, admin on {admin}");
    let _ = writeln!(
        out,
        "Config: {config_path} (edit it: the gateway reloads)\n"
    );
    let _ = writeln!(out, "Try:");
    let chat = |model: &str, stream: bool| {
        format!(
            "curl -s {gw}/v1/chat/completions -H 'content-type: application/json' \\\n  -d '{{\"model\":\"{model}\",{}\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'",
            if stream { "\"stream\":true," } else { "" }
        )
    };
    let _ = writeln!(out, "  # a completion\n  {}\n", chat("gpt-4o-mini", false));
    let _ = writeln!(
        out,
        "  # a stream, token by token\n  {}\n",
        chat("llama-3.1-8b", true).replacen("curl -s", "curl -sN", 1)
    );
    let _ = writeln!(
        out,
        "  # failover: the first target answers 503, the GPU pool serves (see x-tollgate-attempts)\n  {}\n",
        chat("support-bot", false).replacen("curl -s", "curl -si", 1)
    );
    let _ = writeln!(
        out,
        "  # an OpenAI client, answered by Anthropic after a 503 (and a Triton server, streamed)\n  {}\n  {}\n",
        chat("claude", false),
        chat("triton-llama", true).replacen("curl -s", "curl -sN", 1)
    );
    let _ = writeln!(
        out,
        "  # an Anthropic client (POST /v1/messages), answered by an OpenAI-style target\n  curl -s {gw}/v1/messages -H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' \\\n  -d '{{\"model\":\"gpt-4o-mini\",\"max_tokens\":100,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'\n"
    );
    let _ = writeln!(
        out,
        "  # embeddings\n  curl -s {gw}/v1/embeddings -H 'content-type: application/json' -d '{{\"model\":\"text-embedding-3-small\",\"input\":\"hello\"}}'\n"
    );
    let _ = writeln!(
        out,
        "  # the first question again: answered from the cache, no upstream call (x-tollgate-cache: hit)\n  {}\n",
        chat("gpt-4o-mini", false).replacen("curl -s", "curl -si", 1)
    );
    let _ = writeln!(out, "  # models, metrics, what the router knows, running config\n  curl -s {gw}/v1/models\n  curl -s {admin}/metrics | grep tollgate_\n  curl -s {admin}/admin/providers\n  curl -s {admin}/admin/config");
    let _ = writeln!(
        out,
        "  # tokens and cost so far, per model (the SQLite ledger); latency percentiles\n  curl -s '{admin}/admin/usage?group_by=model'\n  curl -s {admin}/admin/stats"
    );
    out
}
