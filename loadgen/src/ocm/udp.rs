//! The loadgen's side of its UDP sockets, below mio: receive buffer size, and batched reads
//! (`recvmmsg`) with the two facts that tell the loadgen's own share of a delivery's latency and loss apart from
//! the server's:
//!
//! - SO_TIMESTAMPNS: when the kernel queued the datagram on the socket. The time from there to
//!   the loop reading it is the loadgen's receive lag, which is inside every delivery latency.
//! - the socket's drop counter (`/proc/net/udp`, read once at the end): datagrams it dropped
//!   because its receive buffer was full, a loss the loadgen caused, not the server.

use std::collections::HashSet;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Room for the timestamp control message (a timespec and its header), with slack.
pub const CONTROL_BYTES: usize = 128;

fn set_int_option(fd: RawFd, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket the caller owns for the whole call; the option value is a
    // c_int that lives across the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket the caller owns; `value` and `len` are writable and live
    // across the call, `len` holds the size of `value`, and getsockopt writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_mut(&mut value).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Asks for `bytes` of receive buffer and returns what the kernel granted. Linux caps the
/// request at net.core.rmem_max (without privileges) and reads back twice the granted size
/// (its bookkeeping overhead), so the value read back is halved.
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let asked = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::SO_RCVBUF, asked)?;
    Ok(usize::try_from(get_int_option(fd, libc::SO_RCVBUF)?).unwrap_or(0) / 2)
}

/// Turns on the kernel's receive timestamps for `fd`.
pub fn enable_timestamps(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::SO_TIMESTAMPNS, 1)
}

/// The socket's inode number, which names it in `/proc/net/udp`.
pub fn inode(fd: RawFd) -> io::Result<u64> {
    let mut stat = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `fd` is open; `stat` is a writable stat buffer living across the call.
    let rc = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `stat`.
    Ok(unsafe { stat.assume_init() }.st_ino)
}

/// The receive-buffer drops of the UDP sockets with these inodes, summed, from the kernel's
/// tables (`/proc/net/udp` and `/proc/net/udp6`, last column). Read after the run, never on
/// the hot path. `None` if the tables cannot be read.
pub fn drops(inodes: &HashSet<u64>) -> Option<u64> {
    let mut total = 0;
    let mut read_any = false;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        total += drops_in_table(&text, inodes);
    }
    read_any.then_some(total)
}

/// Sums the drops column of the rows whose inode is in `inodes`.
fn drops_in_table(text: &str, inodes: &HashSet<u64>) -> u64 {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let drops: u64 = fields.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

/// An all-zero value of one of the plain C structs used here (sockaddr_storage, iovec,
/// mmsghdr): for each of them zero is a valid value (zero family, null pointers,
/// zero lengths), and the code sets the fields that matter before use.
fn zeroed_c_struct<T: CStruct>() -> T {
    // SAFETY: `CStruct` is implemented only for plain C structs made of integers and raw
    // pointers, for which the all-zero bit pattern is a valid value.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

/// Plain C structs whose all-zero bit pattern is valid.
trait CStruct {}
impl CStruct for libc::sockaddr_storage {}
impl CStruct for libc::iovec {}
impl CStruct for libc::mmsghdr {}

/// One datagram and what the kernel said about it.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub from: Option<SocketAddr>,
    /// When the kernel queued it, CLOCK_REALTIME in ns.
    pub queued_realtime_ns: Option<u64>,
}

/// Room for one datagram: twice the most the contract lets the server send (4094 bytes), so
/// an oversized one is still seen as oversized.
pub const SLOT_BYTES: usize = 8_192;

/// Reads up to `slots` datagrams with one `recvmmsg`.
///
/// Besides saving syscalls, a batch says when the socket is drained: with MSG_DONTWAIT the call
/// returns as soon as the next datagram would block, so fewer than `slots` means "empty now",
/// and the edge-triggered loop does not need a second call that ends in `WouldBlock` (a
/// datagram that arrives later raises a new edge).
pub struct RecvBatch {
    data: Vec<u8>,
    controls: Vec<[u8; CONTROL_BYTES]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

impl RecvBatch {
    pub fn new(slots: usize) -> RecvBatch {
        let slots = slots.max(1);
        RecvBatch {
            data: vec![0; slots * SLOT_BYTES],
            controls: vec![[0; CONTROL_BYTES]; slots],
            addrs: (0..slots).map(|_| zeroed_c_struct()).collect(),
            iovs: (0..slots).map(|_| zeroed_c_struct()).collect(),
            headers: (0..slots).map(|_| zeroed_c_struct()).collect(),
            received: 0,
        }
    }

    pub fn slots(&self) -> usize {
        self.headers.len()
    }

    /// Reads what the socket holds, up to the batch's slots; `WouldBlock` when it holds none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        let slots = self.slots();
        for i in 0..slots {
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * SLOT_BYTES..]
                    .as_mut_ptr()
                    .cast::<libc::c_void>(),
                iov_len: SLOT_BYTES,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = std::ptr::from_mut(&mut self.addrs[i]).cast::<libc::c_void>();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovs[i];
            header.msg_iovlen = 1;
            header.msg_control = self.controls[i].as_mut_ptr().cast::<libc::c_void>();
            header.msg_controllen = CONTROL_BYTES as _;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: `headers` holds `slots` mmsghdr whose pointers were just set into this
        // batch's own buffers (address, iovec and through it a SLOT_BYTES slice of `data`,
        // control), each with its true size; none of those vectors is resized while the call
        // runs, and recvmmsg writes only within them. A null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    /// The `i`-th datagram of the last `recv` (i < what it returned).
    pub fn datagram(&self, i: usize) -> &[u8] {
        assert!(i < self.received, "datagram {i} of {}", self.received);
        let len = (self.headers[i].msg_len as usize).min(SLOT_BYTES);
        &self.data[i * SLOT_BYTES..i * SLOT_BYTES + len]
    }

    /// What the kernel said about the `i`-th datagram of the last `recv`.
    pub fn facts(&self, i: usize) -> Received {
        assert!(i < self.received, "datagram {i} of {}", self.received);
        let header = &self.headers[i].msg_hdr;
        let mut received = Received {
            // SAFETY: recvmmsg filled this slot's address up to msg_namelen bytes; the storage
            // is a whole sockaddr_storage, zeroed where it was not written.
            from: unsafe { socket_addr(&self.addrs[i], header.msg_namelen) },
            queued_realtime_ns: None,
        };
        // SAFETY: `header` is the msghdr recvmmsg just filled: msg_control points to this
        // slot's control buffer and msg_controllen says how much of it the kernel wrote, so
        // the CMSG_* walk stays within it; each data read is of the size its cmsg_len
        // guarantees, read unaligned.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(header);
            while !cmsg.is_null() {
                let c = &*cmsg;
                let data = libc::CMSG_DATA(cmsg);
                let data_len = c.cmsg_len as usize - (data as usize - cmsg as usize);
                if c.cmsg_level == libc::SOL_SOCKET
                    && c.cmsg_type == libc::SCM_TIMESTAMPNS
                    && data_len >= size_of::<libc::timespec>()
                {
                    let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
                    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
                    received.queued_realtime_ns = Some(secs * 1_000_000_000 + nanos);
                }
                cmsg = libc::CMSG_NXTHDR(header, cmsg);
            }
        }
        received
    }
}

/// CLOCK_REALTIME now, in ns (the clock of the kernel's receive timestamps).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the whole call; CLOCK_REALTIME exists on
    // every Linux kernel; clock_gettime writes only `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The address in a sockaddr_storage recvmsg filled, if it is IPv4 or IPv6.
///
/// # Safety
/// `addr` points to a sockaddr_storage whose first `len` bytes the kernel wrote.
unsafe fn socket_addr(
    addr: *const libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from((*addr).ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            let a = &*addr.cast::<libc::sockaddr_in>();
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            let a = &*addr.cast::<libc::sockaddr_in6>();
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_gives_the_datagrams_their_source_and_kernel_timestamps() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let fd = rx.as_raw_fd();
        let granted = set_recv_buffer(fd, 1 << 20).unwrap();
        assert!(granted > 0);
        enable_timestamps(fd).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new(4);
        assert_eq!(
            batch.recv(fd).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let before = realtime_ns();
        for i in 0..6u8 {
            let len = 1 + usize::from(i) * 1000;
            tx.send_to(&vec![i; len], rx.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 6 {
            match batch.recv(fd) {
                Ok(n) => {
                    assert!(n <= 4);
                    for i in 0..n {
                        got.push((batch.datagram(i).to_vec(), batch.facts(i)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for (i, (data, facts)) in got.iter().enumerate() {
            assert_eq!(data.len(), 1 + i * 1000);
            assert!(data.iter().all(|&b| usize::from(b) == i));
            assert_eq!(facts.from, Some(tx.local_addr().unwrap()));
            let queued = facts.queued_realtime_ns.expect("SO_TIMESTAMPNS");
            // Between the two readings (allowing 1 ms for clock granularity).
            assert!(queued + 1_000_000 >= before && queued <= realtime_ns() + 1_000_000);
        }
        assert_eq!(
            batch.recv(fd).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let inodes = HashSet::from([inode(fd).unwrap()]);
        assert_eq!(drops(&inodes), Some(0));
    }

    #[test]
    fn an_oversized_datagram_is_seen_as_oversized() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[1u8; 20_000], rx.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::new(1);
        let n = loop {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(n, 1);
        assert_eq!(batch.datagram(0).len(), SLOT_BYTES, "cut at the slot");
        assert!(batch.datagram(0).len() > 4_094);
    }

    #[test]
    fn a_full_buffer_counts_drops() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = rx.as_raw_fd();
        set_recv_buffer(fd, 1).unwrap(); // the kernel's minimum
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        let inodes = HashSet::from([inode(fd).unwrap()]);
        assert!(drops(&inodes).unwrap() > 0);
        assert_eq!(
            drops(&HashSet::new()),
            Some(0),
            "only the sockets asked about"
        );
    }

    #[test]
    fn the_drops_column_is_read_by_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17\n\
            2: 0100007F:A1B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5\n";
        assert_eq!(drops_in_table(table, &HashSet::from([4242])), 17);
        assert_eq!(drops_in_table(table, &HashSet::from([4242, 4343, 1])), 22);
        assert_eq!(drops_in_table(table, &HashSet::new()), 0);
    }
}
