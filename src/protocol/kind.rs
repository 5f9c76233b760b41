//! Which protocol a listener, a connection or a UDP socket speaks, and the table that says
//! which of them `Config` enables and on which port. A protocol is one row here: its variant,
//! its name and its port; the reactor binds whatever this table lists.

use crate::config::Config;

/// Which wire protocol a listener or connection speaks (and, for the hub, which protocol a
/// user came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolKind {
    Room,
    Bin24,
    Ccm,
    Matou,
    /// OCM's TCRP listener (rooms are created and joined over TCP).
    Ocm,
    /// The web page and its WebSocket (JSON messages).
    Web,
}

impl ProtocolKind {
    /// Every protocol, in [`ProtocolKind::index`] order (the discriminants), which is also the
    /// order listeners are bound and take their tokens.
    pub const ALL: [ProtocolKind; 6] = [
        ProtocolKind::Room,
        ProtocolKind::Bin24,
        ProtocolKind::Ccm,
        ProtocolKind::Matou,
        ProtocolKind::Ocm,
        ProtocolKind::Web,
    ];
    /// How many there are: per-protocol counters are arrays of this length.
    pub const COUNT: usize = ProtocolKind::ALL.len();

    /// This protocol's place in [`ProtocolKind::ALL`] and in `Stats::by_protocol`.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Room => "ROOM",
            ProtocolKind::Bin24 => "BIN24",
            ProtocolKind::Ccm => "CCM",
            ProtocolKind::Matou => "MATOU",
            ProtocolKind::Ocm => "OCM",
            ProtocolKind::Web => "WEB",
        }
    }

    /// A metric label value: lowercase, like the admin port's `protocol` label.
    pub fn label(self) -> &'static str {
        match self {
            ProtocolKind::Room => "room",
            ProtocolKind::Bin24 => "bin24",
            ProtocolKind::Ccm => "ccm",
            ProtocolKind::Matou => "matou",
            ProtocolKind::Ocm => "ocm",
            ProtocolKind::Web => "web",
        }
    }

    /// Whether this protocol's users can be in the switchboard's lobby (every protocol but
    /// BIN24, which has no broadcast).
    pub fn has_lobby(self) -> bool {
        self != ProtocolKind::Bin24
    }

    /// The TCP port `config` gives this protocol; `None` when it is disabled. OCM's TCRP
    /// listener is useless without its chat socket, so it needs both of OCM's ports.
    pub fn port(self, config: &Config) -> Option<u16> {
        match self {
            ProtocolKind::Room => config.room_port,
            ProtocolKind::Bin24 => config.bin24_port,
            ProtocolKind::Ccm => config.ccm_port,
            ProtocolKind::Matou => config.matou_port,
            ProtocolKind::Ocm => config
                .ocm_tcp_port
                .filter(|_| config.ocm_udp_port.is_some()),
            ProtocolKind::Web => config.web_port,
        }
    }

    /// The TLS port `config` gives this protocol, if any. OCM's needs OCM's UDP chat socket,
    /// which TLS does not cover, as its plaintext port does.
    pub fn tls_port(self, config: &Config) -> Option<u16> {
        match self {
            ProtocolKind::Room => config.room_tls_port,
            ProtocolKind::Bin24 => config.bin24_tls_port,
            ProtocolKind::Ccm => config.ccm_tls_port,
            ProtocolKind::Matou => config.matou_tls_port,
            ProtocolKind::Ocm => config
                .ocm_tcp_tls_port
                .filter(|_| config.ocm_udp_port.is_some()),
            ProtocolKind::Web => config.web_tls_port,
        }
    }

    /// Whether `config` serves this protocol at all: on its plaintext port, its TLS port or
    /// both. An operator may offer a protocol over TLS only.
    pub fn is_served(self, config: &Config) -> bool {
        self.port(config).is_some() || self.tls_port(config).is_some()
    }
}

/// Which datagram protocol a UDP socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKind {
    /// OCM's chat socket: datagrams with a room and a token.
    OcmChat,
    /// The stage-1 relay: every datagram to every other recent peer.
    OcmRelay,
}

impl UdpKind {
    /// Every datagram protocol, in the order sockets are bound and take their tokens.
    pub const ALL: [UdpKind; 2] = [UdpKind::OcmChat, UdpKind::OcmRelay];

    pub fn name(self) -> &'static str {
        match self {
            UdpKind::OcmChat => "OCM-UDP",
            UdpKind::OcmRelay => "OCM-RELAY",
        }
    }

    /// The UDP port `config` gives this socket; `None` when it is disabled. OCM's chat socket
    /// needs a TCRP port too, plaintext or TLS (rooms are made there).
    pub fn port(self, config: &Config) -> Option<u16> {
        match self {
            UdpKind::OcmChat => config
                .ocm_udp_port
                .filter(|_| config.ocm_tcp_port.is_some() || config.ocm_tcp_tls_port.is_some()),
            UdpKind::OcmRelay => config.ocm_relay_port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_indexes_its_own_counters() {
        for (at, kind) in ProtocolKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), at, "{kind:?}");
        }
    }

    #[test]
    fn ocm_listens_only_with_both_of_its_ports() {
        let mut config = Config {
            ocm_tcp_port: Some(0),
            ocm_udp_port: None,
            ..Config::default()
        };
        assert_eq!(ProtocolKind::Ocm.port(&config), None);
        assert_eq!(UdpKind::OcmChat.port(&config), None);
        config.ocm_udp_port = Some(0);
        assert_eq!(ProtocolKind::Ocm.port(&config), Some(0));
        assert_eq!(UdpKind::OcmChat.port(&config), Some(0));
    }
}
