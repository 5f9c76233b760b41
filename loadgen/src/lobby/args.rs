//! `loadgen lobby`'s flags and their translation into the LOBBY scenario's config.

use std::time::Duration;

use clap::Args;

use crate::args::{resolve_loopback, resolve_one_host, Pace};
use crate::lobby;
use crate::ocm::args::{OCM_RECV_BUFFER_DEFAULT, OCM_RECV_BUFFER_MAX};
use crate::registry::{ScenarioArgs, Single};
use crate::{run_id, CommonArgs, RATE_PER_S_MAX};

/// Default `--drain`.
pub(crate) const LOBBY_DRAIN_DEFAULT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub(crate) struct LobbyArgs {
    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    room_port: u16,
    /// Server port of the MATOU listener.
    #[arg(long, default_value_t = 7_777)]
    matou_port: u16,
    /// Server port of the CCM listener.
    #[arg(long, default_value_t = 5_454)]
    ccm_port: u16,
    /// The OCM TCRP listener (TCP), where the OCM members join the lobby room.
    #[arg(long, default_value_t = 9_002)]
    ocm_tcp_port: u16,
    /// The OCM chat socket (UDP).
    #[arg(long, default_value_t = 9_003)]
    ocm_udp_port: u16,
    /// chatd's web listener (WEB members' WebSocket at `/ws`).
    #[arg(long, default_value_t = 8_080)]
    web_port: u16,

    /// ROOM members (aliases lyr<run id>00001, ...); 0 leaves ROOM out. At most 1000 per
    /// protocol and 2000 in all.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    room: u64,
    /// MATOU users (lym<run id>00001, ...); 0 leaves MATOU out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    matou: u64,
    /// CCM users (lyc<run id>00001, ...), sending to `*`; 0 leaves CCM out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    ccm: u64,
    /// OCM members of the lobby room (lyo<run id>00001, ...; the first creates the room, or
    /// joins it if it exists); 0 leaves OCM out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    ocm: u64,
    /// WEB members (lyw<run id>00001, ...), over a WebSocket; 0 (the default) leaves WEB out.
    /// chatd allows each --web-messages-per-s-max (20) messages per second.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    web: u64,

    /// The OCM room that is chatd's lobby (its --lobby-ocm-room).
    #[arg(long, default_value = "lobby")]
    ocm_room: String,

    /// Lobby messages per second over all members together (every member that joined sends
    /// rate/members per second, evenly spaced, phase-shifted). Messages, not deliveries: each
    /// reaches every other member, and its sender too in ROOM and MATOU, so the server
    /// delivers about rate x members per second (e.g. 250 with 400 members: 100,000/s); at
    /// most 1000000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Bytes of every lobby text: the 52-byte stamp, padded. From 52 to 512 (MATOU's largest
    /// message, the smallest of the four protocols' limits).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// SO_RCVBUF asked for on every OCM member's UDP socket, in bytes.
    #[arg(long, default_value_t = OCM_RECV_BUFFER_DEFAULT)]
    recv_buffer_bytes: usize,

    #[command(flatten)]
    common: CommonArgs,
}

impl ScenarioArgs for LobbyArgs {
    type Kind = lobby::Lobby;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn config(&self) -> Result<Single<lobby::Lobby>, String> {
        let common = &self.common;
        let members = [self.room, self.matou, self.ccm, self.ocm, self.web].map(|n| n as usize);
        let total: usize = members.iter().sum();
        if !(2..=lobby::MEMBERS_MAX).contains(&total) {
            let web = if self.web > 0 { " + --web" } else { "" };
            return Err(format!(
                "--room + --matou + --ccm + --ocm{web} is {total}; from 2 to {} members in all",
                lobby::MEMBERS_MAX
            ));
        }
        let deliveries_per_s = self.rate * total as u64;
        if deliveries_per_s > lobby::DELIVERIES_PER_S_MAX {
            return Err(format!(
                "--rate x members plans up to {deliveries_per_s} deliveries/s; at most {} (every \
                 delivery is read and checked by one loop)",
                lobby::DELIVERIES_PER_S_MAX
            ));
        }
        if !(lobby::wire::STAMP_BYTES..=lobby::wire::MESSAGE_BYTES_MAX)
            .contains(&self.payload_bytes)
        {
            return Err(format!(
                "--payload-bytes must be between {} (the stamp) and {} (the largest MATOU message)",
                lobby::wire::STAMP_BYTES,
                lobby::wire::MESSAGE_BYTES_MAX
            ));
        }
        if self.ocm_room.is_empty() || self.ocm_room.len() > 255 {
            return Err("--ocm-room must be 1 to 255 bytes".into());
        }
        if !(1..=OCM_RECV_BUFFER_MAX).contains(&self.recv_buffer_bytes) {
            return Err(format!(
                "--recv-buffer-bytes must be between 1 and {OCM_RECV_BUFFER_MAX}"
            ));
        }
        let ports = [
            self.room_port,
            self.matou_port,
            self.ccm_port,
            self.ocm_tcp_port,
            self.ocm_udp_port,
            self.web_port,
        ];
        let ocm = (self.ocm_room.clone(), self.recv_buffer_bytes);
        let pace = Pace::single(common, self.rate, LOBBY_DRAIN_DEFAULT);
        let ocm_why =
            "or --ocm 0: each node has its own OCM lobby room, so OCM members cannot be spread";
        let cfg = build(
            &common.host,
            ports,
            members,
            ocm,
            self.payload_bytes,
            pace,
            ocm_why,
        )?;
        if self.web > 0 {
            let asked = format!("--rate {} over {total} members", self.rate);
            let per_member = self.rate as f64 / total as f64;
            if let Some(note) = crate::web::args::over_chatd_limit(per_member, &asked) {
                eprintln!("loadgen: {note}");
            }
        }
        let web = match self.web {
            0 => String::new(),
            n => format!(", WEB {n}"),
        };
        let title = format!(
            "LOBBY: ROOM {}, MATOU {}, CCM {}, OCM {}{web}, {} msg/s (up to {deliveries_per_s} \
             deliveries/s), {} B, {:?}",
            self.room,
            self.matou,
            self.ccm,
            self.ocm,
            self.rate,
            self.payload_bytes,
            common.duration
        );
        // A TCP connection per member, and a UDP socket per OCM member.
        let files = (total + members[3]) as u64;
        Ok((cfg, files, title))
    }
}

/// The scenario's config, from the subcommand's flags or from `loadgen mix --lobby`: `ports`
/// are ROOM's, MATOU's, CCM's, OCM's TCP and UDP ones and WEB's on `host`; `ocm` the OCM room
/// and its members' receive buffer.
pub(crate) fn build(
    host: &str,
    [room, matou, ccm, ocm_tcp, ocm_udp, web]: [u16; 6],
    members: [usize; lobby::ledger::KIND_COUNT],
    (ocm_room, recv_buffer_bytes): (String, usize),
    message_bytes: usize,
    pace: Pace,
    ocm_why: &str,
) -> Result<lobby::LobbyConfig, String> {
    let target = |port| resolve_loopback(host, port);
    // Each node has its own OCM lobby room, made by its first OCM member: the members of one
    // room cannot be spread, so with OCM members `--host` names one host (`ocm_why` says so).
    let ocm_target = |port| match members[3] {
        0 => target(port),
        _ => resolve_one_host(host, port, ocm_why),
    };
    Ok(lobby::LobbyConfig {
        room_target: target(room)?,
        matou_target: target(matou)?,
        ccm_target: target(ccm)?,
        ocm_tcp_target: ocm_target(ocm_tcp)?,
        ocm_udp_target: ocm_target(ocm_udp)?,
        web_target: target(web)?,
        members,
        ocm_room,
        message_bytes,
        recv_buffer_bytes,
        run_id: run_id(),
        pace,
    })
}
