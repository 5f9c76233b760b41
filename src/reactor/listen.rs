//! Listening sockets, set up with socket2 so every option is explicit, and the table of them
//! built from `Config`: one listener per enabled [`ProtocolKind`], one UDP socket per enabled
//! [`UdpKind`], in their `ALL` order, each registered on its token. A protocol's port is its
//! one entry in that table (`ProtocolKind::port`, `UdpKind::port`).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use mio::{Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::udp::{DeferredSends, UdpCounters, UdpEntry};
use super::{
    ListenerEntry, CONN_TOKEN_BASE, LISTENER_TOKEN_BASE, LISTENER_TOKEN_END,
    UDP_DEFERRED_SENDS_MAX, UDP_TOKEN_BASE,
};
use crate::config::Config;
use crate::limits::{RateLimit, SourceBuckets};
use crate::protocol::{ProtocolKind, UdpKind};

// Every protocol (plaintext and TLS) and datagram socket has a token of its own range.
const _: () = assert!(2 * ProtocolKind::COUNT <= LISTENER_TOKEN_END - LISTENER_TOKEN_BASE);
const _: () = assert!(UdpKind::ALL.len() <= CONN_TOKEN_BASE - UDP_TOKEN_BASE);

/// A TLS listener's name in errors: `BindError` names a protocol with a static string.
fn tls_name(kind: ProtocolKind) -> &'static str {
    match kind {
        ProtocolKind::Room => "ROOM (TLS)",
        ProtocolKind::Bin24 => "BIN24 (TLS)",
        ProtocolKind::Ccm => "CCM (TLS)",
        ProtocolKind::Matou => "MATOU (TLS)",
        ProtocolKind::Ocm => "OCM (TLS)",
        ProtocolKind::Web => "WEB (TLS)",
    }
}

/// A listener for every protocol `config` enables, registered on tokens 16.. in
/// `ProtocolKind::ALL` order, then one for every TLS port, in the same order.
pub(super) fn bind_listeners(
    poll: &Poll,
    config: &Config,
) -> Result<Vec<ListenerEntry>, BindError> {
    let mut entries = Vec::new();
    let plaintext = ProtocolKind::ALL
        .into_iter()
        .filter_map(|kind| kind.port(config).map(|port| (kind, port, false)));
    let tls = ProtocolKind::ALL
        .into_iter()
        .filter_map(|kind| kind.tls_port(config).map(|port| (kind, port, true)));
    for (kind, port, tls) in plaintext.chain(tls) {
        let (listener, addr) = listen_tcp(
            poll,
            if tls { tls_name(kind) } else { kind.name() },
            SocketAddr::new(config.bind_addr, port),
            config.listen_backlog,
            config.tcp_send_buffer_bytes,
            config.reuse_port,
            Token(LISTENER_TOKEN_BASE + entries.len()),
        )?;
        entries.push(ListenerEntry {
            listener,
            kind,
            addr,
            tls,
            ready: false,
        });
    }
    Ok(entries)
}

/// A UDP socket for every datagram protocol `config` enables, registered on tokens 48.. in
/// `UdpKind::ALL` order, each with its per-source rate limit and its queue of deferred sends.
pub(super) fn bind_udp_sockets(poll: &Poll, config: &Config) -> Result<Vec<UdpEntry>, BindError> {
    let datagram_limit = RateLimit {
        rate_per_s: config.udp_datagrams_per_source_per_s_max,
        burst: config.udp_datagrams_per_source_burst_max,
    };
    let mut entries = Vec::new();
    for kind in UdpKind::ALL {
        let Some(port) = kind.port(config) else {
            continue;
        };
        let addr = SocketAddr::new(config.bind_addr, port);
        let mut socket = bind_udp(
            kind.name(),
            addr,
            config.udp_socket_buffer_bytes,
            config.reuse_port,
        )?;
        let fail = |step, source| BindError {
            protocol: kind.name(),
            addr,
            step,
            source,
        };
        let addr = socket
            .local_addr()
            .map_err(|source| fail("getsockname", source))?;
        let token = Token(UDP_TOKEN_BASE + entries.len());
        poll.registry()
            .register(&mut socket, token, Interest::READABLE)
            .map_err(|source| fail("epoll_ctl", source))?;
        entries.push(UdpEntry {
            socket,
            kind,
            addr,
            ready: false,
            counters: UdpCounters::default(),
            sources: SourceBuckets::new(datagram_limit, config.udp_sources_max),
            deferred: DeferredSends::new(UDP_DEFERRED_SENDS_MAX),
        });
    }
    Ok(entries)
}

/// A listener could not be set up; names the protocol, the address and the failing step.
#[derive(Debug)]
pub struct BindError {
    pub protocol: &'static str,
    pub addr: SocketAddr,
    pub step: &'static str,
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot listen for {} on {} ({}): {}",
            self.protocol, self.addr, self.step, self.source
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A non-blocking TCP listener on `addr`. A `send_buffer_bytes` other than 0 sets SO_SNDBUF on
/// the listener, which every accepted connection inherits (one call, not one per accept): the
/// kernel then keeps at most about twice that queued for a slow reader instead of autotuning
/// its buffer up to `net.ipv4.tcp_wmem`'s maximum (4 MiB), and a write to a reader that stopped
/// reading returns WouldBlock after copying that much at most. `reuse_port` (`--reuse-port`)
/// sets SO_REUSEPORT, so that several nodes on one machine listen on the same port and the
/// kernel spreads new connections among them.
pub(crate) fn bind_tcp(
    protocol: &'static str,
    addr: SocketAddr,
    backlog: u32,
    send_buffer_bytes: usize,
    reuse_port: bool,
) -> Result<TcpListener, BindError> {
    let fail = |step: &'static str| {
        move |source| BindError {
            protocol,
            addr,
            step,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(fail("socket"))?;
    // A restarted server must not wait out the old sockets' TIME_WAIT to listen again.
    socket
        .set_reuse_address(true)
        .map_err(fail("SO_REUSEADDR"))?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(fail("SO_REUSEPORT"))?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail("IPV6_V6ONLY"))?;
    }
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    if send_buffer_bytes != 0 {
        socket
            .set_send_buffer_size(send_buffer_bytes)
            .map_err(fail("SO_SNDBUF"))?;
    }
    socket.bind(&addr.into()).map_err(fail("bind"))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail("listen"))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A listener from [`bind_tcp`], registered for READABLE on `token`, and the address it got
/// (its port, when 0 was asked for).
pub(super) fn listen_tcp(
    poll: &Poll,
    protocol: &'static str,
    addr: SocketAddr,
    backlog: u32,
    send_buffer_bytes: usize,
    reuse_port: bool,
    token: Token,
) -> Result<(TcpListener, SocketAddr), BindError> {
    let mut listener = bind_tcp(protocol, addr, backlog, send_buffer_bytes, reuse_port)?;
    let fail = |step, source| BindError {
        protocol,
        addr,
        step,
        source,
    };
    let addr = listener
        .local_addr()
        .map_err(|source| fail("getsockname", source))?;
    poll.registry()
        .register(&mut listener, token, Interest::READABLE)
        .map_err(|source| fail("epoll_ctl", source))?;
    Ok((listener, addr))
}

/// A non-blocking UDP socket on `addr`, with send and receive buffers of `buffer_bytes` asked
/// of the kernel: a relay's bursts queue there instead of being dropped. `reuse_port` as for
/// [`bind_tcp`] (the kernel picks a socket per source address and port).
pub(crate) fn bind_udp(
    protocol: &'static str,
    addr: SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
) -> Result<mio::net::UdpSocket, BindError> {
    let fail = |step: &'static str| {
        move |source| BindError {
            protocol,
            addr,
            step,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(fail("socket"))?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(fail("SO_REUSEPORT"))?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail("IPV6_V6ONLY"))?;
    }
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer is not an error.
    if let Err(err) = socket.set_recv_buffer_size(buffer_bytes) {
        log::debug!("{protocol}: SO_RCVBUF {buffer_bytes}: {err}");
    }
    if let Err(err) = socket.set_send_buffer_size(buffer_bytes) {
        log::debug!("{protocol}: SO_SNDBUF {buffer_bytes}: {err}");
    }
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(fail("bind"))?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_send_buffer(send_buffer_bytes: usize) -> usize {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listener = bind_tcp("TEST", addr, 16, send_buffer_bytes, false).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(err) => panic!("accept: {err}"),
            }
        };
        socket2::SockRef::from(&accepted)
            .send_buffer_size()
            .expect("SO_SNDBUF")
    }

    #[test]
    fn accepted_connections_inherit_the_listeners_send_buffer() {
        // Linux doubles the asked size for its own bookkeeping.
        assert_eq!(accepted_send_buffer(64 * 1024), 128 * 1024);
        assert_eq!(accepted_send_buffer(128 * 1024), 256 * 1024);
    }

    #[test]
    fn reuse_port_lets_two_sockets_share_a_port_and_its_absence_does_not() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let first = bind_tcp("TEST", any, 16, 0, true).expect("bind");
        let taken = first.local_addr().expect("local addr");
        assert!(bind_tcp("TEST", taken, 16, 0, true).is_ok());
        let refused = bind_tcp("TEST", taken, 16, 0, false).expect_err("the port is taken");
        assert_eq!(refused.step, "bind");

        let udp = bind_udp("TEST", any, 0, true).expect("bind");
        let taken = udp.local_addr().expect("local addr");
        assert!(bind_udp("TEST", taken, 0, true).is_ok());
        assert!(bind_udp("TEST", taken, 0, false).is_err());
    }
}
