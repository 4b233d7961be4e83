//! Master leases (R10), planned switchover (E7) and stale handles (R14).
//!
//! Leases: the master stamps LEASE_REQ with its own clock; a client that
//! follows it answers LEASE_GRANT with the same stamp and, for the lease
//! duration stretched by the clock-skew bound, refuses to vote. The master
//! counts a grant valid for the lease duration shrunk by the same bound,
//! measured from its own stamp, so its lease always ends before any
//! granting client may vote again. With grants from nvotes - 1 clients the
//! master holds the lease; without, it refuses reads and commits
//! (LEASE_EXPIRED) rather than serve data a newer master may have replaced.

use super::*;
use core::time::Duration;

/// A database handle (R14): reads through it fail with HANDLE_DEAD after a
/// rollback removed commits it may have seen, until it is reopened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Handle {
    epoch: u64,
}

impl<S: Storage> Site<S> {
    fn lease_for_master(&self) -> Duration {
        let l = self.cfg.timeouts.lease;
        l * self.cfg.clock_skew_slow / self.cfg.clock_skew_fast.max(1)
    }

    fn lease_for_client(&self) -> Duration {
        let l = self.cfg.timeouts.lease;
        l * self.cfg.clock_skew_fast / self.cfg.clock_skew_slow.max(1)
    }

    /// The master holds a majority of unexpired grants at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        if !self.cfg.leases {
            return true;
        }
        if self.role != Role::Master {
            return false;
        }
        let (_, nvotes) = self.election_sizes();
        let need = nvotes.saturating_sub(1) as usize;
        let d = self.lease_for_master();
        let valid = self.lease_grants.values().filter(|t| now < **t + d).count();
        valid >= need
    }

    /// A client that granted a lease may not vote until it ends.
    pub(super) fn holds_grant(&self) -> bool {
        self.cfg.leases && self.now < self.grant_until
    }

    pub(super) fn lease_timeouts(&mut self) {
        if !self.cfg.leases || self.role != Role::Master {
            return;
        }
        if self.lease_req_at.is_some_and(|t| t <= self.now) {
            self.send_lease_req();
        }
    }

    pub(super) fn send_lease_req(&mut self) {
        let master_time = self.now;
        self.broadcast(Flags::LEASE_REQ, &Message::LeaseReq { master_time });
        // Refresh well inside the lease so a lost round does not end it.
        self.lease_req_at = Some(self.now + self.cfg.timeouts.lease / 4);
    }

    pub(super) fn on_lease_req(
        &mut self,
        env: &Envelope,
        master_time: Instant,
    ) -> Result<(), Drop> {
        if !self.cfg.leases || self.cfg.view {
            return Ok(());
        }
        self.on_master_traffic(env)?;
        if self.master != Some(env.from) || self.election.is_some() {
            return Err(Drop::WrongRole);
        }
        self.grant_until = self.grant_until.max(self.now + self.lease_for_client());
        self.send(env.from, Flags::NONE, &Message::LeaseGrant { master_time });
        Ok(())
    }

    pub(super) fn on_lease_grant(
        &mut self,
        env: &Envelope,
        master_time: Instant,
    ) -> Result<(), Drop> {
        if self.role != Role::Master || env.generation != self.meta.generation {
            return Err(Drop::Stale);
        }
        if master_time > self.now {
            // A stamp from the future is a lie; never count it.
            return Err(Drop::Stale);
        }
        let t = self.lease_grants.entry(env.from).or_insert(master_time);
        *t = (*t).max(master_time);
        Ok(())
    }

    /// When the lease machinery next needs a call.
    pub(super) fn lease_deadline(&self) -> Option<Instant> {
        if self.cfg.leases && self.role == Role::Master {
            self.lease_req_at
        } else {
            None
        }
    }

    /// Read a key as of `now` (R10, S5): on a master with leases the read is
    /// refused unless the lease holds; on a synchronising client with
    /// NOWAIT it is refused with LOCKOUT.
    pub fn read(&self, now: Instant, db: &str, key: &[u8]) -> Result<Option<&[u8]>, ReadError> {
        if self.cfg.leases && self.role == Role::Master {
            if !self.lease_valid(now) {
                return Err(ReadError::LeaseExpired);
            }
            // A value written by a commit that is not yet permanent could
            // still be rolled back: answer with the last permanent one.
            if let Some(u) = self.unsettled.get(&(String::from(db), key.to_vec())) {
                return Ok(u.base.as_deref());
            }
        }
        self.get(db, key)
    }

    /// Open a handle for reads that must notice rollbacks (R14).
    pub fn open_handle(&self) -> Handle {
        Handle {
            epoch: self.rollback_epoch,
        }
    }

    /// Read through a handle: HANDLE_DEAD if commits were rolled back since
    /// it was opened.
    pub fn read_handle(
        &self,
        now: Instant,
        handle: &Handle,
        db: &str,
        key: &[u8],
    ) -> Result<Option<&[u8]>, ReadError> {
        if handle.epoch != self.rollback_epoch {
            return Err(ReadError::HandleDead);
        }
        self.read(now, db, key)
    }

    /// Hand mastership to `to` (E7): writes stop, `to` catches up and holds
    /// an election it is set to win; this site steps down when `to` calls
    /// it. If nothing happens within an election timeout and a retry, this
    /// site carries on as master.
    pub fn transfer_master(&mut self, now: Instant, to: SiteId) -> Result<(), CommitError> {
        self.now = now;
        if self.role != Role::Master {
            return Err(CommitError::NotMaster(self.master));
        }
        if to == self.meta.site || !self.members.get(to).is_some_and(|m| m.is_electable()) {
            return Err(CommitError::Invalid(
                crate::log::RecordError::LimitExceeded(
                    "transfer target (must be another electable member)",
                ),
            ));
        }
        self.transfer = Some((
            to,
            now + self.cfg.timeouts.election + self.cfg.timeouts.election_retry,
        ));
        self.send(to, Flags::NONE, &Message::TransferMaster { to });
        Ok(())
    }

    pub(super) fn on_transfer(&mut self, env: &Envelope, to: SiteId) -> Result<(), Drop> {
        if to != self.meta.site || self.role != Role::Client {
            return Err(Drop::WrongRole);
        }
        self.on_master_traffic(env)?;
        self.transfer_at = Some(env.lsn);
        self.maybe_take_over();
        Ok(())
    }

    /// The transfer target holds its election once it has the old master's
    /// whole log.
    pub(super) fn maybe_take_over(&mut self) {
        let Some(target) = self.transfer_at else {
            return;
        };
        if self.writer.last_lsn() < target {
            return;
        }
        self.transfer_at = None;
        self.boost = true;
        self.start_election(None);
    }

    pub(super) fn transfer_timeouts(&mut self) {
        if self.transfer.is_some_and(|(_, t)| t <= self.now) {
            self.transfer = None;
        }
    }
}
