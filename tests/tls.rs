//! TLS on the TCP front doors (issue 23), end to end: the real `chatd` binary with TLS ports
//! beside the plaintext ones, certificates made at run time with rcgen (written to a temp
//! directory, never committed), rustls clients. Every protocol's TLS port serves the same
//! protocol as its plaintext one, in the same rooms; bad TLS input closes only its own
//! connection, counted by reason and logged; SIGHUP swaps the certificate for new connections.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
#[path = "common/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use chatd::Chatd;
use common::{Client, WAIT};
use pki::{path_arg, Pki};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` whose handshake has finished (or the error that ended it).
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<TlsStream, std::io::Error> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let session = ClientConnection::new(Arc::clone(config), name).expect("client session");
    let mut stream = StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// chatd serving the `plaintext` port flags on free ports, with `pki`'s certificate and key and
/// the `tls` arguments (TLS ports and the like).
fn start_with_tls(pki: &Pki, plaintext: &[&'static str], tls: &[&str]) -> Chatd {
    let mut args = pki.args();
    args.extend(tls.iter().map(|&arg| arg.to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Chatd::start(plaintext, &args)
}

/// chatd with ROOM in plaintext and over TLS and the admin port over https, plus `extra`
/// arguments; with ROOM's TLS address and the admin port's address.
fn start_room_and_admin_over_tls(pki: &Pki, extra: &[&str]) -> (Chatd, SocketAddr, SocketAddr) {
    let mut tls = vec!["--room-tls-port", "0", "--admin-port", "0", "--admin-tls"];
    tls.extend_from_slice(extra);
    let mut chatd = start_with_tls(pki, &["--room-port"], &tls);
    let room_tls = tls_addr(&mut chatd, "ROOM");
    let admin = admin_addr(&mut chatd);
    (chatd, room_tls, admin)
}

/// The address chatd logged for `protocol`'s TLS listener ("ROOM listening on ADDR (TLS)").
fn tls_addr(chatd: &mut Chatd, protocol: &str) -> SocketAddr {
    logged_addr(chatd, &format!("{protocol} listening on "), " (TLS)")
}

fn admin_addr(chatd: &mut Chatd) -> SocketAddr {
    logged_addr(chatd, "ADMIN listening on ", " (GET /metrics")
}

fn logged_addr(chatd: &mut Chatd, before: &str, after: &str) -> SocketAddr {
    let text = chatd.stderr.wait_for(after);
    text.lines()
        .filter_map(|line| line.split_once(before).map(|(_, rest)| rest))
        .find_map(|rest| rest.split_once(after).map(|(addr, _)| addr))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no {before}...{after} line in {text}"))
}

/// GET /metrics over https.
fn metrics(admin: SocketAddr, config: &Arc<ClientConfig>) -> String {
    let mut stream = tls_connect(admin, config).expect("https to the admin port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut answer = Vec::new();
    // rustls reports a close without close_notify as an error: the server must send it.
    stream
        .read_to_end(&mut answer)
        .expect("the answer, then close_notify");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    answer
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Wait (bounded) until the metric sample reaches `at_least`.
fn wait_metric(admin: SocketAddr, config: &Arc<ClientConfig>, sample: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(&metrics(admin, config), sample);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} is {value}, never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn failures(protocol: &str, reason: &str) -> String {
    format!("chatd_tls_handshake_failures_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}")
}

/// A TLS ROOM client joined as `alias`.
fn room_join_tls(addr: SocketAddr, config: &Arc<ClientConfig>, alias: &str) -> Client<TlsStream> {
    let mut wire = Client::over(
        tls_connect(addr, config).expect("TLS handshake"),
        "room tls",
    );
    wire.read_through(b"alias?");
    wire.send(alias.as_bytes());
    wire.read_through(b"Voce esta conectado ao servidor!");
    wire
}

/// A plaintext ROOM client and a TLS one in the same room, each seeing the other's line.
fn room_chat_both_ways(plain: &mut Client, tls: &mut Client<TlsStream>, round: &str) {
    let from_tls = format!("tls says {round}");
    tls.send(from_tls.as_bytes());
    plain.read_through(from_tls.as_bytes());
    tls.read_through(from_tls.as_bytes());
    let from_plain = format!("plain says {round}");
    plain.send(from_plain.as_bytes());
    tls.read_through(from_plain.as_bytes());
    plain.read_through(from_plain.as_bytes());
}

/// Creates OCM room `room` as user "olga" over TCRP on the TLS port `addr`, for the UDP
/// socket `udp`; the answer must grant it (code 2) and carry a token.
fn ocm_create_room_over_tls(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    room: &str,
    udp: &UdpSocket,
) {
    let request = common::ocm::tcrp_request(room, 1, "olga", udp.local_addr().expect("addr"));
    let mut olga = tls_connect(addr, config).expect("TLS");
    olga.write_all(&request).expect("request");
    let mut answer = Vec::new();
    // Answered, then closed with close_notify (rustls reports a bare close as an error).
    olga.read_to_end(&mut answer)
        .expect("the answer, then close_notify");
    assert_eq!(
        answer.get(2),
        Some(&2),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(common::find(&answer, b"\"token\": \"").is_some());
}

#[test]
fn every_protocol_speaks_tls_beside_its_plaintext_port_in_the_same_rooms() {
    let pki = Pki::new("all");
    // Every plaintext port beside the TLS ones, but OCM's relay's (it has no TLS counterpart).
    let plaintext: Vec<&'static str> = chatd::PORT_FLAGS
        .into_iter()
        .filter(|&flag| flag != "--ocm-relay-port")
        .collect();
    let mut tls: Vec<&str> = chatd::TLS_PORT_FLAGS
        .into_iter()
        .flat_map(|flag| [flag, "0"])
        .collect();
    tls.extend(["--admin-port", "0", "--admin-tls"]);
    let mut chatd = start_with_tls(&pki, &plaintext, &tls);
    let config = pki.client_config();
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // ROOM: a TLS client and a plaintext one in the same room, both ways.
    let room_tls = tls_addr(&mut chatd, "ROOM");
    let mut plain = Client::join(local(chatd.port("--room-port")), "plainbob");
    let mut tls = room_join_tls(room_tls, &config, "tlsalice");
    room_chat_both_ways(&mut plain, &mut tls, "hello");

    // BIN24: a TLS user and a plaintext one exchange direct messages.
    use switchboard::protocol::bin24::codec;
    let bin24_tls = tls_addr(&mut chatd, "BIN24");
    let mut pete = common::bin24::Bin24::connect(local(chatd.port("--bin24-port")), "pete");
    assert!(pete.register_and_wait().is_empty());
    let mut tara = Client::over(tls_connect(bin24_tls, &config).expect("TLS"), "bin24 tls");
    let frame = |kind, id, from: &str, to: &str, body: &[u8]| {
        codec::encode(
            kind,
            id,
            common::bin24::name(from),
            common::bin24::name(to),
            body,
        )
        .expect("frame")
    };
    tara.send(&frame(
        codec::TYPE_ANSWER,
        u32::MAX,
        "tara",
        "nobody",
        b"200",
    ));
    tara.send(&frame(codec::TYPE_MESSAGE, 1, "tara", "pete", b"over tls"));
    let got = pete.recv();
    assert_eq!(
        (got.src.as_str(), got.body.as_slice()),
        ("tara", &b"over tls"[..])
    );
    pete.send("tara", "back in plaintext");
    tara.read_through(b"back in plaintext");

    // CCM: a TLS user identifies and writes to a plaintext one.
    let ccm_tls = tls_addr(&mut chatd, "CCM");
    let identify = "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: ";
    let mut dana = Client::connect(local(chatd.port("--ccm-port")), "dana");
    dana.send(format!("{identify}4\n\ndana").as_bytes());
    dana.read_through(b"Content-Length: 0\n\n");
    let mut carl = Client::over(tls_connect(ccm_tls, &config).expect("TLS"), "ccm tls");
    carl.send(format!("{identify}4\n\ncarl").as_bytes());
    carl.read_through(b"User: ");
    let token = carl.read_through(b"\n");
    let token = String::from_utf8_lossy(&token[..token.len() - 1]).into_owned();
    carl.read_through(b"Content-Length: 0\n\n");
    carl.send(
        format!("CCM\\1.0 Text\nUser: {token}\nAddressee: dana\nContent-Length: 8\n\nvia ccms")
            .as_bytes(),
    );
    dana.read_through(b"Sender: carl\n");
    dana.read_through(b"\n\nvia ccms");

    // MATOU (the client-server leg): a TLS user's public message reaches a plaintext one.
    use common::matou::{packet, string};
    let matou_tls = tls_addr(&mut chatd, "MATOU");
    let mut mia = common::matou::Matou::sign_in_at(local(chatd.port("--matou-port")), "mia");
    let mut tim = Client::over(tls_connect(matou_tls, &config).expect("TLS"), "matou tls");
    tim.send(&packet(1, &[&string(b"tim")]));
    let mut accepted = 2i32.to_be_bytes().to_vec();
    accepted.push(1);
    assert_eq!(tim.read_exact(5), accepted, "LOGIN accepted over TLS");
    tim.send(&packet(4, &[&string(b"public over tls")]));
    mia.await_broadcast("tim", "public over tls");

    // OCM: a room created over TCRP on the TLS port is joined over the plaintext one.
    let ocm_tls = tls_addr(&mut chatd, "OCM");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("UDP");
    ocm_create_room_over_tls(ocm_tls, &config, "tlsroom", &udp);
    let mut join = TcpStream::connect(local(chatd.port("--ocm-tcp-port"))).expect("connect");
    join.set_read_timeout(Some(WAIT)).expect("timeout");
    let other = UdpSocket::bind("127.0.0.1:0").expect("UDP");
    join.write_all(&common::ocm::tcrp_request(
        "tlsroom",
        2,
        "oscar",
        other.local_addr().expect("addr"),
    ))
    .expect("join request");
    let mut answer = Vec::new();
    join.read_to_end(&mut answer).expect("answer");
    assert_eq!(answer.get(2), Some(&2), "the room made over TLS exists");

    // WEB: the page over https, the WebSocket over wss with the https origin, and a lobby
    // message from it reaching the plaintext ROOM client.
    let web_tls = tls_addr(&mut chatd, "WEB");
    let mut page = Client::over(tls_connect(web_tls, &config).expect("TLS"), "https");
    page.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = page.read_through(b"\r\n\r\n");
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"), "{head:?}");
    let host = format!("localhost:{}", web_tls.port());
    let mut ws = Client::over(tls_connect(web_tls, &config).expect("TLS"), "wss");
    ws.send(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://{host}\r\n\r\n"
        )
        .as_bytes(),
    );
    let head = ws.read_through(b"\r\n\r\n");
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    ws.send(&masked_text(br#"{"type":"signin","name":"wendy"}"#));
    ws.read_through(b"welcome");
    ws.send(&masked_text(br#"{"type":"say","text":"hello from wss"}"#));
    plain.read_through(b"hello from wss");

    // The admin port over https: the handshakes were counted, per protocol.
    let admin = admin_addr(&mut chatd);
    let text = metrics(admin, &config);
    for (protocol, at_least) in [
        ("room", 1.0),
        ("bin24", 1.0),
        ("ccm", 1.0),
        ("matou", 1.0),
        ("ocm", 1.0),
        ("web", 2.0),
        ("admin", 1.0),
    ] {
        let sample = format!("chatd_tls_handshakes_total{{protocol=\"{protocol}\"}}");
        assert!(metric(&text, &sample) >= at_least, "{sample} in {text}");
    }
    // And the plaintext and TLS ROOM clients still chat.
    room_chat_both_ways(&mut plain, &mut tls, "at the end");
}

/// A masked WebSocket text frame (payloads under 126 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(at, b)| b ^ mask[at % 4]));
    frame
}

/// The first bytes of a real ClientHello, as a client would send them.
fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("name");
    let mut session = ClientConnection::new(Arc::clone(config), name).expect("session");
    let mut hello = Vec::new();
    session.write_tls(&mut hello).expect("ClientHello");
    hello
}

#[test]
fn bad_tls_input_closes_only_its_connection_counted_and_logged() {
    let pki = Pki::new("bad");
    let (mut chatd, room_tls, admin) =
        start_room_and_admin_over_tls(&pki, &["--handshake-timeout-ms", "300"]);
    let config = pki.client_config();
    let mut plain = Client::join(
        SocketAddr::from(([127, 0, 0, 1], chatd.port("--room-port"))),
        "plainbob",
    );
    let mut tls = room_join_tls(room_tls, &config, "tlsalice");
    room_chat_both_ways(&mut plain, &mut tls, "before");

    // Garbage that starts as a TLS handshake record but is none.
    let mut garbage = Client::connect(room_tls, "garbage");
    garbage.send(b"\x16\x03\x01\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff");
    garbage.expect_closed();
    wait_metric(admin, &config, &failures("room", "bad_record"), 1.0);
    chatd.stderr.wait_for("TLS failed: a bad TLS record");
    room_chat_both_ways(&mut plain, &mut tls, "after garbage");

    // A plaintext client on the TLS port.
    let mut plaintext = Client::connect(room_tls, "plaintext");
    plaintext.send(b"plainbob2\n");
    plaintext.expect_closed();
    wait_metric(admin, &config, &failures("room", "plaintext_client"), 1.0);
    chatd
        .stderr
        .wait_for("TLS failed: a plaintext client on a TLS port");
    room_chat_both_ways(&mut plain, &mut tls, "after plaintext");

    // A truncated handshake, held open: the handshake deadline closes it.
    let hello = client_hello(&config);
    let mut truncated = Client::connect(room_tls, "truncated");
    truncated.send(&hello[..hello.len() / 2]);
    let started = Instant::now();
    truncated.expect_closed();
    assert!(
        started.elapsed() < WAIT,
        "closed by the deadline, not the timeout"
    );
    wait_metric(admin, &config, &failures("room", "handshake_deadline"), 1.0);
    chatd
        .stderr
        .wait_for("TLS failed: the handshake was not finished in time");
    room_chat_both_ways(&mut plain, &mut tls, "after truncated");

    // A client that does not trust the server's certificate (another CA) rejects it.
    let stranger = Pki::new("stranger");
    let refused = tls_connect(room_tls, &stranger.client_config());
    assert!(refused.is_err(), "a client of another CA must refuse");
    wait_metric(admin, &config, &failures("room", "alert_received"), 1.0);
    chatd
        .stderr
        .wait_for("TLS failed: the client sent an alert");
    room_chat_both_ways(&mut plain, &mut tls, "after wrong CA");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let mut pki = Pki::new("reload");
    let mut chatd = start_with_tls(&pki, &["--room-port"], &["--room-tls-port", "0"]);
    let room_tls = tls_addr(&mut chatd, "ROOM");
    let old_config = pki.client_config();
    let old_cert = pki.cert_der.clone();
    let mut plain = Client::join(
        SocketAddr::from(([127, 0, 0, 1], chatd.port("--room-port"))),
        "plainbob",
    );
    let mut old = room_join_tls(room_tls, &old_config, "oldtls");
    room_chat_both_ways(&mut plain, &mut old, "before the reload");

    pki.issue();
    let new_config = pki.client_config();
    let hup = |chatd: &Chatd| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &chatd.pid().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    };
    hup(&chatd);
    chatd.stderr.wait_for("reloaded: new connections use them");

    // The connection made before keeps going; a new one gets the new certificate.
    room_chat_both_ways(&mut plain, &mut old, "after the reload");
    let mut new = room_join_tls(room_tls, &new_config, "newtls");
    assert_eq!(
        new.stream
            .conn
            .peer_certificates()
            .map(|certs| certs[0].clone()),
        Some(pki.cert_der.clone())
    );
    assert_ne!(pki.cert_der, old_cert);
    assert!(
        tls_connect(room_tls, &old_config).is_err(),
        "the old CA no longer vouches for the server"
    );
    room_chat_both_ways(&mut plain, &mut new, "new connection");

    // A broken file: the reload fails, said clearly, and the certificate in use stays.
    std::fs::write(pki.cert_path(), "-----BEGIN CERTIFICATE-----\nbroken\n").expect("break");
    hup(&chatd);
    chatd
        .stderr
        .wait_for("TLS reload failed, keeping the previous certificate");
    let mut after = room_join_tls(room_tls, &new_config, "aftertls");
    assert_eq!(
        after
            .stream
            .conn
            .peer_certificates()
            .map(|certs| certs[0].clone()),
        Some(pki.cert_der.clone())
    );
    room_chat_both_ways(&mut plain, &mut after, "after a failed reload");
    room_chat_both_ways(&mut plain, &mut old, "old one still");
}

#[test]
fn a_tls_port_without_a_usable_certificate_is_a_clear_startup_error() {
    let run = |args: &[&str]| {
        let output = chatd::command(&[("--room-port", 0)])
            .args(["--room-tls-port", "0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run chatd");
        assert!(!output.status.success(), "chatd must refuse to start");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("needs --tls-cert FILE and --tls-key FILE"),
        "{stderr}"
    );
    let pki = Pki::new("startup");
    let missing = pki.dir.join("missing.pem");
    let stderr = run(&[
        "--tls-cert",
        &path_arg(&missing),
        "--tls-key",
        &path_arg(&pki.key_path()),
    ]);
    assert!(
        stderr.contains("TLS certificate") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    let stderr = run(&[
        "--tls-cert",
        &path_arg(&pki.cert_path()),
        "--tls-key",
        &path_arg(&pki.cert_path()),
    ]);
    assert!(
        stderr.contains("TLS key") && stderr.contains("cert.pem"),
        "{stderr}"
    );
}

#[test]
fn a_tls_member_that_stops_reading_is_closed_by_the_output_limits() {
    let pki = Pki::new("slow");
    let (mut chatd, room_tls, admin) = start_room_and_admin_over_tls(
        &pki,
        &[
            "--output-hard-bytes-max",
            "262144",
            "--output-soft-bytes-max",
            "262144",
            "--tcp-send-buffer-bytes",
            "4096",
        ],
    );
    let config = pki.client_config();
    let room = SocketAddr::from(([127, 0, 0, 1], chatd.port("--room-port")));

    // A TLS member with a small receive buffer that reads nothing after joining.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&room_tls.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let slow_addr = tcp.local_addr().expect("local address");
    let name = ServerName::try_from("localhost").expect("name");
    let session = ClientConnection::new(Arc::clone(&config), name).expect("session");
    let mut stream = StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("handshake");
    }
    let mut slow = Client::over(stream, "slow tls");
    slow.read_through(b"alias?");
    slow.send(b"slowtls");
    slow.read_through(b"Voce esta conectado ao servidor!");

    // A plaintext member floods the room and reads its own echoes on another thread.
    let mut flooder = Client::join(room, "flooder");
    let mut echoes = flooder.stream.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut sink = [0u8; 64 * 1024];
        while matches!(echoes.read(&mut sink), Ok(n) if n > 0) {}
    });
    let line = vec![b'x'; 1000];
    let deadline = Instant::now() + WAIT;
    let hard = "chatd_slow_consumer_closes_total{limit=\"hard\"}";
    let mut sent = 0usize;
    while metric(&metrics(admin, &config), hard) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the TLS member was not closed after {sent} bytes flooded"
        );
        for _ in 0..256 {
            flooder.send(&line);
        }
        sent += 256 * line.len();
    }
    assert!(
        sent >= 262_144,
        "closed only past the hard limit ({sent} bytes sent)"
    );
    let text = chatd.stderr.wait_for("slow consumer");
    assert!(
        text.contains(&format!("closing {slow_addr} (")),
        "the TLS member is the one closed: {text}"
    );
    // The slow member finds its connection closed once it reads again; the flooder stays.
    slow.expect_closed();
    flooder.send(b"still here");
    flooder
        .stream
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    reader.join().expect("echo reader");
}

/// An operator may offer a protocol over TLS only: with its plaintext port off, its TLS port
/// still serves it (the service exists, ROOM prompts, OCM makes rooms and chats over UDP).
/// Seen to fail when services were built only for plaintext ports: the TLS ROOM client waited
/// for an `alias?` that never came.
#[test]
fn a_protocol_offered_over_tls_only_is_served() {
    let pki = Pki::new("tlsonly");
    // Only OCM's UDP chat socket is plaintext (TLS does not cover it).
    let mut chatd = start_with_tls(
        &pki,
        &["--ocm-udp-port"],
        &["--room-tls-port", "0", "--ocm-tcp-tls-port", "0"],
    );
    let config = pki.client_config();

    let room_tls = tls_addr(&mut chatd, "ROOM");
    let mut alice = room_join_tls(room_tls, &config, "alice");
    let mut bob = room_join_tls(room_tls, &config, "bob");
    alice.send(b"only over tls");
    bob.read_through(b"only over tls");

    let ocm_tls = tls_addr(&mut chatd, "OCM");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("UDP");
    ocm_create_room_over_tls(ocm_tls, &config, "tlsonly", &udp);
}
