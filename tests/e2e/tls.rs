//! `https://` upstreams: rustls with the platform's trust store (here via SSL_CERT_FILE),
//! SNI and certificate verification against the host name.

use crate::harness::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Upstream(std::process::Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A throwaway CA and a `localhost` server certificate it signed, written to `dir`.
/// Returns (CA certificate, server certificate, server key).
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is needed for the TLS test");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=tollgate test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

fn start_upstream(cert: &str, key: &str) -> (Upstream, u16) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/support/tls_upstream.py"
    );
    let mut child = Command::new("python3")
        .args([script, cert, key])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    (Upstream(child), port)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_is_verified_against_the_trust_store() {
    let dir = TempDir::new("tls");
    let (ca, cert, key) = make_certs(&dir.0);
    let (_upstream, port) = start_upstream(&cert, &key);
    let config = format!(
        "providers:\n  - {{ name: secure, kind: openai, base_url: \"https://localhost:{port}\", api_key: k }}\nmodels:\n  - name: m\n    targets: [{{ provider: secure, model: gpt-4o }}]\n"
    );

    let trusted = Gateway::start_env(&config, "", &[("SSL_CERT_FILE", &ca)]).await;
    let r = trusted.chat("m", false).await;
    assert_eq!(r.status(), 200, "{}", trusted.log());
    let body: Value = r.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, format!("tls ok host=localhost:{port} auth=yes"));

    // Without the certificate in the trust store the handshake must fail: no silent downgrade.
    let untrusted = Gateway::start(&config).await;
    let r = untrusted.chat("m", false).await;
    expect_error(r, 502, Some("upstream_failed")).await;
}
