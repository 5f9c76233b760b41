//! The real `chatd` with every protocol on and the switchboard on (its default), for the
//! `chat` clients' tests of traffic that crosses protocols: one lobby for ROOM, MATOU, CCM and
//! the OCM room `lobby`, and direct messages between CCM and BIN24 users.

#![allow(dead_code)] // each test file uses a different subset

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::chatd;
use super::child::{Client, Output};

/// chatd serving all five protocols on free loopback ports, killed (and its data directory
/// removed) when dropped.
pub struct Lobby {
    child: Child,
    data: PathBuf,
    pub room: u16,
    pub bin24: u16,
    pub ccm: u16,
    pub matou: u16,
    pub ocm_tcp: u16,
    pub ocm_udp: u16,
    pub stderr: Output,
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("address").port()
}

impl Lobby {
    /// Starts chatd. A port is only free when it is looked at, so readiness is chatd saying it
    /// listens on every port, and a chatd that exits first (a bind failed) is started again on
    /// other ports.
    pub fn start() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..5 {
            let data = std::env::temp_dir().join(format!(
                "chat-lobby-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&data).expect("create a temp dir");
            let (room, bin24, ccm, matou, ocm_tcp) = (
                free_tcp_port(),
                free_tcp_port(),
                free_tcp_port(),
                free_tcp_port(),
                free_tcp_port(),
            );
            let ocm_udp = free_udp_port();
            let mut child = chatd::command(&[
                ("--room-port", room),
                ("--bin24-port", bin24),
                ("--ccm-port", ccm),
                ("--matou-port", matou),
                ("--ocm-tcp-port", ocm_tcp),
                ("--ocm-udp-port", ocm_udp),
            ])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the chatd binary");
            let stderr =
                Output::collect("chatd stderr", child.stderr.take().expect("piped stderr"));
            // Built at once, so that Drop kills chatd on every path, panics included.
            let mut server = Lobby {
                child,
                data,
                room,
                bin24,
                ccm,
                matou,
                ocm_tcp,
                ocm_udp,
                stderr,
            };
            let mut listening: Vec<String> = [room, bin24, ccm, matou, ocm_tcp]
                .iter()
                .map(|port| format!("listening on 127.0.0.1:{port}\n"))
                .collect();
            listening.push(format!("listening on 127.0.0.1:{ocm_udp} (UDP)"));
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

    /// `chat room` as `nick`, once it is in the room.
    pub fn room(&self, nick: &str) -> Client {
        let mut client = Client::spawn(&["room", "--nick", nick, "--port", &self.room.to_string()]);
        client.stdout.wait_for("* connected: you are in the room\n");
        client
    }

    /// `chat ccm` as `name`, once identified.
    pub fn ccm(&self, name: &str) -> Client {
        let mut client = Client::spawn(&["ccm", "--name", name, "--port", &self.ccm.to_string()]);
        client.stderr.wait_for(&format!("identified as {name}\n"));
        client
    }

    /// `chat bin24` as `user`, once signed in.
    pub fn bin24(&self, user: &str) -> Client {
        let mut client =
            Client::spawn(&["bin24", "--user", user, "--port", &self.bin24.to_string()]);
        client.stderr.wait_for("signed in");
        client
    }

    /// `chat matou` as `user` (downloads to `downloads`), once connected.
    pub fn matou(&self, user: &str, downloads: &std::path::Path) -> Client {
        let mut client = Client::spawn(&[
            "matou",
            "--user",
            user,
            "--port",
            &self.matou.to_string(),
            "--download-dir",
            downloads.to_str().expect("UTF-8 temporary path"),
        ]);
        client.stderr.wait_for(&format!("connected as {user}\n"));
        client
    }

    /// `chat ocm` in the OCM room `lobby` (the switchboard's), created or joined.
    pub fn ocm(&self, operation: &str, name: &str) -> Client {
        let mut client = Client::spawn(&[
            "ocm",
            operation,
            "lobby",
            "--name",
            name,
            "--tcp-port",
            &self.ocm_tcp.to_string(),
            "--udp-port",
            &self.ocm_udp.to_string(),
        ]);
        let done = if operation == "create" {
            "created"
        } else {
            "joined"
        };
        client
            .stderr
            .wait_for(&format!("chat: {done} lobby as {name}\n"));
        client
    }
}

impl Drop for Lobby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
