//! The client's half of internal initialisation (S6): a client whose log
//! has no overlap with its master's takes the master's whole database.
//!
//! 1. **Asked.** UPDATE_REQ to the master, re-sent with the re-request
//!    back-off (R13) until UPDATE comes. It says the largest page this
//!    site takes (its own `max_page_bytes`) and how much answer (its
//!    `max_answer_take`), so a master with larger frames cuts the
//!    snapshot to fit this site's, and its answers to fit its incoming
//!    queue.
//! 2. **Pages.** The UPDATE fixes F, S and the page count; pages are asked
//!    for with PAGE_REQ and taken in order into memory, at most
//!    `max_init_bytes`. A page after a gap is dropped and the gap asked for
//!    again; PAGE_MORE asks for the next part at once; PAGE_FAIL (the
//!    master no longer has the snapshot) starts over at 1. Storage is not
//!    touched: the old log and store stay intact, and a crash here simply
//!    reopens them.
//! 3. **Install**, once every page is here and they decode to the
//!    announced snapshot (its own checksum covers every page), in this
//!    order:
//!    a. the metadata says `init_in_progress`;
//!    b. the snapshot is written (atomically replaced);
//!    c. the log is removed and restarted at F;
//!    d. the store and membership become the snapshot's.
//! 4. **Log.** The log is fetched from F as in any catch-up; records up to
//!    S are logged but not applied (the snapshot holds them). Once S is in
//!    the log (with the snapshot's generation) the storage is synced and
//!    the metadata flag cleared: the site now opens from snapshot + log
//!    like any other. INIT_DONE follows once it has caught up, then
//!    STARTUPDONE. No acks are sent before the flag is cleared, so nothing
//!    acknowledged can be lost to the clean-up below.
//!
//! A crash anywhere is safe: before a. nothing changed. With the flag set,
//! [`Site::open`] looks at what the disk holds: a snapshot whose record
//! is in the log (with its generation) is a consistent state — the old one
//! if the crash came before b., the new one if it came after the log
//! reached S — and the flag is cleared. Anything else (a new snapshot over
//! the old log, or a log from F that stops short of S) is cleaned up: the
//! log is removed, the snapshot's membership kept so the site knows its
//! group, and the site initialises again as soon as it finds a master. A
//! new master, or a log from F that no longer leads to the snapshot's
//! record, restarts the initialisation the same way. While the flag is set
//! the store may be ahead of the log, so the site neither stands for
//! election nor becomes master; and since it gave up the log that held
//! what it acknowledged, it casts its vote only for a candidate whose log
//! reaches the snapshot's record (the master made that record durable
//! before it sent UPDATE, so the master that served it qualifies).

use super::init_master::SNAPSHOT_DB;
use super::*;
use crate::log::segment::{FIRST_SEGMENT, SEGMENT_HEADER_LEN};
use crate::wire::{Page, Update};

/// An initialisation under way at this client.
#[derive(Clone, Debug)]
pub(super) struct Incoming {
    /// The master serving it.
    master: SiteId,
    phase: Phase,
    /// When to ask again (phases Asked and Pages).
    retry_at: Instant,
    /// The current re-request back-off.
    wait: Duration,
}

#[derive(Clone, Debug)]
enum Phase {
    /// UPDATE_REQ sent.
    Asked,
    /// Taking pages.
    Pages {
        first: Lsn,
        lsn: Lsn,
        pages: u32,
        /// The next page wanted.
        next: u32,
        /// Pages 0..next, back to back.
        bytes: Vec<u8>,
        /// The page a PAGE_MORE last made this site ask from.
        more_asked: u32,
        /// A gap re-requested from this page, not yet filled.
        gap_asked: Option<u32>,
    },
    /// Installed; the log is fetched until it holds the record `lsn` of
    /// `generation`.
    Log { lsn: Lsn, generation: Generation },
}

impl<S: Storage> Site<S> {
    /// An internal initialisation is under way and has replaced (or begun
    /// to replace) the log: the store may be ahead of the log, so this
    /// site may not become master until it is done.
    pub fn initializing(&self) -> bool {
        self.meta.init_in_progress
    }

    /// While this client takes a snapshot's pages: (pages received, pages
    /// in the snapshot).
    pub fn init_pages(&self) -> Option<(u32, u32)> {
        match self.init.as_ref().map(|i| &i.phase) {
            Some(Phase::Pages { next, pages, .. }) => Some((*next, *pages)),
            _ => None,
        }
    }

    /// The client fetches the snapshot or its log (S6).
    pub(super) fn init_active(&self) -> bool {
        self.init.is_some() || self.meta.init_in_progress
    }

    /// Start (or start over) an initialisation from the current master;
    /// with AUTOINIT off, JOIN_FAILURE instead and the data left intact.
    pub(super) fn begin_init(&mut self) {
        self.want = None;
        self.pending.clear();
        self.pending_bytes = 0;
        if !self.cfg.autoinit {
            self.init = None;
            self.sync = SyncState::Stuck;
            self.event(Event::JoinFailure);
            return;
        }
        let Some(master) = self.master else {
            self.init = None;
            self.sync = SyncState::NoMaster;
            return;
        };
        let wait = self.cfg.timeouts.rerequest_min;
        self.init = Some(Incoming {
            master,
            phase: Phase::Asked,
            retry_at: self.now + wait,
            wait,
        });
        self.sync = SyncState::Init;
        self.send(master, Flags::NONE, &self.update_req());
    }

    /// The largest snapshot page this site takes: the most a PAGE frame
    /// within its own limits carries (at least `MIN_PAGE_BYTES`, which
    /// `Limits::validate` ensures).
    fn init_page_bytes(&self) -> u32 {
        u32::try_from(crate::wire::max_page_bytes(&self.cfg.limits)).unwrap_or(u32::MAX)
    }

    /// UPDATE_REQ, announcing what this site takes: its page size (the
    /// same as `init_page_bytes`) and answer size.
    fn update_req(&self) -> Message<'static> {
        Message::UpdateReq {
            limits: crate::wire::RequesterLimits::of(&self.cfg.limits),
        }
    }

    /// Give the initialisation up for good (the snapshot is too large for
    /// this site): JOIN_FAILURE. The log and store are left as they are.
    fn init_impossible(&mut self) {
        self.init = None;
        self.sync = SyncState::Stuck;
        self.event(Event::JoinFailure);
    }

    /// An initialisation message from the master this site asked.
    fn init_from(&mut self, env: &Envelope) -> Result<(), Drop> {
        if self.role != Role::Client {
            return Err(Drop::WrongRole);
        }
        let Some(init) = self.init.as_ref() else {
            return Err(Drop::Unexpected);
        };
        if init.master != env.from || self.master != Some(env.from) {
            return Err(Drop::Unexpected);
        }
        if env.generation != self.meta.generation {
            return Err(Drop::Stale);
        }
        self.master_heard = self.now;
        self.monitor_fired = false;
        self.sync_target = self.sync_target.max(env.lsn);
        Ok(())
    }

    /// Progress: the back-off starts again from its minimum.
    fn init_progress(&mut self) {
        let min = self.cfg.timeouts.rerequest_min;
        let now = self.now;
        if let Some(i) = self.init.as_mut() {
            i.wait = min;
            i.retry_at = now + min;
        }
    }

    fn ask_pages(&mut self, from: u32) {
        if let Some(master) = self.init.as_ref().map(|i| i.master) {
            let msg = Message::PageReq {
                db: SNAPSHOT_DB,
                page: from,
            };
            self.send(master, Flags::NONE, &msg);
        }
    }

    /// UPDATE: the snapshot the master will send. Taken only in answer to
    /// this site's UPDATE_REQ.
    pub(super) fn on_update(&mut self, env: &Envelope, u: &Update<'_>) -> Result<(), Drop> {
        self.init_from(env)?;
        if !matches!(self.init.as_ref().map(|i| &i.phase), Some(Phase::Asked)) {
            return Err(Drop::Unexpected);
        }
        let [db] = u.databases.as_slice() else {
            return Err(Drop::BadInit);
        };
        let (first, lsn) = (u.first_lsn, u.snapshot_lsn);
        let usable = db.name == SNAPSHOT_DB
            && db.pages > 0
            && first.file >= FIRST_SEGMENT
            && first.offset as usize == SEGMENT_HEADER_LEN
            && first <= lsn;
        if !usable {
            return Err(Drop::BadInit);
        }
        if let Some(i) = self.init.as_mut() {
            i.phase = Phase::Pages {
                first,
                lsn,
                pages: db.pages,
                next: 0,
                bytes: Vec::new(),
                more_asked: 0,
                gap_asked: None,
            };
        }
        self.init_progress();
        self.ask_pages(0);
        Ok(())
    }

    /// PAGE: taken in order; a page past a gap makes this site ask for
    /// the gap (once per gap; the back-off repeats it).
    pub(super) fn on_page(&mut self, env: &Envelope, p: &Page<'_>) -> Result<(), Drop> {
        self.init_from(env)?;
        let max = self.cfg.limits.max_init_bytes as usize;
        let announced = self.init_page_bytes() as usize;
        let Some(Phase::Pages {
            pages,
            next,
            bytes,
            gap_asked,
            ..
        }) = self.init.as_mut().map(|i| &mut i.phase)
        else {
            return Err(Drop::Unexpected);
        };
        // No page larger than the UPDATE_REQ asked for (such a frame
        // does not even decode within this site's limits).
        if p.db != SNAPSHOT_DB || p.page >= *pages || p.data.len() > announced {
            return Err(Drop::BadInit);
        }
        if p.page < *next {
            return Err(Drop::Duplicate);
        }
        if p.page > *next {
            if *gap_asked != Some(*next) {
                *gap_asked = Some(*next);
                let from = *next;
                self.ask_pages(from);
            }
            return Err(Drop::Duplicate);
        }
        if bytes.len() + p.data.len() > max {
            self.init_impossible();
            return Err(Drop::BadInit);
        }
        bytes.extend_from_slice(p.data);
        *next += 1;
        *gap_asked = None;
        let done = *next == *pages;
        self.init_progress();
        if done {
            self.install();
        }
        Ok(())
    }

    /// PAGE_MORE: the master's answer stops before `next`: ask for the
    /// rest now, while this part is on its way.
    pub(super) fn on_page_more(&mut self, env: &Envelope, db: &str, more: u32) -> Result<(), Drop> {
        self.init_from(env)?;
        let Some(Phase::Pages {
            pages,
            next,
            more_asked,
            ..
        }) = self.init.as_mut().map(|i| &mut i.phase)
        else {
            return Err(Drop::Unexpected);
        };
        if db != SNAPSHOT_DB || more >= *pages {
            return Err(Drop::BadInit);
        }
        if more <= *next || more <= *more_asked {
            return Err(Drop::Duplicate);
        }
        *more_asked = more;
        self.ask_pages(more);
        Ok(())
    }

    /// PAGE_FAIL: the master no longer has the snapshot: start over.
    pub(super) fn on_page_fail(&mut self, env: &Envelope, db: &str) -> Result<(), Drop> {
        self.init_from(env)?;
        let fetching = matches!(
            self.init.as_ref().map(|i| &i.phase),
            Some(Phase::Asked | Phase::Pages { .. })
        );
        if db != SNAPSHOT_DB || !fetching {
            return Err(Drop::Unexpected);
        }
        self.begin_init();
        Ok(())
    }

    /// Ask again after the back-off: UPDATE_REQ, or the pages from the
    /// first one missing.
    pub(super) fn init_timeouts(&mut self) {
        let now = self.now;
        let max = self.cfg.timeouts.rerequest_max;
        let Some(i) = self.init.as_mut() else {
            return;
        };
        if matches!(i.phase, Phase::Log { .. }) || i.retry_at > now {
            return;
        }
        i.wait = (i.wait * 2).min(max);
        i.retry_at = now + i.wait;
        let master = i.master;
        let from = match &mut i.phase {
            Phase::Pages {
                next,
                gap_asked,
                more_asked,
                ..
            } => {
                *gap_asked = None;
                *more_asked = *next;
                Some(*next)
            }
            Phase::Asked | Phase::Log { .. } => None,
        };
        match from {
            Some(from) => self.ask_pages(from),
            None => {
                let msg = self.update_req();
                self.send(master, Flags::NONE, &msg);
            }
        }
    }

    /// When to ask again, if waiting for the master.
    pub(super) fn init_deadline(&self) -> Option<Instant> {
        self.init
            .as_ref()
            .filter(|i| !matches!(i.phase, Phase::Log { .. }))
            .map(|i| i.retry_at)
    }

    /// Every page is here: check them, then replace the log and store (see
    /// the module's steps a.-d. and why each crash point is safe).
    fn install(&mut self) {
        let Some(Incoming {
            master,
            phase: Phase::Pages {
                first, lsn, bytes, ..
            },
            ..
        }) = self.init.take()
        else {
            return;
        };
        let snap = match crate::snapshot::decode(&bytes) {
            Ok(s) if s.lsn == lsn => s,
            // Pages that do not make the snapshot announced: start over.
            _ => return self.begin_init(),
        };
        // A partial view keeps (and writes) its databases only (R12).
        let (snap, bytes) = self.own_snapshot(snap, bytes);
        // a. From here on a crash must not reopen a half-replaced state.
        let was = self.meta.init_in_progress;
        self.meta.init_in_progress = true;
        if self.storage.write_meta(&self.meta.encode()).is_err() {
            self.meta.init_in_progress = was;
            return self.begin_init();
        }
        // What the old log held is now held by the snapshot alone.
        self.held = Some((snap.generation, lsn));
        // b. The snapshot: its record is not in the old log, so a crash
        //    now reopens the old state (or cleans up, see `reopen_init`).
        if self.storage.write_snapshot(&bytes).is_err() {
            return self.begin_init();
        }
        drop(bytes);
        // c. The log restarts at F (removals synced before it returns).
        let restarted = self.writer.restart_at(&mut self.storage, first).is_ok();
        // d. The snapshot's state, with what this site observed of each
        //    member (connections, last heard) carried over.
        let observed: Vec<(SiteId, bool, Instant)> = self
            .members
            .iter()
            .map(|m| (m.id, m.connected, m.last_heard))
            .collect();
        self.index.clear();
        self.pending.clear();
        self.pending_bytes = 0;
        self.store = snap.store;
        self.members = snap.members;
        for (id, connected, last_heard) in observed {
            if let Some(m) = self.members.get_mut(id) {
                m.connected = connected;
                m.last_heard = last_heard;
            }
        }
        self.flushed = Lsn::ZERO;
        self.written = Lsn::ZERO;
        self.flush_asked = Lsn::ZERO;
        self.flush_want = Lsn::ZERO;
        self.acked_sent = Lsn::ZERO;
        self.perm_lsn = Lsn::ZERO;
        self.snapshot_lsn = Lsn::ZERO;
        self.snapshot_end = Lsn::ZERO;
        self.pending_snapshot = None;
        self.building = None;
        self.build_steps = 0;
        self.build_at = None;
        // Superseded by the snapshot just written (write_snapshot).
        self.snapshot_staged = None;
        self.snapshot_due = None;
        // Reads may have seen data the snapshot does not hold (R14).
        self.rollback_epoch += 1;
        self.stats.inits_installed += 1;
        if !restarted {
            // The old log may be partly gone: try again from the start
            // (the flag stays set; the next install restarts the log).
            self.base_lsn = Lsn::ZERO;
            return self.begin_init();
        }
        self.base_lsn = lsn;
        let wait = self.cfg.timeouts.rerequest_min;
        self.init = Some(Incoming {
            master,
            phase: Phase::Log {
                lsn,
                generation: snap.generation,
            },
            retry_at: self.now + wait,
            wait,
        });
        let target = self.sync_target.max(lsn);
        self.sync = SyncState::CatchUp { target };
        self.want = None;
        self.want_log(Lsn::ZERO, target);
    }

    /// After records were applied: once the log holds the snapshot's
    /// record, make it durable and say so in the metadata; if the log
    /// passed that LSN without it, the master's history changed: start
    /// over.
    pub(super) fn init_log_progress(&mut self) {
        let Some(Phase::Log { lsn, generation }) = self.init.as_ref().map(|i| &i.phase) else {
            return;
        };
        let (lsn, generation) = (*lsn, *generation);
        if self.writer.last_lsn() < lsn {
            return;
        }
        let holds = self
            .index_of(lsn)
            .is_some_and(|i| self.index[i].generation == generation);
        if !holds {
            return self.begin_init();
        }
        // Durable whatever flushes the host has in flight from before the
        // log was restarted; then the flag may go.
        if self.storage.sync().is_err() {
            return;
        }
        let last = self.writer.last_lsn();
        self.flushed = self.flushed.max(last);
        self.written = self.written.max(last);
        self.meta.init_in_progress = false;
        if self.storage.write_meta(&self.meta.encode()).is_err() {
            // Tried again at the next progress; a crash meanwhile reopens
            // the snapshot with its record in the log, which is consistent.
            self.meta.init_in_progress = true;
            return;
        }
        if self.snapshot_lsn.is_zero() {
            self.snapshot_lsn = lsn;
            self.snapshot_end = lsn;
        }
        self.base_lsn = Lsn::ZERO;
        self.held = None;
        self.init = None;
        self.init_owed = true;
        self.startup_check();
        self.maybe_ack();
    }

    /// Caught up: INIT_DONE first if an initialisation just completed,
    /// then STARTUPDONE once per master.
    pub(super) fn startup_check(&mut self) {
        if self.sync != SyncState::Ready || self.init_active() {
            return;
        }
        if self.init_owed {
            self.init_owed = false;
            self.stats.inits_done += 1;
            self.event(Event::InitDone);
        }
        if !self.startup_done {
            self.startup_done = true;
            self.event(Event::StartupDone);
        }
    }

    /// May this site, while it is being initialised, vote for the
    /// candidate of `v`? Only if the candidate's log reaches the record
    /// the snapshot reflects.
    pub(super) fn init_may_vote_for(&self, v: &crate::wire::Vote1) -> bool {
        if !self.meta.init_in_progress {
            return true;
        }
        self.held
            .is_some_and(|held| (v.data_generation, v.last_lsn) >= held)
    }

    /// Open with the metadata saying an initialisation was under way: keep
    /// the disk's state if its snapshot's record is in its log (the old
    /// state, or the new one once the log reached it), else remove the log
    /// and keep only the snapshot's store and membership in memory until
    /// the site is initialised again. A log that could be replayed alone
    /// (whole from its first record) is removed too: the site may have
    /// acknowledged records past it in the log it gave up, and only the
    /// snapshot still stands for them (see `init_may_vote_for`).
    pub(super) fn reopen_init(
        &mut self,
        first: Lsn,
        base: Option<crate::snapshot::Snapshot>,
    ) -> Result<(), LogError<S::Error>> {
        let keep = base.clone();
        self.rebuild(first, base)?;
        if !self.snapshot_lsn.is_zero() {
            self.meta.init_in_progress = false;
            self.save_meta();
            return Ok(());
        }
        let start = Lsn::new(FIRST_SEGMENT, SEGMENT_HEADER_LEN as u32);
        self.writer.restart_at(&mut self.storage, start)?;
        self.index.clear();
        self.flushed = Lsn::ZERO;
        self.written = Lsn::ZERO;
        self.flush_asked = Lsn::ZERO;
        self.flush_want = Lsn::ZERO;
        match keep {
            Some(s) => {
                self.held = Some((s.generation, s.lsn));
                self.store = s.store;
                self.restrict_store();
                self.members = s.members;
            }
            None => {
                // A crash before the first snapshot was written, over a
                // log that was whole: with nothing to vouch for what it
                // held, this site does not vote until it is initialised.
                self.held = None;
                self.store = Store::new();
                self.members.clear();
            }
        }
        Ok(())
    }
}
