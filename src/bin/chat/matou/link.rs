//! Private links: setting them up (listen and accept as Src, connect as Dst) and the threads
//! that carry them.
//!
//! A link is two TCP connections, one for messages and one for files, so that a file never
//! holds up a message. Each connection has a reading thread, and the file connection a sending
//! thread too, fed by a queue: a file being sent or received never blocks typing, the server
//! connection, messages, or another link. Messages are small and are written by the session
//! thread itself, with a write timeout so that a peer who stops reading cannot hang the client.
//! Every thread reports to the session thread as [`Input::Peer`] events tagged with the link's
//! id; closing a link shuts both sockets down, which ends its threads.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use indicatif::ProgressBar;
use mio::{Events, Interest, Poll, Token, Waker};
use switchboard::protocol::matou::codec::{self, decode_from_peer, Limits, Packet};

use super::files::Downloads;
use super::screen::Screen;
use super::session::{LinkId, PeerEvent, MESSAGE_BYTES_MAX};
use super::Input;

/// As Src, how long the peer has to connect to both ports once they are sent.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// As Dst, how long each connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that has not taken a message within this time is not reading: the link closes.
pub(super) const MESSAGE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per read and write of a file. The contract's 4096-byte chunks are a multiple of this
/// on the wire (the stream carries no chunk boundary), and fewer, larger system calls move a
/// file faster.
const FILE_BUFFER_BYTES: usize = 16 * codec::FILE_CHUNK_BYTES;
const MESSAGE_READ_BYTES: usize = 4096;

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);

/// What a private link's threads need to know.
#[derive(Clone)]
pub(super) struct LinkContext {
    pub(super) tx: Sender<Input>,
    pub(super) screen: Arc<Screen>,
    /// Where received files go, and what each peer has sent.
    pub(super) downloads: Arc<Downloads>,
    pub(super) max_file_bytes: u64,
}

/// A link being set up; dropping it does not stop the setup, [`Pending::cancel`] does.
pub(super) struct Pending {
    /// The peer's name, for file names and bars once the link is up.
    pub(super) peer: String,
    cancelled: Arc<AtomicBool>,
    waker: Option<Waker>,
}

impl Pending {
    pub(super) fn cancel(self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(waker) = &self.waker {
            let _ = waker.wake();
        }
    }
}

/// An open link, as the session thread holds it.
pub(super) struct Link {
    message: Arc<TcpStream>,
    file: Arc<TcpStream>,
    files: Sender<Outgoing>,
}

struct Outgoing {
    file: File,
    size: u64,
    path: PathBuf,
}

/// As Src: two listeners on `local_ip`, then a thread that accepts the peer's message
/// connection, then its file connection, refusing connections from any other address. Returns
/// the ports and the handle that cancels the wait.
pub(super) fn listen(
    id: LinkId,
    peer: &str,
    local_ip: IpAddr,
    peer_ip: IpAddr,
    tx: &Sender<Input>,
) -> io::Result<((u16, u16), Pending)> {
    let message = TcpListener::bind((local_ip, 0))?;
    let file = TcpListener::bind((local_ip, 0))?;
    let ports = (message.local_addr()?.port(), file.local_addr()?.port());
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKE)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let (flag, tx) = (Arc::clone(&cancelled), tx.clone());
    thread::Builder::new()
        .name("link-accept".into())
        .spawn(move || {
            let deadline = Instant::now() + ACCEPT_TIMEOUT;
            let mut accept = Acceptor {
                id,
                poll,
                peer_ip,
                deadline,
                cancelled: flag,
                tx: &tx,
            };
            let result = accept
                .one(message, "message")
                .and_then(|message| accept.one(file, "file").map(|file| (message, file)));
            let _ = tx.send(match result {
                Ok((message, file)) => Input::LinkUp { id, message, file },
                Err(problem) => Input::LinkFailed { id, problem },
            });
        })?;
    Ok((
        ports,
        Pending {
            peer: peer.to_owned(),
            cancelled,
            waker: Some(waker),
        },
    ))
}

struct Acceptor<'a> {
    id: LinkId,
    poll: Poll,
    peer_ip: IpAddr,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    tx: &'a Sender<Input>,
}

impl Acceptor<'_> {
    /// The peer's connection on `listener`; the listener closes when this returns.
    fn one(&mut self, listener: TcpListener, which: &str) -> Result<TcpStream, String> {
        let cannot = |e: io::Error| format!("cannot accept on the {which} port: {e}");
        listener.set_nonblocking(true).map_err(cannot)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(cannot)?;
        let mut events = Events::with_capacity(4);
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    if same_ip(from.ip(), self.peer_ip) {
                        let stream = TcpStream::from(stream);
                        stream.set_nonblocking(false).map_err(cannot)?;
                        return Ok(stream);
                    }
                    drop(stream);
                    let event = PeerEvent::Stranger(from);
                    let _ = self.tx.send(Input::Peer { id: self.id, event });
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(cannot(e)),
            }
            if self.cancelled.load(Ordering::SeqCst) {
                return Err("cancelled".into());
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the peer did not connect to the {which} port within {}s",
                    ACCEPT_TIMEOUT.as_secs()
                ));
            }
            match self.poll.poll(&mut events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(cannot(e)),
            }
        }
    }
}

/// IPv4 and IPv4-mapped IPv6 are the same peer.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// As Dst: a thread that connects to the message port, then the file port.
pub(super) fn connect(
    id: LinkId,
    peer: &str,
    message: SocketAddr,
    file: SocketAddr,
    tx: &Sender<Input>,
) -> io::Result<Pending> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let (flag, tx) = (Arc::clone(&cancelled), tx.clone());
    thread::Builder::new()
        .name("link-connect".into())
        .spawn(move || {
            let connect = |addr: SocketAddr, which: &str| {
                TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                    .map_err(|e| format!("cannot connect to the {which} port {addr}: {e}"))
            };
            let result = connect(message, "message").and_then(|message| {
                if flag.load(Ordering::SeqCst) {
                    return Err("cancelled".into());
                }
                connect(file, "file").map(|file| (message, file))
            });
            let _ = tx.send(match result {
                Ok((message, file)) => Input::LinkUp { id, message, file },
                Err(problem) => Input::LinkFailed { id, problem },
            });
        })?;
    Ok(Pending {
        peer: peer.to_owned(),
        cancelled,
        waker: None,
    })
}

impl Link {
    /// Starts the link's threads: a reader for each connection and the file sender.
    pub(super) fn start(
        id: LinkId,
        peer: &str,
        message: TcpStream,
        file: TcpStream,
        context: &LinkContext,
    ) -> io::Result<Link> {
        // Messages are small and each should leave at once.
        let _ = message.set_nodelay(true);
        message.set_write_timeout(Some(MESSAGE_WRITE_TIMEOUT))?;
        let (message, file) = (Arc::new(message), Arc::new(file));
        let (files, queue) = mpsc::channel();

        let spawn = |name: &str, work: Box<dyn FnOnce() + Send>| {
            thread::Builder::new().name(name.into()).spawn(work)
        };
        let link = Link {
            message: Arc::clone(&message),
            file: Arc::clone(&file),
            files,
        };
        let (stream, tx, who) = (Arc::clone(&message), context.tx.clone(), peer.to_owned());
        let started = spawn(
            "link-messages",
            Box::new(move || read_messages(id, &who, &stream, &tx)),
        )
        .and_then(|_| {
            let (stream, context, who) = (Arc::clone(&file), context.clone(), peer.to_owned());
            spawn(
                "link-files-in",
                Box::new(move || receive_files(id, &who, &stream, &context)),
            )
        })
        .and_then(|_| {
            let (stream, context, who) = (Arc::clone(&file), context.clone(), peer.to_owned());
            spawn(
                "link-files-out",
                Box::new(move || send_files(id, &who, &stream, &queue, &context)),
            )
        });
        if let Err(e) = started {
            link.close();
            return Err(e);
        }
        Ok(link)
    }

    /// Writes one whole packet on the message connection.
    pub(super) fn send_message(&self, packet: &[u8]) -> io::Result<()> {
        (&*self.message).write_all(packet)
    }

    /// Opens `path` and queues it for the file sender thread.
    pub(super) fn queue_file(&self, path: &Path) -> Result<(), String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let metadata = file.metadata().map_err(|e| e.to_string())?;
        if !metadata.is_file() {
            return Err("not a regular file".into());
        }
        let outgoing = Outgoing {
            file,
            size: metadata.len(),
            path: path.to_path_buf(),
        };
        self.files
            .send(outgoing)
            .map_err(|_| "the file connection is closed".to_string())
    }

    /// Shutdown rather than drop: the threads hold the sockets too, and shutdown both sends
    /// the FIN now and wakes a blocked read or write.
    pub(super) fn close(self) {
        let _ = self.message.shutdown(Shutdown::Both);
        let _ = self.file.shutdown(Shutdown::Both);
    }
}

/// Reads from a connection into `pending`: `Ok(false)` at the end of the stream. A reset is an
/// end too: the peer went away all the same.
fn fill(stream: &TcpStream, pending: &mut BytesMut, max: usize) -> io::Result<bool> {
    let start = pending.len();
    pending.resize(start + max, 0);
    loop {
        match (&*stream).read(&mut pending[start..]) {
            Ok(n) => {
                pending.truncate(start + n);
                return Ok(n > 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                pending.truncate(start);
                return Ok(false);
            }
            Err(e) => {
                pending.truncate(start);
                return Err(e);
            }
        }
    }
}

/// The message connection's reader: every event it sends ends with the link's end.
fn read_messages(id: LinkId, peer: &str, stream: &TcpStream, tx: &Sender<Input>) {
    let limits = Limits {
        string_bytes_max: MESSAGE_BYTES_MAX,
        file_bytes_max: 0,
    };
    let mut pending = BytesMut::with_capacity(MESSAGE_READ_BYTES);
    let end = loop {
        match decode_from_peer(&mut pending, &limits) {
            Ok(Some(Packet::PrivateMessage { message })) => {
                let event = PeerEvent::Message(message);
                if tx.send(Input::Peer { id, event }).is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Packet::PrivateSignOut)) => break PeerEvent::SignOut,
            Ok(Some(other)) => {
                break PeerEvent::Failed(format!(
                    "{peer} sent a packet of type {} on the message connection",
                    other.packet_type()
                ))
            }
            Ok(None) => {}
            Err(e) => break PeerEvent::Failed(format!("malformed packet from {peer}: {e}")),
        }
        match fill(stream, &mut pending, MESSAGE_READ_BYTES) {
            Ok(true) => {}
            Ok(false) => break PeerEvent::Closed,
            Err(e) => break PeerEvent::Failed(format!("private link with {peer} lost: {e}")),
        }
    };
    let _ = tx.send(Input::Peer { id, event: end });
}

/// The file connection's reader: files one after the other, each into the download folder.
fn receive_files(id: LinkId, peer: &str, stream: &TcpStream, context: &LinkContext) {
    // Sizes are checked here, against --max-file-bytes, for a message that says so.
    let limits = Limits {
        string_bytes_max: MESSAGE_BYTES_MAX,
        file_bytes_max: i64::MAX as u64,
    };
    let send = |event| context.tx.send(Input::Peer { id, event }).is_ok();
    let mut pending = BytesMut::with_capacity(FILE_BUFFER_BYTES);
    loop {
        let size = match decode_from_peer(&mut pending, &limits) {
            Ok(Some(Packet::PrivateFile { size })) => u64::try_from(size).unwrap_or(0),
            Ok(Some(Packet::PrivateSignOut)) => {
                send(PeerEvent::SignOut);
                return;
            }
            Ok(Some(other)) => {
                send(PeerEvent::Failed(format!(
                    "{peer} sent a packet of type {} on the file connection",
                    other.packet_type()
                )));
                return;
            }
            Ok(None) => {
                match fill(stream, &mut pending, FILE_BUFFER_BYTES) {
                    Ok(true) => {}
                    // Between files: the message connection says how the link ended.
                    Ok(false) => return,
                    Err(e) => {
                        send(PeerEvent::Failed(format!(
                            "private link with {peer} lost: {e}"
                        )));
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                send(PeerEvent::Failed(format!(
                    "malformed packet from {peer}: {e}"
                )));
                return;
            }
        };
        if size > context.max_file_bytes {
            send(PeerEvent::FileFailed {
                reason: format!(
                    "{peer} announced a file of {size} bytes, more than --max-file-bytes ({})",
                    context.max_file_bytes
                ),
                fatal: true,
            });
            return;
        }
        // Over a cap, the file is refused before anything is written; its bytes follow on the
        // connection and the protocol has no way to refuse them, so the link closes.
        if let Err(reason) = context.downloads.admit(peer, size) {
            send(PeerEvent::FileFailed {
                reason,
                fatal: true,
            });
            return;
        }
        if !send(PeerEvent::FileIncoming(size)) {
            return;
        }
        match receive_one(peer, size, stream, &mut pending, context) {
            Ok(path) => {
                if !send(PeerEvent::FileReceived { size, path }) {
                    return;
                }
            }
            Err((reason, fatal)) => {
                send(PeerEvent::FileFailed { reason, fatal });
                return;
            }
        }
    }
}

/// One file's bytes, `size` of them, from `pending` then the stream. On failure, the reason
/// and whether the connection is still usable (it is not: the rest of the file is unread).
fn receive_one(
    peer: &str,
    size: u64,
    stream: &TcpStream,
    pending: &mut BytesMut,
    context: &LinkContext,
) -> Result<PathBuf, (String, bool)> {
    let downloads = &context.downloads;
    let mut download = downloads.create(peer).map_err(|e| {
        let reason = match downloads.dir() {
            Ok(dir) => format!("cannot save a file from {peer} in {}: {e}", dir.display()),
            Err(_) => format!("cannot save a file from {peer}: {e}"),
        };
        (reason, true)
    })?;
    let bar = context.screen.bar(size, &format!("from {peer}"));
    let mut left = size;
    let outcome = loop {
        if left == 0 {
            break Ok(());
        }
        if pending.is_empty() {
            match fill(stream, pending, FILE_BUFFER_BYTES) {
                Ok(true) => {}
                Ok(false) => {
                    break Err((
                        format!(
                            "file from {peer} incomplete: the connection closed after {} of \
                             {size} bytes; partial file removed",
                            size - left
                        ),
                        false,
                    ))
                }
                Err(e) => {
                    break Err((
                        format!(
                            "file from {peer} incomplete: {e} after {} of {size} bytes; \
                             partial file removed",
                            size - left
                        ),
                        true,
                    ))
                }
            }
        }
        let take = pending
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if let Err(e) = download.write(&pending[..take]) {
            break Err((
                format!("cannot write the file from {peer}: {e}; partial file removed"),
                true,
            ));
        }
        pending.advance(take);
        left -= take as u64;
        if let Some(bar) = &bar {
            bar.inc(take as u64);
        }
    };
    if let Some(bar) = bar {
        context.screen.remove_bar(&bar);
    }
    match outcome {
        Ok(()) => download.finish(downloads).map_err(|e| {
            (
                format!("cannot save the file from {peer}: {e}; partial file removed"),
                false,
            )
        }),
        Err(failure) => {
            download.abandon();
            Err(failure)
        }
    }
}

/// The file connection's sender: the queued files one after the other.
fn send_files(
    id: LinkId,
    peer: &str,
    stream: &TcpStream,
    queue: &Receiver<Outgoing>,
    context: &LinkContext,
) {
    let mut out = BufWriter::with_capacity(FILE_BUFFER_BYTES, stream);
    let mut buf = vec![0u8; FILE_BUFFER_BYTES];
    for Outgoing { file, size, path } in queue {
        let started = PeerEvent::SendStarted {
            size,
            path: path.clone(),
        };
        if context.tx.send(Input::Peer { id, event: started }).is_err() {
            return;
        }
        let bar = context.screen.bar(size, &format!("to {peer}"));
        let result = send_one(file, size, &mut out, &mut buf, bar.as_ref());
        if let Some(bar) = bar {
            context.screen.remove_bar(&bar);
        }
        let failed = result.is_err();
        let ended = PeerEvent::SendEnded { size, path, result };
        if context.tx.send(Input::Peer { id, event: ended }).is_err() || failed {
            return;
        }
    }
}

/// PRIVATE_FILE: the size, then exactly `size` bytes of the file.
fn send_one(
    mut file: File,
    size: u64,
    out: &mut BufWriter<&TcpStream>,
    buf: &mut [u8],
    bar: Option<&ProgressBar>,
) -> Result<(), String> {
    let wire_size = i64::try_from(size).map_err(|_| "the file is too large".to_string())?;
    let lost = |e: io::Error| format!("the file connection failed: {e}");
    out.write_all(&codec::private_file(wire_size))
        .map_err(lost)?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(format!(
                    "the file shrank while it was sent ({} of {size} bytes read)",
                    size - left
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read the file: {e}")),
        };
        out.write_all(&buf[..n]).map_err(lost)?;
        left -= n as u64;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
    out.flush().map_err(lost)
}
