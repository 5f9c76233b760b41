//! The client side of MATOU, without I/O: the users' names, the packets a simulated user
//! writes, what a received packet means against the contract, and the accounting of what
//! arrives (public messages per (receiver, sender) stream, and the join and sign-out notices
//! per pair of users).

use bytes::{Bytes, BytesMut};
use switchboard::protocol::matou::codec::{self, DecodeError, Limits, Packet};

use crate::stats::{SeqCounts, SeqOutcome, SeqTracker};

/// Bytes of a user name: `lg`, the run id in 8 hex digits, the user number in 5 digits.
pub const NAME_BYTES: usize = 15;

/// The name of user `i` in run `run_id`: `lg` + run id + `i + 1`, e.g. `lgdeadbeef00001`.
/// Alphanumeric (the contract's rule 1) and unique to the run, so two runs against one server
/// never take each other's names, and a notice about another client's user is told apart.
pub fn user_name(run_id: u32, i: usize) -> String {
    format!("lg{run_id:08x}{:05}", i + 1)
}

/// The user index a name of this run stands for (`None`: another run's, or not a loadgen name).
pub fn parse_name(name: &[u8], run_id: u32) -> Option<usize> {
    if name.len() != NAME_BYTES || &name[..2] != b"lg" {
        return None;
    }
    if super::stamp::hex_at(name, 2, 10) != Some(u64::from(run_id)) {
        return None;
    }
    let number = name[10..].iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + usize::from(b - b'0'))
    })?;
    number.checked_sub(1)
}

/// CONNECT_REQUEST with the user's name.
pub fn connect_request(name: &str) -> Bytes {
    codec::connect_request(name.as_bytes())
}

/// PUBLIC_MESSAGE carrying a stamped message.
pub fn public_message(message: &[u8]) -> Bytes {
    codec::public_message(message)
}

/// PRIVATE_REQUEST from Src, naming Dst.
pub fn private_request(dst: &str) -> Bytes {
    codec::private_request(dst.as_bytes())
}

/// PRIVATE_ACCEPT from Dst, naming Src.
pub fn private_accept(src: &str) -> Bytes {
    codec::private_accept(src.as_bytes())
}

/// PRIVATE_SRC_PORTS from Src, naming Dst, with the ports it (would) listen on.
pub fn private_src_ports(dst: &str, message_port: i32, file_port: i32) -> Bytes {
    codec::private_src_ports(dst.as_bytes(), message_port, file_port)
}

pub fn public_sign_out() -> Bytes {
    codec::public_sign_out()
}

/// A user named in a packet from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// One of this run's users, by index.
    Ours(usize),
    /// Someone else's client (another run, a person): counted, not checked.
    Foreign,
}

/// A packet from the server, with this run's names resolved to user indices. Whether it fits
/// the user's state (and the open links) is the loop's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    ConnectResponse {
        accepted: bool,
    },
    ConnectNotify(Peer),
    SignOutNotify(Peer),
    /// Checked against the stamp in `message` by the loop.
    Broadcast {
        username: Bytes,
        message: Bytes,
    },
    /// To Dst: Src asks for a link.
    RequestNotify {
        src: usize,
    },
    /// To Src: Dst accepted; its address.
    DstAddress {
        dst: usize,
        address: Bytes,
    },
    /// To Dst: Src's address and ports.
    SrcAddress {
        src: usize,
        address: Bytes,
        message_port: i32,
        file_port: i32,
    },
    Error {
        code: i32,
        reason: Bytes,
    },
    /// Anything the contract does not allow here, in words: a protocol error.
    Violation(String),
}

/// Cuts the next server packet from `src` and resolves it (`Ok(None)`: more bytes needed). An
/// error means framing is lost: the connection cannot be read any further.
pub fn decode(
    src: &mut BytesMut,
    limits: &Limits,
    run_id: u32,
    users: usize,
) -> Result<Option<Incoming>, DecodeError> {
    Ok(codec::decode_from_server(src, limits)?.map(|packet| classify(packet, run_id, users)))
}

/// Resolves one decoded server packet.
pub fn classify(packet: Packet, run_id: u32, users: usize) -> Incoming {
    let peer = |name: &[u8]| match parse_name(name, run_id) {
        Some(i) if i < users => Ok(Peer::Ours(i)),
        Some(_) => Err(violation(format!(
            "a name of this run beyond its {users} users: {}",
            String::from_utf8_lossy(name)
        ))),
        None => Ok(Peer::Foreign),
    };
    // The loadgen only ever links its own users with each other.
    let ours = |what: &str, name: &[u8]| match peer(name) {
        Ok(Peer::Ours(i)) => Ok(i),
        Ok(Peer::Foreign) => Err(violation(format!(
            "{what} naming {}, not a user of this run",
            String::from_utf8_lossy(name)
        ))),
        Err(e) => Err(e),
    };
    let resolved = match packet {
        Packet::ConnectResponse { accepted } => Ok(Incoming::ConnectResponse { accepted }),
        Packet::ConnectNotify { username } => peer(&username).map(Incoming::ConnectNotify),
        Packet::SignOutNotify { username } => peer(&username).map(Incoming::SignOutNotify),
        Packet::PublicBroadcast { username, message } => {
            Ok(Incoming::Broadcast { username, message })
        }
        Packet::PrivateRequestNotify { username } => {
            ours("PRIVATE_REQUEST_NOTIFY", &username).map(|src| Incoming::RequestNotify { src })
        }
        Packet::PrivateDstAddress { username, address } => {
            ours("PRIVATE_DST_ADDRESS", &username).map(|dst| Incoming::DstAddress { dst, address })
        }
        Packet::PrivateSrcAddress {
            username,
            address,
            message_port,
            file_port,
        } => ours("PRIVATE_SRC_ADDRESS", &username).map(|src| Incoming::SrcAddress {
            src,
            address,
            message_port,
            file_port,
        }),
        Packet::Error { code, reason } => Ok(Incoming::Error { code, reason }),
        // decode_from_server refuses every other type; should one get through, it is wrong.
        other => Err(violation(format!(
            "packet type {} from the server",
            other.packet_type()
        ))),
    };
    resolved.unwrap_or_else(|e| e)
}

fn violation(why: String) -> Incoming {
    Incoming::Violation(why)
}

/// Losses and duplicates of the public messages, per (receiver, sender) stream: every joined
/// user receives every message, its own included, as the ROOM scenario's broadcast.
#[derive(Clone, Debug)]
pub struct Accounting {
    seq: SeqTracker,
    /// Messages each sender wrote completely.
    sent: Vec<u64>,
    sent_total: u64,
}

impl Accounting {
    pub fn new(receivers: usize, senders: usize) -> Accounting {
        Accounting {
            seq: SeqTracker::new(receivers, senders),
            sent: vec![0; senders],
            sent_total: 0,
        }
    }

    pub fn on_sent(&mut self, sender: usize) {
        self.sent[sender] += 1;
        self.sent_total += 1;
    }

    /// Message `seq` of `sender` arrived at `receiver` (both checked by the caller).
    pub fn on_delivered(&mut self, receiver: usize, sender: usize, seq: u64) -> SeqOutcome {
        self.seq.observe(receiver, sender, seq)
    }

    /// Written messages never delivered to the receivers that count (so far).
    pub fn undelivered(&self, receiver_counts: impl Fn(usize) -> bool) -> u64 {
        self.seq.undelivered(receiver_counts, &self.sent)
    }

    /// Every counted receiver has every written message. A cheap test on the totals first:
    /// the full table walk only runs once enough deliveries arrived.
    pub fn complete(&self, receiver_counts: impl Fn(usize) -> bool, receivers: u64) -> bool {
        let counts = self.seq.counts;
        counts.delivered + counts.gap_losses >= self.sent_total * receivers
            && self.seq.all_reached(receiver_counts, &self.sent)
    }

    pub fn sent_total(&self) -> u64 {
        self.sent_total
    }

    pub fn counts(&self) -> SeqCounts {
        self.seq.counts
    }
}

/// Who has been told about whom: one bit per (receiver, subject) pair, for the notices the
/// server sends to every accepted user when one joins (CONNECT_NOTIFY) or leaves
/// (SIGN_OUT_NOTIFY).
///
/// For two users who were both accepted throughout, exactly one of them hears about the other
/// joining: the earlier one, when the later one joins (the later one was not accepted yet when
/// the earlier joined). Everyone hears about its own join. The same holds for sign-outs when
/// every user signs out: whoever goes first is heard of by the one still there. So the check
/// needs no knowledge of the order the server took the users in.
#[derive(Clone, Debug)]
pub struct NoticeLedger {
    users: usize,
    bits: Vec<u64>,
    /// Notices of this run's users received (duplicates included).
    pub received: u64,
    pub duplicates: u64,
}

/// The verdict of a [`NoticeLedger`] over the users that count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoticeCheck {
    /// Notices expected: one per user about itself (when `own` is checked) plus one per pair.
    pub expected: u64,
    /// Users that never heard about themselves.
    pub own_missing: u64,
    /// Pairs where neither heard about the other.
    pub pairs_missing: u64,
    /// Pairs where both heard about the other: one of them was told about a user that was not
    /// accepted yet, or no longer.
    pub pairs_both: u64,
}

impl NoticeCheck {
    #[cfg(test)]
    pub fn clean(&self) -> bool {
        self.own_missing + self.pairs_missing + self.pairs_both == 0
    }
}

impl NoticeLedger {
    pub fn new(users: usize) -> NoticeLedger {
        NoticeLedger {
            users,
            bits: vec![0; (users * users).div_ceil(64)],
            received: 0,
            duplicates: 0,
        }
    }

    fn bit(&self, receiver: usize, subject: usize) -> bool {
        let at = receiver * self.users + subject;
        self.bits[at / 64] >> (at % 64) & 1 == 1
    }

    /// `receiver` was told about `subject` (both indices checked by the caller). False for a
    /// duplicate (counted).
    pub fn on_notice(&mut self, receiver: usize, subject: usize) -> bool {
        self.received += 1;
        let at = receiver * self.users + subject;
        let (word, mask) = (at / 64, 1u64 << (at % 64));
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            return false;
        }
        self.bits[word] |= mask;
        true
    }

    /// Whether `user` heard about itself.
    #[cfg(test)]
    pub fn heard_self(&self, user: usize) -> bool {
        self.bit(user, user)
    }

    /// Checks every user and pair of users that `counts`; with `own`, also that each heard
    /// about itself (joins: yes; sign-outs: the server never tells the leaver).
    pub fn check(&self, counts: impl Fn(usize) -> bool, own: bool) -> NoticeCheck {
        let members: Vec<usize> = (0..self.users).filter(|&u| counts(u)).collect();
        let n = members.len() as u64;
        let mut check = NoticeCheck {
            expected: n * n.saturating_sub(1) / 2 + if own { n } else { 0 },
            ..NoticeCheck::default()
        };
        for (i, &a) in members.iter().enumerate() {
            if own && !self.bit(a, a) {
                check.own_missing += 1;
            }
            for &b in &members[i + 1..] {
                match (self.bit(a, b), self.bit(b, a)) {
                    (false, false) => check.pairs_missing += 1,
                    (true, true) => check.pairs_both += 1,
                    _ => {}
                }
            }
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u32 = 0x0bad_cafe;

    fn name(i: usize) -> Vec<u8> {
        user_name(RUN, i).into_bytes()
    }

    /// Every packet in `bytes`, fed in two pieces split at `cut`.
    fn decode_all(bytes: &[u8], cut: usize) -> Vec<Incoming> {
        let limits = Limits::default();
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut found = Vec::new();
        while let Some(incoming) = decode(&mut buf, &limits, RUN, 10).unwrap() {
            found.push(incoming);
        }
        buf.extend_from_slice(&bytes[cut..]);
        while let Some(incoming) = decode(&mut buf, &limits, RUN, 10).unwrap() {
            found.push(incoming);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        found
    }

    #[test]
    fn client_packets_are_what_the_contract_shows() {
        let name = user_name(RUN, 0);
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 15];
        expected.extend_from_slice(name.as_bytes());
        assert_eq!(&connect_request(&name)[..], &expected[..]);
        assert_eq!(&public_message(b"hi")[..], b"\0\0\0\x04\0\0\0\x02hi");
        assert_eq!(&private_request("ab")[..], b"\0\0\0\x06\0\0\0\x02ab");
        assert_eq!(&private_accept("ab")[..], b"\0\0\0\x08\0\0\0\x02ab");
        assert_eq!(
            &private_src_ports("ab", 20_000, 20_001)[..],
            b"\0\0\0\x0a\0\0\0\x02ab\0\0\x4e\x20\0\0\x4e\x21"
        );
        assert_eq!(&public_sign_out()[..], b"\0\0\0\x0f");
    }

    #[test]
    fn server_packets_are_resolved_to_users() {
        let localhost = [127, 0, 0, 1];
        let mut stream = Vec::new();
        for packet in [
            codec::connect_response(true),
            codec::connect_response(false),
            codec::connect_notify(&name(3)),
            codec::connect_notify(b"alice"),
            codec::public_broadcast(&name(1), b"LGMT..."),
            codec::private_request_notify(&name(2)),
            codec::private_dst_address(&name(4), &localhost),
            codec::private_src_address(&name(5), &localhost, 20_000, 20_001),
            codec::sign_out_notify(&name(9)),
            codec::sign_out_notify(&user_name(RUN + 1, 9).into_bytes()),
            codec::error(codec::ErrorCode::UnknownUser, b"no such user"),
        ] {
            stream.extend_from_slice(&packet);
        }
        let expected = vec![
            Incoming::ConnectResponse { accepted: true },
            Incoming::ConnectResponse { accepted: false },
            Incoming::ConnectNotify(Peer::Ours(3)),
            Incoming::ConnectNotify(Peer::Foreign),
            Incoming::Broadcast {
                username: Bytes::from(name(1)),
                message: Bytes::from_static(b"LGMT..."),
            },
            Incoming::RequestNotify { src: 2 },
            Incoming::DstAddress {
                dst: 4,
                address: Bytes::from_static(&[127, 0, 0, 1]),
            },
            Incoming::SrcAddress {
                src: 5,
                address: Bytes::from_static(&[127, 0, 0, 1]),
                message_port: 20_000,
                file_port: 20_001,
            },
            Incoming::SignOutNotify(Peer::Ours(9)),
            Incoming::SignOutNotify(Peer::Foreign),
            Incoming::Error {
                code: 4,
                reason: Bytes::from_static(b"no such user"),
            },
        ];
        // Whole, and cut anywhere: a packet split across reads waits for its rest.
        for cut in [0, 1, 3, 4, 7, 9, 20, stream.len() - 1, stream.len()] {
            assert_eq!(decode_all(&stream, cut), expected, "cut at {cut}");
        }
    }

    #[test]
    fn brokering_with_strangers_or_unknown_users_is_a_violation() {
        for packet in [
            codec::private_request_notify(b"alice"),
            codec::private_dst_address(b"alice", &[127, 0, 0, 1]),
            codec::private_src_address(&user_name(RUN + 1, 0).into_bytes(), &[127, 0, 0, 1], 1, 2),
            // This run's name, but user 11 of 10.
            codec::connect_notify(&name(10)),
        ] {
            let found = decode_all(&packet, 0);
            assert!(matches!(&found[..], [Incoming::Violation(_)]), "{found:?}");
        }
    }

    #[test]
    fn framing_errors_are_errors() {
        let limits = Limits::default();
        for bad in [
            // A client's packet (PUBLIC_MESSAGE) coming from the server.
            codec::public_message(b"hi").to_vec(),
            // An unknown type.
            vec![0, 0, 0, 99],
            // A negative string size.
            vec![0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff],
            // An address of 5 bytes.
            [
                &codec::private_dst_address(&name(0), &[127, 0, 0, 1])[..4 + 4 + 15],
                &[0, 0, 0, 5],
            ]
            .concat(),
        ] {
            let mut buf = BytesMut::from(&bad[..]);
            assert!(decode(&mut buf, &limits, RUN, 10).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_alphanumeric_unique_to_the_run_and_parse_back() {
        let name = user_name(0xdead_beef, 0);
        assert_eq!(name, "lgdeadbeef00001");
        assert_eq!(name.len(), NAME_BYTES);
        for i in [0, 1, 41, 9_999] {
            let name = user_name(7, i);
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
            assert!(name.len() <= 32, "the contract's longest name");
            assert_eq!(parse_name(name.as_bytes(), 7), Some(i));
            assert_eq!(parse_name(name.as_bytes(), 8), None, "another run's");
        }
        for bad in [
            &b""[..],
            b"alice",
            b"lg0000000700001x",
            b"lg000000070000x",
            b"xx0000000700001",
            b"lg0000000700000", // number 0: no user
            b"lg00000007-0001",
        ] {
            assert_eq!(parse_name(bad, 7), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn public_accounting_counts_losses_and_duplicates_per_receiver_and_sender() {
        // 3 receivers, 2 senders (users 0 and 1 send; everyone receives, senders included).
        let mut a = Accounting::new(3, 2);
        for _ in 0..4 {
            a.on_sent(0);
        }
        for _ in 0..2 {
            a.on_sent(1);
        }
        assert_eq!(a.sent_total(), 6);
        assert_eq!(a.undelivered(|_| true), 18);
        for r in 0..3 {
            for seq in 0..4 {
                assert_eq!(a.on_delivered(r, 0, seq), SeqOutcome::InOrder);
            }
        }
        assert!(!a.complete(|_| true, 3));
        // Receiver 0 gets both of sender 1's, receiver 1 skips the first, receiver 2 gets the
        // second twice and never the first.
        assert_eq!(a.on_delivered(0, 1, 0), SeqOutcome::InOrder);
        assert_eq!(a.on_delivered(0, 1, 1), SeqOutcome::InOrder);
        assert_eq!(a.on_delivered(1, 1, 1), SeqOutcome::Gap(1));
        assert_eq!(a.on_delivered(2, 1, 1), SeqOutcome::Gap(1));
        assert_eq!(a.on_delivered(2, 1, 1), SeqOutcome::Behind);
        let counts = a.counts();
        assert_eq!(
            (
                counts.delivered,
                counts.gap_losses,
                counts.duplicates_or_reorders
            ),
            (12 + 4, 2, 1)
        );
        // Gaps are counted when the later message arrives, so nothing is still undelivered
        // and the drain can end.
        assert_eq!(a.undelivered(|_| true), 0);
        assert!(a.complete(|_| true, 3));
        // A receiver that left the run does not count; one that missed the end does.
        let mut b = Accounting::new(2, 1);
        b.on_sent(0);
        b.on_sent(0);
        b.on_delivered(0, 0, 0);
        b.on_delivered(0, 0, 1);
        b.on_delivered(1, 0, 0);
        assert_eq!(b.undelivered(|_| true), 1);
        assert!(!b.complete(|_| true, 2));
        assert_eq!(b.undelivered(|r| r == 0), 0);
        assert!(b.complete(|r| r == 0, 1));
    }

    /// Users joining in `order`, each told about itself and every later one.
    fn joins(users: usize, order: &[usize]) -> NoticeLedger {
        let mut ledger = NoticeLedger::new(users);
        for (k, &subject) in order.iter().enumerate() {
            for &receiver in &order[..=k] {
                assert!(ledger.on_notice(receiver, subject));
            }
        }
        ledger
    }

    #[test]
    fn join_notices_in_any_order_check_clean() {
        let ledger = joins(5, &[3, 0, 4, 1, 2]);
        assert_eq!(ledger.received, 15);
        let check = ledger.check(|_| true, true);
        assert_eq!(check.expected, 15);
        assert!(check.clean(), "{check:?}");
        assert!((0..5).all(|u| ledger.heard_self(u)));
    }

    #[test]
    fn missing_own_and_duplicated_notices_are_caught() {
        let mut ledger = NoticeLedger::new(4);
        // 0 joins, then 1, then 2; 3 never heard about itself, nor anyone about it.
        for (receiver, subject) in [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)] {
            ledger.on_notice(receiver, subject);
        }
        assert!(!ledger.on_notice(0, 1), "a duplicate");
        assert_eq!((ledger.received, ledger.duplicates), (7, 1));
        let check = ledger.check(|_| true, true);
        assert_eq!(check.expected, 4 + 6);
        assert_eq!(check.own_missing, 1);
        assert_eq!(check.pairs_missing, 3, "3 with 0, 1 and 2");
        assert_eq!(check.pairs_both, 0);
        // Without user 3 (it failed, say) the rest is clean.
        assert!(ledger.check(|u| u != 3, true).clean());
        // 2 told about 0, who joined before it: both heard of each other.
        ledger.on_notice(2, 0);
        assert_eq!(ledger.check(|u| u != 3, true).pairs_both, 1);
    }

    #[test]
    fn sign_out_notices_need_no_own() {
        // Users sign out in the order 2, 0, 1: each is heard of by those still there.
        let mut ledger = NoticeLedger::new(3);
        let order = [2, 0, 1];
        for (k, &leaver) in order.iter().enumerate() {
            for &other in &order[k + 1..] {
                ledger.on_notice(other, leaver);
            }
        }
        let check = ledger.check(|_| true, false);
        assert_eq!(check.expected, 3);
        assert!(check.clean(), "{check:?}");
        assert!(
            !ledger.check(|_| true, true).clean(),
            "nobody hears of itself"
        );
    }
}
