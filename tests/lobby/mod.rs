//! The real `chatd` with every protocol on and the switchboard on (its default), for the
//! `chat` clients' tests of traffic that crosses protocols: one lobby for ROOM, MATOU, CCM and
//! the OCM room `lobby`, and direct messages between CCM and BIN24 users.

#![allow(dead_code)] // each test file uses a different subset

use super::chatd::{self, Chatd};
use super::child::Client;

/// chatd serving all five protocols on free loopback ports, killed (and its data directory
/// removed) when dropped.
pub struct Lobby {
    pub chatd: Chatd,
    pub room: u16,
    pub bin24: u16,
    pub ccm: u16,
    pub matou: u16,
    pub ocm_tcp: u16,
    pub ocm_udp: u16,
}

impl Lobby {
    pub fn start() -> Self {
        // Every protocol but the stage-1 relay, which is not in the lobby.
        let flags: Vec<&'static str> = chatd::PORT_FLAGS
            .into_iter()
            .filter(|&flag| flag != "--ocm-relay-port")
            .collect();
        let chatd = Chatd::start(&flags, &[]);
        Lobby {
            room: chatd.port("--room-port"),
            bin24: chatd.port("--bin24-port"),
            ccm: chatd.port("--ccm-port"),
            matou: chatd.port("--matou-port"),
            ocm_tcp: chatd.port("--ocm-tcp-port"),
            ocm_udp: chatd.port("--ocm-udp-port"),
            chatd,
        }
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
