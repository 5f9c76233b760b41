//! What the protocols share: per-connection state keyed by [`ConnId`], member lists.

use crate::protocol::ConnId;

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
