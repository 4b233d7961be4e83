//! How many acknowledgements a commit needs under each policy (R5).
//!
//! Counted over the group's non-view sites. "Electable" means priority > 0.
//!
//! QUORUM is defined by what it must guarantee: every set of sites that can
//! win an election contains an electable site holding the commit, so the
//! winner (who has the newest data among the voters, E1) has it. A winner
//! needs `min_votes` votes, so the sites that do NOT hold the commit must be
//! fewer than `min_votes`: holders >= nsites - min_votes + 1.
//!
//! The reference system needs zero acks in a 2-site group (the survivor of
//! a lost master cannot win under 2SITE_STRICT). That leaves a commit on
//! one disk only, and it is lost the moment 2SITE_STRICT is turned off or
//! the master's disk fails. shoal counts a 2-site group as winnable with
//! one vote, so QUORUM there means both sites hold the commit.

use crate::config::AckPolicy;

/// What the master knows of its group when it counts acks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GroupShape {
    /// nsites: configured, or the number of non-view members.
    pub nsites: u32,
    /// Configured nvotes (None = majority of nsites).
    pub nvotes: Option<u32>,
    /// Non-view members other than the master.
    pub clients: u32,
    /// Of those, the electable ones.
    pub electable_clients: u32,
    /// Non-view clients connected now.
    pub connected_clients: u32,
    /// The master itself is electable (priority > 0).
    pub master_electable: bool,
}

/// What a policy asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Need {
    /// Acks needed.
    pub acks: u32,
    /// Only acks from electable clients count.
    pub electable_only: bool,
    /// The group cannot supply that many acks at all: the commit fails its
    /// policy at once (PERM_FAILED) instead of waiting out the timeout.
    pub impossible: bool,
}

/// The fewest votes that can win an election in this group.
pub fn min_votes(nsites: u32, nvotes: Option<u32>) -> u32 {
    match nvotes {
        Some(v) => v.max(1),
        None if nsites == 2 => 1,
        None => nsites / 2 + 1,
    }
}

/// What `policy` needs for a commit in a group of this shape.
pub fn need(policy: AckPolicy, g: &GroupShape) -> Need {
    let (acks, electable_only) = match policy {
        AckPolicy::None => (0, false),
        AckPolicy::One => (1, false),
        AckPolicy::OnePeer => (1, true),
        AckPolicy::All => (g.clients, false),
        AckPolicy::AllPeers => (g.electable_clients, true),
        // Every connected client; with clients in the group but none
        // connected, a commit on the master alone is not "all available",
        // it is nothing: ask for one so it fails.
        AckPolicy::AllAvailable => (g.connected_clients.max(u32::from(g.clients > 0)), false),
        AckPolicy::Quorum => {
            let holders = g
                .nsites
                .saturating_sub(min_votes(g.nsites, g.nvotes))
                .saturating_add(1)
                .max(1);
            (holders - u32::from(g.master_electable).min(holders), true)
        }
    };
    let supply = if electable_only {
        g.electable_clients
    } else {
        g.clients
    };
    Need {
        acks,
        electable_only,
        impossible: acks > supply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AckPolicy::{All, AllAvailable, AllPeers, One, OnePeer, Quorum};

    fn shape(n: u32, unelectable: u32) -> GroupShape {
        GroupShape {
            nsites: n,
            nvotes: None,
            clients: n - 1,
            electable_clients: n - 1 - unelectable,
            connected_clients: n - 1,
            master_electable: true,
        }
    }

    /// R5: the acks each policy needs for group sizes 1..7, with every
    /// client electable. Columns: ALL, ALL_AVAILABLE, ALL_PEERS, NONE, ONE,
    /// ONE_PEER, QUORUM.
    #[test]
    fn r5_acks_needed_all_electable() {
        let table: [[u32; 7]; 7] = [
            // ALL AVAIL PEERS NONE ONE ONE_PEER QUORUM
            [0, 0, 0, 0, 1, 1, 0], // 1 site
            [1, 1, 1, 0, 1, 1, 1], // 2 sites: shoal asks 1 (reference: 0)
            [2, 2, 2, 0, 1, 1, 1], // 3
            [3, 3, 3, 0, 1, 1, 1], // 4: any 3 voters include one of 2 holders
            [4, 4, 4, 0, 1, 1, 2], // 5
            [5, 5, 5, 0, 1, 1, 2], // 6
            [6, 6, 6, 0, 1, 1, 3], // 7
        ];
        for n in 1..=7u32 {
            for (i, p) in AckPolicy::ALL_POLICIES.iter().enumerate() {
                let got = need(*p, &shape(n, 0));
                assert_eq!(got.acks, table[n as usize - 1][i], "{p:?} with {n} sites");
            }
        }
        // A lone site cannot get one ack.
        assert!(need(One, &shape(1, 0)).impossible);
        assert!(!need(Quorum, &shape(1, 0)).impossible);
    }

    /// With one or two priority-0 clients, QUORUM and the PEER policies
    /// count only electable acks, and become impossible when too few
    /// electable clients exist.
    #[test]
    fn r5_acks_needed_with_unelectable_sites() {
        for n in 2..=7u32 {
            for unelectable in 1..=2u32.min(n - 1) {
                let g = shape(n, unelectable);
                let electable = n - 1 - unelectable;
                let q = need(Quorum, &g);
                assert!(q.electable_only);
                assert_eq!(q.acks, shape(n, 0).nsites - min_votes(n, None));
                assert_eq!(q.impossible, q.acks > electable, "n={n} u={unelectable}");
                let peers = need(AllPeers, &g);
                assert_eq!(peers.acks, electable);
                assert!(!peers.impossible);
                assert_eq!(need(OnePeer, &g).impossible, electable == 0);
                assert_eq!(need(All, &g).acks, n - 1);
                assert_eq!(need(One, &g).acks, 1);
            }
        }
        // 3 sites, one of them priority 0: QUORUM needs the other electable
        // client's ack.
        let g = shape(3, 1);
        assert_eq!(
            need(Quorum, &g),
            Need {
                acks: 1,
                electable_only: true,
                impossible: false
            }
        );
        // 2 sites, the client priority 0: QUORUM cannot be met.
        assert!(need(Quorum, &shape(2, 1)).impossible);
    }

    /// E3: nsites larger than the group (seed 003: 20 sites, nsites 30).
    #[test]
    fn quorum_follows_nsites_and_nvotes() {
        let g = GroupShape {
            nsites: 30,
            nvotes: None,
            clients: 19,
            electable_clients: 19,
            connected_clients: 19,
            master_electable: true,
        };
        // min votes 16, holders 15: 14 acks, possible with 19 clients.
        assert_eq!(min_votes(30, None), 16);
        assert_eq!(need(Quorum, &g).acks, 14);
        // ALL and ALL_PEERS count the real members, not nsites.
        assert_eq!(need(All, &g).acks, 19);
        // An explicit nvotes of 2 in a 3-site group: 2 holders.
        let g3 = GroupShape {
            nvotes: Some(2),
            ..shape(3, 0)
        };
        assert_eq!(need(Quorum, &g3).acks, 1);
        // nvotes = nsites: any single holder suffices.
        let g3 = GroupShape {
            nvotes: Some(3),
            ..shape(3, 0)
        };
        assert_eq!(need(Quorum, &g3).acks, 0);
        // ALL_AVAILABLE with nobody connected cannot be met.
        let lonely = GroupShape {
            connected_clients: 0,
            ..shape(3, 0)
        };
        assert_eq!(need(AllAvailable, &lonely).acks, 1);
        // An unelectable master must be joined by more holders.
        let g = GroupShape {
            master_electable: false,
            ..shape(5, 0)
        };
        assert_eq!(need(Quorum, &g).acks, 3);
    }
}
