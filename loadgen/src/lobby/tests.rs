//! The lobby scenario against the real chatd on ephemeral ports: with the switchboard on,
//! every (origin, destination) pair delivers and nothing is lost; with `--isolate`, every
//! cross-protocol delivery is reported lost and only those.

use switchboard::config::Config;
use switchboard::reactor::{ProtocolKind, Server, UdpKind};

use super::ledger::{Kind, KINDS};
use super::report::Report;
use super::{Lobby, LobbyConfig};
use crate::args::Pace;
use crate::registry::{run_alone, ScenarioKind};

/// A fresh directory for the server's BIN24 store, removed at the end.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a short lobby of `per_protocol` members of each protocol against a chatd started
/// here (`isolate`: its switchboard off), and returns the report.
fn run_against_chatd(isolate: bool, per_protocol: usize, drain_us: u64) -> Report {
    let data = TempDir(
        std::env::temp_dir().join(format!("loadgen-lobby-{}-{isolate}", std::process::id())),
    );
    let server = Server::bind(Config {
        room_port: Some(0),
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        ocm_relay_port: None,
        // An ephemeral port, not the default 8080: tests run side by side.
        web_port: Some(0),
        data_dir: data.0.clone(),
        isolate,
        ..Config::default()
    })
    .unwrap();
    let tcp = |kind| server.local_addr(kind).unwrap();
    let cfg = LobbyConfig {
        room_target: tcp(ProtocolKind::Room),
        matou_target: tcp(ProtocolKind::Matou),
        ccm_target: tcp(ProtocolKind::Ccm),
        ocm_tcp_target: tcp(ProtocolKind::Ocm),
        ocm_udp_target: server.local_udp_addr(UdpKind::OcmChat).unwrap(),
        web_target: tcp(ProtocolKind::Web),
        members: [per_protocol; 5],
        ocm_room: "lobby".to_string(),
        message_bytes: 80,
        recv_buffer_bytes: 1 << 20,
        run_id: 0x1b0b_b700 + u32::from(isolate),
        pace: Pace {
            rate_per_s: 200,
            duration_us: 1_000_000,
            warmup_us: 200_000,
            drain_us,
            connect_rate_per_s: 2_000,
            seed: 0,
            progress: false,
        },
    };
    let handle = server.handle();
    let server_thread = std::thread::spawn(move || server.run());
    let outcome = run_alone::<Lobby>(&cfg);
    handle.shutdown();
    server_thread.join().unwrap().unwrap();
    let outcome = outcome.unwrap_or_else(|e| panic!("{e:?}"));
    let (plotted, diagnostic) = Lobby::histograms(&outcome);
    assert_eq!(plotted[0].0, "same-protocol");
    assert_eq!(plotted[1].0, "cross-protocol");
    assert!(diagnostic.iter().any(|(name, _)| *name == "ocm-to-room"));
    Lobby::report(&cfg, 1, false, &outcome)
}

#[test]
fn every_protocol_reaches_every_other_in_the_lobby_and_nothing_is_lost() {
    let report = run_against_chatd(false, 4, 3_000_000);
    let text = report.to_text();
    assert_eq!(report.head.connections.joined, 20, "{text}");
    assert_eq!(report.errors.connect + report.errors.protocol, 0, "{text}");
    assert_eq!(report.errors.read + report.errors.write, 0, "{text}");
    assert_eq!(report.figures.losses.total, 0, "{text}");
    assert_eq!(report.figures.duplicates_or_reorders, 0, "{text}");
    assert_eq!(report.not_sent.total, 0, "{text}");
    assert_eq!(report.figures.pairs.len(), 25, "{text}");
    for origin in KINDS {
        for destination in KINDS {
            let pair = report.pair(origin, destination).unwrap();
            assert!(pair.delivered > 0, "{origin:?} -> {destination:?}: {text}");
            assert_eq!(pair.delivered, pair.expected, "{text}");
            assert!(pair.latency_ms.count > 0, "{text}");
        }
    }
    // 4 members each: a CCM (or OCM) message reaches 19 members, a ROOM (or MATOU, or WEB)
    // one 20.
    let room_to_room = report.pair(Kind::Room, Kind::Room).unwrap();
    let room_to_ccm = report.pair(Kind::Room, Kind::Ccm).unwrap();
    assert_eq!(room_to_room.expected, room_to_ccm.expected, "{text}");
    let ccm_to_ccm = report.pair(Kind::Ccm, Kind::Ccm).unwrap();
    let ccm_to_room = report.pair(Kind::Ccm, Kind::Room).unwrap();
    assert_eq!(ccm_to_ccm.expected * 4, ccm_to_room.expected * 3, "{text}");
    assert!(report.figures.latency_ms.same_protocol.count > 0, "{text}");
    assert!(report.figures.latency_ms.cross_protocol.count > 0, "{text}");
    assert!(
        report.figures.latency_ms.cross_over_same_p99.is_some(),
        "{text}"
    );
    assert!(report.others.ocm_room_created, "{text}");
    assert_eq!(report.outcome.exit_code, 0, "{text}");
    assert!(text.contains("cross-protocol"), "{text}");
    assert!(text.contains("matou -> ocm"), "{text}");
    assert!(
        text.contains("web -> room") && text.contains("ocm -> web"),
        "{text}"
    );
    let web_to_web = report.pair(Kind::Web, Kind::Web).unwrap();
    assert_eq!(
        web_to_web.expected, room_to_room.expected,
        "WEB echoes: {text}"
    );
}

#[test]
fn with_the_switchboard_off_every_cross_protocol_delivery_is_lost() {
    let report = run_against_chatd(true, 2, 300_000);
    let text = report.to_text();
    assert_eq!(report.head.connections.joined, 10, "{text}");
    for origin in KINDS {
        for destination in KINDS {
            let pair = report.pair(origin, destination).unwrap();
            if origin == destination {
                assert_eq!(pair.lost, 0, "{origin:?}: {text}");
                assert!(pair.delivered > 0, "{origin:?}: {text}");
            } else {
                assert_eq!(pair.delivered, 0, "{origin:?} -> {destination:?}: {text}");
                assert!(pair.lost > 0, "{origin:?} -> {destination:?}: {text}");
                assert_eq!(pair.lost, pair.expected, "{text}");
            }
        }
    }
    assert_eq!(
        report.figures.losses.cross_protocol, report.figures.losses.total,
        "{text}"
    );
    assert_eq!(report.outcome.exit_code, 1, "{text}");
    assert!(text.contains("every loss crossed protocols"), "{text}");
}
