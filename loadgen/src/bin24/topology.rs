//! Who talks to whom in a BIN24 run: user names, each user's partner (pairs or a ring), and the
//! users kept offline so that messages to them take the store path.

use serde::Serialize;
use switchboard::protocol::bin24::codec::Name;

use crate::plan::choose_senders;

/// Most users one run simulates (each online user holds one connection): the names are
/// `lg` and 5 digits.
pub const USERS_MAX: usize = 10_000;

/// How senders are matched with recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// 0 <-> 1, 2 <-> 3, ...: every user sends to its pair and receives from it.
    Pairs,
    /// i -> i + 1, the last one to user 0: every user receives from its predecessor.
    Ring,
}

impl Pattern {
    /// The pattern `--ring` (or its absence) chooses, when `users` can be arranged that way.
    pub fn chosen(ring: bool, users: usize) -> Result<Pattern, String> {
        let pattern = if ring { Pattern::Ring } else { Pattern::Pairs };
        pattern.check(users)?;
        Ok(pattern)
    }

    /// Whether `users` can be arranged this way.
    pub fn check(self, users: usize) -> Result<(), String> {
        if !(2..=USERS_MAX).contains(&users) {
            return Err(format!("--users must be between 2 and {USERS_MAX}"));
        }
        if self == Pattern::Pairs && !users.is_multiple_of(2) {
            return Err(format!(
                "--pairs needs an even number of users ({users} leaves one without a partner); \
                 use --ring or one more user"
            ));
        }
        Ok(())
    }

    /// The user that user `i` sends to. `users` passed [`Pattern::check`] and `i < users`.
    pub fn partner(self, i: usize, users: usize) -> usize {
        match self {
            Pattern::Pairs => i ^ 1,
            Pattern::Ring => (i + 1) % users,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Pairs => "pairs",
            Pattern::Ring => "ring",
        }
    }
}

/// The wire name of user `i`: `lg00001` (7 bytes, within BIN24's 8).
pub fn user_name(i: usize) -> Name {
    let mut text = *b"lg00000";
    let mut rest = i % 100_000;
    for slot in text[2..].iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // Seven ASCII digits and letters: no NUL, not longer than 8 bytes.
    Name::new(&text).unwrap_or_else(|| unreachable!("a 7-byte ASCII name is a valid BIN24 name"))
}

/// How many of `users` stay offline for a share in [0, 1): rounded to the nearest user.
pub fn offline_count(users: usize, share: f64) -> usize {
    ((users as f64 * share).round() as usize).min(users)
}

/// Which users stay offline during the run (`true` at their index): `offline_count` of them,
/// picked with the run's seeded shuffle, so `--seed` repeats the choice. The seed is mixed so
/// the choice does not mirror another seeded choice made with the same `--seed`.
pub fn choose_offline(users: usize, share: f64, seed: u64) -> Vec<bool> {
    let all: Vec<usize> = (0..users).collect();
    let mut offline = vec![false; users];
    for i in choose_senders(&all, offline_count(users, share), seed ^ 0x0ff1_14e5) {
        offline[i] = true;
    }
    offline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_mutual() {
        let p = Pattern::Pairs;
        assert!(p.check(6).is_ok());
        let partners: Vec<usize> = (0..6).map(|i| p.partner(i, 6)).collect();
        assert_eq!(partners, vec![1, 0, 3, 2, 5, 4]);
        for i in 0..6 {
            assert_eq!(p.partner(p.partner(i, 6), 6), i);
            assert_ne!(p.partner(i, 6), i);
        }
        assert!(p.check(7).unwrap_err().contains("even"));
    }

    #[test]
    fn the_ring_closes() {
        let r = Pattern::Ring;
        assert!(r.check(5).is_ok());
        let partners: Vec<usize> = (0..5).map(|i| r.partner(i, 5)).collect();
        assert_eq!(partners, vec![1, 2, 3, 4, 0]);
        // Every user receives from exactly one other user.
        let mut received = [0; 5];
        for i in 0..5 {
            received[r.partner(i, 5)] += 1;
        }
        assert_eq!(received, [1; 5]);
        assert_eq!(
            (0..2).map(|i| r.partner(i, 2)).collect::<Vec<_>>(),
            vec![1, 0]
        );
    }

    /// With `--host A,B` user i connects to host i mod 2 (`crate::connect`): every pair, and
    /// every step of a ring of an even count, joins users of two nodes, so every live message
    /// crosses them (scripts/cluster-cross-bench.sh relies on it).
    #[test]
    fn over_two_hosts_every_partner_is_on_the_other_node() {
        for (pattern, users) in [(Pattern::Pairs, 1_000), (Pattern::Ring, 1_000)] {
            for i in 0..users {
                assert_ne!(i % 2, pattern.partner(i, users) % 2, "{pattern:?} {i}");
            }
        }
        assert_eq!(
            Pattern::Ring.partner(4, 5) % 2,
            0,
            "an odd ring closes on one node"
        );
    }

    #[test]
    fn user_counts_are_bounded() {
        for pattern in [Pattern::Pairs, Pattern::Ring] {
            assert!(pattern.check(0).is_err());
            assert!(pattern.check(1).is_err());
            assert!(pattern.check(2).is_ok());
            assert!(pattern.check(USERS_MAX).is_ok());
            assert!(pattern.check(USERS_MAX + 2).is_err());
        }
    }

    #[test]
    fn names_fit_the_wire() {
        assert_eq!(user_name(0).as_bytes(), b"lg00000");
        assert_eq!(user_name(1).as_bytes(), b"lg00001");
        assert_eq!(user_name(9_999).as_bytes(), b"lg09999");
        assert!(user_name(USERS_MAX).as_bytes().len() <= 8);
        assert_ne!(user_name(41), user_name(42));
    }

    #[test]
    fn offline_users_are_a_seeded_share() {
        assert_eq!(offline_count(1000, 0.1), 100);
        assert_eq!(offline_count(10, 0.0), 0);
        assert_eq!(offline_count(10, 0.15), 2, "rounded to the nearest user");
        assert_eq!(offline_count(3, 0.1), 0);
        let a = choose_offline(1000, 0.1, 7);
        assert_eq!(a.iter().filter(|&&o| o).count(), 100);
        assert_eq!(a, choose_offline(1000, 0.1, 7), "same seed, same users");
        assert_ne!(a, choose_offline(1000, 0.1, 8), "another seed, other users");
        assert!(choose_offline(20, 0.0, 1).iter().all(|&o| !o));
        // Not simply the first users.
        assert!(a[100..].iter().any(|&o| o));
    }
}
