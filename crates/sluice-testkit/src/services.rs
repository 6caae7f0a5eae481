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
    cluster: Option<ClusterNode>,
}

/// What a node of a [`RedisCluster`] runs with besides its port.
struct ClusterNode {
    /// The cluster bus port.
    bus: u16,
    /// Where the node keeps its cluster identity, `nodes-<port>.conf`.
    dir: std::path::PathBuf,
    /// The bus over TLS too.
    tls: bool,
}

/// How many times a server is started on new ports when its ports were taken between
/// [`free_port`] and its bind (tests of other processes pick ports at the same time).
const PORT_ATTEMPTS: usize = 5;

/// A TLS port with a self-signed certificate made for this server.
#[derive(Clone)]
struct Tls {
    port: u16,
    ca_pem: Vec<u8>,
    dir: std::sync::Arc<tempfile::TempDir>,
}

impl Tls {
    /// A self-signed certificate for 127.0.0.1, written where redis-server reads it.
    fn new() -> Tls {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("a certificate");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_pem = cert.cert.pem().into_bytes();
        std::fs::write(dir.path().join("cert.pem"), &ca_pem).expect("write the certificate");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("write the key");
        Tls { port: free_port(), ca_pem, dir: std::sync::Arc::new(dir) }
    }
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut s = RedisServer { port: free_port(), child: None, tls: None, cluster: None };
        s.spawn_on_free_ports();
        s
    }

    /// Starts a server that also serves TLS, with a self-signed certificate for 127.0.0.1
    /// made here (as ElastiCache with encryption in transit does, with its own certificate).
    pub fn start_tls() -> RedisServer {
        let mut s = RedisServer { port: free_port(), child: None, tls: Some(Tls::new()), cluster: None };
        s.spawn_on_free_ports();
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

    /// Starts the server; if one of its ports was taken meanwhile, on new ports.
    fn spawn_on_free_ports(&mut self) {
        for _ in 1..PORT_ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(Exit::PortTaken) => {
                    self.port = free_port();
                    if let Some(t) = &mut self.tls {
                        t.port = free_port();
                    }
                    if let Some(c) = &mut self.cluster {
                        c.bus = free_port();
                    }
                }
                Err(e) => e.fail(),
            }
        }
        self.spawn().unwrap_or_else(|e| e.fail());
    }

    /// Starts the server on its ports and waits until it answers PING.
    fn spawn(&mut self) -> Result<(), Exit> {
        let bin = std::env::var("SLUICE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        // redis-server logs to stdout; read it when the server exits at once.
        let log = tempfile::tempfile().expect("a temporary file");
        let cluster_args = self
            .cluster
            .as_ref()
            .map(|c| {
                let conf = c.dir.join(format!("nodes-{}.conf", self.port)).to_string_lossy().into_owned();
                let mut args: Vec<String> = ["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "5000"]
                    .into_iter()
                    .map(String::from)
                    .chain(["--cluster-port".to_string(), c.bus.to_string()])
                    .collect();
                if c.tls {
                    args.extend(["--tls-cluster", "yes"].map(String::from));
                }
                args
            })
            .unwrap_or_default();
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
            .args(cluster_args)
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let mut said = String::new();
                let mut log = log;
                let _ = std::io::Seek::rewind(&mut log).and_then(|_| log.read_to_string(&mut said));
                return Err(if said.contains("Address already in use") { Exit::PortTaken } else { Exit::Other { bin, status, said } });
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
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
        self.spawn().unwrap_or_else(|e| e.fail());
    }
}

/// Why a server exited before it answered.
enum Exit {
    PortTaken,
    Other { bin: String, status: std::process::ExitStatus, said: String },
}

impl Exit {
    fn fail(self) -> ! {
        match self {
            Exit::PortTaken => panic!("redis-server found its port taken {PORT_ATTEMPTS} times"),
            Exit::Other { bin, status, said } => {
                panic!("{bin} exited at once ({status}); is it installed? {INSTALL_HINT}\nit said:\n{said}")
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of our own: primaries without replicas on loopback ports, the 16,384 slots
/// split evenly between them, as ElastiCache runs cluster mode. Each node keeps its cluster
/// identity in a file here, so a restarted node rejoins with its slots (and, like a real
/// restart without persistence, without its data).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `n` nodes, assigns the slots, joins them and waits until the cluster is up.
    pub fn start(n: usize) -> RedisCluster {
        Self::start_with(n, None)
    }

    /// [`Self::start`] with every node serving TLS (one certificate for all) and the cluster
    /// bus over TLS, as ElastiCache Serverless runs: clients reach the nodes on their TLS
    /// ports, which is what the nodes announce to TLS clients.
    pub fn start_tls(n: usize) -> RedisCluster {
        Self::start_with(n, Some(Tls::new()))
    }

    fn start_with(n: usize, tls: Option<Tls>) -> RedisCluster {
        assert!(n > 0);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let cluster = ClusterNode { bus: free_port(), dir: dir.path().to_path_buf(), tls: tls.is_some() };
            let tls = tls.as_ref().map(|t| Tls { port: free_port(), ..t.clone() });
            let mut s = RedisServer { port: free_port(), child: None, tls, cluster: Some(cluster) };
            s.spawn_on_free_ports();
            nodes.push(s);
        }
        let c = RedisCluster { nodes, _dir: dir };
        const SLOTS: usize = 16_384;
        for (i, node) in c.nodes.iter().enumerate() {
            let (first, last) = (i * SLOTS / n, (i + 1) * SLOTS / n - 1);
            let _: () = c.query(node.port, redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(first).arg(last));
        }
        for node in c.nodes.iter().skip(1) {
            let bus = node.cluster.as_ref().expect("a cluster node").bus;
            let _: () = c.query(c.nodes[0].port, redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(node.port).arg(bus));
        }
        c.wait_ok();
        c
    }

    /// The seed list clients start from: every node, separated by commas.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The certificate (PEM) a TLS cluster's clients must trust.
    pub fn tls_ca(&self) -> Option<Vec<u8>> {
        self.nodes[0].tls_ca()
    }

    /// Which node holds `key`.
    pub fn node_of(&self, key: &str) -> usize {
        let slot: usize = self.query(self.nodes[0].port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        slot * self.nodes.len() / 16_384
    }

    /// Restarts node `i` (it forgets its data, keeps its slots) and waits until the cluster is
    /// up again.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_ok();
    }

    fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a redis url");
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5)).expect("a cluster node answers");
        cmd.query(&mut conn).unwrap_or_else(|e| panic!("{cmd:?} on port {port}: {e}"))
    }

    /// Until every node sees every other and all slots served.
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ok = self.nodes.iter().all(|n| {
                let info: String = self.query(n.port, redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok") && info.contains(&want)
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the redis cluster did not come up within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// The SQS endpoint of this test run: moto behind a proxy that throttles part of the
/// data-plane calls, as SQS does.
pub fn sqs_url() -> String {
    service_url("SLUICE_TEST_SQS_URL", "SQS (moto behind the unkind proxy)")
}

/// The endpoint of the DynamoDB Local started for this test run.
pub fn dynamodb_url() -> String {
    service_url("SLUICE_TEST_DYNAMODB_URL", "DynamoDB Local")
}

/// DynamoDB Local itself, for tests that put a proxy of their own in front of it.
pub fn dynamodb_local_url() -> String {
    service_url("SLUICE_TEST_DYNAMODB_LOCAL_URL", "DynamoDB Local")
}

/// The endpoint of the moto server (SQS, Kinesis) started for this test run, without faults.
pub fn moto_url() -> String {
    service_url("SLUICE_TEST_MOTO_URL", "moto server")
}

/// A Python interpreter with boto3, for checks made with a tool that is not ours.
pub fn python_with_boto3() -> String {
    service_url("SLUICE_TEST_PYTHON", "Python with boto3")
}

/// The Python of the deploy checks (deploy/check.py), with grpcio and its reflection and
/// health clients; kubectl, hadolint, cfn-lint and checkov sit beside it.
pub fn deploy_tools_python() -> String {
    service_url("SLUICE_TEST_DEPLOY_PYTHON", "Python with the deploy checks")
}

/// A resource prefix no other test uses, so tests can share one emulator.
pub fn unique_prefix(what: &str) -> String {
    format!("t{}-{what}", &sluice_core::ids::random_id()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_whose_port_was_taken_starts_on_another() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut s = RedisServer { port, child: None, tls: None, cluster: None };
        s.spawn_on_free_ports();
        assert_ne!(s.port, port);
        assert!(s.answers());
    }

    #[test]
    fn a_cluster_node_whose_bus_port_was_taken_starts_on_others() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let bus = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterNode { bus, dir: dir.path().to_path_buf(), tls: false };
        let mut s = RedisServer { port: free_port(), child: None, tls: None, cluster: Some(cluster) };
        s.spawn_on_free_ports();
        assert_ne!(s.cluster.as_ref().unwrap().bus, bus);
        assert!(s.answers());
    }
}
