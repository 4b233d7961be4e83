//! The group membership as this site knows it: replicated through the log
//! (R7), plus what this site observes of each member (connection, acks).

use crate::ids::{Instant, Lsn, SiteId};
use crate::log::{MemberAction, Membership};
use alloc::collections::BTreeMap;
use alloc::string::String;

/// Membership flag: the site is a view (R12).
pub const FLAG_VIEW: u8 = Membership::VIEW;
/// Membership flag: the site has priority 0 and cannot become master.
pub const FLAG_UNELECTABLE: u8 = 2;

/// One member.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// Its id.
    pub id: SiteId,
    /// Its address.
    pub address: String,
    /// Membership flags.
    pub flags: u8,
    /// A connection to it is open (as the host reported).
    pub connected: bool,
    /// Highest LSN it acknowledged in the current generation.
    pub acked: Lsn,
    /// When a message from it last arrived.
    pub last_heard: Instant,
}

impl Member {
    /// A view never votes, acks or becomes master.
    pub fn is_view(&self) -> bool {
        self.flags & FLAG_VIEW != 0
    }

    /// It may become master.
    pub fn is_electable(&self) -> bool {
        self.flags & (FLAG_VIEW | FLAG_UNELECTABLE) == 0
    }
}

/// Every member, by id.
#[derive(Clone, Debug, Default)]
pub struct Members {
    map: BTreeMap<SiteId, Member>,
}

/// What applying a membership record changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    /// A site was added.
    Added(SiteId),
    /// A site was removed.
    Removed(SiteId),
    /// A site's address or flags changed.
    Updated(SiteId),
    /// Nothing changed (a repeated record).
    None,
}

impl Members {
    /// Apply a replicated membership record.
    pub fn apply(&mut self, m: &Membership<'_>) -> Change {
        match m.action {
            MemberAction::Add | MemberAction::Update => {
                if let Some(e) = self.map.get_mut(&m.site) {
                    if e.address == m.address && e.flags == m.flags {
                        return Change::None;
                    }
                    e.address = String::from(m.address);
                    e.flags = m.flags;
                    return Change::Updated(m.site);
                }
                self.map.insert(
                    m.site,
                    Member {
                        id: m.site,
                        address: String::from(m.address),
                        flags: m.flags,
                        connected: false,
                        acked: Lsn::ZERO,
                        last_heard: Instant(0),
                    },
                );
                Change::Added(m.site)
            }
            MemberAction::Remove => match self.map.remove(&m.site) {
                Some(_) => Change::Removed(m.site),
                None => Change::None,
            },
        }
    }

    /// A member by id.
    pub fn get(&self, id: SiteId) -> Option<&Member> {
        self.map.get(&id)
    }

    /// A member by id, mutably.
    pub fn get_mut(&mut self, id: SiteId) -> Option<&mut Member> {
        self.map.get_mut(&id)
    }

    /// The member with this address.
    pub fn by_address(&self, address: &str) -> Option<&Member> {
        self.map.values().find(|m| m.address == address)
    }

    /// Every member, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.map.values()
    }

    /// Every member, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.map.values_mut()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True with no members.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The next free id.
    pub fn next_id(&self) -> SiteId {
        SiteId(self.map.keys().next_back().map_or(1, |s| s.0 + 1))
    }

    /// Drop every member (before a rebuild from the log).
    pub fn clear(&mut self) {
        self.map.clear();
    }
}
