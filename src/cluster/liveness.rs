//! Node liveness, sans-io: which remote lobby members belong to which node, when a node is
//! taken for dead, and when the lease thread renews its own lease.
//!
//! Each node keeps a key `switchboard:node:<incarnation hex>:<name>` with a Redis expiry
//! (`SET ... PX`) of three quarters of the lease (`--cluster-lease-ms`), renewed every quarter
//! lease, and lists the keys of the live nodes at each renewal: a node that dies has its key
//! expire within three quarters of a lease, and the others list the keys within the last
//! quarter, so its members are announced gone within the lease. [`Members`] learns from the presence events received which
//! node's users are in the lobby; given a list of live nodes it says which nodes are gone,
//! and the `Left` presence of each of their members, once.

use std::collections::HashMap;

use bytes::Bytes;

use super::codec::RosterEntry;
use crate::hub::{HubEvent, Presence, PresenceKind, ProtocolKind};

/// Prefix of the liveness keys.
pub const NODE_KEY_PREFIX: &str = "switchboard:node:";

/// A node's life: its name and the incarnation (random per process).
pub type NodeId = (Bytes, u64);

pub fn node_key(node: &[u8], incarnation: u64) -> Vec<u8> {
    let mut key = format!("{NODE_KEY_PREFIX}{incarnation:016x}:").into_bytes();
    key.extend_from_slice(node);
    key
}

/// The node a liveness key names, or `None` for anything else.
pub fn parse_node_key(key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(NODE_KEY_PREFIX.as_bytes())?;
    let (hex, name) = (rest.get(..16)?, rest.get(17..)?);
    if rest.get(16) != Some(&b':') || name.is_empty() {
        return None;
    }
    let incarnation = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((Bytes::copy_from_slice(name), incarnation))
}

#[derive(Debug, Default)]
struct NodeMembers {
    /// (origin, name) -> how many such members (ROOM display names may repeat).
    members: HashMap<(ProtocolKind, Bytes), u32>,
    /// Listed live at least once: absent from a later list means its lease lapsed.
    listed: bool,
    /// Lists in a row it was absent from, before it was ever listed.
    absent: u32,
}

/// A node taken for dead, and its members' leaving to announce.
#[derive(Debug, PartialEq, Eq)]
pub struct Lapsed {
    pub node: NodeId,
    pub left: Vec<HubEvent>,
}

/// The remote lobby members of each node, from the presence events received.
#[derive(Debug, Default)]
pub struct Members {
    nodes: HashMap<Bytes, (u64, NodeMembers)>,
}

impl Members {
    /// A presence event of `node` (already accepted as new). An event of a new incarnation
    /// of a node means the previous one is dead: its members are returned as lapsed.
    pub fn on_event(&mut self, node: &NodeId, event: &HubEvent) -> Option<Lapsed> {
        let (name, incarnation) = node;
        let mut lapsed = None;
        match self.nodes.get(name) {
            Some((known, _)) if known != incarnation => {
                lapsed = self.remove(name);
            }
            _ => {}
        }
        let (_, entry) = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| (*incarnation, NodeMembers::default()));
        if let HubEvent::Presence(presence) = event {
            let key = (presence.origin, presence.name.clone());
            match presence.kind {
                PresenceKind::Entered => *entry.members.entry(key).or_insert(0) += 1,
                PresenceKind::Left => {
                    if let Some(count) = entry.members.get_mut(&key) {
                        *count -= 1;
                        if *count == 0 {
                            entry.members.remove(&key);
                        }
                    }
                }
            }
        }
        lapsed
    }

    /// The nodes whose keys Redis listed live now. A node listed before and absent now has
    /// lapsed; a node never listed yet (its first events may have overtaken the list) lapses
    /// only when absent from two lists in a row. Lapsed nodes are forgotten: each member's
    /// leaving is returned once.
    pub fn on_live(&mut self, live: &[NodeId]) -> Vec<Lapsed> {
        let mut gone = Vec::new();
        for (name, (incarnation, entry)) in &mut self.nodes {
            if live.iter().any(|(n, i)| n == name && i == incarnation) {
                entry.listed = true;
                entry.absent = 0;
                continue;
            }
            entry.absent += 1;
            if entry.listed || entry.absent >= 2 {
                gone.push(name.clone());
            }
        }
        gone.sort();
        gone.into_iter()
            .filter_map(|name| self.remove(&name))
            .collect()
    }

    fn remove(&mut self, name: &Bytes) -> Option<Lapsed> {
        let (incarnation, entry) = self.nodes.remove(name)?;
        let mut members: Vec<_> = entry.members.into_iter().collect();
        members.sort();
        let left = members
            .into_iter()
            .flat_map(|((origin, name), count)| {
                (0..count).map(move |_| {
                    HubEvent::Presence(Presence {
                        origin,
                        name: name.clone(),
                        kind: PresenceKind::Left,
                    })
                })
            })
            .collect();
        Some(Lapsed {
            node: (name.clone(), incarnation),
            left,
        })
    }

    /// `node`'s whole lobby (its roster, at a point of its sequence): this node's view of it
    /// becomes exactly that. Returns the presences that bring the local lobby there, the
    /// leavings first, then the arrivals (each sorted): a member it has that the roster lacks
    /// left, one the roster has that it lacks entered (one per name held, for repeated ROOM
    /// names). A roster that changes nothing returns nothing, so a roster received twice is
    /// announced once. A new incarnation of the node ends the previous one, as an event does.
    pub fn reconcile(
        &mut self,
        node: &NodeId,
        roster: &[RosterEntry],
    ) -> (Option<Lapsed>, Vec<HubEvent>) {
        let (name, incarnation) = node;
        let lapsed = match self.nodes.get(name) {
            Some((known, _)) if known != incarnation => self.remove(name),
            _ => None,
        };
        let (_, entry) = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| (*incarnation, NodeMembers::default()));
        let mut wanted: HashMap<(ProtocolKind, Bytes), u32> = HashMap::new();
        for member in roster {
            *wanted
                .entry((member.origin, member.name.clone()))
                .or_insert(0) += member.count;
        }
        let presence = |(origin, name): &(ProtocolKind, Bytes), kind| {
            HubEvent::Presence(Presence {
                origin: *origin,
                name: name.clone(),
                kind,
            })
        };
        let mut gone: Vec<_> = entry
            .members
            .iter()
            .filter_map(|(key, &had)| {
                let has = wanted.get(key).copied().unwrap_or(0);
                (had > has).then(|| (key.clone(), had - has))
            })
            .collect();
        let mut came: Vec<_> = wanted
            .iter()
            .filter_map(|(key, &has)| {
                let had = entry.members.get(key).copied().unwrap_or(0);
                (has > had).then(|| (key.clone(), has - had))
            })
            .collect();
        gone.sort();
        came.sort();
        let mut changes = Vec::new();
        for (key, n) in &gone {
            changes.extend((0..*n).map(|_| presence(key, PresenceKind::Left)));
        }
        for (key, n) in &came {
            changes.extend((0..*n).map(|_| presence(key, PresenceKind::Entered)));
        }
        entry.members = wanted;
        (lapsed, changes)
    }

    /// Lobby members known on other nodes.
    pub fn count(&self) -> usize {
        self.nodes
            .values()
            .map(|(_, entry)| entry.members.values().map(|&n| n as usize).sum::<usize>())
            .sum()
    }
}

/// When the lease thread renews its lease, and whether the list of live nodes it reads
/// then can be trusted: not until its link has been up for two leases, so that after Redis
/// comes back (empty, if it keeps nothing) every live node has had time to set its key again.
#[derive(Debug)]
pub struct LeaseSchedule {
    lease_ms: u64,
    next_renew_ms: u64,
    /// From when a list of live nodes is trusted; `None` while the link is down.
    trusted_from_ms: Option<u64>,
}

impl LeaseSchedule {
    /// Renewed (and listed) at `now_ms`, at start: trusted at once (a node starting has no
    /// other node's members to forget).
    pub fn new(lease_ms: u64, now_ms: u64) -> LeaseSchedule {
        LeaseSchedule {
            lease_ms,
            next_renew_ms: now_ms + Self::interval(lease_ms),
            trusted_from_ms: Some(now_ms),
        }
    }

    /// A quarter lease: two renewals in a row may fail before the key expires.
    fn interval(lease_ms: u64) -> u64 {
        (lease_ms / 4).max(1)
    }

    /// The key's expiry: the lease less one listing interval, so that a dead node's key
    /// expires, and the others notice, within the lease.
    pub fn key_expiry_ms(lease_ms: u64) -> u64 {
        lease_ms.saturating_sub(Self::interval(lease_ms)).max(1)
    }

    /// Milliseconds until the next renewal is due.
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.next_renew_ms.saturating_sub(now_ms)
    }

    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_renew_ms
    }

    /// The renewal at `now_ms` succeeded; whether the list read with it can be trusted.
    pub fn renewed(&mut self, now_ms: u64) -> bool {
        self.next_renew_ms = now_ms + Self::interval(self.lease_ms);
        let from = *self
            .trusted_from_ms
            .get_or_insert(now_ms + 2 * self.lease_ms);
        now_ms >= from
    }

    /// The renewal at `now_ms` failed: the link is down until a renewal succeeds; the next
    /// attempt is a quarter lease later.
    pub fn failed(&mut self, now_ms: u64) {
        self.lost();
        self.next_renew_ms = now_ms + Self::interval(self.lease_ms);
    }

    /// The link was lost (a renewal found its connection broken), whatever the next renewal finds.
    pub fn lost(&mut self) {
        self.trusted_from_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::LobbyMessage;

    fn node(name: &'static [u8], incarnation: u64) -> NodeId {
        (Bytes::from_static(name), incarnation)
    }

    fn presence(origin: ProtocolKind, name: &'static [u8], kind: PresenceKind) -> HubEvent {
        HubEvent::Presence(Presence {
            origin,
            name: Bytes::from_static(name),
            kind,
        })
    }

    fn entered(origin: ProtocolKind, name: &'static [u8]) -> HubEvent {
        presence(origin, name, PresenceKind::Entered)
    }

    fn left(origin: ProtocolKind, name: &'static [u8]) -> HubEvent {
        presence(origin, name, PresenceKind::Left)
    }

    #[test]
    fn node_keys_round_trip_and_anything_else_is_not_a_node() {
        let key = node_key(b"node:a", 0xfeed);
        assert_eq!(key, b"switchboard:node:000000000000feed:node:a");
        assert_eq!(parse_node_key(&key), Some(node(b"node:a", 0xfeed)));
        for bad in [
            &b"switchboard:node:000000000000feed:"[..],
            b"switchboard:node:000000000000feed",
            b"switchboard:node:00000000000zfeed:a",
            b"switchboard:node:000000000000feedxa",
            b"switchboard:name:000000000000feed:a",
        ] {
            assert_eq!(parse_node_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_lapsed_node_s_members_leave_once_and_those_who_left_are_not_announced() {
        let mut members = Members::default();
        let b = node(b"b", 7);
        let c = node(b"c", 9);
        for event in [
            entered(ProtocolKind::Room, b"rob"),
            entered(ProtocolKind::Room, b"rob"),
            entered(ProtocolKind::Matou, b"mia"),
            entered(ProtocolKind::Room, b"gone"),
            left(ProtocolKind::Room, b"gone"),
            // Not a presence: the node is known, nobody more.
            HubEvent::Said(LobbyMessage {
                origin: ProtocolKind::Room,
                sender: Bytes::from_static(b"rob"),
                text: Bytes::from_static(b"hi"),
            }),
        ] {
            assert_eq!(members.on_event(&b, &event), None);
        }
        assert_eq!(
            members.on_event(&c, &entered(ProtocolKind::Ccm, b"cid")),
            None
        );
        assert_eq!(members.count(), 4);
        assert!(members.on_live(&[b.clone(), c.clone()]).is_empty());
        // b's lease lapsed: its three members leave (rob twice: two ROOM users by that name).
        let lapsed = members.on_live(std::slice::from_ref(&c));
        assert_eq!(
            lapsed,
            vec![Lapsed {
                node: b.clone(),
                left: vec![
                    left(ProtocolKind::Room, b"rob"),
                    left(ProtocolKind::Room, b"rob"),
                    left(ProtocolKind::Matou, b"mia"),
                ],
            }]
        );
        // Once: b is forgotten.
        assert!(members.on_live(std::slice::from_ref(&c)).is_empty());
        assert!(members.on_live(&[c]).is_empty());
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn a_node_never_listed_lapses_only_when_absent_from_two_lists_in_a_row() {
        let mut members = Members::default();
        let b = node(b"b", 7);
        members.on_event(&b, &entered(ProtocolKind::Room, b"rob"));
        // Its first event overtook the list that would have named it.
        assert!(members.on_live(&[]).is_empty());
        assert!(members.on_live(std::slice::from_ref(&b)).is_empty());
        let mut fresh = Members::default();
        fresh.on_event(&b, &entered(ProtocolKind::Room, b"rob"));
        assert!(fresh.on_live(&[]).is_empty());
        assert_eq!(fresh.on_live(&[]).len(), 1);
    }

    fn entry(origin: ProtocolKind, name: &'static [u8], count: u32) -> RosterEntry {
        RosterEntry {
            origin,
            name: Bytes::from_static(name),
            count,
        }
    }

    #[test]
    fn a_roster_announces_what_was_missed_once_and_becomes_the_view() {
        let (room, matou) = (ProtocolKind::Room, ProtocolKind::Matou);
        let mut members = Members::default();
        let b = node(b"b", 1);
        for event in [
            entered(room, b"rob"),
            entered(room, b"rob"),
            entered(matou, b"mia"),
            entered(room, b"ray"),
        ] {
            assert_eq!(members.on_event(&b, &event), None);
        }
        // Missed meanwhile: one rob and mia left, ray stayed, zoe and two "ann" came.
        let roster = [
            entry(room, b"rob", 1),
            entry(room, b"ray", 1),
            entry(room, b"zoe", 1),
            entry(matou, b"ann", 2),
        ];
        let (lapsed, changes) = members.reconcile(&b, &roster);
        assert_eq!(lapsed, None);
        assert_eq!(
            changes,
            [
                left(room, b"rob"),
                left(matou, b"mia"),
                entered(room, b"zoe"),
                entered(matou, b"ann"),
                entered(matou, b"ann"),
            ]
        );
        assert_eq!(members.count(), 5);
        // The same roster again (another node asked too): nothing to announce.
        assert_eq!(members.reconcile(&b, &roster), (None, vec![]));
        // Events go on from the roster's view: zoe leaves once.
        assert_eq!(members.on_event(&b, &left(room, b"zoe")), None);
        assert_eq!(members.count(), 4);
        // Its death (never listed: absent from two lists) announces exactly the roster's
        // members left.
        assert!(members.on_live(&[]).is_empty());
        let lapsed = members.on_live(&[]);
        assert_eq!(lapsed.len(), 1);
        assert_eq!(lapsed[0].left.len(), 4);
    }

    #[test]
    fn a_roster_from_an_unknown_node_or_a_new_incarnation() {
        let room = ProtocolKind::Room;
        let mut members = Members::default();
        // Never heard of: everyone on it entered.
        let (lapsed, changes) = members.reconcile(&node(b"c", 1), &[entry(room, b"cy", 1)]);
        assert_eq!((lapsed, changes), (None, vec![entered(room, b"cy")]));
        // Restarted: the old incarnation's members lapse, the new one's enter.
        let (lapsed, changes) = members.reconcile(&node(b"c", 2), &[entry(room, b"cz", 1)]);
        assert_eq!(
            lapsed,
            Some(Lapsed {
                node: node(b"c", 1),
                left: vec![left(room, b"cy")],
            })
        );
        assert_eq!(changes, [entered(room, b"cz")]);
        // An empty roster: everyone known there left.
        let (_, changes) = members.reconcile(&node(b"c", 2), &[]);
        assert_eq!(changes, [left(room, b"cz")]);
        assert_eq!(members.count(), 0);
    }

    #[test]
    fn a_new_incarnation_of_a_node_ends_the_previous_one() {
        let mut members = Members::default();
        members.on_event(&node(b"b", 1), &entered(ProtocolKind::Room, b"rob"));
        let lapsed = members.on_event(&node(b"b", 2), &entered(ProtocolKind::Room, b"rob"));
        assert_eq!(
            lapsed,
            Some(Lapsed {
                node: node(b"b", 1),
                left: vec![left(ProtocolKind::Room, b"rob")],
            })
        );
        // The new one is known on its own, with its own member.
        assert_eq!(members.count(), 1);
        assert!(members.on_live(&[node(b"b", 2)]).is_empty());
        assert_eq!(members.on_live(&[node(b"b", 1)]).len(), 1);
    }

    #[test]
    fn the_lease_is_renewed_every_quarter_and_a_list_is_trusted_two_leases_after_a_loss() {
        let mut schedule = LeaseSchedule::new(1000, 0);
        assert_eq!(schedule.wait_ms(0), 250);
        assert_eq!(LeaseSchedule::key_expiry_ms(1000), 750);
        assert_eq!(LeaseSchedule::key_expiry_ms(4), 3);
        assert!(!schedule.due(249));
        assert!(schedule.due(250));
        assert!(schedule.renewed(250));
        assert_eq!(schedule.wait_ms(300), 200);
        schedule.failed(500);
        assert!(schedule.due(750));
        // Back at 750: other nodes may not have set their keys again yet.
        assert!(!schedule.renewed(750));
        assert!(!schedule.renewed(1000));
        assert!(!schedule.renewed(2749));
        assert!(schedule.renewed(2750));
        assert!(schedule.renewed(3000));
        // A publish failed between two renewals: the renewal stays due when it was.
        schedule.lost();
        assert_eq!(schedule.wait_ms(3000), 250);
        assert!(!schedule.renewed(3250));
        assert!(schedule.renewed(5250));
    }
}
