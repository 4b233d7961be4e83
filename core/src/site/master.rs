//! The master's half of the site: commits and their acks (R3-R5), serving
//! log and verify requests (R2, S1), membership changes (R7), heartbeats
//! (R9) and checkpoints (R8).

use super::acks::{self, GroupShape};
use super::*;
use crate::config::{Durability, Limits};
use crate::log::{Checkpoint, MemberAction, Op, RecordError};
use crate::wire::{
    JoinAnswer, JoinReq, JoinResult, LogEntry, Member as WireMember, RequesterLimits,
};

/// Does `policy` count the master itself as one of the commit's holders?
fn counts_master(policy: crate::config::AckPolicy, shape: &GroupShape) -> bool {
    policy == crate::config::AckPolicy::Quorum && shape.master_electable
}

/// Does `policy` promise that every client holds the commit (ALL,
/// ALL_PEERS)? Then a restarted master must hold it too, or it could win an
/// election without it: the commit is permanent only once durable here.
fn needs_master_copy(policy: crate::config::AckPolicy) -> bool {
    matches!(
        policy,
        crate::config::AckPolicy::All | crate::config::AckPolicy::AllPeers
    )
}

/// Bytes of the postcard-encoded [`LogEntry`] of record `e` after `prev`
/// (in a BULK_LOG): both LSNs and the record's length as varints, then
/// the record.
fn entry_size(e: &IndexEntry, prev: Lsn) -> usize {
    fn varint(v: u32) -> usize {
        (32 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }
    varint(e.lsn.file)
        + varint(e.lsn.offset)
        + varint(prev.file)
        + varint(prev.offset)
        + varint(e.len)
        + e.len as usize
}

/// What a log requester takes, as its LOG_REQ / ALL_REQ announced
/// (protocol version 6, [`RequesterLimits`]), bounded by this site's own
/// limits: the answer is cut to fit the requester, whose limits may be far
/// smaller than the answerer's (a device under a server master).
#[derive(Clone, Copy, Debug)]
pub(super) struct Fit {
    /// The most bytes of entries in one answer (at least one record).
    pub answer: usize,
    /// The most bytes of entries in one BULK_LOG.
    pub bulk: usize,
    /// The largest record, header included.
    pub record: usize,
    /// The limits a record's body must keep to (this site's own with the
    /// requester's `max_key`, `max_value` and `max_txn_ops` where those
    /// are smaller), or `None` when every record of this log keeps to the
    /// requester's anyway (its limits are not below this site's).
    pub body: Option<Limits>,
}

impl Fit {
    /// From the requester's announced limits (each at least
    /// [`RequesterLimits::MIN`]: smaller ones do not decode) and this
    /// site's own.
    pub fn new(own: &Limits, r: &RequesterLimits) -> Fit {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let smaller = r.max_key < own.max_key
            || r.max_value < own.max_value
            || r.max_txn_ops < own.max_txn_ops;
        let body = smaller.then(|| Limits {
            max_key: own.max_key.min(r.max_key),
            max_value: own.max_value.min(r.max_value),
            max_txn_ops: own.max_txn_ops.min(r.max_txn_ops),
            ..*own
        });
        Fit {
            answer: (own.max_answer_bytes as usize).min(size(r.answer_bytes)),
            bulk: crate::wire::max_bulk_bytes(own).min(size(r.bulk_bytes)),
            record: size(r.record_bytes),
            body,
        }
    }
}

/// A key a commit changes: (database, key), its value before, its value after.
type KeyChange = ((String, Vec<u8>), Option<Vec<u8>>, Option<Vec<u8>>);

impl<S: Storage> Site<S> {
    pub(super) fn group_shape(&self) -> GroupShape {
        let me = self.meta.site;
        let mut g = GroupShape {
            nsites: 0,
            nvotes: self.cfg.nvotes,
            clients: 0,
            electable_clients: 0,
            connected_clients: 0,
            master_electable: self.cfg.effective_priority() > 0,
        };
        let mut members = 0;
        for m in self.members.iter().filter(|m| !m.is_view()) {
            members += 1;
            if m.id == me {
                continue;
            }
            g.clients += 1;
            g.electable_clients += u32::from(m.is_electable());
            g.connected_clients += u32::from(m.connected);
        }
        g.nsites = self.cfg.nsites.unwrap_or(members.max(1));
        g
    }

    pub(super) fn commit_inner(
        &mut self,
        ops: &[Op<'_>],
        durability: Durability,
    ) -> Result<RequestId, CommitError> {
        if self.role != Role::Master {
            // A client forwards single writes only ([`Site::write`], W1).
            return Err(if self.role == Role::Client && self.cfg.forward_writes {
                CommitError::NotForwardable
            } else {
                CommitError::NotMaster(self.master)
            });
        }
        if self.transfer.is_some() {
            return Err(CommitError::Unavailable);
        }
        if !self.lease_valid(self.now) {
            return Err(CommitError::LeaseExpired);
        }
        if ops.is_empty() {
            return Err(CommitError::Invalid(RecordError::LimitExceeded(
                "operation count (a transaction needs at least one operation)",
            )));
        }
        if self.commits.len() >= self.cfg.limits.max_pending_commits as usize {
            return Err(CommitError::Busy);
        }
        // Remember the permanent values of the keys this commit changes, so
        // lease-protected reads keep answering with them until it is
        // permanent (R10).
        let before: Vec<KeyChange> = if self.cfg.leases {
            ops.iter()
                .map(|op| {
                    let k = (String::from(op.db()), op.key().to_vec());
                    let v = self.store.get(op.db(), op.key()).map(|v| v.to_vec());
                    let after = match op {
                        Op::Put { value, .. } => Some(value.to_vec()),
                        Op::Delete { .. } => None,
                    };
                    (k, v, after)
                })
                .collect()
        } else {
            Vec::new()
        };
        let txn_id = self.next_txn;
        let body = RecordBody::Commit {
            txn_id,
            timestamp: self.now,
            ops,
        };
        let entry = match self.append_own(&body) {
            Ok(e) => e,
            Err(LogError::Record(e)) => return Err(CommitError::Invalid(e)),
            Err(_) => return Err(CommitError::Storage),
        };
        self.next_txn += 1;
        self.writes_since_checkpoint = true;
        for (k, base, after) in before {
            self.unsettled
                .entry(k)
                .or_insert(Unsettled {
                    base,
                    writes: VecDeque::new(),
                })
                .writes
                .push_back((entry.lsn, after));
        }
        let id = self.new_request();
        let token = CommitToken {
            lsn: entry.lsn,
            generation: entry.generation,
        };
        let sync = durability == Durability::Sync;
        // A commit without sync travels as NO_SYNC: clients acknowledge it
        // once written to their operating system, not their disk (R4).
        let flags = if sync {
            Flags::PERMANENT
        } else {
            Flags::PERMANENT.with(Flags::NO_SYNC)
        };
        // Alone in flight, the commit waits on this record's round trip
        // and nothing would join it in a batch: it leaves at once.
        let alone = self.commits.is_empty();
        self.ship(entry, flags, alone);
        let shape = self.group_shape();
        let need = acks::need(self.cfg.ack_policy, &shape);
        // QUORUM counts the master among the holders, which it is only once
        // its copy is as durable as the commit asked: flushed for a sync
        // commit, written out otherwise (see `progress_commits`) (R5).
        let counts_master = counts_master(self.cfg.ack_policy, &shape);
        let needs_master_copy = needs_master_copy(self.cfg.ack_policy);
        if sync {
            self.ask_flush(entry.lsn);
        } else if self.commits.is_empty() {
            // Alone in flight: write it out while the clients answer. Under
            // load, commits are written out in batches as acks arrive.
            self.write_out_due = true;
        }
        self.commits.push_back(PendingCommit {
            id,
            token,
            durability,
            deadline: self.now + self.cfg.timeouts.ack,
            acks: 0,
            needed: need.acks,
            permanent: need.acks == 0 && !counts_master && !needs_master_copy,
            timed_out: need.impossible,
        });
        if need.impossible {
            // The group cannot supply the acks: the commit stands locally,
            // the log is flushed, and PERM_FAILED is raised (R5).
            self.ask_flush(entry.lsn);
        }
        if need.acks == 0 || need.impossible {
            self.progress_commits();
        }
        self.check_waiters();
        Ok(id)
    }

    /// Send a record just appended to every other member; `urgent` when a
    /// commit waits on it with nothing else in flight.
    pub(super) fn ship(&mut self, entry: IndexEntry, flags: Flags, urgent: bool) {
        let prev = self
            .index
            .len()
            .checked_sub(2)
            .map_or(Lsn::ZERO, |p| self.index[p].lsn);
        // The writer still holds the bytes it just appended; read back
        // from storage only if it does not.
        let record = match self.writer.last_appended(entry.lsn) {
            Some(r) => r.to_vec(),
            None => match self.read_record(entry.lsn) {
                Some(r) => r,
                None => return,
            },
        };
        let msg = Message::Log(LogEntry {
            lsn: entry.lsn,
            prev,
            record: &record,
        });
        self.broadcast_as(flags, &msg, urgent);
    }

    /// Count acks and answer every commit that is done, in order.
    pub(super) fn progress_commits(&mut self) {
        if self.commits.is_empty() {
            return;
        }
        let shape = self.group_shape();
        let need = acks::need(self.cfg.ack_policy, &shape);
        let me = self.meta.site;
        let all_available = self.cfg.ack_policy == crate::config::AckPolicy::AllAvailable;
        let counts_master = counts_master(self.cfg.ack_policy, &shape);
        let needs_master_copy = needs_master_copy(self.cfg.ack_policy);
        // A commit without sync is held here once written out: one write
        // for every such commit so far, before counting.
        if self
            .commits
            .iter()
            .rev()
            .find(|c| c.durability != Durability::Sync)
            .is_some_and(|c| c.token.lsn > self.written)
        {
            self.write_out();
        }
        // Acks cover every LSN up to the acked one, so once a commit falls
        // short, every later commit does too: stop there.
        for i in 0..self.commits.len() {
            let c = self.commits[i];
            if c.timed_out {
                continue;
            }
            if c.permanent {
                continue;
            }
            let acks = self
                .members
                .iter()
                .filter(|m| m.id != me && !m.is_view() && m.acked >= c.token.lsn)
                .filter(|m| !need.electable_only || m.is_electable())
                .filter(|m| !all_available || m.connected)
                .count() as u32;
            let c = &mut self.commits[i];
            c.acks = acks;
            c.needed = need.acks;
            // Until the record is as durable here as the commit asked, the
            // master is no holder: a crash would lose its copy. Under QUORUM
            // one more ack stands in for it; under ALL / ALL_PEERS nothing
            // does.
            let held = match c.durability {
                Durability::Sync => self.flushed,
                _ => self.written,
            };
            let volatile = held < c.token.lsn;
            let extra = u32::from(counts_master && volatile);
            if acks >= need.acks + extra && !(needs_master_copy && volatile) && !need.impossible {
                c.permanent = true;
            } else {
                break;
            }
        }
        // Acks are cumulative: every commit up to the last permanent one is
        // permanent too; its keys' values are settled.
        if let Some(p) = self
            .commits
            .iter()
            .filter(|c| c.permanent)
            .map(|c| c.token.lsn)
            .max()
        {
            if p > self.permanent_lsn {
                self.permanent_lsn = p;
                self.unsettled.retain(|_, u| {
                    while u.writes.front().is_some_and(|(lsn, _)| *lsn <= p) {
                        if let Some((_, v)) = u.writes.pop_front() {
                            u.base = v;
                        }
                    }
                    !u.writes.is_empty()
                });
            }
        }
        // Answer from the front, so answers come in commit order.
        while let Some(c) = self.commits.front().copied() {
            let flushed = self.flushed >= c.token.lsn;
            let local_ok = match c.durability {
                Durability::Sync => flushed,
                Durability::WriteNoSync => self.written >= c.token.lsn,
                Durability::NoSync => true,
            };
            let done = (c.permanent && local_ok) || (c.timed_out && flushed);
            if !done {
                break;
            }
            self.commits.pop_front();
            self.stats.commits += 1;
            if !c.permanent {
                self.stats.perm_failed += 1;
                self.event(Event::PermFailed(c.token.lsn));
            }
            self.answer(Answer::Commit {
                id: c.id,
                result: Ok(CommitOutcome {
                    token: c.token,
                    permanent: c.permanent,
                    acks: c.acks,
                    needed: c.needed,
                    flushed,
                    forwarded: false,
                }),
            });
        }
    }

    pub(super) fn fail_pending_commits(&mut self) {
        // Commits in flight when mastership is lost: they are in this
        // site's log, but whether they survive depends on the next master.
        while let Some(c) = self.commits.pop_front() {
            self.stats.perm_failed += 1;
            self.event(Event::PermFailed(c.token.lsn));
            self.answer(Answer::Commit {
                id: c.id,
                result: Ok(CommitOutcome {
                    token: c.token,
                    permanent: false,
                    acks: c.acks,
                    needed: c.needed,
                    flushed: self.flushed >= c.token.lsn,
                    forwarded: false,
                }),
            });
        }
    }

    pub(super) fn on_ack(&mut self, env: &Envelope, lsn: Lsn) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        if env.generation != self.meta.generation {
            return Err(Drop::Stale);
        }
        let last = self.writer.last_lsn();
        if let Some(m) = self.members.get_mut(env.from) {
            // An ack past this log's end is a lie or a bug; never count it.
            m.acked = m.acked.max(lsn.min(last));
        }
        self.progress_commits();
        Ok(())
    }

    pub(super) fn master_timeouts(&mut self) {
        if self.role != Role::Master {
            return;
        }
        let now = self.now;
        let mut expired = false;
        for c in self.commits.iter_mut() {
            if !c.permanent && !c.timed_out && c.deadline <= now {
                c.timed_out = true;
                expired = true;
            }
        }
        if expired {
            // R5: on timeout the commit stands locally and the log is
            // flushed before the answer says so.
            if let Some(c) = self.commits.iter().rev().find(|c| c.timed_out) {
                let lsn = c.token.lsn;
                self.ask_flush(lsn);
            }
            self.progress_commits();
        }
        if self.heartbeat_at.is_some_and(|t| t <= now) {
            self.broadcast(Flags::NONE, &Message::Heartbeat);
            self.heartbeat_at = self.next_heartbeat();
        }
        if self.checkpoint_at.is_some_and(|t| t <= now) {
            self.checkpoint_at = Some(now + self.cfg.timeouts.checkpoint_delay);
            if self.writes_since_checkpoint {
                self.writes_since_checkpoint = false;
                let ck = Checkpoint {
                    lsn: self.writer.last_lsn(),
                    timestamp: now,
                };
                if let Ok(e) = self.append_own(&RecordBody::Checkpoint(ck)) {
                    self.ship(e, Flags::NONE, false);
                }
            }
        }
    }

    pub(super) fn next_heartbeat(&self) -> Option<Instant> {
        let d = self.cfg.timeouts.heartbeat_send;
        (!d.is_zero()).then(|| self.now + d)
    }

    /// Answer a LOG_REQ / ALL_REQ: records from `from` up to `to` (zero =
    /// the end), at most the smaller of `max_answer_bytes` and the
    /// requester's answer size, then LOG_MORE (R13), in frames and records
    /// the requester takes (`fit`).
    pub(super) fn serve_log(
        &mut self,
        env: &Envelope,
        from: Lsn,
        to: Lsn,
        fit: Fit,
    ) -> Result<(), Drop> {
        if self.role != Role::Master {
            // Client-to-client service (S3).
            return self.serve_log_as_peer(env, from, to, fit);
        }
        self.stats.requests_served += 1;
        if from.is_zero() && !self.has_full_history() {
            // The log's start was archived: the requester needs the whole
            // database (internal initialisation), not the log.
            self.send(env.from, Flags::NONE, &Message::VerifyFail { lsn: from });
            return Ok(());
        }
        let start = match self.index_from(from) {
            Ok(i) => i,
            Err(()) => {
                // Not a record boundary in this log: the requester's log
                // differs; make it verify again.
                self.send(env.from, Flags::NONE, &Message::VerifyFail { lsn: from });
                return Ok(());
            }
        };
        if !from.is_zero() && start == 0 && self.index.first().is_some_and(|e| e.lsn > from) {
            self.send(env.from, Flags::NONE, &Message::VerifyFail { lsn: from });
            return Ok(());
        }
        self.answer_log(env.from, start, to, Flags::NONE, fit);
        Ok(())
    }

    /// Send the records from index position `start` to `dest`, up to `to`
    /// (zero: the end) and the answer cap, LOG_MORE first when more remain,
    /// in frames `dest` takes (`fit`). Every frame carries `mark` too
    /// (ANYWHERE: a peer's answer, S3).
    pub(super) fn answer_log(
        &mut self,
        dest: SiteId,
        start: usize,
        to: Lsn,
        mark: Flags,
        fit: Fit,
    ) {
        // The records this answer carries: at most the smaller of
        // `max_answer_bytes` and the requester's answer size as encoded
        // entries (so a bulk as large as the answer cap holds the whole
        // answer), at least one record, stopping before `to`.
        let cap = fit.answer;
        let mut end = start;
        let mut bytes = 0usize;
        while let Some(e) = self.index.get(end) {
            let prev = end.checked_sub(1).map_or(Lsn::ZERO, |p| self.index[p].lsn);
            let size = entry_size(e, prev);
            if (!to.is_zero() && e.lsn >= to) || (end > start && bytes + size > cap) {
                break;
            }
            bytes += size;
            end += 1;
        }
        let frames = self.pack_log(start, end, mark, fit);
        let sent = frames.last().map_or(start, |(_, last)| *last + 1) - start;
        self.stats.records_served += sent as u64;
        // LOG_MORE goes first, naming where this answer stops, so the
        // requester can ask for the next part while it applies this one
        // (R13): the link never idles during a catch-up. Only an answer
        // read in full promises the rest; a read that failed part-way stops
        // short, and the requester re-requests after its back-off.
        let full = frames.last().is_some_and(|(_, last)| *last + 1 == end);
        if full && end < self.index.len() && (to.is_zero() || self.index[end].lsn < to) {
            let next = self.index[end].lsn;
            self.send(dest, mark, &Message::LogMore { next });
        }
        for (frame, _) in frames {
            self.send_frame(Dest::Site(dest), frame);
        }
    }

    /// Encode the records at index positions `start..end` for the wire:
    /// BULK_LOG frames of up to min(this site's `wire::max_bulk_bytes`, the
    /// requester's announced `bulk_bytes`) bytes of entries (`fit.bulk`,
    /// R11), and a lone LOG for a record too big for one: a record the
    /// requester takes at all (up to `fit.record`) fits its `max_frame` as
    /// a LOG, since its `Limits::validate` makes room for one. A record
    /// above `fit.record`, or whose body breaks the requester's `max_key`,
    /// `max_value` or `max_txn_ops` (`fit.body`), cannot be taken by the
    /// requester in any frame: the answer stops before it and
    /// `Stats::unfit_records` counts it, rather than send, on every
    /// re-request, a frame the requester must refuse. The records
    /// are read from storage a contiguous run at a time, and each is
    /// checked (length, checksum) before it is sent; the answer stops at
    /// the first that fails. Returns each frame with the index position of
    /// its last record.
    fn pack_log(
        &mut self,
        start: usize,
        end: usize,
        tag: Flags,
        fit: Fit,
    ) -> Vec<(Vec<u8>, usize)> {
        let limits = self.cfg.limits;
        let bulk_cap = fit.bulk;
        let mut frames: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut read = core::mem::take(&mut self.read_buf);
        let mut bulk = core::mem::take(&mut self.bulk_buf);
        bulk.clear();
        let mut count = 0u32;
        let mut permanent = false;
        let mut i = start;
        'runs: while i < end {
            // A run of records back to back in one segment: one read.
            let first = self.index[i];
            let mut j = i + 1;
            while j < end && self.index[j].lsn == self.index[j - 1].end() {
                j += 1;
            }
            let run = (self.index[j - 1].end().offset - first.lsn.offset) as usize;
            read.clear();
            read.resize(run, 0);
            let n = self
                .storage
                .read(first.lsn.file, first.lsn.offset as u64, &mut read)
                .unwrap_or(0);
            let mut off = 0usize;
            while i < j {
                let e = self.index[i];
                let len = e.len as usize;
                if len > fit.record {
                    // Above the requester's max_record: nothing can carry
                    // it there (a group's records must fit every member's
                    // limits). Say so, once per request.
                    self.stats.unfit_records += 1;
                    break 'runs;
                }
                let Some(record) = read.get(off..off + len).filter(|_| off + len <= n) else {
                    break 'runs;
                };
                let view = match crate::log::RecordView::parse(record, e.lsn, &limits) {
                    Ok(v) if v.bytes.len() == len => v,
                    _ => break 'runs,
                };
                if let Some(body) = &fit.body {
                    // The requester's key, value or operation count limit
                    // is below this site's: a record that breaks it would
                    // be refused there (BadRecord) at every re-request.
                    // Not sent, and counted like an oversized record.
                    match view.decode(body) {
                        Ok(_) => {}
                        Err(RecordError::LimitExceeded(_)) => {
                            self.stats.unfit_records += 1;
                            break 'runs;
                        }
                        Err(_) => break 'runs,
                    }
                }
                let prev = i.checked_sub(1).map_or(Lsn::ZERO, |p| self.index[p].lsn);
                let entry = LogEntry {
                    lsn: e.lsn,
                    prev,
                    record,
                };
                let commit = e.kind == RecordKind::Commit;
                let mark = bulk.len();
                bulk = postcard::to_extend(&entry, bulk).unwrap_or_default();
                debug_assert_eq!(bulk.len() - mark, entry_size(&e, prev));
                if bulk.len() > bulk_cap {
                    bulk.truncate(mark);
                    if count > 0 {
                        let f = self.bulk_frame(count, &bulk, permanent, tag);
                        frames.extend(f.map(|f| (f, i - 1)));
                        bulk.clear();
                        count = 0;
                        permanent = false;
                        continue;
                    }
                    // Too big to batch: a LOG of its own.
                    let flags = if commit {
                        Flags::PERMANENT
                    } else {
                        Flags::NONE
                    };
                    let f = self.encode(flags.with(tag), &Message::Log(entry), len + 64);
                    frames.extend(f.map(|f| (f, i)));
                } else {
                    count += 1;
                    permanent |= commit;
                }
                off += len;
                i += 1;
            }
        }
        if count > 0 {
            let f = self.bulk_frame(count, &bulk, permanent, tag);
            frames.extend(f.map(|f| (f, i - 1)));
        }
        self.read_buf = read;
        self.bulk_buf = bulk;
        frames
    }

    fn bulk_frame(
        &self,
        count: u32,
        bytes: &[u8],
        permanent: bool,
        mark: Flags,
    ) -> Option<Vec<u8>> {
        let flags = if permanent {
            Flags::PERMANENT
        } else {
            Flags::NONE
        }
        .with(mark);
        let msg = Message::BulkLog(crate::wire::BulkLog { count, bytes });
        self.encode(flags, &msg, bytes.len() + 64)
    }

    /// Answer a VERIFY_REQ: the record at exactly `lsn`, or VERIFY_FAIL.
    pub(super) fn serve_verify(&mut self, env: &Envelope, lsn: Lsn) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        self.stats.requests_served += 1;
        match self.index_of(lsn) {
            Some(i) => {
                let prev = i.checked_sub(1).map_or(Lsn::ZERO, |p| self.index[p].lsn);
                if let Some(record) = self.read_record(lsn) {
                    let msg = Message::Verify(LogEntry {
                        lsn,
                        prev,
                        record: &record,
                    });
                    self.send(env.from, Flags::NONE, &msg);
                }
            }
            // No record starts there but the log reaches past it: answer
            // with the record before, and `prev` set to the probed LSN (an
            // exact answer's `prev` is always below its LSN), so the client
            // sees a mismatch for that probe and no other. Only an LSN older
            // than the whole log gets VERIFY_FAIL ("too old").
            None if self.index.first().is_some_and(|f| f.lsn < lsn) => {
                let i = self.index.partition_point(|e| e.lsn < lsn) - 1;
                let e = self.index[i];
                if let Some(record) = self.read_record(e.lsn) {
                    let msg = Message::Verify(LogEntry {
                        lsn: e.lsn,
                        prev: lsn,
                        record: &record,
                    });
                    self.send(env.from, Flags::NONE, &msg);
                }
            }
            None => self.send(env.from, Flags::NONE, &Message::VerifyFail { lsn }),
        }
        Ok(())
    }

    pub(super) fn on_join_req(&mut self, j: &JoinReq<'_>) {
        let reply_to = Dest::Address(String::from(j.address));
        if self.role != Role::Master {
            let master = self.master;
            self.send_join_answer(reply_to, JoinResult::NotMaster(master), SiteId(0));
            return;
        }
        let site = match self.members.by_address(j.address) {
            Some(m) => m.id,
            None => {
                if self.members.len() >= self.cfg.limits.max_sites as usize {
                    self.send_join_answer(reply_to, JoinResult::GroupFull, SiteId(0));
                    return;
                }
                let site = self.members.next_id();
                let mut flags = 0;
                if j.view {
                    flags |= members::FLAG_VIEW;
                }
                if j.priority == 0 {
                    flags |= members::FLAG_UNELECTABLE;
                }
                let m = Membership {
                    action: MemberAction::Add,
                    site,
                    address: j.address,
                    flags,
                };
                match self.append_own(&RecordBody::Membership(m)) {
                    Ok(e) => {
                        self.ship(e, Flags::PERMANENT, false);
                        self.ask_flush(e.lsn);
                    }
                    Err(_) => {
                        self.send_join_answer(reply_to, JoinResult::Unavailable, SiteId(0));
                        return;
                    }
                }
                site
            }
        };
        self.send_join_answer(reply_to, JoinResult::Accepted, site);
    }

    /// Answer a join, with the whole membership so the joiner knows every
    /// address (and, when redirected, where the master is).
    fn send_join_answer(&mut self, to: Dest, result: JoinResult, site: SiteId) {
        let owned: Vec<(SiteId, String, u8)> = self
            .members
            .iter()
            .map(|m| (m.id, m.address.clone(), m.flags))
            .collect();
        let mut members = heapless::Vec::new();
        for (id, address, flags) in &owned {
            let _ = members.push(WireMember {
                site: *id,
                address,
                flags: *flags,
            });
        }
        let msg = Message::JoinAnswer(JoinAnswer {
            result,
            site,
            members,
        });
        self.send_many(&[to], Flags::NONE, &msg);
    }

    /// Remove a site from the group (R7). Only the master can.
    pub fn remove_site(&mut self, now: Instant, site: SiteId) -> Result<RequestId, CommitError> {
        self.now = now;
        let id = self.new_request();
        self.remove_inner(site, Some(id))?;
        Ok(id)
    }

    pub(super) fn remove_inner(
        &mut self,
        site: SiteId,
        id: Option<RequestId>,
    ) -> Result<(), CommitError> {
        if self.role != Role::Master {
            return Err(CommitError::NotMaster(self.master));
        }
        if self.members.get(site).is_none() {
            if let Some(id) = id {
                self.answer(Answer::Remove { id, result: Ok(()) });
            }
            return Ok(());
        }
        let m = Membership {
            action: MemberAction::Remove,
            site,
            address: "",
            flags: 0,
        };
        let e = self
            .append_own(&RecordBody::Membership(m))
            .map_err(|_| CommitError::Storage)?;
        // The removed site gets the record too, so it learns it is out.
        self.send_removed(site, e);
        self.ship(e, Flags::PERMANENT, false);
        self.ask_flush(e.lsn);
        if let Some(id) = id {
            self.answer(Answer::Remove { id, result: Ok(()) });
        }
        Ok(())
    }

    fn send_removed(&mut self, site: SiteId, e: IndexEntry) {
        let prev = self
            .index
            .len()
            .checked_sub(2)
            .map_or(Lsn::ZERO, |p| self.index[p].lsn);
        if let Some(record) = self.read_record(e.lsn) {
            let msg = Message::Log(LogEntry {
                lsn: e.lsn,
                prev,
                record: &record,
            });
            self.send(site, Flags::PERMANENT, &msg);
        }
    }
}
