//! A real `redis-server` for the cluster tests: a free loopback port, its own directory,
//! killed (and the directory removed) when dropped. Without `redis-server` on the PATH a test
//! says so and returns; under `CI=true` it fails (`common::cannot_run`).

#![allow(dead_code)] // each test file uses a different subset

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::chatd::Chatd;
use crate::common::TempDir;

/// A `redis-server` on a free loopback port, in a directory of its own; killed (and the
/// directory removed) when dropped.
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
    dir: TempDir,
    /// `--appendonly yes --appendfsync always` (else no persistence at all).
    durable: bool,
}

impl Redis {
    /// Without persistence: a restart starts empty. `None` (after `cannot_run`) when there is
    /// no `redis-server` to run.
    pub fn start() -> Option<Redis> {
        Redis::start_with(false)
    }

    /// With an append-only file fsynced before each write is answered (`--appendonly yes
    /// --appendfsync always`): what is answered survives a kill and a restart in the same
    /// directory.
    pub fn start_durable() -> Option<Redis> {
        Redis::start_with(true)
    }

    fn start_with(durable: bool) -> Option<Redis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            crate::common::cannot_run("no redis-server on the PATH");
            return None;
        }
        for _ in 0..5 {
            let dir = TempDir::new("cluster-redis");
            std::fs::create_dir_all(&dir.0).expect("create the Redis directory");
            let port = crate::chatd::free_tcp_port();
            let (child, mut stdout) = spawn_redis(port, &dir, durable);
            let redis = Redis {
                child,
                port,
                dir,
                durable,
            };
            if stdout
                .wait_for_or_close("Ready to accept connections")
                .is_some()
            {
                return Some(redis);
            }
            eprintln!(
                "redis-server did not start, trying another port: {}",
                stdout.text()
            );
        }
        panic!("redis-server did not start on a free port in 5 attempts");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill redis-server");
        self.child.wait().expect("reap redis-server");
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to redis-server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// On the same port and directory (a durable one reads its append-only file back).
    pub fn start_again(&mut self) {
        let (child, mut stdout) = spawn_redis(self.port, &self.dir, self.durable);
        self.child = child;
        stdout.wait_for("Ready to accept connections");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A chatd node serving `flags`' protocols, joined to this Redis as `name` with `extra`
    /// flags, once its lobby subscription is confirmed.
    pub fn node(&self, name: &str, flags: &[&'static str], extra: &[&str]) -> Chatd {
        node_at(&self.url(), name, flags, extra)
    }

    /// Waits (bounded by `WAIT`) until `key` exists.
    pub fn wait_key(&self, key: &[u8]) {
        let deadline = std::time::Instant::now() + crate::common::WAIT;
        while self.query_int(&[b"EXISTS", key]) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared in Redis",
                String::from_utf8_lossy(key)
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The integer answer of one command (`XLEN key`, `HGET key field`: nil is 0).
    pub fn query_int(&self, args: &[&[u8]]) -> i64 {
        let client = redis::Client::open(self.url()).expect("the Redis URL");
        let mut conn = client.get_connection().expect("connect to Redis");
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("a command name"));
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let value: Option<i64> = cmd.query(&mut conn).expect("the command's answer");
        value.unwrap_or(0)
    }
}

/// A chatd node serving `flags`' protocols, joined to the Redis at `url` (this harness's, or
/// a proxy in front of it) as `name` with `extra` flags and its admin port (`--admin-port 0`:
/// its address is in the log), once its lobby subscription is confirmed.
pub fn node_at(url: &str, name: &str, flags: &[&'static str], extra: &[&str]) -> Chatd {
    let mut args = vec!["--cluster", url, "--node-name", name, "--admin-port", "0"];
    args.extend_from_slice(extra);
    let mut node = Chatd::start(flags, &args);
    node.stderr.wait_for(&format!(
        "cluster: node {name} subscribed to switchboard:lobby on {url}"
    ));
    node
}

/// The address of `node`'s port of `flag` (`--bin24-port`, ...), on loopback.
pub fn addr(node: &Chatd, flag: &str) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], node.port(flag)))
}

/// A sample of `node`'s admin port (`--admin-port 0`, as [`Redis::node`] starts it: its
/// address is in the log): `series` with its labels, as the text shows it.
pub fn metric(node: &mut Chatd, series: &str) -> f64 {
    use std::io::{Read, Write};
    const LISTENING: &str = "ADMIN listening on ";
    let log = node.stderr.wait_for(LISTENING);
    let rest = &log[log.find(LISTENING).expect("the line waited for") + LISTENING.len()..];
    let admin: std::net::SocketAddr = rest
        .split_whitespace()
        .next()
        .and_then(|addr| addr.parse().ok())
        .expect("the admin port's address");
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin port");
    stream
        .set_read_timeout(Some(crate::common::WAIT))
        .expect("a read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("ask for the metrics");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the metrics");
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{series} ")))
        .unwrap_or_else(|| panic!("{series} missing: {text}"));
    line.rsplit_once(' ')
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("{line}: not a sample"))
}

/// Waits (bounded by `WAIT`) until none of `node`'s five Redis links is down
/// (`chatd_cluster_redis_link_down` is 0): after an outage, what a node says crosses, and
/// what it asks Redis is answered, only once its links are back, and each comes back on its
/// own reconnect delay (up to 2 s), in no order with the others nor with the other nodes'.
/// A link that never noticed the outage was never down.
pub fn wait_links_up(node: &mut Chatd) {
    wait_link_down_gauge(node, 0.0);
}

/// Waits (bounded by `WAIT`) until `node` says a Redis link of it is down
/// (`chatd_cluster_redis_link_down` is 1). A log line saying so is no proof that one is now:
/// `Output::wait_for` finds any line since the start, and a loaded machine can make a link
/// miss a deadline (and come back) long before the outage a test makes.
pub fn wait_link_down(node: &mut Chatd) {
    wait_link_down_gauge(node, 1.0);
}

fn wait_link_down_gauge(node: &mut Chatd, want: f64) {
    const LINK_DOWN: &str = "chatd_cluster_redis_link_down";
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    loop {
        let now = metric(node, LINK_DOWN);
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{LINK_DOWN} is {now}, never {want}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn spawn_redis(
    port: u16,
    dir: &TempDir,
    durable: bool,
) -> (std::process::Child, crate::child::Output) {
    let persistence: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(persistence)
        .arg("--dir")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let stdout = crate::child::Output::collect("redis stdout", child.stdout.take().expect("piped"));
    (child, stdout)
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// What the tests that cut a node's Redis links share (cluster_links, cluster_stored_notice).

/// Waits (bounded by `WAIT`) until `series` on `node` is at least `value`.
pub fn wait_metric(node: &mut Chatd, series: &str, value: f64) {
    let deadline = Instant::now() + crate::common::WAIT;
    loop {
        let now = metric(node, series);
        if now >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now}, never reached {value}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One connection to Redis held for the whole test: it stays when `maxclients` is lowered
/// to refuse the nodes' reconnects.
pub fn admin_connection(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url())
        .expect("the Redis URL")
        .get_connection()
        .expect("connect to Redis")
}

pub fn command(conn: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn)
        .unwrap_or_else(|err| panic!("{args:?}: {err}"))
}

pub fn let_clients_in(conn: &mut redis::Connection) {
    command(conn, &["CONFIG", "SET", "maxclients", "10000"]);
}

/// The local TCP ports of `pid`'s sockets (its fds matched to /proc/PID/net/tcp by inode).
pub fn tcp_ports_of(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the node's fds")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("read net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(9)?;
            if !inodes.iter().any(|own| own == inode) {
                return None;
            }
            let port = fields.get(1)?.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// The ids in `list` (`CLIENT LIST`'s lines) of connections from one of `ports` (their local
/// ports) whose line also passes `keep`.
pub fn client_ids_from(list: &str, ports: &[u16], keep: impl Fn(&str) -> bool) -> Vec<String> {
    list.lines()
        .filter(|line| keep(line))
        .filter(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("addr="))
                .and_then(|addr| addr.rsplit_once(':'))
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_some_and(|port| ports.contains(&port))
        })
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

/// The id Redis gives `node`'s connection whose last command was `cmd` (`CLIENT LIST`'s
/// `cmd=`), the one of that node's connections (by its local port).
pub fn client_id(conn: &mut redis::Connection, node: &Chatd, cmd: &str) -> String {
    let ports = tcp_ports_of(node.pid());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(conn)
        .expect("CLIENT LIST");
    let wanted = format!("cmd={cmd}");
    let ids = client_ids_from(&list, &ports, |line| {
        line.split(' ').any(|field| field == wanted)
    });
    assert_eq!(ids.len(), 1, "{cmd} connections of the node: {list}");
    ids[0].clone()
}
