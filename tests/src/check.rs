//! The invariants the simulator checks after every step (issue 3, item 4).
//!
//! (a) **One history per generation.** Any two sites' records at the same
//!     LSN written in the same generation are byte-identical. (Records at
//!     the same LSN of different generations may differ: a client can hold
//!     records a crashed master wrote and nobody else got; it rolls them
//!     back when it verifies against the next master.) A registry of every
//!     (LSN, generation) ever seen on any site enforces it. The operator
//!     gives each new master a generation above every one used before (as
//!     an election would), and no generation ever has two masters.
//! (b) **In-order, gap-free logs.** Every site's log index is contiguous
//!     (each record starts where the previous one ends, or at the start of
//!     the next segment) and only ever grows at its end, except by a
//!     rollback the site announces with a ROLLBACK event, by a crash, or
//!     by an internal initialisation (S6), which restarts the log at the
//!     first record of a segment (counted in `Stats::inits_installed`).
//!     The site's last LSN is its last indexed record.
//! (c) **Permanent commits are never lost** while the promised conditions
//!     hold: at most `nsites - min_votes` sites are failed at once (a site
//!     is failed from its crash until it has caught up again after the
//!     restart), and the operator promotes the most up-to-date running
//!     site. Under QUORUM, ALL and ALL_PEERS a commit answered `permanent`
//!     must never be rolled back on any site, must be in the log of every
//!     later master, and must be on every site once they converge. A commit
//!     made without sync (R4) is held to this only until a site loses power
//!     (a Clean, Torn or Reordered crash): such a commit was acknowledged
//!     from the operating system's memory, not from disk. Process crashes
//!     ([`CrashMode::Process`]) keep it.
//! (d) **Convergence**: after faults stop every site reaches the same last
//!     LSN, the same store digest and the same log, and what each site's
//!     disk holds reopens to the same state ([`Sim::check_final`]). A view
//!     restricted to some databases (R12) holds the same log, and the
//!     master's store restricted to its databases.
//! (e) **Views** (R12): a view never sends an ACK, a VOTE1, a VOTE2 or a
//!     lease grant, never becomes master, and counts toward no commit's
//!     acks: a commit answered permanent with `acks` acknowledgements had
//!     at least that many non-view sites other than the master send an
//!     ACK that covers it. Views are outside nsites, so a crashed view is
//!     not a failed site of (c).

use crate::disk::CrashMode;
use crate::rng::Rng;
use crate::sim::{fmt_time, Sim};
use shoal_core::config::{AckPolicy, Config};
use shoal_core::log::segment::SEGMENT_HEADER_LEN;
use shoal_core::site::{CommitOutcome, IndexEntry, Role, Rollback, Site};
use shoal_core::wire::MessageKind;
use shoal_core::{Generation, Instant, Lsn, SiteId};
use std::collections::{BTreeMap, BTreeSet};

/// Counters of what the checker saw.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CheckStats {
    /// Distinct (LSN, generation) records registered.
    pub records: u64,
    /// Record checks made (one per record a site appended).
    pub record_checks: u64,
    /// Commits answered permanent under a tracked policy.
    pub permanent: u64,
    /// Rollback events seen.
    pub rollbacks: u64,
    /// Commits rolled back (none of them permanent).
    pub rolled_back_commits: u64,
    /// Masters seen (one per generation).
    pub masters: u64,
}

/// The checker's state: the record registry, the permanent commits, and
/// whether the promised conditions still hold.
#[derive(Clone, Debug)]
pub struct Checker {
    /// Every record seen: its bytes, and the record before it in the log
    /// of the master that wrote it.
    records: BTreeMap<(Lsn, Generation), (Vec<u8>, Lsn)>,
    /// Permanent commits: (LSN, generation) -> (site that answered, when,
    /// made without sync).
    permanent: BTreeMap<(Lsn, Generation), (usize, Instant, bool)>,
    masters: BTreeMap<Generation, SiteId>,
    track: bool,
    promises: bool,
    broken: Option<String>,
    tolerated: usize,
    failed: BTreeSet<usize>,
    /// When a site last lost power (a crash other than a process crash).
    power_lost_at: Option<Instant>,
    /// The group's size, configured nsites and nvotes (to count the
    /// tolerated failures again when a site becomes a view).
    sites: usize,
    nsites: Option<u32>,
    nvotes: Option<u32>,
    /// Sites configured as views (R12).
    views: BTreeSet<usize>,
    /// The highest LSN each site sent an ACK for, in any generation.
    acks_sent: BTreeMap<usize, Lsn>,
    stats: CheckStats,
}

impl Checker {
    pub(crate) fn new(sites: usize, cfg: &Config) -> Checker {
        let mut c = Checker::empty(sites, cfg);
        c.count_tolerated();
        c
    }

    fn empty(sites: usize, cfg: &Config) -> Checker {
        Checker {
            records: BTreeMap::new(),
            permanent: BTreeMap::new(),
            masters: BTreeMap::new(),
            track: matches!(
                cfg.ack_policy,
                AckPolicy::Quorum | AckPolicy::All | AckPolicy::AllPeers
            ),
            promises: true,
            broken: None,
            tolerated: 0,
            failed: BTreeSet::new(),
            power_lost_at: None,
            sites,
            nsites: cfg.nsites,
            nvotes: cfg.nvotes,
            views: BTreeSet::new(),
            acks_sent: BTreeMap::new(),
            stats: CheckStats::default(),
        }
    }

    /// Failures tolerated: nsites (configured, or the non-view sites)
    /// less the fewest votes that win.
    fn count_tolerated(&mut self) {
        let members = (self.sites - self.views.len()) as u32;
        let nsites = self.nsites.unwrap_or(members);
        let min = shoal_core::site::acks::min_votes(nsites, self.nvotes);
        self.tolerated = nsites.saturating_sub(min) as usize;
    }

    /// Site `i` is a view (R12) or not, from its next open on.
    pub(crate) fn set_view(&mut self, i: usize, view: bool) {
        let changed = if view {
            self.views.insert(i)
        } else {
            self.views.remove(&i)
        };
        if changed {
            self.count_tolerated();
        }
    }

    /// Is site `i` a view?
    pub fn is_view(&self, i: usize) -> bool {
        self.views.contains(&i)
    }

    /// (e) Site `i` sent a frame of this kind (an ACK of `lsn`).
    pub(crate) fn on_send(&mut self, i: usize, kind: MessageKind, lsn: Lsn) -> Result<(), String> {
        if self.views.contains(&i)
            && matches!(
                kind,
                MessageKind::Ack
                    | MessageKind::Vote1
                    | MessageKind::Vote2
                    | MessageKind::LeaseGrant
            )
        {
            return Err(format!(
                "view s{i} sent {kind:?} (R12: a view never acks or votes)"
            ));
        }
        if kind == MessageKind::Ack {
            let a = self.acks_sent.entry(i).or_insert(Lsn::ZERO);
            *a = (*a).max(lsn);
        }
        Ok(())
    }

    /// (e) Non-view sites other than `master` that sent an ACK covering
    /// `lsn`.
    fn non_view_acks(&self, master: usize, lsn: Lsn) -> usize {
        self.acks_sent
            .iter()
            .filter(|(j, a)| **j != master && !self.views.contains(j) && **a >= lsn)
            .count()
    }

    /// Counters.
    pub fn stats(&self) -> CheckStats {
        self.stats
    }

    /// How many sites may be failed at once with permanent commits safe.
    pub fn tolerated(&self) -> usize {
        self.tolerated
    }

    /// Sites failed now (down, or restarted and not yet caught up).
    pub fn failed(&self) -> &BTreeSet<usize> {
        &self.failed
    }

    /// Do the promised conditions still hold?
    pub fn promises_hold(&self) -> bool {
        self.promises
    }

    /// Why they stopped holding.
    pub fn broken_because(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Commits answered permanent (LSN, generation), while promises held.
    pub fn permanent(&self) -> impl Iterator<Item = (Lsn, Generation)> + '_ {
        self.permanent.keys().copied()
    }

    /// From now on permanent commits may be lost (a scenario broke the
    /// conditions on purpose).
    pub fn break_promises(&mut self, now: Instant, why: &str) {
        if self.promises {
            self.promises = false;
            self.broken = Some(format!("{} {why}", fmt_time(now)));
        }
    }

    pub(crate) fn on_crash(&mut self, i: usize, now: Instant, mode: CrashMode) {
        if self.views.contains(&i) {
            // A view holds no commit for the group (R12): outside nsites,
            // its crash fails nothing the ack policies promise.
            return;
        }
        if mode != CrashMode::Process {
            // Commits made without sync were promised to survive process
            // crashes only: a power loss releases them, and those still in
            // flight (an ack sent before the power went is counted after).
            self.permanent.retain(|_, (_, _, volatile)| !*volatile);
            self.power_lost_at = Some(now);
        }
        self.failed.insert(i);
        if self.failed.len() > self.tolerated {
            let why = format!(
                "{} sites failed at once ({:?}), {} tolerated",
                self.failed.len(),
                self.failed,
                self.tolerated
            );
            self.break_promises(now, &why);
        }
    }

    pub(crate) fn on_restart(&mut self, _i: usize) {
        // Still failed until it has caught up: see `check_site`.
    }

    /// Is `i` as up to date as the best candidate?
    pub fn is_best_candidate(&self, sim: &Sim, i: usize) -> bool {
        let key = |j: usize| {
            let s = sim.site(j);
            (
                s.log_index().last().map_or(Generation(0), |e| e.generation),
                s.last_lsn(),
            )
        };
        match sim.best_candidate() {
            Some(b) => {
                sim.is_up(i) && sim.site(i).config().effective_priority() > 0 && key(i) >= key(b)
            }
            None => false,
        }
    }

    fn holds_all(&self, site: &Site<crate::disk::SimDisk>) -> Option<(Lsn, Generation)> {
        self.holds_all_up_to(site, Generation(u32::MAX))
    }

    /// The first permanent commit of a generation up to `upto` the site
    /// lacks. (A master of an older generation, cut off before it learned
    /// of a newer one, cannot hold that one's commits.)
    fn holds_all_up_to(
        &self,
        site: &Site<crate::disk::SimDisk>,
        upto: Generation,
    ) -> Option<(Lsn, Generation)> {
        self.permanent
            .keys()
            .filter(|(_, g)| *g <= upto)
            .find(|(lsn, g)| !has_record(site.log_index(), *lsn, *g))
            .copied()
    }
}

impl Sim {
    /// The digest of master `m`'s store restricted to the databases site
    /// `i` replicates (the whole store but for a partial view, R12).
    pub fn restricted_digest(&self, m: usize, i: usize) -> u32 {
        let cfg = self.site(i).config();
        self.site(m).store().digest_where(|db| cfg.replicates(db))
    }
}

/// Does the log hold the record (LSN, generation)? A record older than the
/// log's first one was archived into the store snapshot (R8) and counts.
fn has_record(index: &[IndexEntry], lsn: Lsn, g: Generation) -> bool {
    if index.first().is_some_and(|f| lsn < f.lsn) {
        return true;
    }
    index
        .binary_search_by(|e| e.lsn.cmp(&lsn))
        .is_ok_and(|k| index[k].generation == g)
}

/// Two logs agree where they overlap, and overlap unless one is empty.
fn agree(a: &[IndexEntry], b: &[IndexEntry]) -> bool {
    let (Some(fa), Some(fb)) = (a.first(), b.first()) else {
        return true;
    };
    let start = fa.lsn.max(fb.lsn);
    let ia = a.partition_point(|e| e.lsn < start);
    let ib = b.partition_point(|e| e.lsn < start);
    let (ra, rb) = (&a[ia..], &b[ib..]);
    let n = ra.len().min(rb.len());
    (n > 0 || ra.is_empty() || rb.is_empty()) && ra[..n] == rb[..n]
}

/// Does `e` start exactly where `prev` ends (or at the next segment)?
fn follows(prev: Option<&IndexEntry>, e: &IndexEntry) -> bool {
    let first_of_segment = e.lsn.offset as usize == SEGMENT_HEADER_LEN;
    match prev {
        None => first_of_segment,
        Some(p) => e.lsn == p.end() || (first_of_segment && e.lsn.file == p.lsn.file + 1),
    }
}

impl Sim {
    /// Invariants (a), (b), (c) for site `i` after one of its steps.
    pub(crate) fn check_site(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(site) = slot.site.as_mut() else {
            return;
        };
        let installs = site.stats().inits_installed;
        if installs != slot.installs {
            // An installed snapshot (S6) restarted the log: it is checked
            // afresh from its first record.
            slot.installs = installs;
            slot.mirror.clear();
        }
        let idx = site.log_index();
        // Archiving (R8) removes whole segments from the front of the log:
        // compare from the log's first record on.
        let trimmed = match (idx.first(), slot.mirror.first()) {
            (Some(f), Some(m)) if f.lsn > m.lsn => slot
                .mirror
                .binary_search_by(|e| e.lsn.cmp(&f.lsn))
                .unwrap_or(slot.mirror.len()),
            _ => 0,
        };
        if trimmed > 0 {
            slot.mirror.drain(..trimmed);
        }
        let mirror = &slot.mirror;
        let append_only =
            mirror.len() <= idx.len() && mirror.last().is_none_or(|l| idx[mirror.len() - 1] == *l);
        let common = if append_only {
            mirror.len()
        } else {
            idx.iter().zip(mirror).take_while(|(a, b)| a == b).count()
        };
        let last_ok = site.last_lsn() == idx.last().map_or(Lsn::ZERO, |e| e.lsn);
        let fresh: Vec<IndexEntry> = idx[common..].to_vec();
        let new: Vec<(IndexEntry, Option<Vec<u8>>)> = fresh
            .into_iter()
            .map(|e| (e, site.read_record(e.lsn)))
            .collect();
        let role = site.role();
        let generation = site.generation();
        let id = site.id();
        let slot = &self.slots[i];
        let (rolled_back, opened, was_master) = (slot.rolled_back, slot.opened, slot.was_master);

        // (b) The log changes only at its end, except by an announced
        // rollback or a restart.
        if !append_only && !rolled_back && !opened {
            self.fail(&format!(
                "s{i}'s log changed below its end without a ROLLBACK event (first change at index {common})"
            ));
        }
        if !last_ok {
            self.fail(&format!("s{i}'s last LSN is not its last indexed record"));
        }
        let mut prev = common.checked_sub(1).map(|k| self.site(i).log_index()[k]);
        for (e, bytes) in &new {
            if !follows(prev.as_ref(), e) {
                self.fail(&format!(
                    "s{i}'s log has a gap or is out of order: {:?} (len {}) after {:?}",
                    e.lsn,
                    e.len,
                    prev.map(|p| (p.lsn, p.len))
                ));
            }
            let Some(bytes) = bytes else {
                self.fail(&format!(
                    "s{i} indexes a record at {:?} it cannot read",
                    e.lsn
                ));
            };
            if bytes.len() != e.len as usize {
                self.fail(&format!(
                    "s{i}'s record at {:?} has the wrong length",
                    e.lsn
                ));
            }
            // (a) One history per generation.
            self.check.stats.record_checks += 1;
            let before = prev.map_or(Lsn::ZERO, |p| p.lsn);
            match self.check.records.get(&(e.lsn, e.generation)) {
                Some((b, _)) if b != bytes => self.fail(&format!(
                    "two different records at {:?} in generation {} (s{i} holds one of them)",
                    e.lsn, e.generation.0
                )),
                // (b) A record that opens a segment follows the same record
                // as in its master's log: no gap hides at a segment switch.
                Some((_, p)) if prev.is_some() && *p != before => self.fail(&format!(
                    "s{i}'s log has a gap before {:?}: it follows {before:?}, its master wrote it after {p:?}",
                    e.lsn
                )),
                Some(_) => {}
                None => {
                    self.check.stats.records += 1;
                    self.check
                        .records
                        .insert((e.lsn, e.generation), (bytes.clone(), before));
                }
            }
            prev = Some(*e);
        }
        let slot = &mut self.slots[i];
        slot.mirror.truncate(common);
        slot.mirror.extend(new.into_iter().map(|(e, _)| e));
        slot.opened = false;
        slot.was_master = role == Role::Master;
        slot.last_generation = slot.last_generation.max(generation);

        // (e) A view never becomes master (R12).
        if role == Role::Master && self.check.views.contains(&i) {
            self.fail(&format!("view s{i} became master"));
        }
        // One master per generation.
        if role == Role::Master {
            match self.check.masters.get(&generation) {
                Some(&m) if m != id => self.fail(&format!(
                    "two masters of generation {}: site {} and site {} (s{i})",
                    generation.0, m.0, id.0
                )),
                Some(_) => {}
                None => {
                    self.check.stats.masters += 1;
                    self.check.masters.insert(generation, id);
                }
            }
        }
        // (c) A master holds every permanent commit.
        if role == Role::Master && (!was_master || !append_only) && self.check.promises {
            if let Some((lsn, g)) = self.check.holds_all_up_to(self.site(i), generation) {
                self.fail(&format!(
                    "master s{i} (generation {}) lacks permanent commit {lsn:?} of generation {}",
                    generation.0, g.0
                ));
            }
        }
        // A failed site recovers once it follows a master, is in step, and
        // holds every permanent commit again.
        if self.check.failed.contains(&i) {
            let s = self.site(i);
            let caught_up = match role {
                Role::Client => s.master().is_some() && !s.is_synchronizing(),
                Role::Master => true,
                Role::Idle => false,
            };
            if caught_up && self.check.holds_all(s).is_none() {
                self.check.failed.remove(&i);
            }
        }
    }

    /// (c) A rollback never removes a permanent commit.
    pub(crate) fn check_rollback(&mut self, i: usize, rb: &Rollback) {
        self.check.stats.rollbacks += 1;
        self.check.stats.rolled_back_commits += rb.commits.len() as u64;
        if !self.check.promises {
            return;
        }
        for t in &rb.commits {
            if let Some((site, at, _)) = self.check.permanent.get(&(t.lsn, t.generation)) {
                self.fail(&format!(
                    "s{i} rolled back commit {:?} of generation {}, answered permanent by s{site} at {}",
                    t.lsn,
                    t.generation.0,
                    fmt_time(*at)
                ));
            }
        }
    }

    /// R3: a `txn_applied` answer agrees with the site's log: applied means
    /// the commit is there; rolled back means it is not, and was not
    /// permanent.
    pub(crate) fn check_txn_answer(
        &mut self,
        i: usize,
        token: shoal_core::CommitToken,
        result: Result<(), shoal_core::site::WaitError>,
    ) {
        let Some(site) = self.slots[i].site.as_ref() else {
            return;
        };
        let held = has_record(site.log_index(), token.lsn, token.generation);
        let archived = site.log_index().first().is_some_and(|f| token.lsn < f.lsn);
        match result {
            Ok(()) if !held => self.fail(&format!(
                "s{i} answered txn_applied for {:?} of generation {} but its log lacks it",
                token.lsn, token.generation.0
            )),
            Err(shoal_core::site::WaitError::RolledBack) => {
                if self.check.promises
                    && self
                        .check
                        .permanent
                        .contains_key(&(token.lsn, token.generation))
                {
                    self.fail(&format!(
                        "s{i} answered txn_applied for permanent commit {:?} of generation {}: rolled back",
                        token.lsn, token.generation.0
                    ));
                }
                if held && !archived {
                    self.fail(&format!(
                        "s{i} said {:?} of generation {} was rolled back but holds it",
                        token.lsn, token.generation.0
                    ));
                }
            }
            _ => {}
        }
    }

    /// Register a commit answered permanent.
    pub(crate) fn check_commit_answer(
        &mut self,
        i: usize,
        o: &CommitOutcome,
        durability: shoal_core::config::Durability,
        made: Instant,
    ) {
        // (e) No commit is permanent on the strength of a view's ack.
        if o.permanent && !o.forwarded {
            let backed = self.check.non_view_acks(i, o.token.lsn);
            if (o.acks as usize) > backed {
                self.fail(&format!(
                    "s{i} answered {:?} permanent with {} acks, but only {backed} non-view sites acknowledged it",
                    o.token.lsn, o.acks
                ));
            }
        }
        if self.check.track && o.permanent && self.check.promises {
            self.check.stats.permanent += 1;
            let volatile = durability != shoal_core::config::Durability::Sync;
            if volatile && self.check.power_lost_at.is_some_and(|t| t >= made) {
                // A site that acknowledged it may have lost power since.
                return;
            }
            self.check
                .permanent
                .insert((o.token.lsn, o.token.generation), (i, self.now, volatile));
        }
    }

    /// (c) and (d) once the sites have converged: every permanent commit on
    /// every site; every log identical to the master's; each disk reopens
    /// to the state the site is in; what each disk holds durably is a
    /// prefix of the log that covers everything the site reported flushed.
    pub fn check_final(&mut self) {
        let Some(m) = self.master() else {
            self.fail("final check: no single master");
        };
        let master_index = self.site(m).log_index().to_vec();
        for i in self.up() {
            // (d), (e) A view holds the master's store restricted to its
            // databases (all of them for a full view).
            let expected = self.restricted_digest(m, i);
            if self.site(i).store().digest() != expected {
                self.fail(&format!(
                    "converged s{i}'s store differs from the master's{}",
                    if self.check.is_view(i) {
                        " restricted to the view's databases"
                    } else {
                        ""
                    }
                ));
            }
            if self.check.promises {
                if let Some((lsn, g)) = self.check.holds_all(self.site(i)) {
                    self.fail(&format!(
                        "converged s{i} lacks permanent commit {lsn:?} of generation {}",
                        g.0
                    ));
                }
            }
            let idx = self.site(i).log_index();
            if !agree(idx, &master_index) || idx.last() != master_index.last() {
                self.fail(&format!("converged s{i}'s log differs from the master's"));
            }
            let live_index = idx.to_vec();
            let live_digest = self.site(i).store().digest();
            let flushed = self.site(i).flushed_lsn();
            let cfg = self.site(i).config().clone();
            let addr = self.site(i).address().to_string();
            let disk = self.site_mut(i).storage_mut().clone();
            // The disk as it is: reopens to the same log and store.
            let re = Site::open(cfg.clone(), &addr, disk.clone(), self.now)
                .unwrap_or_else(|e| self.fail(&format!("s{i}'s disk does not reopen: {e}")));
            if re.log_index() != live_index.as_slice() || re.store().digest() != live_digest {
                self.fail(&format!("s{i}'s disk reopens to a different state"));
            }
            // The disk after a power cut: a prefix, covering what was
            // reported flushed.
            let mut cut = disk;
            cut.crash(CrashMode::Clean, &mut Rng::new(0));
            let re = Site::open(cfg, &addr, cut, self.now).unwrap_or_else(|e| {
                self.fail(&format!("s{i}'s durable disk does not reopen: {e}"))
            });
            if !agree(re.log_index(), &live_index)
                || re.last_lsn() > live_index.last().map_or(Lsn::ZERO, |e| e.lsn)
            {
                self.fail(&format!("s{i}'s durable log is not a prefix of its log"));
            }
            if re.last_lsn() < flushed {
                self.fail(&format!(
                    "s{i} reported {flushed:?} flushed but only {:?} is durable",
                    re.last_lsn()
                ));
            }
        }
    }
}
