//! Elections (E1-E6), duplicate masters (P1) and the master that steps
//! down without a majority (P3).
//!
//! Two phases. A site that starts an election makes a new election
//! generation (egen) durable, then sends VOTE1 (what data it has) to every
//! site. Sites that hear a VOTE1 with a newer egen join that election. When
//! a site has VOTE1s from all nsites (or, at the election timeout, from at
//! least nvotes), it ranks the candidates: electable first, then newest data
//! generation, then highest LSN, then priority, then tie-breaker, then site
//! id. It records its choice durably and sends VOTE2 to the winner. A site
//! holding nvotes VOTE2s becomes master with generation max(gen+1, egen).
//!
//! Because the winner needs nvotes VOTE2s and each site casts one VOTE2 per
//! egen (the vote is durable before it is sent), two masters can only share
//! a generation when nvotes is below a majority; a master that hears
//! another master of its generation reports DUPMASTER, both step down and
//! elect again.

use super::*;
use crate::ids::ElectionGen;
use crate::wire::Vote1;

/// An election under way.
#[derive(Clone, Debug)]
pub(super) struct Election {
    /// When this attempt gives up.
    deadline: Instant,
    /// Sites required to win.
    nvotes: u32,
    /// Sites expected to take part.
    nsites: u32,
    /// VOTE1s heard in this egen, including this site's own.
    vote1s: BTreeMap<SiteId, Vote1>,
    /// VOTE2s received for this site.
    vote2s: Vec<SiteId>,
    /// This site has sent its VOTE2 in this egen.
    voted: bool,
    /// Wait for all nsites before a majority counts (E5) until this time.
    full_until: Option<Instant>,
}

/// Rank two VOTE1s (E1): the greater is the better candidate.
fn rank(a: (&SiteId, &Vote1)) -> (bool, Generation, Lsn, u32, u32, SiteId) {
    let (id, v) = a;
    (
        v.priority > 0,
        v.data_generation,
        v.last_lsn,
        v.priority,
        v.tiebreaker,
        *id,
    )
}

impl<S: Storage> Site<S> {
    /// This site's VOTE2 in the current egen may still elect its candidate:
    /// a candidate counts votes for at most two election timeouts after it
    /// joined the election, which was before this site voted, so three
    /// election timeouts after voting (or after a restart, when the time of
    /// a durable vote is unknown) the vote can elect no one.
    pub(super) fn vote_binds(&self) -> bool {
        if self.meta.voted_for.is_none() {
            return false;
        }
        let since = self.voted_at.unwrap_or(self.opened_at);
        self.now < since + self.cfg.timeouts.election * 3
    }

    /// nsites and nvotes for an election now (E3, E6).
    pub(super) fn election_sizes(&self) -> (u32, u32) {
        let members = self.members.iter().filter(|m| !m.is_view()).count() as u32;
        let nsites = self.cfg.nsites.unwrap_or(members.max(1));
        let nvotes = match self.cfg.nvotes {
            Some(v) => v,
            // 2SITE_STRICT off: the survivor of a 2-site group may elect
            // itself (E6).
            None if nsites == 2 && !self.cfg.two_site_strict => 1,
            None => nsites / 2 + 1,
        };
        (nsites, nvotes)
    }

    fn my_vote1(&mut self, nsites: u32, nvotes: u32) -> Vote1 {
        // xorshift over the seed and egen: deterministic per site and
        // election, different between sites.
        let mut x = self.cfg.seed ^ ((self.meta.egen.0 as u64) << 32) ^ self.meta.site.0 as u64;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A planned switchover's target outranks equally current sites (E7).
        let priority = match self.cfg.effective_priority() {
            0 => 0,
            // Its store may be ahead of its log (S6): it must not lead.
            _ if self.meta.init_in_progress => 0,
            _ if self.boost => u32::MAX,
            p => p,
        };
        Vote1 {
            data_generation: self.writer.last_generation(),
            last_lsn: self.writer.last_lsn(),
            priority,
            tiebreaker: x as u32,
            nsites,
            nvotes,
        }
    }

    /// Hold an election (E1). Clients call this when the master is lost;
    /// the application may call it too (`rep_elect`).
    pub fn rep_elect(&mut self, now: Instant) {
        self.now = now;
        self.start_election(None);
    }

    /// Start (or join, when `egen` names a newer one) an election.
    pub(super) fn start_election(&mut self, join: Option<ElectionGen>) {
        if self.cfg.view || !self.cfg.elections || self.meta.site.0 == 0 {
            return;
        }
        if self.members.get(self.meta.site).is_none() {
            // This site's log does not (yet) hold its own membership: it
            // lost the part of the log that added it, so its idea of the
            // group is too small to count votes by. It neither stands nor
            // votes until it has caught up; it looks for a master instead.
            self.find_master_at = Some(self.now);
            return;
        }
        if self.role == Role::Master {
            return;
        }
        if self.holds_grant() {
            // R10: a lease granted to the master forbids voting until it
            // ends; try again then.
            self.elect_at = Some(self.grant_until);
            return;
        }
        if self.role == Role::Idle {
            self.role = Role::Client;
        }
        let egen = match join {
            Some(e) => e,
            None => ElectionGen((self.meta.egen.0 + 1).max(self.meta.generation.0 + 1)),
        };
        if egen < self.meta.egen || (egen == self.meta.egen && self.election.is_some()) {
            return;
        }
        // E1: the egen is durable before this site votes.
        if egen != self.meta.egen {
            self.meta.egen = egen;
            self.meta.voted_for = None;
            self.save_meta();
        }
        let (nsites, nvotes) = self.election_sizes();
        let full_until = (!self.cfg.timeouts.full_election.is_zero() && !self.had_master)
            .then(|| self.opened_at + self.cfg.timeouts.full_election);
        let mine = self.my_vote1(nsites, nvotes);
        let mut vote1s = BTreeMap::new();
        vote1s.insert(self.meta.site, mine);
        self.election = Some(Election {
            deadline: self.now + self.cfg.timeouts.election,
            nvotes,
            nsites,
            vote1s,
            vote2s: Vec::new(),
            voted: self.meta.voted_for.is_some(),
            full_until,
        });
        self.master = None;
        self.channel_follow_master();
        self.sync = SyncState::NoMaster;
        self.want = None;
        self.find_master_at = None;
        self.stats.elections += 1;
        self.broadcast(Flags::NONE, &Message::Vote1(mine));
        self.maybe_tally(false);
    }

    pub(super) fn on_vote1(&mut self, env: &Envelope, v: &Vote1) -> Result<(), Drop> {
        if self.members.get(env.from).is_some_and(|m| m.is_view()) {
            return Err(Drop::WrongRole);
        }
        if self.role == Role::Master && self.transfer.is_some_and(|(to, _)| to == env.from) {
            // The transfer target calls its election: step down and vote.
            let now = self.now;
            self.rep_start_client(now);
        }
        if self.holds_grant() {
            return Err(Drop::WrongRole);
        }
        if self.role == Role::Master {
            // A master is alive: tell the voter, which ends its election.
            self.send(env.from, Flags::NONE, &Message::NewMaster);
            if env.egen > self.meta.egen {
                self.meta.egen = env.egen;
                self.save_meta();
            }
            return Ok(());
        }
        if env.egen < self.meta.egen {
            return Err(Drop::Stale);
        }
        if self.role == Role::Client && self.master.is_some() {
            // This site still follows a live master: a site that lost it
            // cannot pull this one into an election (it will hear the
            // master, or time out and retry).
            return Err(Drop::WrongRole);
        }
        if env.egen > self.meta.egen || self.election.is_none() {
            if !self.cfg.elections || self.cfg.view {
                return Ok(());
            }
            self.election = None;
            self.start_election(Some(env.egen));
        }
        let first = match self.election.as_mut() {
            Some(e) => e.vote1s.insert(env.from, *v).is_none(),
            None => false,
        };
        if first {
            // The voter may not have heard this site's VOTE1 (it may have
            // been lost, or sent before the voter joined): answer it once.
            self.send_my_vote1(env.from);
        }
        self.maybe_tally(false);
        Ok(())
    }

    /// Send this site's VOTE1 of the current election to one site.
    pub(super) fn send_my_vote1(&mut self, to: SiteId) {
        let me = self.meta.site;
        let mine = self
            .election
            .as_ref()
            .and_then(|e| e.vote1s.get(&me).copied());
        if let Some(v) = mine {
            self.send(to, Flags::NONE, &Message::Vote1(v));
        }
    }

    /// Phase two once enough VOTE1s are in (or at the timeout).
    fn maybe_tally(&mut self, timed_out: bool) {
        let now = self.now;
        let Some(e) = self.election.as_ref() else {
            return;
        };
        if e.voted {
            return;
        }
        let heard = e.vote1s.len() as u32;
        let full_wait = e.full_until.is_some_and(|t| now < t);
        // Every site this one can reach has voted: waiting longer cannot
        // add a voter, so vote now. Any nvotes voters include a holder of
        // every QUORUM-acknowledged commit, and the winner is the best of
        // the voters, so this is as safe as waiting. (When the host reports
        // no connections at all, wait for nsites or the timeout.)
        let me = self.meta.site;
        let connected = self
            .members
            .iter()
            .filter(|m| m.id != me && !m.is_view() && m.connected)
            .count() as u32;
        let all_reachable = connected > 0 && heard > connected;
        let ready =
            heard >= e.nsites || (heard >= e.nvotes && !full_wait && (timed_out || all_reachable));
        if !ready {
            return;
        }
        let best = e
            .vote1s
            .iter()
            .max_by_key(|x| rank(*x))
            .map(|(id, v)| (*id, v.priority));
        let Some((candidate, priority)) = best else {
            return;
        };
        if priority == 0 {
            // Nobody here can become master (E2).
            return;
        }
        if !e
            .vote1s
            .get(&candidate)
            .is_some_and(|v| self.init_may_vote_for(v))
        {
            // This site gave up its log for a snapshot (S6): it may not
            // help elect a site that lacks what it held.
            return;
        }
        // The vote is durable before it is sent (E1).
        self.meta.voted_for = Some(candidate);
        self.save_meta();
        self.voted_at = Some(self.now);
        if let Some(e) = self.election.as_mut() {
            e.voted = true;
        }
        if candidate == self.meta.site {
            self.on_vote2_for_me(self.meta.site);
        } else {
            self.send(candidate, Flags::NONE, &Message::Vote2 { candidate });
        }
    }

    pub(super) fn on_vote2(&mut self, env: &Envelope, candidate: SiteId) -> Result<(), Drop> {
        if candidate != self.meta.site || env.egen != self.meta.egen {
            return Err(Drop::Stale);
        }
        if self.role == Role::Master {
            return Ok(());
        }
        if self.election.is_none() {
            if env.egen == self.meta.egen {
                // An election this site has given up: a late vote must not
                // make it master (voters only hold back for a bounded time,
                // see `vote_binds`).
                return Err(Drop::Stale);
            }
            // A VOTE2 can overtake the VOTE1 that would have started our
            // part in a newer election.
            self.start_election(Some(env.egen));
        }
        self.on_vote2_for_me(env.from);
        Ok(())
    }

    fn on_vote2_for_me(&mut self, voter: SiteId) {
        let Some(e) = self.election.as_mut() else {
            return;
        };
        if !e.vote2s.contains(&voter) {
            e.vote2s.push(voter);
        }
        if (e.vote2s.len() as u32) < e.nvotes
            || self.cfg.effective_priority() == 0
            || self.meta.init_in_progress
        {
            return;
        }
        // Won (E1): rep_start_master takes generation max(gen + 1, egen).
        self.election = None;
        let now = self.now;
        self.event(Event::Elected);
        if self.rep_start_master(now).is_err() {
            self.event(Event::ElectionFailed);
        }
    }

    /// Election deadlines: give up an attempt, retry later (E4).
    pub(super) fn election_timeouts(&mut self) {
        let now = self.now;
        let due = self.election.as_ref().is_some_and(|e| e.deadline <= now);
        if due {
            let voted = self.election.as_ref().is_some_and(|e| e.voted);
            if !voted {
                // Phase one is over: vote with the VOTE1s heard, and give
                // phase two its own timeout.
                self.maybe_tally(true);
            }
            let now_voted = self.election.as_ref().is_some_and(|e| e.voted);
            if !voted && now_voted {
                let d = self.cfg.timeouts.election;
                if let Some(e) = self.election.as_mut() {
                    e.deadline = now + d;
                }
            } else if self.election.is_some() {
                // E4: no master came of it; look for one, and try again
                // after the retry interval.
                self.election = None;
                self.event(Event::ElectionFailed);
                self.elect_at = Some(now + self.cfg.timeouts.election_retry);
                self.broadcast(Flags::NONE, &Message::MasterReq);
            }
        }
        if self.elect_at.is_some_and(|t| t <= now) {
            self.elect_at = None;
            if self.role != Role::Master && self.master.is_none() {
                self.start_election(None);
            }
        }
    }

    /// The master is gone (heartbeat monitor, broken connection): elect.
    pub(super) fn master_lost(&mut self) {
        self.master = None;
        self.channel_follow_master();
        self.sync = SyncState::NoMaster;
        self.want = None;
        self.init = None;
        self.event(Event::MasterFailure);
        if self.cfg.elections {
            self.start_election(None);
        } else {
            self.find_master_at = Some(self.now);
        }
    }

    /// Another master of this site's generation exists (P1): both step
    /// down and elect.
    pub(super) fn dup_master(&mut self, other: SiteId) {
        self.send(other, Flags::NONE, &Message::DupMaster);
        self.step_down_and_elect(true);
    }

    pub(super) fn on_dup_master(&mut self, env: &Envelope) -> Result<(), Drop> {
        if self.role != Role::Master || env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        self.step_down_and_elect(true);
        Ok(())
    }

    pub(super) fn step_down_and_elect(&mut self, dup: bool) {
        if dup {
            self.event(Event::DupMaster);
        }
        let now = self.now;
        self.rep_start_client(now);
        if self.cfg.elections {
            self.start_election(None);
        }
    }

    /// How long a master may go without hearing a majority (P3). Clients
    /// answer every heartbeat, so a healthy master hears each of them once
    /// per `heartbeat_send` (plus a round trip); and no client can call an
    /// election sooner than `monitor - send` after a partition. Half the
    /// monitor (at least one and a half heartbeat intervals) lies between
    /// the two for any monitor of more than three intervals: the minority
    /// master steps down first, and a healthy one never does.
    pub(super) fn majority_window(&self) -> Duration {
        let t = &self.cfg.timeouts;
        (t.heartbeat_monitor / 2)
            .max(t.heartbeat_send * 3 / 2)
            .min(t.heartbeat_monitor)
    }

    /// P3: a master that has not heard from a majority of nsites (itself
    /// included) for its majority window steps down and elects, so it stops
    /// taking writes before the majority side elects a new one.
    pub(super) fn check_majority(&mut self) {
        let d = self.majority_window();
        if self.role != Role::Master
            || self.cfg.timeouts.heartbeat_monitor.is_zero()
            || !self.cfg.step_down_without_majority
        {
            return;
        }
        if self.now < self.master_since + d {
            return;
        }
        let me = self.meta.site;
        let now = self.now;
        let heard = self
            .members
            .iter()
            .filter(|m| m.id != me && !m.is_view() && now < m.last_heard + d)
            .count() as u32;
        let (_, nvotes) = self.election_sizes();
        if heard + 1 < nvotes {
            self.stats.step_downs += 1;
            self.step_down_and_elect(false);
        }
    }

    /// P3 on a broken connection: step down at once when the connections
    /// still up cannot make a majority (only when P3 is on, which needs the
    /// heartbeat monitor).
    pub(super) fn check_connected_majority(&mut self) {
        if self.role != Role::Master
            || self.cfg.timeouts.heartbeat_monitor.is_zero()
            || !self.cfg.step_down_without_majority
        {
            return;
        }
        let me = self.meta.site;
        let up = self
            .members
            .iter()
            .filter(|m| m.id != me && !m.is_view() && m.connected)
            .count() as u32;
        let (_, nvotes) = self.election_sizes();
        if up + 1 < nvotes {
            self.stats.step_downs += 1;
            self.step_down_and_elect(false);
        }
    }

    /// When P3 is due to be checked next.
    pub(super) fn majority_deadline(&self) -> Option<Instant> {
        let d = self.majority_window();
        if self.role != Role::Master
            || self.cfg.timeouts.heartbeat_monitor.is_zero()
            || !self.cfg.step_down_without_majority
        {
            return None;
        }
        let me = self.meta.site;
        // The earliest moment a member's silence could change the count.
        let first = self
            .members
            .iter()
            .filter(|m| m.id != me && !m.is_view())
            .map(|m| m.last_heard + d)
            .filter(|t| *t > self.now)
            .min();
        Some(first.unwrap_or(self.now + d).max(self.master_since + d))
    }

    pub(super) fn election_deadline(&self) -> Option<Instant> {
        let a = self.election.as_ref().map(|e| e.deadline);
        match (a, self.elect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
