//! Real Postgres and Redis for the tests, started once per test process from their binaries on free
//! loopback ports. Each runs under a small shell watchdog that holds a pipe from this process: when
//! the test process exits (pass, fail or crash), the pipe closes and the watchdog stops the server
//! and removes its directory.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct Servers {
    /// `postgres://postgres@127.0.0.1:PORT` (trust auth; append `/dbname`).
    pub pg_base: String,
    /// `redis://127.0.0.1:PORT`
    pub redis_url: String,
    _children: Mutex<Vec<Child>>,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();

pub fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        let (pg_base, pg) = start_postgres();
        let (redis_url, redis) = start_redis();
        Servers {
            pg_base,
            redis_url,
            _children: Mutex::new(vec![pg, redis]),
        }
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KEYGATE_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!("Postgres server binaries not found: install postgresql or set KEYGATE_PG_BIN")
    })
}

/// Runs `script` (sh) under a watchdog: it must print `ready` once the server is up, then wait on
/// `read`; the server is stopped when our end of its stdin closes.
fn spawn_watchdog(script: &str, dir: &Path, as_postgres: bool) -> Child {
    let path = dir.join("run.sh");
    std::fs::write(&path, script).expect("write watchdog script");
    let mut cmd = if as_postgres {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!("sh {}", path.display()));
        c
    } else {
        let mut c = Command::new("sh");
        c.arg(&path);
        c
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn watchdog");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let _ = tx.send(first);
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(l) if l.trim() == "ready" => child,
        other => {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("server did not start ({other:?}); log:\n{log}");
        }
    }
}

fn start_postgres() -> (String, Child) {
    let bin = pg_bin();
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("keygate-pg-")
        .tempdir()
        .expect("tempdir")
        .keep();
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "chown of the Postgres test dir failed (is there a postgres user?)"
        );
    }
    let port = free_port();
    let d = dir.display();
    let b = bin.display();
    let script = format!(
        r#"set -e
"{b}/initdb" -D "{d}/data" -U postgres --auth=trust -E UTF8 --no-locale >"{d}/server.log" 2>&1
"{b}/pg_ctl" -D "{d}/data" -l "{d}/server.log" -w -t 60 -o "-p {port} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" start >/dev/null
echo ready
read _ || true
"{b}/pg_ctl" -D "{d}/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "{d}"
"#
    );
    let child = spawn_watchdog(&script, &dir, root);
    (format!("postgres://postgres@127.0.0.1:{port}"), child)
}

fn start_redis() -> (String, Child) {
    let dir = tempfile::Builder::new()
        .prefix("keygate-redis-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let port = free_port();
    let d = dir.display();
    let script = format!(
        r#"redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir "{d}" --logfile "{d}/server.log" &
pid=$!
i=0
until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null || [ $i -ge 200 ]; do i=$((i+1)); sleep 0.05; done
echo ready
read _ || true
kill $pid 2>/dev/null
wait $pid 2>/dev/null
rm -rf "{d}"
"#
    );
    // /dev/tcp needs bash.
    let script = format!("exec bash -c {}", shell_quote(&script));
    let child = spawn_watchdog(&script, &dir, false);
    // Keep our end of the pipe open for the life of the process (the OnceLock holds the Child).
    let _ = std::io::stdout().flush();
    wait_for_port(port);
    (format!("redis://127.0.0.1:{port}"), child)
}

static CLUSTER: OnceLock<(String, Mutex<Child>)> = OnceLock::new();

/// A real Redis Cluster of 3 primaries (no replicas) on loopback, started once per test process
/// and stopped with it: its seed nodes as `redis://127.0.0.1:P1,redis://127.0.0.1:P2,...`.
pub fn redis_cluster() -> &'static str {
    &CLUSTER.get_or_init(start_redis_cluster).0
}

fn start_redis_cluster() -> (String, Mutex<Child>) {
    let dir = tempfile::Builder::new()
        .prefix("keygate-redis-cluster-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let ports = [free_port(), free_port(), free_port()];
    let d = dir.display();
    let list = ports.map(|p| p.to_string()).join(" ");
    let nodes = ports.map(|p| format!("127.0.0.1:{p}")).join(" ");
    // Each node in its own directory (its nodes.conf), then `redis-cli --cluster create` assigns
    // the 16384 slots; ready once every node reports cluster_state:ok (the create command
    // returns before gossip has spread the slot map to every node).
    let script = format!(
        r#"pids=""
for p in {list}; do
  mkdir -p "{d}/$p"
  redis-server --port $p --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --save '' --appendonly no --dir "{d}/$p" --logfile "{d}/$p/server.log" &
  pids="$pids $!"
done
for p in {list}; do
  i=0
  until (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || [ $i -ge 200 ]; do i=$((i+1)); sleep 0.05; done
done
redis-cli --cluster create {nodes} --cluster-replicas 0 --cluster-yes > "{d}/server.log" 2>&1
for p in {list}; do
  i=0
  until redis-cli -p $p cluster info 2>/dev/null | grep -q cluster_state:ok || [ $i -ge 400 ]; do i=$((i+1)); sleep 0.05; done
done
echo ready
read _ || true
kill $pids 2>/dev/null
wait $pids 2>/dev/null
rm -rf "{d}"
"#
    );
    let script = format!("exec bash -c {}", shell_quote(&script));
    let child = spawn_watchdog(&script, &dir, false);
    let url = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (url, Mutex::new(child))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Postgres of one test's own, which the test may stop and start again on the same port
/// (the shared one must stay up for every other test). Stopped and removed when dropped, or by
/// its watchdog if the process dies first.
pub struct OwnPostgres {
    /// `postgres://postgres@127.0.0.1:PORT` (trust auth; append `/dbname`).
    pub base: String,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    _watchdog: Child,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("keygate-own-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of the Postgres test dir failed");
        }
        let port = free_port();
        let d = dir.display();
        let b = bin.display();
        let start = Self::start_command(&bin, &dir, port);
        let script = format!(
            r#"set -e
"{b}/initdb" -D "{d}/data" -U postgres --auth=trust -E UTF8 --no-locale >"{d}/server.log" 2>&1
{start}
echo ready
read _ || true
"{b}/pg_ctl" -D "{d}/data" -m immediate -w stop >/dev/null 2>&1 || true
rm -rf "{d}"
"#
        );
        let watchdog = spawn_watchdog(&script, &dir, as_postgres);
        Self {
            base: format!("postgres://postgres@127.0.0.1:{port}"),
            bin,
            dir,
            port,
            as_postgres,
            _watchdog: watchdog,
        }
    }

    fn start_command(bin: &Path, dir: &Path, port: u16) -> String {
        let (b, d) = (bin.display(), dir.display());
        format!(
            r#""{b}/pg_ctl" -D "{d}/data" -l "{d}/server.log" -w -t 60 -o "-p {port} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null"#
        )
    }

    /// `pg_ctl stop -m fast`: sessions are cut and new connections refused until `restart`.
    /// Blocking; call it from `spawn_blocking` in async tests.
    pub fn stop(&self) {
        let (b, d) = (self.bin.display(), self.dir.display());
        self.run(&format!(
            r#""{b}/pg_ctl" -D "{d}/data" -m fast -w -t 60 stop >/dev/null"#
        ));
    }

    /// Starts the stopped server again on the same port and data. Blocking.
    pub fn restart(&self) {
        self.run(&Self::start_command(&self.bin, &self.dir, self.port));
    }

    fn run(&self, cmd: &str) {
        let status = if self.as_postgres {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", cmd])
                .status()
        } else {
            Command::new("sh").args(["-c", cmd]).status()
        };
        if !status.map(|s| s.success()).unwrap_or(false) {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!("`{cmd}` failed; log:\n{log}");
        }
    }
}

/// A Redis of this test's own, which it may kill and start again on the same port.
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.up();
        r
    }

    pub fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn keys(&self) -> usize {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DBSIZE")
            .query_async::<usize>(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.down();
    }
}

/// A 3-primary Redis Cluster of one test's own, which the test may stop and start again on the
/// same ports (each node keeps its `nodes.conf`, so the cluster comes back as it was, empty).
/// Stopped and removed when dropped.
pub struct OwnRedisCluster {
    ports: [u16; 3],
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl OwnRedisCluster {
    pub fn start() -> Self {
        let mut c = Self {
            ports: [free_port(), free_port(), free_port()],
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        c.spawn_nodes();
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok();
        c
    }

    fn spawn_nodes(&mut self) {
        for p in self.ports {
            let dir = self.dir.path().join(p.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            self.children.push(child);
        }
        for p in self.ports {
            wait_for_port(p);
        }
    }

    /// Until every node says cluster_state:ok (gossip spreads the slot map after a create or a
    /// restart).
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for p in self.ports {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {p} did not reach cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn down(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn up(&mut self) {
        self.spawn_nodes();
        self.wait_ok();
    }

    /// Seed nodes, comma-separated.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys stored across the primaries.
    pub async fn keys(&self) -> usize {
        let mut n = 0;
        for p in self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            n += redis::cmd("DBSIZE")
                .query_async::<usize>(&mut c)
                .await
                .unwrap();
        }
        n
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        self.down();
    }
}

/// The master name the test Sentinels monitor.
pub const SENTINEL_MASTER: &str = "mymaster";

/// A primary, its replica and three Sentinels (quorum 2) of one test's own, on loopback: the
/// Sentinel deployment `redis+sentinel://` URLs name. Each Sentinel writes its own config file in
/// the test's directory (Sentinel rewrites it as it learns the topology). Stopped when dropped.
pub struct OwnRedisSentinel {
    /// The two data nodes: the first starts as primary.
    pub data: [u16; 2],
    pub sentinels: [u16; 3],
    /// `requirepass` of the data nodes and of the Sentinels, when started with passwords.
    passwords: Option<(String, String)>,
    /// Everything speaks TLS only, with certificates from this private CA (its PEM file).
    pub ca_file: Option<PathBuf>,
    children: Mutex<Vec<(u16, Child)>>,
    _dir: tempfile::TempDir,
}

impl OwnRedisSentinel {
    /// Starts everything and returns once every Sentinel knows the primary and a replica in sync,
    /// so a failover can be asked for at once. Blocking (a second or two).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// `start`, with `requirepass data` on the data nodes and `requirepass sentinel` on the
    /// Sentinels (which are told both).
    pub fn start_with_passwords(data: &str, sentinel: &str) -> Self {
        Self::start_with(Some((data.to_string(), sentinel.to_string())))
    }

    /// `start`, with no plaintext port anywhere: the data nodes, their replication and the
    /// Sentinels speak TLS only, with certificates from a private CA (`ca_file`).
    pub fn start_with_tls() -> Self {
        Self::start_with_opts(None, true)
    }

    fn start_with(passwords: Option<(String, String)>) -> Self {
        Self::start_with_opts(passwords, false)
    }

    fn start_with_opts(passwords: Option<(String, String)>, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = [free_port(), free_port()];
        let sentinels = [free_port(), free_port(), free_port()];
        let ca_file = tls.then(|| {
            let ca = private_ca();
            std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
            std::fs::write(dir.path().join("redis.pem"), &ca.leaf_pem).unwrap();
            std::fs::write(dir.path().join("redis.key"), &ca.key_pem).unwrap();
            dir.path().join("ca.pem")
        });
        let mut me = Self {
            data,
            sentinels,
            passwords,
            ca_file,
            children: Mutex::new(Vec::new()),
            _dir: dir,
        };
        let dir = me._dir.path().to_path_buf();
        let tls_args = |port: u16| -> Vec<String> {
            let d = dir.display();
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                format!("{d}/redis.pem"),
                "--tls-key-file".into(),
                format!("{d}/redis.key"),
                "--tls-ca-cert-file".into(),
                format!("{d}/ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
                "--tls-replication".into(),
                "yes".into(),
            ]
        };
        let mut children = Vec::new();
        for (i, p) in data.iter().enumerate() {
            let d = dir.join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let mut cmd = Command::new("redis-server");
            if let Some((pw, _)) = &me.passwords {
                cmd.args(["--requirepass", pw, "--masterauth", pw]);
            }
            if me.ca_file.is_some() {
                cmd.args(tls_args(*p));
            } else {
                cmd.args(["--port", &p.to_string()]);
            }
            cmd.args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .arg("--logfile")
                .arg(d.join("server.log"));
            if i == 1 {
                cmd.args(["--replicaof", "127.0.0.1", &data[0].to_string()]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            children.push((*p, child));
            wait_for_port(*p);
        }
        *me.children.get_mut().unwrap() = children;
        wait_until(Duration::from_secs(20), "the replica is in sync", || {
            me.cli(data[1], &["info", "replication"])
                .contains("master_link_status:up")
        });
        for p in sentinels {
            let d = dir.join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            // down-after 1 s: a dead primary is replaced within a few seconds, not 30.
            let conf = format!(
                "port {p}\nbind 127.0.0.1\ndir \"{d}\"\nlogfile \"{d}/sentinel.log\"\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
                d = d.display(),
                primary = data[0],
            );
            let conf = match &me.passwords {
                Some((data_pw, sentinel_pw)) => format!(
                    "{conf}requirepass \"{sentinel_pw}\"\nsentinel sentinel-pass \"{sentinel_pw}\"\n\
                     sentinel auth-pass {SENTINEL_MASTER} \"{data_pw}\"\n"
                ),
                None => conf,
            };
            let file = d.join("sentinel.conf");
            std::fs::write(&file, conf).unwrap();
            // Options after the file override it: TLS only, also towards the data nodes.
            let tls = if me.ca_file.is_some() {
                tls_args(p)
            } else {
                Vec::new()
            };
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .args(tls)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            me.children.get_mut().unwrap().push((p, child));
            wait_for_port(p);
        }
        let replica = format!("127.0.0.1:{}", data[1]);
        for p in sentinels {
            wait_until(
                Duration::from_secs(20),
                "each Sentinel knows the replica and the other Sentinels",
                || {
                    let replicas = me.cli(p, &["sentinel", "replicas", SENTINEL_MASTER]);
                    let master = me.cli(p, &["sentinel", "master", SENTINEL_MASTER]);
                    replicas.contains(&replica)
                        && !replicas.contains("disconnected")
                        && !replicas.contains("s_down")
                        && master.contains("num-other-sentinels\n2\n")
                },
            );
        }
        me
    }

    /// `redis-cli -p PORT args...` with the node's password if it has one.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let pw = self.passwords.as_ref().map(|(data, sentinel)| {
            if self.sentinels.contains(&port) {
                sentinel.clone()
            } else {
                data.clone()
            }
        });
        let ca = self.ca_file.as_ref().map(|p| p.display().to_string());
        let mut all: Vec<&str> = Vec::new();
        if let Some(pw) = &pw {
            all.extend(["-a", pw.as_str(), "--no-auth-warning"]);
        }
        if let Some(ca) = &ca {
            all.extend(["--tls", "--cacert", ca.as_str()]);
        }
        all.extend_from_slice(args);
        cli(port, &all)
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let scheme = if self.ca_file.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{}/{SENTINEL_MASTER}", nodes.join(","))
    }

    /// The primary's port as every Sentinel names it, or None while they disagree.
    pub fn primary(&self) -> Option<u16> {
        let named: Vec<String> = self
            .sentinels
            .iter()
            .map(|p| {
                self.cli(
                    *p,
                    &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
                )
            })
            .collect();
        let port: u16 = named[0].lines().nth(1)?.trim().parse().ok()?;
        named
            .iter()
            .all(|n| n.lines().nth(1).map(str::trim) == Some(port.to_string().as_str()))
            .then_some(port)
    }

    /// `SENTINEL FAILOVER mymaster` on the first Sentinel: the replica is promoted without the
    /// others' agreement; the old primary stays up (and writable) until the Sentinels demote it.
    pub fn failover(&self) {
        let out = self.cli(
            self.sentinels[0],
            &["sentinel", "failover", SENTINEL_MASTER],
        );
        assert_eq!(out.trim(), "OK", "SENTINEL FAILOVER: {out}");
    }

    /// Swaps the roles without a failover, so no Sentinel announces `+switch-master` and no
    /// client connection is closed: `replica` is made a primary, the Sentinels are pointed at it
    /// (SENTINEL REMOVE + MONITOR), and only then is `primary` demoted to its replica. A client
    /// still connected to `primary` learns of it only from READONLY answers.
    pub fn swap_by_hand(&self, primary: u16, replica: u16) {
        assert_eq!(self.cli(replica, &["replicaof", "no", "one"]).trim(), "OK");
        for s in self.sentinels {
            assert_eq!(
                self.cli(s, &["sentinel", "remove", SENTINEL_MASTER]).trim(),
                "OK"
            );
            let out = self.cli(
                s,
                &[
                    "sentinel",
                    "monitor",
                    SENTINEL_MASTER,
                    "127.0.0.1",
                    &replica.to_string(),
                    "2",
                ],
            );
            assert_eq!(out.trim(), "OK", "SENTINEL MONITOR: {out}");
        }
        let out = self.cli(primary, &["replicaof", "127.0.0.1", &replica.to_string()]);
        assert!(out.starts_with("OK"), "REPLICAOF: {out}");
    }

    /// Kills the data node on `port` (a crash: no shutdown, no save).
    pub fn kill(&self, port: u16) {
        let mut children = self.children.lock().unwrap();
        if let Some(i) = children.iter().position(|(p, _)| *p == port) {
            let (_, mut c) = children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Script calls (EVAL and EVALSHA) the data node on `port` has run since it started.
    pub fn script_calls(&self, port: u16) -> u64 {
        self.cli(port, &["info", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split_once("calls=")
                    .and_then(|(_, r)| r.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// Keys stored on the data node on `port` that start with `prefix`.
    pub fn keys(&self, port: u16, prefix: &str) -> usize {
        self.cli(port, &["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// `role` of the data node on `port`: "master" or "slave".
    pub fn role(&self, port: u16) -> String {
        self.cli(port, &["role"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for OwnRedisSentinel {
    fn drop(&mut self) {
        for (_, mut c) in self.children.get_mut().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `redis-cli -p PORT args...`, its output ("" when it cannot connect).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private CA and a certificate for 127.0.0.1 it signed, in the forms servers and clients take.
pub struct PrivateCa {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

pub fn private_ca() -> PrivateCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keygate test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    PrivateCa {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    }
}
