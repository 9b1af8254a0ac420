//! Conversations this host has seen lately, so that a WebSocket's first
//! message to one needs no read of it.
//!
//! A page that comes back lists the user's conversations and then opens its
//! WebSocket; the list fills this map (as do a new conversation, a rename
//! and a turn's own read), and the first message on the new socket finds
//! its conversation's owner and bot here. Before, every fresh WebSocket
//! read its conversation again: in a reconnect storm one statement of four
//! a comeback.
//!
//! Why an entry cannot mislead: it is used only by its owner
//! ([`KnownConversations::get`] checks), and neither a conversation's owner
//! nor its bot ever changes, and ids are never reused (`BIGSERIAL`,
//! `AUTOINCREMENT`). A conversation deleted since, here or on another host,
//! is refused by the store when the message is inserted (`not_found`, the
//! message's foreign key). The title may be stale; it only decides whether
//! a first message names the conversation, and the store names only one
//! that is still untitled.
//!
//! Must never: answer for another user, or grow without bound (emptied when
//! full, like a cache that starts over).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::Conversation;

/// Entries kept at most (a few hundred bytes each).
const CAPACITY: usize = 20_000;

#[derive(Debug, Default)]
pub struct KnownConversations {
    by_id: Mutex<HashMap<i64, Conversation>>,
}

impl KnownConversations {
    /// `user`'s conversation `id`, if this host has seen it.
    pub fn get(&self, user: i64, id: i64) -> Option<Conversation> {
        let map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).filter(|c| c.owner_id == user).cloned()
    }

    /// Remembers `conversations` as they were just read or listed.
    pub fn remember<'a>(&self, conversations: impl IntoIterator<Item = &'a Conversation>) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        for c in conversations {
            // Known as it is: a list of fifty mostly is, and a copy is two
            // allocations.
            if map.get(&c.id).is_some_and(|k| k.title == c.title) {
                continue;
            }
            if map.len() >= CAPACITY && !map.contains_key(&c.id) {
                map.clear();
            }
            map.insert(c.id, c.clone());
        }
    }

    /// Forgets conversation `id` (deleted on this host).
    pub fn forget(&self, id: i64) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(id: i64, owner_id: i64) -> Conversation {
        Conversation {
            id,
            owner_id,
            bot: "echo".into(),
            title: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_conversation_is_known_to_its_owner_only() {
        let known = KnownConversations::default();
        known.remember(&[conversation(1, 10)]);
        assert_eq!(known.get(10, 1).map(|c| c.id), Some(1));
        assert_eq!(known.get(11, 1), None, "another user's conversation");
        assert_eq!(known.get(10, 2), None, "never seen");
        let mut titled = conversation(1, 10);
        titled.title = "named".into();
        known.remember([&titled]);
        assert_eq!(known.get(10, 1).map(|c| c.title), Some("named".into()));
        known.forget(1);
        assert_eq!(known.get(10, 1), None, "forgotten");
    }

    #[test]
    fn the_map_starts_over_when_full() {
        let known = KnownConversations::default();
        let many: Vec<_> = (0..CAPACITY as i64).map(|id| conversation(id, 1)).collect();
        known.remember(&many);
        assert!(known.get(1, 0).is_some());
        // Seen again: no room needed.
        known.remember(&[conversation(0, 1)]);
        assert!(known.get(1, 5).is_some());
        known.remember(&[conversation(CAPACITY as i64, 1)]);
        assert!(known.get(1, CAPACITY as i64).is_some());
        assert_eq!(known.get(1, 5), None, "emptied to make room");
        let len = known.by_id.lock().map(|m| m.len()).unwrap_or_default();
        assert_eq!(len, 1);
    }
}
