//! The client's half of the site: finding the master (R1), verifying its
//! log against the master's and rolling back what the master lacks (S1,
//! P2), catching up and filling gaps with a doubling re-request back-off
//! (R2, R13), acknowledging what is durable (R5), and watching the master's
//! heartbeat (R9).
//!
//! Verification bisects this site's own record index: a record matches
//! when the master holds byte-identical bytes at the same LSN, and matching
//! is a prefix property (one master per generation writes each record), so
//! the common point is found in O(log n) round trips, the first of which is
//! the site's last record (the common case: nothing to roll back).

use super::*;
use crate::wire::LogEntry;

impl<S: Storage> Site<S> {
    /// A message from a site claiming mastership of `env.generation`.
    pub(super) fn on_new_master(&mut self, env: &Envelope) -> Result<(), Drop> {
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        if self.vote_binds() && env.generation.0 < self.meta.egen.0 {
            // This site cast its vote in election `egen`, whose winner will
            // take a generation of at least `egen`. Following an older
            // master now would let that winner count this site's vote while
            // this site acknowledges commits the winner never sees: they
            // would be rolled back although they were permanent.
            return Err(Drop::Stale);
        }
        match self.role {
            Role::Idle => return Err(Drop::WrongRole),
            Role::Master if env.generation > self.meta.generation => {
                // A newer master exists: this one is out of date.
                self.event(Event::DupMaster);
                let now = self.now;
                self.rep_start_client(now);
            }
            // Two masters of one generation (P1): both step down and elect.
            Role::Master if env.from != self.meta.site => {
                self.dup_master(env.from);
                return Ok(());
            }
            Role::Master => return Err(Drop::WrongRole),
            Role::Client => {}
        }
        let newer = env.generation > self.meta.generation;
        if newer {
            self.meta.generation = env.generation;
            self.save_meta();
        }
        self.master_heard = self.now;
        self.monitor_fired = false;
        // A master is known: any election here is over (E1).
        self.election = None;
        self.elect_at = None;
        self.had_master = true;
        let same = self.master == Some(env.from) && !newer;
        if same && self.sync != SyncState::NoMaster && self.sync != SyncState::Stuck {
            return Ok(());
        }
        self.master = Some(env.from);
        self.channel_follow_master();
        self.startup_done = false;
        self.want = None;
        self.pending.clear();
        self.pending_bytes = 0;
        self.acked_sent = Lsn::ZERO;
        self.sync_target = env.lsn;
        self.event(Event::NewMaster(env.from));
        if self.cfg.delay_client {
            self.sync = SyncState::Delayed;
        } else {
            self.start_sync();
        }
        Ok(())
    }

    /// Any message from the current master: it is alive; its LSN may show
    /// this site is missing the tail of the log.
    pub(super) fn on_master_traffic(&mut self, env: &Envelope) -> Result<(), Drop> {
        if self.role == Role::Master {
            // Another site acts as master: settle who stays (P1).
            if env.generation < self.meta.generation {
                self.send(env.from, Flags::NONE, &Message::NewMaster);
                return Err(Drop::Stale);
            }
            return self.on_new_master(env).and(Err(Drop::WrongRole));
        }
        if self.role != Role::Client {
            return Err(Drop::WrongRole);
        }
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        if env.generation > self.meta.generation || self.master != Some(env.from) {
            return self.on_new_master(env);
        }
        self.master_heard = self.now;
        self.monitor_fired = false;
        // The master's log reaches at least here: a catch-up that ends
        // short of it goes on (see `after_progress`).
        self.sync_target = self.sync_target.max(env.lsn);
        if self.sync == SyncState::Ready && env.lsn > self.writer.last_lsn() && self.want.is_none()
        {
            self.want_log(Lsn::ZERO, env.lsn);
        }
        Ok(())
    }

    /// Begin synchronising with the known master.
    pub(super) fn start_sync(&mut self) {
        if self.meta.init_in_progress {
            // A log replaced part-way (S6): only a new snapshot mends it.
            return self.begin_init();
        }
        self.init = None;
        let target = self.sync_target;
        match self.index.len().checked_sub(1) {
            None => {
                self.sync = SyncState::CatchUp { target };
                self.want_log(Lsn::ZERO, target);
            }
            Some(last) => {
                self.sync = SyncState::Verify {
                    lo: None,
                    hi: self.index.len(),
                    probe: last,
                    resend_at: self.now,
                };
                self.send_probe();
            }
        }
    }

    fn send_probe(&mut self) {
        let SyncState::Verify { lo, hi, probe, .. } = self.sync else {
            return;
        };
        let (Some(master), Some(e)) = (self.master, self.index.get(probe).copied()) else {
            return;
        };
        self.sync = SyncState::Verify {
            lo,
            hi,
            probe,
            resend_at: self.now + self.cfg.timeouts.rerequest_max,
        };
        self.send(master, Flags::NONE, &Message::VerifyReq { lsn: e.lsn });
    }

    /// VERIFY: the master's record at (or, when it has none there, before)
    /// the probed LSN.
    pub(super) fn on_verify(
        &mut self,
        env: &Envelope,
        e: Option<&LogEntry<'_>>,
    ) -> Result<(), Drop> {
        let SyncState::Verify { probe, .. } = self.sync else {
            return Err(Drop::Duplicate);
        };
        if self.master != Some(env.from) || env.generation != self.meta.generation {
            return Err(Drop::Stale);
        }
        let Some(mine) = self.index.get(probe).copied() else {
            return Err(Drop::Duplicate);
        };
        let matched = match e {
            Some(e) if e.lsn == mine.lsn => self.read_record(mine.lsn).as_deref() == Some(e.record),
            // The master has no record at the probe: it sends its record
            // before, with `prev` naming the probe. Anything else answers an
            // older probe.
            Some(e) if e.lsn < mine.lsn && e.prev == mine.lsn => false,
            _ => return Err(Drop::Duplicate),
        };
        self.verify_step(matched, matched);
        Ok(())
    }

    /// VERIFY_FAIL: the master has no record at that LSN. In verification
    /// that means the LSN is older than the master's log; during catch-up
    /// it means this site's position is not in the master's log at all, so
    /// it verifies again.
    pub(super) fn on_verify_fail(&mut self, env: &Envelope, lsn: Lsn) -> Result<(), Drop> {
        if self.role != Role::Client || self.master != Some(env.from) {
            return Err(Drop::WrongRole);
        }
        match self.sync {
            SyncState::Verify { probe, .. } => {
                if self.index.get(probe).map(|e| e.lsn) != Some(lsn) {
                    return Err(Drop::Duplicate);
                }
                let older = self.index.get(probe).is_some_and(|e| e.lsn < env.lsn);
                // Older than the master's whole log goes "right" (the common
                // point, if any, is later); otherwise it is a mismatch.
                self.verify_step(older, false);
            }
            SyncState::CatchUp { .. } if self.index.is_empty() => self.no_overlap(),
            SyncState::CatchUp { .. } | SyncState::Ready => self.start_sync(),
            _ => return Err(Drop::Duplicate),
        }
        Ok(())
    }

    fn verify_step(&mut self, right: bool, matched: bool) {
        let SyncState::Verify { lo, hi, probe, .. } = self.sync else {
            return;
        };
        let (lo, hi) = if right {
            (Some((probe, matched)), hi)
        } else {
            (lo, probe)
        };
        let lo_i = lo.map_or(-1, |(i, _)| i as isize);
        if lo_i + 1 >= hi as isize {
            match lo {
                Some((i, true)) => self.verified(i + 1),
                Some((_, false)) => self.no_overlap(),
                None => self.verified(0),
            }
            return;
        }
        let mid = (lo_i + (hi as isize - lo_i) / 2) as usize;
        self.sync = SyncState::Verify {
            lo,
            hi,
            probe: mid,
            resend_at: self.now,
        };
        self.send_probe();
    }

    /// The first `keep` records match the master: cut the rest and catch up.
    fn verified(&mut self, keep: usize) {
        match self.rollback_to(keep) {
            Ok(()) => {}
            // Nothing below the archived log to rebuild from: the master's
            // whole database is needed (S6), or JOIN_FAILURE (S7).
            Err(Refused::NoBase) => return self.no_overlap(),
            Err(Refused::WouldRollback | Refused::Storage) => {
                self.sync = SyncState::Stuck;
                return;
            }
        }
        let target = self.sync_target;
        self.sync = SyncState::CatchUp { target };
        self.want = None;
        self.want_log(Lsn::ZERO, target);
        self.check_caught_up();
    }

    /// This site's log shares nothing the master can still send: it takes
    /// the master's whole database (internal initialisation, S6), or with
    /// AUTOINIT off stops here with its data intact and says JOIN_FAILURE
    /// (S7).
    fn no_overlap(&mut self) {
        self.begin_init();
    }

    /// Ask the master for the log from this site's next position.
    pub(super) fn want_log(&mut self, to: Lsn, until: Lsn) {
        let wait = self.cfg.timeouts.rerequest_min;
        self.want = Some(Want {
            to,
            until,
            next_at: self.now + wait,
            wait,
        });
        self.request_log(false);
    }

    pub(super) fn request_log(&mut self, rerequest: bool) {
        self.request_log_from(None, rerequest);
    }

    /// Ask for the log from this site's next position, or from `ahead`
    /// when that is further (a LOG_MORE promised the records before it).
    fn request_log_from(&mut self, ahead: Option<Lsn>, rerequest: bool) {
        let (Some(master), Some(w)) = (self.master, self.want) else {
            return;
        };
        let mine = self.log_position();
        let from = match ahead {
            Some(a) if a > mine && (w.to.is_zero() || a < w.to) => a,
            _ => mine,
        };
        // A peer client first, when one is configured (S3).
        let (dest, flags) = self.log_request_dest(master, rerequest);
        self.stats.log_requests += 1;
        let msg = self.log_req(from, w.to);
        self.send(dest, flags, &msg);
    }

    /// LOG_REQ for `from..to`, announcing what this site's limits take
    /// (answer, bulk and record sizes, key, value and operation count), so
    /// an answerer with larger limits (a server master, or a peer, serving
    /// a device) cuts its answer to fit them.
    fn log_req(&self, from: Lsn, to: Lsn) -> Message<'static> {
        Message::LogReq {
            from,
            to,
            limits: crate::wire::RequesterLimits::of(&self.cfg.limits),
        }
    }

    /// Where this site's log continues: zero for an empty log, which may
    /// start wherever the master's does; a log restarted for an installed
    /// snapshot continues at F (S6).
    fn log_position(&self) -> Lsn {
        if self.index.is_empty() && self.base_lsn.is_zero() {
            Lsn::ZERO
        } else {
            self.writer.next_lsn()
        }
    }

    /// Does the record at `lsn`, after `prev` in the sender's log, go next
    /// in this log? A log restarted at F takes the record at F whatever
    /// came before it in the master's log (S6).
    fn continues_log(&self, lsn: Lsn, prev: Lsn) -> bool {
        if self.index.is_empty() && !self.base_lsn.is_zero() {
            return lsn == self.writer.next_lsn();
        }
        prev == self.writer.last_lsn()
    }

    /// One LOG record from the master.
    pub(super) fn on_log(&mut self, env: &Envelope, e: &LogEntry<'_>) -> Result<(), Drop> {
        // The master's newest record brings its own tail: asking for the
        // log up to it as well would fetch every record twice.
        let known = env.generation == self.meta.generation && self.master == Some(env.from);
        if self.peer_answer(env)? {
            // A peer's answer (S3): records, nothing about the master.
        } else if known && env.lsn == e.lsn {
            self.on_master_traffic(&Envelope {
                lsn: e.prev,
                ..*env
            })?;
            // The master has this record, even if it is dropped below.
            self.sync_target = self.sync_target.max(e.lsn);
        } else {
            self.on_master_traffic(env)?;
        }
        if !matches!(self.sync, SyncState::Ready | SyncState::CatchUp { .. }) {
            // Verifying or delayed: records are fetched after the common
            // point is known.
            return Ok(());
        }
        let last = self.writer.last_lsn();
        if e.lsn <= last {
            self.stats.duplicates += 1;
            let held = if env.flags.contains(Flags::NO_SYNC) {
                self.written
            } else {
                self.flushed
            };
            if env.flags.contains(Flags::PERMANENT) && held >= e.lsn {
                // The first ack may have been lost: say it again.
                self.acked_sent = Lsn::ZERO;
                self.maybe_ack();
            }
            return Err(Drop::Duplicate);
        }
        let flags = env.flags;
        if self.continues_log(e.lsn, e.prev) {
            self.apply_entry(e.lsn, e.record, flags)?;
            self.drain_pending();
            self.after_progress();
            return Ok(());
        }
        // Early: keep it (bounded) and ask for the gap.
        if !self.pending.contains_key(&e.lsn) {
            if self.pending_bytes + e.record.len() > self.cfg.limits.max_pending_bytes as usize {
                return Err(Drop::PendingFull);
            }
            self.pending_bytes += e.record.len();
            self.pending
                .insert(e.lsn, (e.prev, e.record.to_vec(), flags));
        }
        if self.want.is_none() {
            self.want_log(e.lsn, e.prev);
        }
        Ok(())
    }

    /// A BULK_LOG from the master (R11): its entries, in order, as LOG
    /// records would be taken, with the bookkeeping done once per message
    /// rather than once per record: the master's traffic noted, early
    /// records kept and duplicates counted per entry, then pending records
    /// drained and progress settled (back-off, waiters, caught up) once.
    pub(super) fn on_bulk_log(
        &mut self,
        env: &Envelope,
        b: &crate::wire::BulkLog<'_>,
    ) -> Result<(), Drop> {
        // The frame was validated on receipt: every entry decodes.
        let peer = self.peer_answer(env)?;
        let Some(first) = b.entries().map_while(Result::ok).next() else {
            return if peer {
                Ok(())
            } else {
                self.on_master_traffic(env)
            };
        };
        // As for a LOG: entries that bring the master's tail do not make
        // this site ask for that tail as well. (Only a site in step with
        // the master and asking for nothing would; look then.)
        let known = env.generation == self.meta.generation && self.master == Some(env.from);
        let tail = || {
            b.entries()
                .map_while(Result::ok)
                .last()
                .is_some_and(|e| e.lsn == env.lsn)
        };
        if peer {
            // A peer's answer (S3): records, nothing about the master.
        } else if known && self.sync == SyncState::Ready && self.want.is_none() && tail() {
            self.on_master_traffic(&Envelope {
                lsn: first.prev,
                ..*env
            })?;
            // The master has these records, even if they are dropped below.
            self.sync_target = self.sync_target.max(env.lsn);
        } else {
            self.on_master_traffic(env)?;
        }
        if !matches!(self.sync, SyncState::Ready | SyncState::CatchUp { .. }) {
            return Ok(());
        }
        let mut applied = false;
        let mut dup_flushed = false;
        let mut dropped = None;
        // A client catching up flushes once it is caught up, not once per
        // bulk: the records are old, nobody waits for its ack of them, and
        // a crash only loses what it fetches again. A flush per message (a
        // host fsyncs at its pace) would bound the catch-up by the disk's
        // sync latency. The log writer still syncs each segment before it
        // starts the next, so at most one segment waits for the flush.
        self.hold_flushes = true;
        for e in b.entries().map_while(Result::ok) {
            let last = self.writer.last_lsn();
            if e.lsn <= last {
                self.stats.duplicates += 1;
                dup_flushed |= self.flushed >= e.lsn;
                continue;
            }
            if self.continues_log(e.lsn, e.prev) {
                // The record's kind says whether it is permanent.
                match self.apply_entry(e.lsn, e.record, Flags::NONE) {
                    Ok(()) => applied = true,
                    Err(d) => {
                        dropped = Some(d);
                        break;
                    }
                }
                continue;
            }
            if !self.pending.contains_key(&e.lsn) {
                if self.pending_bytes + e.record.len() > self.cfg.limits.max_pending_bytes as usize
                {
                    dropped = Some(Drop::PendingFull);
                    break;
                }
                self.pending_bytes += e.record.len();
                self.pending
                    .insert(e.lsn, (e.prev, e.record.to_vec(), Flags::NONE));
            }
            if self.want.is_none() {
                self.want_log(e.lsn, e.prev);
            }
        }
        if applied {
            self.drain_pending();
            self.after_progress();
        }
        self.hold_flushes = false;
        if !matches!(self.sync, SyncState::CatchUp { .. }) {
            let want = self.flush_want;
            self.ask_flush(want);
        }
        if dup_flushed && env.flags.contains(Flags::PERMANENT) {
            // The first ack may have been lost: say it again.
            self.acked_sent = Lsn::ZERO;
            self.maybe_ack();
        }
        dropped.map_or(Ok(()), Err)
    }

    fn apply_entry(&mut self, lsn: Lsn, record: &[u8], flags: Flags) -> Result<(), Drop> {
        if self.index.is_empty() && self.base_lsn.is_zero() && lsn != self.writer.next_lsn() {
            // The master's log starts later than this empty log's default.
            if self.writer.restart_at(&mut self.storage, lsn).is_err() {
                return Err(Drop::Duplicate);
            }
        }
        let entry = self
            .append_replicated(lsn, record)
            .map_err(|_| Drop::Duplicate)?;
        let permanent = flags.contains(Flags::PERMANENT);
        if permanent && flags.contains(Flags::NO_SYNC) {
            // A commit without sync: acknowledged once written out, with
            // the rest of the batch (see `poll_output`).
            self.perm_lsn = entry.lsn;
            self.ack_due = true;
        } else if permanent || matches!(entry.kind, RecordKind::Commit | RecordKind::Membership) {
            self.perm_lsn = entry.lsn;
            self.ask_flush(entry.lsn);
        }
        Ok(())
    }

    fn drain_pending(&mut self) {
        while let Some((&lsn, _)) = self.pending.iter().next() {
            let last = self.writer.last_lsn();
            let Some((prev, record, flags)) = self.pending.get(&lsn).cloned() else {
                break;
            };
            if lsn <= last {
                self.pending.remove(&lsn);
                self.pending_bytes -= record.len();
                continue;
            }
            if !self.continues_log(lsn, prev) {
                break;
            }
            self.pending.remove(&lsn);
            self.pending_bytes -= record.len();
            if self.apply_entry(lsn, &record, flags).is_err() {
                break;
            }
        }
    }

    /// After records were applied: reset the back-off, settle the
    /// outstanding request, wake waiters, and see if sync is done.
    fn after_progress(&mut self) {
        let last = self.writer.last_lsn();
        let min = self.cfg.timeouts.rerequest_min;
        if let Some(w) = self.want.as_mut() {
            w.wait = min;
            w.next_at = self.now + min;
        }
        if self.want.is_some_and(|w| last >= w.until) && self.pending.is_empty() {
            self.want = None;
        }
        if self.want.is_none() {
            if let Some((&lsn, (prev, _, _))) = self.pending.iter().next() {
                let prev = *prev;
                self.want_log(lsn, prev);
            } else if last < self.sync_target {
                // Records the master sent while this site was verifying
                // (and so dropped), or that a peer's answer ended short of:
                // the master has them.
                let target = self.sync_target;
                self.want_log(Lsn::ZERO, target);
            }
        }
        self.init_log_progress();
        self.check_caught_up();
        self.check_waiters();
        self.maybe_take_over();
    }

    fn check_caught_up(&mut self) {
        if let SyncState::CatchUp { target } = self.sync {
            if self.writer.last_lsn() >= target {
                self.sync = SyncState::Ready;
                self.startup_check();
                self.maybe_ack();
            }
        }
    }

    /// LOG_MORE: the master's answer stops before `next`; ask for the rest
    /// from there. The master sends it ahead of the answer's records, so
    /// the next part is on its way while this site applies this one (a
    /// LOG_MORE that comes after them asks from this site's position, as
    /// `next` is then at or before it).
    pub(super) fn on_log_more(&mut self, env: &Envelope, next: Lsn) -> Result<(), Drop> {
        if !self.peer_answer(env)? {
            self.on_master_traffic(env)?;
        }
        if self.want.is_some() {
            self.request_log_from(Some(next), false);
        } else if next > self.writer.last_lsn()
            && matches!(self.sync, SyncState::Ready | SyncState::CatchUp { .. })
        {
            // The request was settled by the records before the LOG_MORE
            // (they overtook it), but the sender has more: fetch them.
            self.want_log(Lsn::ZERO, next);
        }
        Ok(())
    }

    /// Acknowledge what is durable, if it covers a permanent record not yet
    /// acknowledged (R5). Views never ack (R12).
    ///
    /// An ack covers every record up to its LSN, so it may only name an LSN
    /// up to which each record is as durable as its commit asked: flushed,
    /// or written out for a NO_SYNC commit. Past the flushed LSN that holds
    /// only while no record waits for a flush (a conservative bound: the
    /// first record waiting for one is not tracked), and then the log is
    /// written out first.
    pub(super) fn maybe_ack(&mut self) {
        if self.cfg.view || !matches!(self.sync, SyncState::Ready | SyncState::CatchUp { .. }) {
            return;
        }
        if self.init_active() {
            // Nothing is acknowledged from a log an interrupted
            // initialisation would remove (S6).
            return;
        }
        let Some(master) = self.master else {
            return;
        };
        let last = self.writer.last_lsn();
        let flushed = self.flushed.min(last);
        let durable = if self.flush_want > self.flushed || self.perm_lsn <= flushed {
            flushed
        } else {
            self.write_out().min(last)
        };
        if self.perm_lsn > self.acked_sent && durable > self.acked_sent {
            self.acked_sent = durable;
            // The master waits on it: no reason to hold it back.
            self.send_many_as(
                &[Dest::Site(master)],
                Flags::NONE,
                &Message::Ack { lsn: durable },
                true,
            );
        }
    }

    pub(super) fn monitor_deadline(&self) -> Option<Instant> {
        let d = self.cfg.timeouts.heartbeat_monitor;
        if self.role != Role::Client || self.master.is_none() || d.is_zero() || self.monitor_fired {
            return None;
        }
        Some(self.master_heard + d)
    }

    pub(super) fn client_timeouts(&mut self) {
        if self.role != Role::Client {
            return;
        }
        let now = self.now;
        if let Some(w) = self.want {
            if w.next_at <= now {
                let wait = (w.wait * 2).min(self.cfg.timeouts.rerequest_max);
                self.want = Some(Want {
                    wait,
                    next_at: now + wait,
                    ..w
                });
                self.request_log(true);
            }
        }
        if let SyncState::Verify { resend_at, .. } = self.sync {
            if resend_at <= now {
                self.send_probe();
            }
        }
        self.init_timeouts();
        if self.monitor_deadline().is_some_and(|d| d <= now) {
            // R9: the master went quiet: elect (E1). Until it is heard from
            // again, count it as unreachable, so the election does not wait
            // for its vote.
            self.monitor_fired = true;
            if let Some(m) = self.master.and_then(|m| self.members.get_mut(m)) {
                m.connected = false;
            }
            self.master_lost();
        }
        if self.find_master_at.is_some_and(|t| t <= now) {
            if self.master.is_none() {
                self.broadcast(Flags::NONE, &Message::MasterReq);
                self.find_master_at = Some(now + self.cfg.timeouts.election);
            } else {
                self.find_master_at = None;
            }
        }
    }
}
