//! Real servers for tests, on free loopback ports: started here, stopped on drop, and
//! bounded in time (`timeout`) so none outlives a test run that died. A missing server binary
//! fails the test loudly, naming the script that installs it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a test server may live.
const MAX_LIFETIME_SECS: &str = "900";
const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (it installs redis-server with apt-get)";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A `redis-server` of our own: no persistence, loopback only.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// A TLS port with a self-signed certificate made for this server.
struct Tls {
    port: u16,
    ca_pem: Vec<u8>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut s = RedisServer { port: free_port(), child: None, tls: None };
        s.spawn();
        s
    }

    /// Starts a server that also serves TLS, with a self-signed certificate for 127.0.0.1
    /// made here (as ElastiCache with encryption in transit does, with its own certificate).
    pub fn start_tls() -> RedisServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("a certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_pem = cert.cert.pem().into_bytes();
        std::fs::write(dir.path().join("cert.pem"), &ca_pem).expect("write the certificate");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("write the key");
        let mut s = RedisServer { port: free_port(), child: None, tls: Some(Tls { port: free_port(), ca_pem, dir }) };
        s.spawn();
        s
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<tls port>` for a TLS server.
    pub fn url(&self) -> String {
        match &self.tls {
            Some(t) => format!("rediss://127.0.0.1:{}", t.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The certificate (PEM) a TLS server's clients must trust.
    pub fn tls_ca(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    fn spawn(&mut self) {
        let bin = std::env::var("SLUICE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new("timeout")
            .args(["--kill-after=5", MAX_LIFETIME_SECS, &bin])
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(
                self.tls
                    .as_ref()
                    .map(|t| {
                        let file = |name: &str| t.dir.path().join(name).to_string_lossy().into_owned();
                        vec![
                            "--tls-port".to_string(),
                            t.port.to_string(),
                            "--tls-cert-file".into(),
                            file("cert.pem"),
                            "--tls-key-file".into(),
                            file("key.pem"),
                            "--tls-ca-cert-file".into(),
                            file("cert.pem"),
                            "--tls-auth-clients".into(),
                            "no".into(),
                        ]
                    })
                    .unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{bin} exited at once ({status}); is it installed? {INSTALL_HINT}");
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `timeout` passes SIGTERM on to redis-server.
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Stops the server (losing everything it held, as a real restart without persistence
    /// does) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const AWS_HINT: &str = "run the tests through scripts/test.sh, or wrap the command in scripts/with-test-services.sh \
    (it starts DynamoDB Local and moto server; scripts/install-test-deps.sh installs them)";

fn service_url(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{var} is not set, so there is no {what} to test against: {AWS_HINT}"),
    }
}

/// The Kinesis endpoint of this test run: moto behind a proxy that refuses part of each
/// PutRecords call, as Kinesis does.
pub fn kinesis_url() -> String {
    service_url("SLUICE_TEST_KINESIS_URL", "Kinesis (moto behind the unkind proxy)")
}

/// The endpoint of the DynamoDB Local started for this test run.
pub fn dynamodb_url() -> String {
    service_url("SLUICE_TEST_DYNAMODB_URL", "DynamoDB Local")
}

/// The endpoint of the moto server (SQS, Kinesis) started for this test run.
pub fn moto_url() -> String {
    service_url("SLUICE_TEST_MOTO_URL", "moto server")
}

/// A Python interpreter with boto3, for checks made with a tool that is not ours.
pub fn python_with_boto3() -> String {
    service_url("SLUICE_TEST_PYTHON", "Python with boto3")
}

/// A resource prefix no other test uses, so tests can share one emulator.
pub fn unique_prefix(what: &str) -> String {
    format!("t{}-{what}", &sluice_core::ids::random_id()[..12])
}
