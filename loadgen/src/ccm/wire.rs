//! The client side of CCM, without I/O: the messages a simulated user writes, what a received
//! message means against the contract, the keepalive decision, and per-sender accounting.

use bytes::Bytes;
use switchboard::protocol::ccm::codec::{encode, Message, MessageType};

use crate::stats::{SeqCounts, SeqOutcome, SeqTracker};

/// The token the server hands out: 32 hex characters.
pub const TOKEN_HEX_LEN: usize = 32;
const UTF8: &[u8] = b"utf-8";

/// How a simulated user behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends on the plan and answers every keepalive at once.
    Active,
    /// Identifies, then never sends anything again: the server must close it.
    Silent,
}

/// The first message of a connection: its content is the user's name (as the original client,
/// `NotDefined` with `Message-Encoding`; a `Content-Length` too, which the server honours).
pub fn identify(name: &str) -> Bytes {
    encode(
        MessageType::NotDefined.as_str(),
        &[("Message-Encoding", UTF8)],
        name.as_bytes(),
    )
}

/// A message to `addressee`, with the connection's token.
pub fn text(token: &[u8], addressee: &str, content: &[u8]) -> Bytes {
    encode(
        MessageType::Text.as_str(),
        &[
            ("User", token),
            ("Addressee", addressee.as_bytes()),
            ("Message-Encoding", UTF8),
        ],
        content,
    )
}

/// What to write when the server's `Connect` keepalive arrives: an active user answers with
/// `Connect` at once (with its token, which the server checks when present); a silent one
/// never answers.
pub fn keepalive_reply(role: Role, token: &[u8]) -> Option<Bytes> {
    match role {
        Role::Active => Some(encode(
            MessageType::Connect.as_str(),
            &[("User", token)],
            b"",
        )),
        Role::Silent => None,
    }
}

/// A received message, judged against the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The answer to the identification: the token.
    Identity(Bytes),
    /// The server's keepalive `Connect`.
    Keepalive,
    /// A delivered message.
    Text {
        sender: Bytes,
        addressee: Bytes,
        content: Bytes,
    },
    /// Anything the contract does not allow here, in words: a protocol error.
    Violation(String),
}

/// Judges one decoded message. `identified`: the connection already has its token (before
/// that only `Identity` is expected; after, never again).
pub fn classify(message: &Message, identified: bool) -> Incoming {
    let kind = String::from_utf8_lossy(&message.kind);
    if &message.version[..] != b"1.0" {
        return violation(format!(
            "version {:?} in a {kind} message",
            String::from_utf8_lossy(&message.version)
        ));
    }
    // The server always writes Content-Length (decode checked it against the content).
    if message.attribute("Content-Length").is_none() {
        return violation(format!("{kind} without Content-Length"));
    }
    match message.message_type() {
        Some(MessageType::Identity) if !identified => match message.attribute("User") {
            Some(token) if is_token(token) && message.content.is_empty() => {
                Incoming::Identity(token.clone())
            }
            Some(token) => violation(format!(
                "Identity with User {:?} and {} content bytes (want 32 hex, none)",
                String::from_utf8_lossy(token),
                message.content.len()
            )),
            None => violation("Identity without User".to_string()),
        },
        Some(MessageType::Connect) if identified => {
            if message.content.is_empty() {
                Incoming::Keepalive
            } else {
                violation(format!(
                    "keepalive Connect with {} content bytes",
                    message.content.len()
                ))
            }
        }
        Some(MessageType::Text) if identified => {
            let encoding = message.attribute("Message-Encoding");
            match (
                message.attribute("Sender"),
                message.attribute("Addressee"),
                encoding,
            ) {
                (Some(sender), Some(addressee), Some(enc)) if enc.eq_ignore_ascii_case(UTF8) => {
                    Incoming::Text {
                        sender: sender.clone(),
                        addressee: addressee.clone(),
                        content: message.content.clone(),
                    }
                }
                _ => violation(format!(
                    "Text without Sender, Addressee or Message-Encoding utf-8: {:?}",
                    message.attributes
                )),
            }
        }
        Some(MessageType::Error) => violation(format!(
            "Error {}: {}",
            message
                .attribute("Reason")
                .map_or_else(|| "(no Reason)".into(), |r| String::from_utf8_lossy(r)),
            String::from_utf8_lossy(&message.content)
        )),
        _ => violation(format!(
            "unexpected {kind} message{}",
            if identified {
                ""
            } else {
                " before the Identity"
            }
        )),
    }
}

fn violation(why: String) -> Incoming {
    Incoming::Violation(why)
}

fn is_token(value: &[u8]) -> bool {
    value.len() == TOKEN_HEX_LEN && value.iter().all(u8::is_ascii_hexdigit)
}

/// Losses and duplicates per (sender, receiver) stream. Every sender sends to exactly one
/// receiver (its partner), so the stream is named by the sender alone.
#[derive(Clone, Debug)]
pub struct Accounting {
    seq: SeqTracker,
    /// Messages each sender wrote completely.
    sent: Vec<u64>,
}

impl Accounting {
    pub fn new(senders: usize) -> Accounting {
        Accounting {
            seq: SeqTracker::new(1, senders),
            sent: vec![0; senders],
        }
    }

    pub fn on_sent(&mut self, sender: usize) {
        self.sent[sender] += 1;
    }

    /// Message `seq` of `sender` arrived at its receiver (checked by the caller).
    pub fn on_delivered(&mut self, sender: usize, seq: u64) -> SeqOutcome {
        self.seq.observe(0, sender, seq)
    }

    /// Written messages never delivered (so far).
    pub fn undelivered(&self) -> u64 {
        self.seq.undelivered(|_| true, &self.sent)
    }

    pub fn counts(&self) -> SeqCounts {
        self.seq.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use switchboard::protocol::ccm::codec::decode;

    const TOKEN: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn parse(bytes: &[u8]) -> Message {
        let mut buf = BytesMut::from(bytes);
        let message = decode(&mut buf, false).unwrap().unwrap();
        assert!(buf.is_empty());
        message
    }

    #[test]
    fn identification_and_text_are_what_the_contract_shows() {
        assert_eq!(
            &identify("lg00001")[..],
            b"CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: 7\n\nlg00001"
        );
        let message = parse(&text(TOKEN, "lg00002", b"hi"));
        assert_eq!(message.message_type(), Some(MessageType::Text));
        assert_eq!(&message.attribute("User").unwrap()[..], TOKEN);
        assert_eq!(&message.attribute("Addressee").unwrap()[..], b"lg00002");
        assert_eq!(&message.content[..], b"hi");
    }

    #[test]
    fn active_users_answer_keepalives_silent_ones_never() {
        let reply = keepalive_reply(Role::Active, TOKEN).unwrap();
        let message = parse(&reply);
        assert_eq!(message.message_type(), Some(MessageType::Connect));
        assert_eq!(&message.attribute("User").unwrap()[..], TOKEN);
        assert!(message.content.is_empty());
        assert_eq!(keepalive_reply(Role::Silent, TOKEN), None);
    }

    #[test]
    fn server_messages_are_classified() {
        let identity = parse(
            b"CCM\\1.0 Identity\nUser: 0123456789abcdef0123456789abcdef\nContent-Length: 0\n\n",
        );
        assert_eq!(
            classify(&identity, false),
            Incoming::Identity(Bytes::from_static(TOKEN))
        );
        assert!(matches!(classify(&identity, true), Incoming::Violation(_)));

        let keepalive = parse(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
        assert_eq!(classify(&keepalive, true), Incoming::Keepalive);
        assert!(matches!(
            classify(&keepalive, false),
            Incoming::Violation(_)
        ));

        let delivered = parse(
            b"CCM\\1.0 Text\nSender: lg00001\nAddressee: lg00002\nMessage-Encoding: utf-8\n\
              Content-Length: 2\n\nhi",
        );
        assert_eq!(
            classify(&delivered, true),
            Incoming::Text {
                sender: Bytes::from_static(b"lg00001"),
                addressee: Bytes::from_static(b"lg00002"),
                content: Bytes::from_static(b"hi"),
            }
        );
    }

    #[test]
    fn contract_breaches_are_violations() {
        for bad in [
            // no Content-Length (decoded as a whole burst)
            &b"CCM\\1.0 Connect\n\n"[..],
            b"CCM\\2.0 Connect\nContent-Length: 0\n\n",
            b"CCM\\1.0 Connect\nContent-Length: 1\n\nx",
            b"CCM\\1.0 Text\nAddressee: lg00002\nMessage-Encoding: utf-8\nContent-Length: 0\n\n",
            b"CCM\\1.0 Text\nSender: a\nAddressee: b\nMessage-Encoding: utf-16\nContent-Length: 0\n\n",
            b"CCM\\1.0 Error\nReason: unknown-addressee\nContent-Length: 2\n\nno",
            b"CCM\\1.0 Raw\nContent-Length: 0\n\n",
            b"CCM\\1.0 Bogus\nContent-Length: 0\n\n",
        ] {
            let mut buf = BytesMut::from(bad);
            let message = decode(&mut buf, true).unwrap().unwrap();
            assert!(
                matches!(classify(&message, true), Incoming::Violation(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let short = parse(b"CCM\\1.0 Identity\nUser: abc\nContent-Length: 0\n\n");
        assert!(matches!(classify(&short, false), Incoming::Violation(_)));
        let error = parse(b"CCM\\1.0 Error\nReason: name-taken\nContent-Length: 5\n\ntaken");
        match classify(&error, false) {
            Incoming::Violation(why) => assert!(why.contains("name-taken"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accounting_counts_losses_and_duplicates_per_stream() {
        let mut a = Accounting::new(2);
        for _ in 0..5 {
            a.on_sent(0);
        }
        for _ in 0..3 {
            a.on_sent(1);
        }
        assert_eq!(a.undelivered(), 8);
        assert_eq!(a.on_delivered(0, 0), SeqOutcome::InOrder);
        assert_eq!(a.on_delivered(0, 1), SeqOutcome::InOrder);
        assert_eq!(a.on_delivered(0, 3), SeqOutcome::Gap(1));
        assert_eq!(a.on_delivered(0, 3), SeqOutcome::Behind);
        assert_eq!(a.on_delivered(1, 0), SeqOutcome::InOrder);
        // Sender 0: 4 of 5 reached (one skipped, one never came); sender 1: 1 of 3.
        assert_eq!(a.undelivered(), 1 + 2);
        let counts = a.counts();
        assert_eq!(
            (
                counts.delivered,
                counts.gap_losses,
                counts.duplicates_or_reorders
            ),
            (4, 1, 1)
        );
        a.on_delivered(0, 4);
        a.on_delivered(1, 1);
        a.on_delivered(1, 2);
        assert_eq!(a.undelivered(), 0);
    }
}
