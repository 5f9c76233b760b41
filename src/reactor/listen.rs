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

/// A non-blocking TCP listener on `addr`. A `send_buffer_bytes` other than 0 sets SO_SNDBUF on
/// the listener, which every accepted connection inherits (one call, not one per accept): the
/// kernel then keeps at most about twice that queued for a slow reader instead of autotuning
/// its buffer up to `net.ipv4.tcp_wmem`'s maximum (4 MiB), and a write to a reader that stopped
/// reading returns WouldBlock after copying that much at most.
pub(crate) fn bind_tcp(
    protocol: &'static str,
    addr: SocketAddr,
    backlog: u32,
    send_buffer_bytes: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_send_buffer(send_buffer_bytes: usize) -> usize {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listener = bind_tcp("TEST", addr, 16, send_buffer_bytes).expect("bind");
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
}
