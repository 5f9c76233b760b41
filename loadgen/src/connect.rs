//! Opening a client connection, shared by every TCP scenario: a non-blocking connect that
//! spreads the source addresses of many loopback clients over 127.0.0.0/8.
//!
//! Why: a connection from 127.0.0.1 to one server port needs its own ephemeral port, and there
//! are only as many as `net.ipv4.ip_local_port_range` holds (28,232 by default), fewer when
//! earlier runs left sockets in TIME_WAIT (the loadgen closes first, so its side waits 60 s).
//! Every address in 127.0.0.0/8 is local on Linux, and each has its own port space: a client
//! bound to its own 127.x.y.z never competes for a port.
//!
//! The rule (automatic, no flag): for an IPv4 loopback target, client `i` connects from
//! 127.0.0.1 like any other program while `i < SPREAD_FROM_CLIENT`, and from its own address
//! [`spread_source`]`(i)` from then on; a plain connect that fails with EADDRNOTAVAIL (no
//! ephemeral port left) is retried once from the spread address too. So small runs look like
//! ordinary clients, and large ones never run out of ports. An IPv6 target (`::1`) is never
//! spread: IPv6 has a single loopback address, so a `::1` run is bounded by the port range.
//!
//! IP_BIND_ADDRESS_NO_PORT is not set: socket2 0.6 has no setter for it, and it would only
//! matter if several clients shared a source address (it defers the port choice from bind to
//! connect so the port need be unique per destination, not per address). Every spread client
//! has an address of its own (the mapping repeats only after 16,777,213 clients), so the port
//! bind(2) picks from that address's whole range is always free.
//!
//! Several servers (`--host A,B,...`, e.g. chatd nodes of one cluster bound to 127.0.0.1 and
//! 127.0.0.2): client `i` connects to host `i mod n`, at the port its scenario names, with the
//! same source address as above. Scenarios keep one target (the first host's address); the
//! list is recorded once when `--host` is resolved ([`spread_over`]) and applied here, in the
//! one function every TCP connection goes through ([`connect_tcp`]); [`target_of`] gives the
//! same host for a client's other sockets.
//!
//! Scenarios that care which address a client uses read it back from the socket: OCM binds each
//! member's UDP socket on its TCP connection's local IP (the server ties tokens to the IP), and
//! MATOU compares the address the server reports with the connection's local IP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// Whether a non-blocking connect has completed: a failed one reports its error through
/// SO_ERROR; until the handshake is done, `peer_addr` says ENOTCONN (then `Ok(false)`: the next
/// edge will tell).
pub fn is_connected(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Clients below this index connect from 127.0.0.1 (the kernel picks the source address). Few
/// enough that several loadgen processes side by side stay under chatd's per-IP limit
/// (`--connections-per-ip-max`, 256 by default); 32 ephemeral ports are always there to take
/// unless something else exhausted them, and then the EADDRNOTAVAIL retry spreads those
/// clients too.
pub const SPREAD_FROM_CLIENT: usize = 32;

/// Spread addresses: 127.0.0.2 to 127.255.255.254, skipping 127.0.0.0 (the network),
/// 127.0.0.1 (what unspread clients use) and 127.255.255.255 (the broadcast address).
const SPREAD_FIRST: u32 = u32::from_be_bytes([127, 0, 0, 2]);
const SPREAD_COUNT: u32 = u32::from_be_bytes([127, 255, 255, 254]) - SPREAD_FIRST + 1;

/// Starts client `client`'s connection to `target` ([`connect_tcp`]) without Nagle, registered
/// under `token` for both edges. The error says which step failed.
///
/// No Nagle: a sender writes one small message per interval, and Nagle would hold it back until
/// the previous one is acknowledged, which the server's delayed ACK can stretch to 40 ms: the
/// loadgen's own socket would add latency it then blames on the server.
pub fn open(
    registry: &Registry,
    target: SocketAddr,
    client: usize,
    token: Token,
) -> Result<TcpStream, String> {
    let mut stream = connect_tcp(target, client).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    registry
        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("register: {e}"))?;
    Ok(stream)
}

/// The servers' addresses of `--host A,B,...`, when it lists more than one.
static HOSTS: OnceLock<Vec<IpAddr>> = OnceLock::new();

/// Records `--host`'s list (its resolved `targets`, in order) for [`target_of`]. One host
/// records nothing. A run has one `--host`: a second, different list is refused.
pub fn spread_over(targets: &[SocketAddr]) -> Result<(), String> {
    if targets.len() < 2 {
        return Ok(());
    }
    let ips: Vec<IpAddr> = targets.iter().map(SocketAddr::ip).collect();
    if *HOSTS.get_or_init(|| ips.clone()) != ips {
        return Err("two different --host lists in one run".into());
    }
    Ok(())
}

/// Where client `client` connects when its scenario says `target`: with several hosts, host
/// `client mod n` at `target`'s port (`target` is the first host's address); else `target`.
pub fn target_of(target: SocketAddr, client: usize) -> SocketAddr {
    match HOSTS.get() {
        Some(hosts) => host_of(hosts, target, client),
        None => target,
    }
}

/// `--host`'s list when it names several hosts, else empty: for a scenario that numbers its
/// clients for [`host_of`] otherwise than [`target_of`] does (churn: within each protocol).
pub fn hosts() -> &'static [IpAddr] {
    HOSTS.get().map_or(&[], Vec::as_slice)
}

/// [`target_of`] over `hosts`: only a target on the list's first host is spread, so an
/// address a scenario got elsewhere is left alone.
pub fn host_of(hosts: &[IpAddr], target: SocketAddr, client: usize) -> SocketAddr {
    if hosts.len() < 2 || hosts.first() != Some(&target.ip()) {
        return target;
    }
    SocketAddr::new(hosts[client % hosts.len()], target.port())
}

/// Starts a non-blocking connect of client `client` to `target` (its host: [`target_of`]); the
/// connection is complete when the stream reports writable and SO_ERROR is clear, as with
/// mio's own `connect`.
pub fn connect_tcp(target: SocketAddr, client: usize) -> io::Result<TcpStream> {
    connect_tcp_to_host(target_of(target, client), client)
}

/// [`connect_tcp`] to `target` as given, its host already chosen: client `client`'s number
/// only picks its source address.
pub fn connect_tcp_to_host(target: SocketAddr, client: usize) -> io::Result<TcpStream> {
    let Some(source) = spread_source(target, client) else {
        return TcpStream::connect(target);
    };
    if client >= SPREAD_FROM_CLIENT {
        return connect_from(source, target);
    }
    match TcpStream::connect(target) {
        Err(e) if out_of_ports(&e) => connect_from(source, target),
        other => other,
    }
}

/// The address client `client` connects from when spread, or `None` when the target is not an
/// IPv4 loopback address (IPv6 has only `::1`; anything else is not ours to spread over).
pub fn spread_source(target: SocketAddr, client: usize) -> Option<Ipv4Addr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            // The remainder is below SPREAD_COUNT, itself below 2^24, so it fits a u32.
            let offset = (client % SPREAD_COUNT as usize) as u32;
            Some(Ipv4Addr::from(SPREAD_FIRST + offset))
        }
        _ => None,
    }
}

/// Whether a connect failed because no ephemeral port was left for this source address.
fn out_of_ports(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Binds to `source` with port 0 (the kernel picks a free port of that address), then starts a
/// non-blocking connect.
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&SocketAddr::new(IpAddr::V4(source), 0).into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {source}:0: {e}")))?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, TcpListener};

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn spread_addresses_are_distinct_loopback_addresses_other_than_the_usual_ones() {
        let mut seen = std::collections::HashSet::new();
        for client in 0..20_000 {
            let ip = spread_source(v4(1), client).unwrap();
            assert!(ip.is_loopback(), "{ip}");
            assert_ne!(ip, Ipv4Addr::LOCALHOST);
            assert_ne!(ip, Ipv4Addr::new(127, 0, 0, 0));
            assert!(seen.insert(ip), "{ip} given twice");
        }
        assert_eq!(spread_source(v4(1), 0), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(spread_source(v4(1), 254), Some(Ipv4Addr::new(127, 0, 1, 0)));
    }

    #[test]
    fn the_mapping_stays_in_range_and_wraps_only_after_every_address() {
        let last = SPREAD_COUNT as usize - 1;
        assert_eq!(
            spread_source(v4(1), last),
            Some(Ipv4Addr::new(127, 255, 255, 254))
        );
        assert_eq!(spread_source(v4(1), last + 1), spread_source(v4(1), 0));
        assert_eq!(
            spread_source(v4(1), usize::MAX).map(|ip| ip.octets()[0]),
            Some(127)
        );
    }

    #[test]
    fn ipv6_and_non_loopback_targets_are_not_spread() {
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        assert_eq!(spread_source(v6, 5_000), None);
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1);
        assert_eq!(spread_source(other, 5_000), None);
    }

    #[test]
    fn client_i_goes_to_host_i_mod_n_at_its_scenarios_port() {
        let hosts: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "::1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let target = v4(5454);
        let to = |client| host_of(&hosts, target, client).to_string();
        assert_eq!(to(0), "127.0.0.1:5454");
        assert_eq!(to(1), "127.0.0.2:5454");
        assert_eq!(to(2), "[::1]:5454");
        assert_eq!(to(3), "127.0.0.1:5454");
        assert_eq!(to(1_000_000), "127.0.0.2:5454");
        // The source address scheme is that of the client's host.
        let client = SPREAD_FROM_CLIENT + 1;
        assert_eq!(
            spread_source(host_of(&hosts, target, client), client),
            spread_source(target, client)
        );
        // Not a target on the first host, or a single host: unchanged.
        let elsewhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 1);
        assert_eq!(host_of(&hosts, elsewhere, 1), elsewhere);
        assert_eq!(host_of(&hosts[..1], target, 1), target);
    }

    #[test]
    fn only_a_lack_of_ports_triggers_the_retry() {
        assert!(out_of_ports(&io::Error::from_raw_os_error(
            libc::EADDRNOTAVAIL
        )));
        assert!(!out_of_ports(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }

    /// Connects client `client` to a real listener and returns the address the server sees.
    fn peer_ip_of(listener: &TcpListener, client: usize) -> IpAddr {
        let target = listener.local_addr().unwrap();
        let stream = connect_tcp(target, client).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        // The listener saw the handshake through; the client side agrees on the address.
        assert_eq!(stream.peer_addr().unwrap(), target);
        assert_eq!(stream.local_addr().unwrap(), peer);
        drop(accepted);
        peer.ip()
    }

    #[test]
    fn clients_from_the_threshold_on_connect_from_their_own_address() {
        let listener = TcpListener::bind(v4(0)).unwrap();
        let first_spread = SPREAD_FROM_CLIENT;
        assert_eq!(
            peer_ip_of(&listener, first_spread),
            IpAddr::V4(spread_source(v4(1), first_spread).unwrap())
        );
        assert_eq!(
            peer_ip_of(&listener, first_spread + 7),
            IpAddr::V4(spread_source(v4(1), first_spread + 7).unwrap())
        );
    }

    #[test]
    fn clients_below_the_threshold_connect_from_the_usual_address() {
        let listener = TcpListener::bind(v4(0)).unwrap();
        assert_eq!(peer_ip_of(&listener, 0), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn a_refused_spread_connection_is_reported_through_so_error() {
        // A port nobody listens on: bind one, note it, close it.
        let port = TcpListener::bind(v4(0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut stream = connect_tcp(v4(port), SPREAD_FROM_CLIENT).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut stream, mio::Token(0), mio::Interest::WRITABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
            .unwrap();
        assert!(!events.is_empty(), "no event for the failed connect");
        let error = stream.take_error().unwrap().expect("SO_ERROR set");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
