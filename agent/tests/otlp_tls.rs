//! OTLP export over TLS, end to end: the agent's exporters against a real TLS
//! server — nginx, terminating TLS (HTTP/2 for gRPC, HTTP/1.1 for
//! http/protobuf) in front of the in-test receiver, the way a managed OTLP
//! endpoint or an ingress sits in front of a collector. Certificates come from
//! the openssl command line: a CA of the test's own, a server certificate for
//! `localhost`, a client certificate, and a second CA nobody trusts.
//!
//! Checked: spans arrive over https with the custom CA, for both protocols,
//! gzip-compressed when asked (the receiver sees the encoding and inflates);
//! an endpoint asking for a client certificate gets one when configured and
//! refuses the exporter when not; a server signed by an untrusted CA is refused.
//! Every refusal is counted as an export error, nothing is delivered.
mod support;

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use periscope::{
    export::otlp::{spawn_trace_exporter, OtlpConfig},
    model::{Attr, Service, ServiceRef, Signal, Span, SpanId, SpanKind, SpanStatus, TraceId},
    telemetry::{Counter, Telemetry},
};
use support::otlp_receiver::{Receiver, Via};

const WAIT: Duration = Duration::from_secs(10);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for localhost / 127.0.0.1 signed by it, a client
/// certificate signed by it, and another CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=periscope test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, signer) in [("server", "ca"), ("client", "ca"), ("rogue", "other-ca")] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            let ext = if name == "client" { "client.ext" } else { "server.ext" };
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{signer}.pem"),
                    "-CAkey",
                    &format!("{signer}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Pki { dir: dir.to_path_buf() }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx terminating TLS on one port: gRPC to the receiver's gRPC server,
/// `/v1/*` to its HTTP server.
struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// `cert`: the server certificate's name in the PKI; `client_ca`: ask for
    /// a client certificate signed by it.
    fn start(pki: &Pki, rx: &Receiver, cert: &str, client_ca: Option<&str>, tag: &str) -> Nginx {
        let port = free_port();
        let dir = pki.dir.join(format!("nginx-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let upstream = |endpoint: String| endpoint.trim_start_matches("http://").to_owned();
        let verify = match client_ca {
            Some(ca) => format!("ssl_verify_client on; ssl_client_certificate {};", pki.path(&format!("{ca}.pem"))),
            None => String::new(),
        };
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {dir}/access.log;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {cert_pem};\n    ssl_certificate_key {cert_key};\n\
                 {verify}\n\
                 location /opentelemetry.proto.collector. {{ grpc_pass grpc://{grpc}; }}\n\
                 location /v1/ {{ proxy_http_version 1.1; proxy_pass http://{http}; }}\n  }}\n}}\n",
            dir = dir.display(),
            cert_pem = pki.path(&format!("{cert}.pem")),
            cert_key = pki.path(&format!("{cert}.key")),
            grpc = upstream(rx.grpc_endpoint()),
            http = upstream(rx.http_endpoint()),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", dir.to_str().unwrap(), "-c", conf_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {port}: see {}/error.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port }
    }
}

fn span(route: &str) -> Span {
    let service: ServiceRef =
        Arc::new(Service { name: "tls-test".into(), namespace: None, instance_id: "tls-1".into(), attributes: vec![] });
    Span {
        service,
        signal: Signal::HttpServer,
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        name: format!("GET {route}"),
        kind: SpanKind::Server,
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_000_001_000_000,
        attributes: vec![Attr::new("http.route", route)],
        status: SpanStatus::Unset,
    }
}

fn config(vars: &[(&str, String)]) -> OtlpConfig {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut cfg = OtlpConfig::from_env_values(|k| m.get(k).cloned()).unwrap().expect("configured");
    cfg.batch.max_batch_delay = Duration::from_millis(50);
    cfg.batch.backoff_initial = Duration::from_millis(50);
    cfg.batch.backoff_max = Duration::from_millis(100);
    cfg
}

fn protocol(via: Via) -> String {
    if via == Via::Grpc { "grpc" } else { "http/protobuf" }.to_owned()
}

/// Exports one span with `vars`; `Some(recorded headers)` when it arrived.
async fn export_one(rx: &Receiver, vars: &[(&str, String)], route: &str) -> (Option<HashMap<String, String>>, u64) {
    let telemetry = Arc::new(Telemetry::default());
    let queue = spawn_trace_exporter(&config(vars), telemetry.clone()).expect("exporter");
    queue.submit(span(route));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // Each export carries its route as a header: the request recorded with it is this one.
        let arrived = rx.requests().into_iter().find(|r| r.headers.get("x-route").is_some_and(|v| v == route));
        if let Some(r) = arrived {
            return (Some(r.headers), telemetry.get(Counter::ExportErrors));
        }
        // A refused handshake is an export error; two of them (a retry) say the refusal is steady.
        if telemetry.get(Counter::ExportErrors) >= 2 || std::time::Instant::now() > deadline {
            return (None, telemetry.get(Counter::ExportErrors));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("periscope-otlp-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_custom_ca_for_both_protocols_gzip_or_not() {
    let pki = Pki::new(&scratch("ca"));
    let rx = Receiver::start().await;
    let nginx = Nginx::start(&pki, &rx, "server", None, "plain");
    for via in [Via::Grpc, Via::Http] {
        for gzip in [false, true] {
            let route = format!("/{}/{}", protocol(via).replace('/', "-"), if gzip { "gzip" } else { "identity" });
            let mut vars = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{}", nginx.port)),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol(via)),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
                ("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20t0ken,x-route={route}")),
            ];
            if gzip {
                vars.push(("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()));
            }
            let (headers, errors) = export_one(&rx, &vars, &route).await;
            let headers =
                headers.unwrap_or_else(|| panic!("{route}: nothing arrived over TLS ({errors} export errors)"));
            assert_eq!(errors, 0, "{route}");
            assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer t0ken"), "{route}");
            let encoding = match via {
                Via::Grpc => headers.get("grpc-encoding"),
                Via::Http => headers.get("content-encoding"),
            };
            assert_eq!(encoding.map(String::as_str), gzip.then_some("gzip"), "{route}: {headers:?}");
        }
    }
    // What nginx saw was TLS on HTTP/2 for gRPC: its access log has both.
    let log = std::fs::read_to_string(pki.dir.join("nginx-plain/access.log")).unwrap();
    assert!(log.contains("HTTP/2.0") && log.contains("/v1/traces HTTP/1.1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_when_the_endpoint_asks_for_one() {
    let pki = Pki::new(&scratch("mtls"));
    let rx = Receiver::start().await;
    let nginx = Nginx::start(&pki, &rx, "server", Some("ca"), "mtls");
    for via in [Via::Grpc, Via::Http] {
        let base = |route: &str| {
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://127.0.0.1:{}", nginx.port)),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol(via)),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
                ("OTEL_EXPORTER_OTLP_HEADERS", format!("x-route={route}")),
            ]
        };
        let route = format!("/mtls/{}/without", protocol(via).replace('/', "-"));
        let (headers, errors) = export_one(&rx, &base(&route), &route).await;
        assert!(headers.is_none(), "{route}: delivered without a client certificate");
        assert!(errors >= 1, "{route}: the refusal is counted");

        let route = format!("/mtls/{}/with", protocol(via).replace('/', "-"));
        let mut vars = base(&route);
        vars.push(("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", pki.path("client.pem")));
        vars.push(("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", pki.path("client.key")));
        let (headers, errors) = export_one(&rx, &vars, &route).await;
        assert!(headers.is_some(), "{route}: nothing arrived with the client certificate ({errors} errors)");
        assert_eq!(errors, 0, "{route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_an_untrusted_ca_is_refused() {
    let pki = Pki::new(&scratch("rogue"));
    let rx = Receiver::start().await;
    let nginx = Nginx::start(&pki, &rx, "rogue", None, "rogue");
    for via in [Via::Grpc, Via::Http] {
        let route = format!("/rogue/{}", protocol(via).replace('/', "-"));
        let vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{}", nginx.port)),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol(via)),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("x-route={route}")),
        ];
        let (headers, errors) = export_one(&rx, &vars, &route).await;
        assert!(headers.is_none(), "{route}: delivered to a server our CA did not sign");
        assert!(errors >= 1, "{route}: the refusal is counted");
    }
    assert!(rx.requests().is_empty(), "the receiver behind the rogue server got {:?}", rx.requests().len());
}
