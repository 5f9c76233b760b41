//! `chatd`: the Switchboard server. Arguments become a `Config`; the reactor does the rest.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use log::{error, warn, LevelFilter};

use std::path::PathBuf;

use switchboard::config::{
    Config, ADMIN_CONNECTIONS_CAP, BIN24_PORT_DEFAULT, CCM_PORT_DEFAULT, MATOU_PORT_DEFAULT,
    OCM_RELAY_PORT_DEFAULT, OCM_TCP_PORT_DEFAULT, OCM_UDP_PORT_DEFAULT, ROOM_PORT_DEFAULT,
    WEB_PORT_DEFAULT,
};
use switchboard::protocol::bin24::UserList;
use switchboard::reactor::Server;

/// Switchboard chat server: one single-threaded, edge-triggered reactor serving several chat
/// wire protocols at once, each on its own port.
///
/// Protocols and their default ports: ROOM (nickname chat room, TCP 55555), BIN24 (direct
/// messages with acks and a durable offline store, TCP 7000), CCM (HTTP-like messages with
/// identification tokens and a keepalive, TCP 5454), MATOU (public room and brokered private
/// links, TCP 7777), OCM (rooms created over TCP 9002, chat over UDP 9003) and the OCM stage-1
/// relay (UDP 9001). A port of 0 disables its protocol. Every limit and timer below has
/// a default that matches the protocol contract; tests and operators may change them.
/// SIGINT or SIGTERM stops accepting, flushes queued output within the grace period and exits
/// 0; a second signal exits at once. SIGHUP never ends chatd: with TLS it reads the
/// certificate and key again; without, it is logged and ignored (so a closed terminal does not
/// stop a foreground chatd).
#[derive(Parser, Debug)]
#[command(name = "chatd", version, about, long_about)]
struct Args {
    /// Address every listener binds to. Loopback by default; 0.0.0.0 exposes the server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,

    /// ROOM port (nickname chat room, `alias?` handshake). 0 disables ROOM.
    #[arg(long, value_name = "PORT", default_value_t = ROOM_PORT_DEFAULT)]
    room_port: u16,

    /// ROOM: close a connection that has not sent a non-empty alias this long after connecting.
    #[arg(long, value_name = "MS", default_value_t = Config::default().room_handshake_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    room_handshake_timeout_ms: u64,
    /// BIN24, CCM and MATOU: close a connection that has not identified its user this long
    /// after connecting (BIN24: a first valid frame; CCM: a name accepted; MATOU: a name
    /// taken), so idle or trickling connections cannot hold descriptors (slowloris). Generous:
    /// CCM's contract waits 5000 + 3600 ms for a keepalive answer. ROOM has
    /// --room-handshake-timeout-ms; an OCM TCRP connection must send its whole request within
    /// --ocm-tcrp-request-timeout-ms.
    #[arg(long, value_name = "MS", default_value_t = Config::default().handshake_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout_ms: u64,

    /// BIN24 port (24-byte binary header, direct messages, acks, offline store). 0 disables
    /// BIN24.
    #[arg(long, value_name = "PORT", default_value_t = BIN24_PORT_DEFAULT)]
    bin24_port: u16,

    /// CCM port (HTTP-like text messages: identification, addressed delivery, keepalive).
    /// 0 disables CCM.
    #[arg(long, value_name = "PORT", default_value_t = CCM_PORT_DEFAULT)]
    ccm_port: u16,

    /// CCM: silence after which the server sends a `Connect` keepalive.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ccm_keepalive_idle_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ccm_keepalive_idle_ms: u64,

    /// CCM: how long a client has to send anything after a keepalive before it is closed.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ccm_keepalive_answer_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ccm_keepalive_answer_ms: u64,

    /// CCM: longest user name, in bytes (UTF-8).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ccm_name_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    ccm_name_bytes_max: u64,

    /// CCM: bytes one user's messages may make others receive per second (a `*` message counts
    /// once per recipient); over it the sender gets Error `rate-limited` and nobody receives
    /// the message, so a flood is cut at its sender rather than by closing its recipient as a
    /// slow consumer. At least one largest message (about 1 MiB) may always pass. 0: no limit.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ccm_sender_bytes_per_s_max)]
    ccm_sender_bytes_per_s_max: u64,

    /// CCM: bytes per second one user may send to one other user; beyond it as above.
    /// 0: no limit.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ccm_pair_bytes_per_s_max)]
    ccm_pair_bytes_per_s_max: u64,

    /// WEB port: the page at `/` and its WebSocket at `/ws` (JSON messages). 0 disables it.
    #[arg(long, value_name = "PORT", default_value_t = WEB_PORT_DEFAULT)]
    web_port: u16,

    /// WEB: the origins whose pages may open the WebSocket, comma-separated, exact
    /// (`http://chat.example:8080`). Default: only `http://<Host>` and `https://<Host>`,
    /// the request's own host.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    web_origins: Option<Vec<String>>,

    /// WEB: largest message (and frame) a client may send, in bytes; over it the connection
    /// is closed (1009).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().web_message_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    web_message_bytes_max: u64,

    /// WEB: longest text of a lobby or direct message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().web_text_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    web_text_bytes_max: u64,

    /// WEB: lobby and direct messages one web user may send per second; over it they are
    /// refused (`rate-limited`). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = Config::default().web_messages_per_s_max)]
    web_messages_per_s_max: u64,

    /// WEB with --cluster: direct messages of one web user to another node's users awaiting
    /// their receipt at once; one more is refused (`busy`), not sent.
    #[arg(long, value_name = "N", default_value_t = Config::default().web_receipts_per_sender_max as u64,
          value_parser = clap::value_parser!(u64).range(1..), requires = "cluster")]
    web_receipts_per_sender_max: u64,

    /// WEB with --cluster: direct messages to other nodes' users awaiting their receipt on
    /// this node at once, all web users together; one more is refused (`busy`), not sent.
    #[arg(long, value_name = "N", default_value_t = Config::default().web_receipts_max as u64,
          value_parser = clap::value_parser!(u64).range(1..), requires = "cluster")]
    web_receipts_max: u64,

    /// MATOU port (binary: unique names, public room, private links brokered between clients).
    /// 0 disables MATOU.
    #[arg(long, value_name = "PORT", default_value_t = MATOU_PORT_DEFAULT)]
    matou_port: u16,

    /// MATOU: longest user name, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().matou_name_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    matou_name_bytes_max: u64,

    /// MATOU: longest public message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().matou_message_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    matou_message_bytes_max: u64,

    /// MATOU: largest string size accepted in any packet; a larger one is a protocol error
    /// (ERROR, then close). Must be at least the name and message limits.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().matou_string_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=16 * 1_048_576))]
    matou_string_bytes_max: u64,

    /// MATOU: most private-link requests one user may have waiting for an answer.
    #[arg(long, value_name = "N", default_value_t = Config::default().matou_pending_requests_per_user_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    matou_pending_requests_per_user_max: u64,

    /// MATOU: private requests one user may send per second (a second's worth at once); each
    /// makes its recipient receive a packet, so beyond it the sender gets ERROR 12 and the
    /// recipient nothing: a flood is cut at its sender, not by closing its victim. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = Config::default().matou_private_requests_per_s_max)]
    matou_private_requests_per_s_max: u64,

    /// MATOU: private requests per second from one user to one other (a repeat while pending
    /// notifies again); beyond it ERROR 12, as above. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = Config::default().matou_private_requests_per_pair_per_s_max)]
    matou_private_requests_per_pair_per_s_max: u64,

    /// OCM TCRP port (TCP: create and join rooms). 0 disables OCM (with --ocm-udp-port 0).
    #[arg(long, value_name = "PORT", default_value_t = OCM_TCP_PORT_DEFAULT)]
    ocm_tcp_port: u16,

    /// OCM chat port (UDP: messages within a room, with tokens bound to the client's IP).
    /// 0 disables OCM (with --ocm-tcp-port 0).
    #[arg(long, value_name = "PORT", default_value_t = OCM_UDP_PORT_DEFAULT)]
    ocm_udp_port: u16,

    /// OCM stage-1 relay port (UDP: every datagram goes to every other recent peer).
    /// 0 disables the relay.
    #[arg(long, value_name = "PORT", default_value_t = OCM_RELAY_PORT_DEFAULT)]
    ocm_relay_port: u16,

    /// Admin port: the server's statistics in the Prometheus text format, answered to
    /// `GET /metrics` over HTTP. Off unless given; 0 picks a free port (logged as
    /// "ADMIN listening on ADDR").
    #[arg(long, value_name = "PORT")]
    admin_port: Option<u16>,

    /// Address the admin port binds to. Loopback by default, whatever --bind says, so that
    /// exposing the chat ports does not expose the metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    admin_bind: IpAddr,

    /// Most admin connections open at once (at most 8); a connection beyond them is answered
    /// 503 and closed at once, so idle ones cannot leave a request waiting in the backlog.
    #[arg(long, value_name = "N", default_value_t = Config::default().admin_connections_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=ADMIN_CONNECTIONS_CAP as u64))]
    admin_connections_max: u64,

    /// An admin connection is closed if its request and answer are not done this long after
    /// it was accepted.
    #[arg(long, value_name = "MS", default_value_t = Config::default().admin_request_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    admin_request_timeout_ms: u64,

    /// Largest admin request (request line and headers), in bytes; larger is answered 400.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().admin_request_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(256..=65_536))]
    admin_request_bytes_max: u64,

    /// ROOM over TLS on this port, beside the plaintext one (which the original clients need).
    /// Off unless given; needs --tls-cert and --tls-key. 0 picks a free port (logged as
    /// "ROOM listening on ADDR (TLS)").
    #[arg(long, value_name = "PORT")]
    room_tls_port: Option<u16>,

    /// BIN24 over TLS on this port; as --room-tls-port.
    #[arg(long, value_name = "PORT")]
    bin24_tls_port: Option<u16>,

    /// CCM over TLS on this port; as --room-tls-port.
    #[arg(long, value_name = "PORT")]
    ccm_tls_port: Option<u16>,

    /// MATOU over TLS on this port (the client-server connection; the private links between
    /// clients are not the server's and stay plaintext); as --room-tls-port.
    #[arg(long, value_name = "PORT")]
    matou_tls_port: Option<u16>,

    /// OCM's TCRP over TLS on this port (OCM must be enabled; its UDP chat is not covered by
    /// TLS); as --room-tls-port.
    #[arg(long, value_name = "PORT")]
    ocm_tcp_tls_port: Option<u16>,

    /// WEB over TLS on this port: the page over https and the WebSocket over wss (the default
    /// Origin check accepts https://<Host>); as --room-tls-port.
    #[arg(long, value_name = "PORT")]
    web_tls_port: Option<u16>,

    /// The admin port speaks https instead of http (needs --admin-port, --tls-cert, --tls-key).
    #[arg(long)]
    admin_tls: bool,

    /// TLS certificate chain, PEM, leaf first. Read at startup and again on SIGHUP (new
    /// connections get the new one; a file that cannot be used keeps the old one).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// TLS private key, PEM (PKCS#8, PKCS#1 or SEC1). Read with --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// OCM: largest TCRP payload, in bytes; a larger request is answered 500 from its header.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ocm_tcrp_payload_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(64..=16 * 1_048_576))]
    ocm_tcrp_payload_bytes_max: u64,

    /// OCM: close a TCRP connection that has not sent a whole request this long after
    /// connecting.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ocm_tcrp_request_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ocm_tcrp_request_timeout_ms: u64,

    /// OCM: longest room name, in bytes (at most 255: it has a one-byte size).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ocm_room_name_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=255))]
    ocm_room_name_bytes_max: u64,

    /// OCM: longest user name, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ocm_user_name_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    ocm_user_name_bytes_max: u64,

    /// OCM and the stage-1 relay: a member (or relay peer) that has sent nothing this long is
    /// removed; a host's removal closes its room.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ocm_idle_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ocm_idle_timeout_ms: u64,

    /// OCM and the stage-1 relay: failed sends in a row after which a member (or peer) is
    /// removed. A datagram dropped because the socket buffer is full does not count.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_send_failures_max,
          value_parser = clap::value_parser!(u32).range(1..))]
    ocm_send_failures_max: u32,

    /// OCM: most rooms at once; a create beyond it is answered 500.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_rooms_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    ocm_rooms_max: u64,

    /// OCM: most rooms open at once whose host came from one IP address; a create beyond it
    /// is answered 500. One host must not take every room (10,000 rooms from one address in
    /// 0.8 s locked everyone out for the 600 s idle timeout). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_rooms_per_ip_max)]
    ocm_rooms_per_ip_max: u32,

    /// OCM: a room none of whose members has sent an accepted datagram this long after its
    /// creation is closed, as if its host had left (its members get the host's leave text).
    /// Rooms made and abandoned do not wait out --ocm-idle-timeout-ms. 0: never.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ocm_room_silent_timeout_ms)]
    ocm_room_silent_timeout_ms: u64,

    /// OCM: most members in one room; a join beyond it is answered 500. Each datagram goes to
    /// every other member, so this bounds what one datagram costs.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_room_members_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    ocm_room_members_max: u64,

    /// OCM: send the document's state-1 acknowledgement before each answer. Off by default
    /// because the original client takes the first answer as the final one.
    #[arg(long)]
    ocm_ack_state1: bool,

    /// Turn the switchboard off: every protocol stays apart exactly as its own section says
    /// (no shared names, no lobby across protocols, no BIN24<->CCM messages).
    #[arg(long)]
    isolate: bool,

    /// Join a cluster: the nodes sharing this Redis serve one lobby (docs/CLUSTER.md). Redis
    /// unreachable at start: chatd exits with status 1. A HOST name is looked up again while
    /// a link to Redis is down, so a Redis whose name moves is found again. Without it, no
    /// network service is needed.
    #[arg(long, value_name = "redis://HOST:PORT[/DB]")]
    cluster: Option<String>,

    /// This node's name in the cluster (1 to 64 bytes, unique among the nodes). Default:
    /// host, process id and a random number.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node_name: Option<String>,

    /// The cluster's lease: a node renews its liveness key every quarter of it, and the key
    /// lives three quarters of it from its last renewal, so a node silent (dead, frozen, cut
    /// off) for about half to three quarters of it is taken for dead, and the other nodes
    /// notice and announce its lobby members gone within the lease.
    #[arg(long, value_name = "MS", default_value_t = switchboard::cluster::LEASE_MS_DEFAULT, requires = "cluster")]
    cluster_lease_ms: u64,

    /// Most events of other nodes (lobby lines, presence) handed to the local lobby per loop
    /// turn; the rest wait for the next turns, which come at once, so a burst arriving from
    /// Redis cannot hold local users' work.
    #[arg(long, value_name = "N", default_value_t = Config::default().cluster_events_per_turn_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000), requires = "cluster")]
    cluster_events_per_turn_max: u64,

    /// Largest roster (this node's lobby members, sent to the other nodes after a link comes
    /// back) published; a larger one is not sent, and logged. Keep it under Redis's hard limit
    /// for a subscriber's output (`client-output-buffer-limit pubsub`, 32 MiB by default):
    /// Redis drops every subscriber a message over it would reach.
    #[arg(long, value_name = "BYTES", default_value_t = switchboard::cluster::ROSTER_BYTES_MAX_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 32), requires = "cluster")]
    cluster_roster_bytes_max: u64,

    /// Set SO_REUSEPORT on every TCP listener and UDP socket, so that several nodes on one
    /// machine share the same ports (one node per core; the kernel spreads connections).
    #[arg(long)]
    reuse_port: bool,

    /// The OCM room whose members are in the switchboard's lobby.
    #[arg(long, value_name = "NAME", default_value_t = Config::default().lobby_ocm_room)]
    lobby_ocm_room: String,

    /// Stage-1 relay: most peers remembered at once; datagrams from further new peers are
    /// dropped and counted.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_relay_peers_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    ocm_relay_peers_max: u64,

    /// Stage-1 relay: most peers from one IP address, so one host with many ports cannot fill
    /// the relay (further ones are dropped, counted as over_limit). 0: no limit.
    #[arg(long, value_name = "N", default_value_t = Config::default().ocm_relay_peers_per_ip_max)]
    ocm_relay_peers_per_ip_max: u32,

    /// UDP (OCM chat socket and stage-1 relay): datagrams one socket's fan-outs may send per
    /// second, all sources together (a datagram to 99 members is 99 sends). A datagram whose
    /// fan-out the budget cannot cover goes to no one and is counted as fanout_budget. 0: no
    /// limit. Above loadgen's largest OCM run (250,000 deliveries/s).
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_sends_per_s_max)]
    udp_sends_per_s_max: u64,

    /// UDP: datagrams the fan-outs of one source address (IP and port) may cause per second;
    /// beyond it as --udp-sends-per-s-max. 0: no limit. The bucket holds a second of it, and
    /// at least one fan-out to a full room (or relay).
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_sends_per_source_per_s_max)]
    udp_sends_per_source_per_s_max: u64,

    /// UDP: datagrams one socket sends per loop turn. Sends beyond it (the rest of a fan-out
    /// to a large room) wait, in order, for the next turns, up to 65,536 of them (more are
    /// dropped, counted as send_dropped), and nothing new is read from the socket meanwhile,
    /// so a socket cannot hold the loop while TCP clients wait. About 5 to 10 us a send on
    /// loopback.
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_sends_per_turn_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    udp_sends_per_turn_max: u64,

    /// UDP: most datagrams read from one socket per loop turn before other work is served.
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_datagrams_per_turn_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    udp_datagrams_per_turn_max: u64,

    /// UDP (OCM chat socket and stage-1 relay): datagrams per second one source address (IP
    /// and port) may send; beyond it (and its burst) datagrams are dropped and counted as
    /// rate_limited. 0: no limit. The default is far above a chat member's pace: loadgen's
    /// largest documented OCM run sends 2,400 datagrams/s from all members together.
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_datagrams_per_source_per_s_max)]
    udp_datagrams_per_source_per_s_max: u64,

    /// UDP: datagrams one source may send at once beyond its rate (the bucket's size); it also
    /// covers a backlog read in one go after the loop was busy.
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_datagrams_per_source_burst_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    udp_datagrams_per_source_burst_max: u64,

    /// UDP: most source addresses rate-tracked per socket. Sources idle long enough to have
    /// their whole burst back are forgotten when room is needed; while the table is full of
    /// active sources, datagrams from new ones are dropped (counted as over_limit).
    #[arg(long, value_name = "N", default_value_t = Config::default().udp_sources_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    udp_sources_max: u64,

    /// UDP: send and receive buffer size asked of the kernel per socket (capped by
    /// net.core.rmem_max and wmem_max). A full send buffer drops the datagram, counted.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().udp_socket_buffer_bytes as u64,
          value_parser = clap::value_parser!(u64).range(4096..=1_073_741_824))]
    udp_socket_buffer_bytes: u64,

    /// BIN24: a forwarded message not answered ("200") this long makes its recipient count as
    /// disconnected: it is closed, and what it had not answered moves to its offline store.
    #[arg(long, value_name = "MS", default_value_t = Config::default().bin24_ack_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    bin24_ack_timeout_ms: u64,

    /// BIN24: most messages awaiting an answer from one recipient; further messages to it go
    /// to its offline store ("300") and are sent on the same connection, oldest first, once its
    /// answers bring it under the cap (later messages wait behind them, so none overtakes).
    #[arg(long, value_name = "N", default_value_t = Config::default().bin24_unacked_per_recipient_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    bin24_unacked_per_recipient_max: u64,

    /// BIN24: stored frames sent to a connecting user ahead of what its socket has taken, in
    /// bytes; a large backlog goes out a window at a time. Keep it below
    /// --output-soft-bytes-max.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_offline_window_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    bin24_offline_window_bytes: u64,

    /// Directory of the durable offline store (BIN24); created if missing. A corrupt or
    /// unreadable store stops the server with an error, it is never reset silently.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Offline store: most frames kept for one user; beyond it the sender gets "507".
    #[arg(long, value_name = "N", default_value_t = Config::default().offline_frames_per_user_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    offline_frames_per_user_max: u64,

    /// Offline store: most bytes kept for one user; beyond it the sender gets "507".
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().offline_bytes_per_user_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    offline_bytes_per_user_max: u64,

    /// Offline store: most frames kept for every user together; beyond it the sender gets
    /// "507". With --store-bytes-max, what bounds the disk whatever the number of recipients.
    #[arg(long, value_name = "N", default_value_t = Config::default().store_frames_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    store_frames_max: u64,

    /// Offline store: most bytes (frame lengths) kept for every user together; beyond it the
    /// sender gets "507". The store's file grows to a small multiple of this at most.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().store_bytes_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    store_bytes_max: u64,

    /// Offline store: requests queued for the storage thread at which BIN24 stops reading
    /// its connections until the thread catches up (backpressure: no loss, bounded memory).
    #[arg(long, value_name = "N", default_value_t = Config::default().store_requests_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    store_requests_max: u64,

    /// BIN24: a stored frame the recipient's TCP has acknowledged counts as delivered (and
    /// leaves the store) once the connection stays up this long after; a reset before then
    /// keeps it stored. A client that answers the frame (type 1) confirms it at once.
    #[arg(long, value_name = "MS", default_value_t = Config::default().bin24_delivery_grace_ms)]
    bin24_delivery_grace_ms: u64,

    /// BIN24: most bytes of stored frames sent to one connection and not yet delivered; its
    /// backlog waits beyond it.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_unconfirmed_bytes_per_conn_max as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    bin24_unconfirmed_bytes_per_conn_max: u64,

    /// BIN24: most bytes of stored frames held in memory for every connection together
    /// (pages loading, loaded, sent and not yet acknowledged); a backlog waits its turn beyond.
    /// A login whose TCP acknowledges none of the stored frames it was sent for
    /// --output-soft-duration-ms while another backlog waits is closed as a slow consumer
    /// (its frames stay stored), so logins that never read cannot keep the others waiting.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_loaded_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    bin24_loaded_bytes_max: u64,

    /// BIN24: who may log in, and from where: a text file, one user a line, its name then the
    /// addresses or networks it may connect from (`bob 10.0.0.0/8 ::1`; `#` starts a comment).
    /// Only they log in, and a message to anyone else is answered "507". Without it, anyone
    /// may claim any name (a warning is logged when BIN24 listens beyond loopback).
    #[arg(long, value_name = "FILE")]
    bin24_users: Option<PathBuf>,

    /// BIN24: bytes one user's messages may make online users receive per second; over it the
    /// sender is answered "429" and the message is neither delivered nor stored, so a flood is cut at its sender rather than by closing its recipient as a
    /// slow consumer. One largest frame (1024 bytes) may always pass. 0: no limit.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_sender_bytes_per_s_max)]
    bin24_sender_bytes_per_s_max: u64,

    /// BIN24: bytes per second one user may send to one other user; beyond it as above.
    /// 0: no limit.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_pair_bytes_per_s_max)]
    bin24_pair_bytes_per_s_max: u64,

    /// Offline store: most requests made durable by one commit (group commit).
    #[arg(long, value_name = "N", default_value_t = Config::default().store_group_commit_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    store_group_commit_max: u64,

    /// Most connections open at once, all protocols together. At the cap new connections wait
    /// in the kernel's backlog; accepting resumes once the count is down to the cap less a tenth.
    #[arg(long, value_name = "N", default_value_t = Config::default().connections_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections_max: u64,

    /// Most connections open at once from one peer IP address, all TCP protocols together;
    /// a further one is closed as soon as it is accepted (counted as refused_per_ip). 0: no
    /// limit. Default 256: a household or an office behind one address, not a fortieth of
    /// --connections-max. loadgen connects from 127.0.0.1 only for its first 32 clients and
    /// spreads the rest over 127.0.0.0/8, so loopback runs fit.
    #[arg(long, value_name = "N", default_value_t = Config::default().connections_per_ip_max)]
    connections_per_ip_max: u32,

    /// Input one TCP connection may send, in bytes per second (a token bucket that starts
    /// full with --input-burst-bytes-max); a connection beyond it is closed ("input rate",
    /// counted as input_rate_closes). 0: no limit. Default 64 MiB/s: ten times a ROOM sender at
    /// 100,000 msg/s of 64 bytes (6.4 MB/s), and far above BIN24 (frames of at most 1024
    /// bytes), MATOU (public messages of at most 512 bytes), CCM (content of at most 1 MiB)
    /// and OCM TCRP (one request of at most 64 KiB) senders.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().input_bytes_per_s_max)]
    input_bytes_per_s_max: u64,

    /// Input one connection may send at once beyond its rate. Default 16 MiB: sixteen CCM
    /// messages at their 1 MiB content limit, and more than a socket's receive buffer can hold
    /// when the loop was busy for a while. At least --read-chunk-bytes (one read must fit).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().input_burst_bytes_max)]
    input_burst_bytes_max: u64,

    /// Kernel accept backlog of each listener (the kernel caps it at net.core.somaxconn). A
    /// backlog too short for a burst of connects drops SYNs, which clients resend after 1 s.
    #[arg(long, value_name = "N", default_value_t = Config::default().listen_backlog)]
    listen_backlog: u32,

    /// Most connections accepted per listener per loop turn (fairness under connect storms).
    #[arg(long, value_name = "N", default_value_t = Config::default().accepts_per_turn_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    accepts_per_turn_max: u64,

    /// How long accepting pauses when the process runs out of file descriptors.
    #[arg(long, value_name = "MS", default_value_t = Config::default().accept_pause_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    accept_pause_ms: u64,

    /// SO_SNDBUF of every accepted chat connection (set on the listeners, inherited): Linux
    /// keeps about twice this in the kernel for a client that stops reading (instead of
    /// autotuning up to net.ipv4.tcp_wmem's maximum, 4 MiB), and a write to it stops there.
    /// What does not fit waits in the server's own queue, under the output limits. 0: kernel
    /// autotuning.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().tcp_send_buffer_bytes as u64,
          value_parser = clap::value_parser!(u64).range(0..=1_073_741_824))]
    tcp_send_buffer_bytes: u64,

    /// Bytes taken from a socket per read.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().read_chunk_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    read_chunk_bytes: u64,

    /// Most bytes read from one connection per readiness event before others are served (the
    /// rest next turn): the slice of a turn one client's input can take.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().read_budget_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    read_budget_bytes: u64,

    /// Most buffers per vectored write.
    #[arg(long, value_name = "N", default_value_t = Config::default().write_iovecs_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    write_iovecs_max: u64,

    /// Bytes written to connections per loop turn, all together; the connections not served
    /// when it runs out are written first next turn (which polls without sleeping). Bounds a
    /// turn's copying into the kernel: about 1 to 2 ms for 4 MiB on loopback.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().write_budget_bytes as u64,
          value_parser = clap::value_parser!(u64).range(4096..=1_073_741_824))]
    write_budget_bytes: u64,

    /// Output queued for one connection beyond this closes it at once (slow consumer).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().output_hard_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    output_hard_bytes_max: u64,

    /// Output queued beyond this for longer than --output-soft-duration-ms closes the connection.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().output_soft_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    output_soft_bytes_max: u64,

    /// How long output may stay over the soft limit; also how long a BIN24 login may hold
    /// unacknowledged stored frames while another backlog waits (--bin24-loaded-bytes-max).
    #[arg(long, value_name = "MS", default_value_t = Config::default().output_soft_duration_ms)]
    output_soft_duration_ms: u64,

    /// How long a connection closing after its last answer may take to drain its output.
    #[arg(long, value_name = "MS", default_value_t = Config::default().close_linger_ms)]
    close_linger_ms: u64,

    /// Timer wheel granularity; timers fire at most this late, never early.
    #[arg(long, value_name = "MS", default_value_t = Config::default().timer_tick_ms,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    timer_tick_ms: u64,

    /// On SIGINT/SIGTERM, how long to keep flushing queued output before exiting.
    #[arg(long, value_name = "MS", default_value_t = Config::default().shutdown_grace_ms)]
    shutdown_grace_ms: u64,

    /// Log a statistics line this often (0: only at shutdown).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    stats_interval_ms: u64,

    /// Log level: error, warn, info, debug or trace. Normal traffic is silent at info;
    /// connects and disconnects show at debug; problems (slow consumers, accept failures)
    /// at warn.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

impl Args {
    fn into_config(self) -> Result<Config, String> {
        if self.output_soft_bytes_max > self.output_hard_bytes_max {
            return Err(format!(
                "--output-soft-bytes-max ({}) must not exceed --output-hard-bytes-max ({})",
                self.output_soft_bytes_max, self.output_hard_bytes_max
            ));
        }
        // OCM's TCRP may be offered over TLS only: then the TLS port stands for the TCP one.
        let ocm_tcrp_off = self.ocm_tcp_port == 0 && self.ocm_tcp_tls_port.is_none();
        if ocm_tcrp_off != (self.ocm_udp_port == 0) {
            return Err(format!(
                "OCM needs both a TCP port (--ocm-tcp-port {} or --ocm-tcp-tls-port) and its UDP \
                 port (--ocm-udp-port {}); set both to 0 to disable OCM",
                self.ocm_tcp_port, self.ocm_udp_port
            ));
        }
        if self.matou_string_bytes_max < self.matou_name_bytes_max.max(self.matou_message_bytes_max)
        {
            return Err(format!(
                "--matou-string-bytes-max ({}) must be at least the name and message limits",
                self.matou_string_bytes_max
            ));
        }
        if self.input_bytes_per_s_max != 0 && self.input_burst_bytes_max < self.read_chunk_bytes {
            return Err(format!(
                "--input-burst-bytes-max ({}) must be at least --read-chunk-bytes ({}): one read \
                 must fit in the burst",
                self.input_burst_bytes_max, self.read_chunk_bytes
            ));
        }
        if self.admin_tls && self.admin_port.is_none() {
            return Err("--admin-tls needs --admin-port".into());
        }
        if self.ocm_tcp_tls_port.is_some() && self.ocm_udp_port == 0 {
            return Err(
                "--ocm-tcp-tls-port needs --ocm-udp-port: OCM's chat is over the UDP port, \
                 which TLS does not cover"
                    .into(),
            );
        }
        if self.cluster.is_some() && self.isolate {
            return Err("--cluster needs the switchboard: it cannot be used with --isolate".into());
        }
        let cluster = self.cluster.map(|url| switchboard::cluster::ClusterConfig {
            url,
            node_name: self
                .node_name
                .unwrap_or_else(switchboard::cluster::default_node_name),
            lease_ms: self.cluster_lease_ms,
            roster_bytes_max: usize::try_from(self.cluster_roster_bytes_max).unwrap_or(usize::MAX),
        });
        let to_usize = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        let port = |value: u16| (value != 0).then_some(value);
        let bin24_users = match &self.bin24_users {
            None => None,
            Some(path) => Some(UserList::load(path).map_err(|err| err.to_string())?),
        };
        if self.bin24_port != 0 && bin24_users.is_none() && !self.bind.is_loopback() {
            warn!(
                "BIN24 listens on {} without --bin24-users: anyone who reaches it can claim any                  name and receive its stored messages",
                self.bind
            );
        }
        let config = Config {
            bind_addr: self.bind,
            room_port: port(self.room_port),
            room_handshake_timeout_ms: self.room_handshake_timeout_ms,
            handshake_timeout_ms: self.handshake_timeout_ms,
            connections_per_ip_max: self.connections_per_ip_max,
            input_bytes_per_s_max: self.input_bytes_per_s_max,
            input_burst_bytes_max: self.input_burst_bytes_max,
            udp_datagrams_per_source_per_s_max: self.udp_datagrams_per_source_per_s_max,
            udp_datagrams_per_source_burst_max: self.udp_datagrams_per_source_burst_max,
            udp_sources_max: to_usize(self.udp_sources_max),
            bin24_port: port(self.bin24_port),
            ccm_port: port(self.ccm_port),
            matou_port: port(self.matou_port),
            web_port: port(self.web_port),
            web_origins: self.web_origins,
            web_message_bytes_max: to_usize(self.web_message_bytes_max),
            web_text_bytes_max: to_usize(self.web_text_bytes_max),
            web_messages_per_s_max: self.web_messages_per_s_max,
            web_receipts_per_sender_max: to_usize(self.web_receipts_per_sender_max),
            web_receipts_max: to_usize(self.web_receipts_max),
            matou_name_bytes_max: to_usize(self.matou_name_bytes_max),
            matou_message_bytes_max: to_usize(self.matou_message_bytes_max),
            matou_string_bytes_max: to_usize(self.matou_string_bytes_max),
            matou_pending_requests_per_user_max: to_usize(self.matou_pending_requests_per_user_max),
            matou_private_requests_per_s_max: self.matou_private_requests_per_s_max,
            matou_private_requests_per_pair_per_s_max: self
                .matou_private_requests_per_pair_per_s_max,
            ocm_tcp_port: port(self.ocm_tcp_port),
            ocm_udp_port: port(self.ocm_udp_port),
            ocm_relay_port: port(self.ocm_relay_port),
            admin_port: self.admin_port,
            room_tls_port: self.room_tls_port,
            bin24_tls_port: self.bin24_tls_port,
            ccm_tls_port: self.ccm_tls_port,
            matou_tls_port: self.matou_tls_port,
            ocm_tcp_tls_port: self.ocm_tcp_tls_port,
            web_tls_port: self.web_tls_port,
            admin_tls: self.admin_tls,
            tls_cert_path: self.tls_cert,
            tls_key_path: self.tls_key,
            admin_bind_addr: self.admin_bind,
            admin_connections_max: to_usize(self.admin_connections_max),
            admin_request_timeout_ms: self.admin_request_timeout_ms,
            admin_request_bytes_max: to_usize(self.admin_request_bytes_max),
            ocm_tcrp_payload_bytes_max: to_usize(self.ocm_tcrp_payload_bytes_max),
            ocm_tcrp_request_timeout_ms: self.ocm_tcrp_request_timeout_ms,
            ocm_room_name_bytes_max: to_usize(self.ocm_room_name_bytes_max),
            ocm_user_name_bytes_max: to_usize(self.ocm_user_name_bytes_max),
            ocm_idle_timeout_ms: self.ocm_idle_timeout_ms,
            ocm_send_failures_max: self.ocm_send_failures_max,
            ocm_rooms_max: to_usize(self.ocm_rooms_max),
            ocm_rooms_per_ip_max: self.ocm_rooms_per_ip_max,
            ocm_room_silent_timeout_ms: self.ocm_room_silent_timeout_ms,
            ocm_room_members_max: to_usize(self.ocm_room_members_max),
            ocm_ack_state1: self.ocm_ack_state1,
            isolate: self.isolate,
            lobby_ocm_room: self.lobby_ocm_room,
            cluster,
            reuse_port: self.reuse_port,
            ocm_relay_peers_max: to_usize(self.ocm_relay_peers_max),
            ocm_relay_peers_per_ip_max: self.ocm_relay_peers_per_ip_max,
            udp_sends_per_s_max: self.udp_sends_per_s_max,
            udp_sends_per_source_per_s_max: self.udp_sends_per_source_per_s_max,
            udp_sends_per_turn_max: to_usize(self.udp_sends_per_turn_max),
            udp_datagrams_per_turn_max: to_usize(self.udp_datagrams_per_turn_max),
            cluster_events_per_turn_max: to_usize(self.cluster_events_per_turn_max),
            udp_socket_buffer_bytes: to_usize(self.udp_socket_buffer_bytes),
            ccm_keepalive_idle_ms: self.ccm_keepalive_idle_ms,
            ccm_keepalive_answer_ms: self.ccm_keepalive_answer_ms,
            ccm_name_bytes_max: to_usize(self.ccm_name_bytes_max),
            ccm_sender_bytes_per_s_max: self.ccm_sender_bytes_per_s_max,
            ccm_pair_bytes_per_s_max: self.ccm_pair_bytes_per_s_max,
            bin24_ack_timeout_ms: self.bin24_ack_timeout_ms,
            bin24_unacked_per_recipient_max: to_usize(self.bin24_unacked_per_recipient_max),
            bin24_offline_window_bytes: to_usize(self.bin24_offline_window_bytes),
            data_dir: self.data_dir,
            offline_frames_per_user_max: self.offline_frames_per_user_max,
            offline_bytes_per_user_max: self.offline_bytes_per_user_max,
            store_group_commit_max: to_usize(self.store_group_commit_max),
            store_frames_max: self.store_frames_max,
            store_bytes_max: self.store_bytes_max,
            store_requests_max: to_usize(self.store_requests_max),
            bin24_delivery_grace_ms: self.bin24_delivery_grace_ms,
            bin24_unconfirmed_bytes_per_conn_max: to_usize(
                self.bin24_unconfirmed_bytes_per_conn_max,
            ),
            bin24_loaded_bytes_max: to_usize(self.bin24_loaded_bytes_max),
            bin24_users,
            bin24_sender_bytes_per_s_max: self.bin24_sender_bytes_per_s_max,
            bin24_pair_bytes_per_s_max: self.bin24_pair_bytes_per_s_max,
            connections_max: to_usize(self.connections_max),
            listen_backlog: self.listen_backlog,
            accepts_per_turn_max: to_usize(self.accepts_per_turn_max),
            accept_pause_ms: self.accept_pause_ms,
            tcp_send_buffer_bytes: to_usize(self.tcp_send_buffer_bytes),
            read_chunk_bytes: to_usize(self.read_chunk_bytes),
            read_budget_bytes: to_usize(self.read_budget_bytes),
            write_iovecs_max: to_usize(self.write_iovecs_max),
            write_budget_bytes: to_usize(self.write_budget_bytes),
            output_hard_bytes_max: to_usize(self.output_hard_bytes_max),
            output_soft_bytes_max: to_usize(self.output_soft_bytes_max),
            output_soft_duration_ms: self.output_soft_duration_ms,
            close_linger_ms: self.close_linger_ms,
            timer_tick_ms: self.timer_tick_ms,
            shutdown_grace_ms: self.shutdown_grace_ms,
            stats_interval_ms: self.stats_interval_ms,
        };
        // Checked on the built Config so the list of TLS ports lives in one place
        // (Config::uses_tls, which the reactor also asks).
        let has_cert_and_key = config.tls_cert_path.is_some() && config.tls_key_path.is_some();
        if config.uses_tls() && !has_cert_and_key {
            return Err(
                "a TLS port (--*-tls-port) or --admin-tls needs --tls-cert FILE and --tls-key FILE"
                    .into(),
            );
        }
        if !config.uses_tls() && (config.tls_cert_path.is_some() || config.tls_key_path.is_some()) {
            warn!("--tls-cert/--tls-key given without a TLS port or --admin-tls: not used");
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(message) => {
            error!("{message}");
            return ExitCode::from(2);
        }
    };
    if config.serves_nothing() {
        error!("every protocol is disabled: nothing to serve");
        return ExitCode::from(2);
    }
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = server.handle_signals() {
        error!("cannot install the SIGINT/SIGTERM/SIGHUP handlers: {err}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            error!("the event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}
