//! Starting the real `chatd` binary in integration tests: every protocol's port flag is given,
//! `0` (disabled) unless the test names it, so a test never binds a default port that another
//! test or program may hold.

#![allow(dead_code)] // each test file uses a different subset

use std::process::Command;

/// No limit on a CCM user's bytes a second, nor a connection's input: for a test whose CCM
/// user floods faster than those limits allow.
pub const CCM_UNTHROTTLED_FLAGS: [&str; 6] = [
    "--ccm-sender-bytes-per-s-max",
    "0",
    "--ccm-pair-bytes-per-s-max",
    "0",
    "--input-bytes-per-s-max",
    "0",
];

/// Every protocol's port flag.
pub const PORT_FLAGS: [&str; 8] = [
    "--room-port",
    "--bin24-port",
    "--ccm-port",
    "--matou-port",
    "--ocm-tcp-port",
    "--ocm-udp-port",
    "--ocm-relay-port",
    "--web-port",
];

/// Every TLS port flag (each protocol's TCP front door over TLS).
pub const TLS_PORT_FLAGS: [&str; 6] = [
    "--room-tls-port",
    "--bin24-tls-port",
    "--ccm-tls-port",
    "--matou-tls-port",
    "--ocm-tcp-tls-port",
    "--web-tls-port",
];

/// The port flags: `ports`' values for the flags it names, `0` for every other one.
pub fn port_args(ports: &[(&str, u16)]) -> Vec<String> {
    for (flag, _) in ports {
        assert!(PORT_FLAGS.contains(flag), "unknown port flag {flag}");
    }
    PORT_FLAGS
        .iter()
        .flat_map(|flag| {
            let port = ports
                .iter()
                .find(|(named, _)| named == flag)
                .map_or(0, |&(_, port)| port);
            [flag.to_string(), port.to_string()]
        })
        .collect()
}

/// A `chatd` command serving only the protocols `ports` names, on those ports.
pub fn command(ports: &[(&str, u16)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
    command.args(port_args(ports));
    command
}

/// The UDP port flags: a free port for them is looked for among UDP sockets.
const UDP_PORT_FLAGS: [&str; 2] = ["--ocm-udp-port", "--ocm-relay-port"];

/// A loopback TCP port that is free when looked at: another process may take it before it is
/// used ([`Chatd::start`] starts again on other ports when a bind fails).
pub fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A free port for `flag`'s protocol: UDP or TCP.
fn free_port(flag: &str) -> u16 {
    if UDP_PORT_FLAGS.contains(&flag) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
        socket.local_addr().expect("its address").port()
    } else {
        free_tcp_port()
    }
}

/// The real `chatd` binary serving the protocols whose port flags a test names, each on a free
/// loopback port, with a data directory of its own; killed (and the directory removed) when
/// dropped, panics included.
pub struct Chatd {
    child: std::process::Child,
    data: std::path::PathBuf,
    ports: Vec<(&'static str, u16)>,
    pub stderr: super::child::Output,
}

impl Chatd {
    /// Starts chatd with `flags` on free ports and `extra` arguments. Readiness is chatd saying
    /// it listens on every port (a probe connecting to a port could reach another process that
    /// took it), and a chatd that exits first (a bind failed) is started again on other ports.
    pub fn start(flags: &[&'static str], extra: &[&str]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..5 {
            let data = std::env::temp_dir().join(format!(
                "chatd-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&data).expect("create a temp dir");
            let ports: Vec<(&'static str, u16)> =
                flags.iter().map(|&flag| (flag, free_port(flag))).collect();
            let mut child = command(&ports)
                .arg("--data-dir")
                .arg(&data)
                .args(extra)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start the chatd binary");
            let stderr = super::child::Output::collect(
                "chatd stderr",
                child.stderr.take().expect("piped stderr"),
            );
            // Built at once, so that Drop kills chatd on every path.
            let mut server = Chatd {
                child,
                data,
                ports,
                stderr,
            };
            let listening: Vec<String> = server
                .ports
                .iter()
                .map(|&(flag, port)| {
                    if UDP_PORT_FLAGS.contains(&flag) {
                        format!("listening on 127.0.0.1:{port} (UDP)")
                    } else {
                        format!("listening on 127.0.0.1:{port}\n")
                    }
                })
                .collect();
            if listening
                .iter()
                .all(|line| server.stderr.wait_for_or_close(line).is_some())
            {
                return server;
            }
            eprintln!(
                "chatd did not start, trying other ports: {:?}",
                server.stderr.text()
            );
        }
        panic!("chatd did not start on free ports in 5 attempts");
    }

    /// chatd's process id.
    #[allow(dead_code)] // Not every test crate that includes this module needs it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// chatd's resident memory now (VmRSS), in KiB.
    #[allow(dead_code)] // Not every test crate that includes this module samples memory.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read chatd's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in chatd's /proc status")
    }

    /// The port chatd serves `flag`'s protocol on; the test must have named the flag.
    pub fn port(&self, flag: &str) -> u16 {
        self.ports
            .iter()
            .find(|(named, _)| *named == flag)
            .map(|&(_, port)| port)
            .unwrap_or_else(|| panic!("chatd was not started with {flag}"))
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
