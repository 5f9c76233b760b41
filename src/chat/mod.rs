//! What the protocols share: per-connection state keyed by [`ConnId`], member lists.

use std::fmt;

/// A connection's identity: its slab slot plus the generation of that slot.
///
/// Slots are reused; the generation tells a live connection from an earlier one in the same
/// slot, so a stale timer, event or reference is detected instead of hitting a newcomer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

impl ConnId {
    pub const fn new(slot: u32, generation: u32) -> Self {
        ConnId { slot, generation }
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.slot, self.generation)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Per-connection protocol state, indexed by slab slot and checked by generation.
///
/// Slots are small dense integers (the reactor's slab keys), so a `Vec` indexed by slot is
/// both the fastest map and bounded by the connection cap.
#[derive(Debug)]
pub struct ConnMap<T> {
    entries: Vec<Option<(u32, T)>>,
    len: usize,
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap {
            entries: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ConnMap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert state for `id`, replacing whatever an earlier generation left in the slot.
    pub fn insert(&mut self, id: ConnId, value: T) -> Option<T> {
        let slot = id.slot as usize;
        if slot >= self.entries.len() {
            self.entries.resize_with(slot + 1, || None);
        }
        let previous = self.entries[slot].replace((id.generation, value));
        match previous {
            Some((generation, old)) if generation == id.generation => Some(old),
            Some(_) => None,
            None => {
                self.len += 1;
                None
            }
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        match self.entries.get(id.slot as usize) {
            Some(Some((generation, value))) if *generation == id.generation => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.entries.get_mut(id.slot as usize) {
            Some(Some((generation, value))) if *generation == id.generation => Some(value),
            _ => None,
        }
    }

    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let entry = self.entries.get_mut(id.slot as usize)?;
        match entry {
            Some((generation, _)) if *generation == id.generation => {
                self.len -= 1;
                entry.take().map(|(_, value)| value)
            }
            _ => None,
        }
    }

    /// Every connection's state with its id, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, entry)| {
                let (generation, value) = entry.as_mut()?;
                Some((ConnId::new(slot as u32, *generation), value))
            })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A set of connections with O(1) insert and remove; iteration order is not join order.
///
/// Each member remembers its index (stored by the caller), and removal swaps the last member
/// into the hole, so the caller must update the moved member's index: [`MemberList::remove`]
/// returns it.
#[derive(Debug, Default)]
pub struct MemberList {
    members: Vec<ConnId>,
}

impl MemberList {
    /// Add `id`; returns its index.
    pub fn push(&mut self, id: ConnId) -> usize {
        self.members.push(id);
        self.members.len() - 1
    }

    /// Remove the member at `index`; returns the member that moved into `index`, if any.
    pub fn remove(&mut self, index: usize) -> Option<ConnId> {
        if index >= self.members.len() {
            return None;
        }
        self.members.swap_remove(index);
        self.members.get(index).copied()
    }

    pub fn as_slice(&self) -> &[ConnId] {
        &self.members
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}
