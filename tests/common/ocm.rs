//! An OCM chat member for the integration tests: joined (or created) its room over TCRP, chats
//! over UDP; bounded waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};

use super::{TestServer, WAIT};

/// A TCRP request as the original client writes it: header, room name, JSON payload naming the
/// member's UDP address.
pub fn tcrp_request(room: &str, operation: u8, name: &str, udp: SocketAddr) -> Vec<u8> {
    let payload = format!(
        "{{\"user_name\": \"{name}\", \"user_address\": [\"{}\", {}]}}",
        udp.ip(),
        udp.port()
    );
    let mut bytes = vec![room.len() as u8, operation, 0];
    bytes.extend_from_slice(&[0u8; 21]);
    bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    bytes.extend_from_slice(room.as_bytes());
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

/// An OCM chat member: its UDP socket, and what it needs to send.
pub struct Ocm {
    pub name: String,
    pub room: String,
    pub token: String,
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Ocm {
    /// `operation` 1 creates the room, 2 joins it; the server must grant it.
    pub fn enter(server: &TestServer, operation: u8, room: &str, name: &str) -> Ocm {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        let udp = socket.local_addr().expect("addr");
        let mut tcrp = TcpStream::connect(server.ocm_tcp.expect("OCM enabled")).expect("connect");
        tcrp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcrp.write_all(&tcrp_request(room, operation, name, udp))
            .expect("send request");
        let mut answer = Vec::new();
        tcrp.read_to_end(&mut answer)
            .expect("answered, then closed");
        let json = String::from_utf8_lossy(&answer[32.min(answer.len())..]).into_owned();
        assert_eq!(
            answer.get(2),
            Some(&2),
            "{name}: success expected, got {json}"
        );
        let at = json.find("\"token\": \"").expect("token") + 10;
        Ocm {
            name: name.to_string(),
            room: room.to_string(),
            token: json[at..at + 64].to_string(),
            socket,
            server: server.ocm_udp.expect("OCM UDP"),
        }
    }

    pub fn create(server: &TestServer, room: &str, name: &str) -> Ocm {
        Ocm::enter(server, 1, room, name)
    }

    pub fn join(server: &TestServer, room: &str, name: &str) -> Ocm {
        Ocm::enter(server, 2, room, name)
    }

    /// A chat datagram carrying `message`.
    pub fn datagram(&self, message: &str) -> Vec<u8> {
        let mut bytes = vec![self.room.len() as u8, self.token.len() as u8];
        bytes.extend_from_slice(self.room.as_bytes());
        bytes.extend_from_slice(self.token.as_bytes());
        bytes.extend_from_slice(message.as_bytes());
        bytes
    }

    pub fn say(&self, message: &str) {
        self.socket
            .send_to(&self.datagram(message), self.server)
            .expect("send datagram");
    }

    /// The next datagram from the server must be exactly `expected`.
    pub fn expect(&self, expected: &str) {
        let mut buf = [0u8; 65536];
        loop {
            let (len, from) = self.socket.recv_from(&mut buf).unwrap_or_else(|err| {
                panic!(
                    "{}: nothing arrived while waiting for {expected:?}: {err}",
                    self.name
                )
            });
            if from != self.server {
                continue;
            }
            assert_eq!(
                String::from_utf8_lossy(&buf[..len]),
                expected,
                "{}: unexpected datagram",
                self.name
            );
            return;
        }
    }
}
