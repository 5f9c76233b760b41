//! Private-link brokering, one link at a time, without I/O.
//!
//! A planned link `k` goes from a source user to a destination user through four packets (the
//! contract's rule 3):
//!
//! ```text
//! Src  --6 PRIVATE_REQUEST(Dst)-->        server --7 PRIVATE_REQUEST_NOTIFY(Src)--> Dst
//! Dst  --8 PRIVATE_ACCEPT(Src)-->         server --9 PRIVATE_DST_ADDRESS(Dst, ip)--> Src
//! Src  --10 PRIVATE_SRC_PORTS(Dst, m, f)--> server --11 PRIVATE_SRC_ADDRESS(Src, ip, m, f)--> Dst
//! ```
//!
//! and is complete when the PRIVATE_SRC_ADDRESS reaches Dst; its latency runs from the request's
//! intended time to then. The ports are fake (the loadgen never listens on them) and derived
//! from `k`, so Dst checks they are the ones its Src sent.
//!
//! At most one link is open between two users, in either direction: the packets name only the
//! peer, so with one open link per pair every packet belongs to exactly one link, whatever the
//! server does with a second request for a pair it already has pending. The loop draws another
//! pair when the one it drew is busy ([`Links::busy`]).

use std::collections::HashMap;

/// How far a link got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Src queued PRIVATE_REQUEST; waiting for PRIVATE_REQUEST_NOTIFY at Dst.
    Requested,
    /// Dst got the notify and queued PRIVATE_ACCEPT; waiting for PRIVATE_DST_ADDRESS at Src.
    Accepted,
    /// Src got Dst's address and queued PRIVATE_SRC_PORTS; waiting for PRIVATE_SRC_ADDRESS.
    PortsSent,
    /// Dst got Src's address and ports.
    Complete,
    /// Src or Dst lost its connection before the link completed.
    Broken,
}

/// One planned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub src: u32,
    pub dst: u32,
    pub intended_us: u64,
    pub stage: Stage,
}

/// Why a brokering packet does not fit any open link: a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unexpected {
    /// No open link between the two users.
    NoLink,
    /// There is one, but it is not at the stage this packet belongs to (or the roles are
    /// swapped): the stage it is at.
    WrongStage(Stage),
    /// PRIVATE_SRC_ADDRESS with ports other than the ones Src sent: (message, file) expected.
    PortsDiffer { expected: (i32, i32) },
}

/// Links by stage, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub opened: u64,
    pub complete: u64,
    /// Still waiting at the end, by the stage they were stuck at.
    pub stuck_requested: u64,
    pub stuck_accepted: u64,
    pub stuck_ports_sent: u64,
    pub broken: u64,
}

impl LinkCounts {
    /// Links that never completed: every one is a loss.
    pub fn incomplete(&self) -> u64 {
        self.stuck_requested + self.stuck_accepted + self.stuck_ports_sent + self.broken
    }
}

/// The fake (message port, file port) Src sends for link `k`: distinct for nearby links, both
/// valid ports, never bound.
pub fn ports(k: u32) -> (i32, i32) {
    let message = 20_000 + 2 * (k % 20_000) as i32;
    (message, message + 1)
}

/// Every link of the run, and the open one of each pair.
#[derive(Clone, Debug, Default)]
pub struct Links {
    links: Vec<Link>,
    /// (lower user, higher user) -> the open link's number.
    open: HashMap<(u32, u32), u32>,
}

fn pair(a: u32, b: u32) -> (u32, u32) {
    (a.min(b), a.max(b))
}

impl Links {
    pub fn new() -> Links {
        Links::default()
    }

    /// Whether `a` and `b` have an open link, in either direction.
    pub fn busy(&self, a: u32, b: u32) -> bool {
        self.open.contains_key(&pair(a, b))
    }

    /// Opens link `src -> dst` (Src is about to queue its request) and returns its number.
    /// The caller has checked the pair is not busy and `src != dst`.
    pub fn open(&mut self, src: u32, dst: u32, intended_us: u64) -> u32 {
        debug_assert!(src != dst && !self.busy(src, dst));
        let k = self.links.len() as u32;
        self.links.push(Link {
            src,
            dst,
            intended_us,
            stage: Stage::Requested,
        });
        self.open.insert(pair(src, dst), k);
        k
    }

    pub fn get(&self, k: u32) -> Option<&Link> {
        self.links.get(k as usize)
    }

    /// The open link between `a` and `b` at `stage`, with `src` as its source.
    fn find(&self, src: u32, dst: u32, stage: Stage) -> Result<u32, Unexpected> {
        let &k = self.open.get(&pair(src, dst)).ok_or(Unexpected::NoLink)?;
        let link = &self.links[k as usize];
        if link.src != src || link.dst != dst || link.stage != stage {
            return Err(Unexpected::WrongStage(link.stage));
        }
        Ok(k)
    }

    /// PRIVATE_REQUEST_NOTIFY naming `src` reached `dst`: Dst accepts at once.
    pub fn on_request_notify(&mut self, dst: u32, src: u32) -> Result<u32, Unexpected> {
        let k = self.find(src, dst, Stage::Requested)?;
        self.links[k as usize].stage = Stage::Accepted;
        Ok(k)
    }

    /// PRIVATE_DST_ADDRESS naming `dst` reached `src`: Src sends its ports, `ports(k)`.
    pub fn on_dst_address(&mut self, src: u32, dst: u32) -> Result<u32, Unexpected> {
        let k = self.find(src, dst, Stage::Accepted)?;
        self.links[k as usize].stage = Stage::PortsSent;
        Ok(k)
    }

    /// PRIVATE_SRC_ADDRESS naming `src`, with these ports, reached `dst`: the link is complete
    /// if the ports are the ones Src sent. Returns the link, for its intended time.
    pub fn on_src_address(
        &mut self,
        dst: u32,
        src: u32,
        message_port: i32,
        file_port: i32,
    ) -> Result<Link, Unexpected> {
        let k = self.find(src, dst, Stage::PortsSent)?;
        let expected = ports(k);
        if (message_port, file_port) != expected {
            return Err(Unexpected::PortsDiffer { expected });
        }
        let link = &mut self.links[k as usize];
        link.stage = Stage::Complete;
        self.open.remove(&pair(src, dst));
        Ok(*link)
    }

    /// User `u` lost its connection: its open links can never complete.
    pub fn break_user(&mut self, u: u32) {
        let links = &mut self.links;
        self.open.retain(|_, &mut k| {
            let link = &mut links[k as usize];
            if link.src == u || link.dst == u {
                link.stage = Stage::Broken;
                false
            } else {
                true
            }
        });
    }

    /// Links still open (neither complete nor broken).
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn counts(&self) -> LinkCounts {
        let mut counts = LinkCounts {
            opened: self.links.len() as u64,
            ..LinkCounts::default()
        };
        for link in &self.links {
            match link.stage {
                Stage::Requested => counts.stuck_requested += 1,
                Stage::Accepted => counts.stuck_accepted += 1,
                Stage::PortsSent => counts.stuck_ports_sent += 1,
                Stage::Complete => counts.complete += 1,
                Stage::Broken => counts.broken += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks link `src -> dst` through the three answers.
    fn complete(links: &mut Links, src: u32, dst: u32) -> Link {
        let k = links.on_request_notify(dst, src).unwrap();
        assert_eq!(links.on_dst_address(src, dst), Ok(k));
        let (m, f) = ports(k);
        links.on_src_address(dst, src, m, f).unwrap()
    }

    #[test]
    fn a_link_goes_through_its_stages_in_order() {
        let mut links = Links::new();
        let k = links.open(3, 7, 1_000);
        assert!(
            links.busy(3, 7) && links.busy(7, 3),
            "busy in both directions"
        );
        assert!(!links.busy(3, 8));
        assert_eq!(links.get(k).unwrap().stage, Stage::Requested);
        assert_eq!(links.on_request_notify(7, 3), Ok(k));
        assert_eq!(links.get(k).unwrap().stage, Stage::Accepted);
        assert_eq!(links.on_dst_address(3, 7), Ok(k));
        assert_eq!(links.get(k).unwrap().stage, Stage::PortsSent);
        let (m, f) = ports(k);
        let link = links.on_src_address(7, 3, m, f).unwrap();
        assert_eq!((link.src, link.dst, link.intended_us), (3, 7, 1_000));
        assert_eq!(link.stage, Stage::Complete);
        assert!(!links.busy(3, 7), "a complete link frees its pair");
        assert_eq!(links.open_count(), 0);
        let counts = links.counts();
        assert_eq!(
            (counts.opened, counts.complete, counts.incomplete()),
            (1, 1, 0)
        );
        // The pair can link again, the other way round.
        let again = links.open(7, 3, 2_000);
        assert_ne!(again, k);
        assert_eq!(complete(&mut links, 7, 3).intended_us, 2_000);
    }

    #[test]
    fn packets_out_of_turn_are_unexpected() {
        let mut links = Links::new();
        assert_eq!(links.on_request_notify(1, 0), Err(Unexpected::NoLink));
        let k = links.open(0, 1, 0);
        // Answers before their turn.
        assert_eq!(
            links.on_dst_address(0, 1),
            Err(Unexpected::WrongStage(Stage::Requested))
        );
        let (m, f) = ports(k);
        assert_eq!(
            links.on_src_address(1, 0, m, f),
            Err(Unexpected::WrongStage(Stage::Requested))
        );
        // The notify at the wrong end (Src told that Dst asked it).
        assert_eq!(
            links.on_request_notify(0, 1),
            Err(Unexpected::WrongStage(Stage::Requested))
        );
        assert_eq!(links.on_request_notify(1, 0), Ok(k));
        // A second notify for the same request.
        assert_eq!(
            links.on_request_notify(1, 0),
            Err(Unexpected::WrongStage(Stage::Accepted))
        );
        assert_eq!(links.on_dst_address(0, 1), Ok(k));
        // Ports that are not the ones Src sent: the link stays open.
        assert_eq!(
            links.on_src_address(1, 0, m, f + 1),
            Err(Unexpected::PortsDiffer { expected: (m, f) })
        );
        assert!(links.busy(0, 1));
        assert!(links.on_src_address(1, 0, m, f).is_ok());
        // After completion, a repeated address has no link.
        assert_eq!(links.on_src_address(1, 0, m, f), Err(Unexpected::NoLink));
    }

    #[test]
    fn incomplete_links_are_counted_by_stage() {
        let mut links = Links::new();
        links.open(0, 1, 0); // never notified
        let k = links.open(2, 3, 0);
        links.on_request_notify(3, k_src(&links, k)).unwrap(); // accepted, no address
        let k = links.open(4, 5, 0);
        links.on_request_notify(5, 4).unwrap();
        links.on_dst_address(4, 5).unwrap(); // ports sent, no address at Dst
        links.open(6, 7, 0);
        complete(&mut links, 6, 7);
        links.open(8, 9, 0);
        links.open(9, 10, 0);
        links.break_user(9); // both of user 9's links
        assert_eq!(links.open_count(), 3);
        let counts = links.counts();
        assert_eq!(
            counts,
            LinkCounts {
                opened: 6,
                complete: 1,
                stuck_requested: 1,
                stuck_accepted: 1,
                stuck_ports_sent: 1,
                broken: 2,
            }
        );
        assert_eq!(counts.incomplete(), 5);
        assert_eq!(links.get(k).unwrap().stage, Stage::PortsSent);
        // A broken link's late packets are unexpected; its pair is free again.
        assert_eq!(links.on_request_notify(9, 8), Err(Unexpected::NoLink));
        assert!(!links.busy(8, 9));
    }

    fn k_src(links: &Links, k: u32) -> u32 {
        links.get(k).unwrap().src
    }

    #[test]
    fn ports_are_valid_distinct_and_derived_from_the_link() {
        for k in [0, 1, 19_999, 20_000, u32::MAX] {
            let (m, f) = ports(k);
            assert!(
                (1..=65_535).contains(&m) && (1..=65_535).contains(&f),
                "{k}"
            );
            assert_eq!(f, m + 1);
        }
        assert_ne!(ports(0), ports(1));
        assert_eq!(ports(0), ports(20_000), "they repeat only far apart");
    }
}
