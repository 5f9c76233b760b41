//! Listening sockets, set up with socket2 so every option is explicit.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

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

pub(crate) fn bind_tcp(
    protocol: &'static str,
    addr: SocketAddr,
    backlog: u32,
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
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail("IPV6_V6ONLY"))?;
    }
    socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(fail("bind"))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail("listen"))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A non-blocking UDP socket on `addr`, with send and receive buffers of `buffer_bytes` asked
/// of the kernel: a relay's bursts queue there instead of being dropped.
pub(crate) fn bind_udp(
    protocol: &'static str,
    addr: SocketAddr,
    buffer_bytes: usize,
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
