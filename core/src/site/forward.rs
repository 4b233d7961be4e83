//! Write forwarding (W1): with `forward_writes` on, a client hands a simple
//! put or delete (an implicit one-operation transaction, [`Site::write`])
//! to the master as FORWARD_WRITE. The master commits it as its own commit
//! and answers FORWARD_ANSWER once that commit is answered (permanent, or
//! its ack timeout passed), with what it achieved. The client then waits
//! until the record has reached its own log, so a read on the client right
//! after the answer sees the write, and answers the application; the
//! write-forward timeout bounds both waits.
//!
//! Transactions ([`Site::commit`] on a client) are never forwarded: their
//! operations could interleave with other writers at the master in ways
//! the application did not ask for. Every site should share the setting;
//! a master with it off answers DISABLED.
//!
//! Frames are not retried, so only a duplicating network can repeat one:
//! the master takes a client's requests in increasing order and ignores a
//! number it has seen, forgetting a client's numbers when the client
//! announces itself anew (it restarted) or its connection breaks.

use super::*;
use crate::config::Durability;
use crate::log::Op;
use crate::wire::{ForwardResult, ForwardWrite};

/// A write this client forwarded and still answers for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forward {
    /// The application's request id, also the wire request number.
    id: RequestId,
    /// The master it went to; answers from anyone else are ignored.
    to: SiteId,
    /// When the application gets its answer at the latest.
    deadline: Instant,
    /// The master's outcome, once it came: the write is waited for here.
    committed: Option<CommitOutcome>,
}

/// A write the master commits for a client.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forwarded {
    /// The master's own request id for the commit.
    local: RequestId,
    client: SiteId,
    request: u64,
}

impl<S: Storage> Site<S> {
    /// Put or delete one key outside any transaction. On the master this is
    /// a one-operation commit; on a client with `forward_writes` on it is
    /// forwarded to the master (W1). The outcome arrives as
    /// [`Answer::Commit`]; a forwarded write is answered once the master
    /// committed it and it is in this site's log, or at the write-forward
    /// timeout.
    pub fn write(
        &mut self,
        now: Instant,
        op: Op<'_>,
        durability: Durability,
    ) -> Result<RequestId, CommitError> {
        self.now = now;
        if self.role == Role::Master || !self.cfg.forward_writes {
            return self.commit_inner(&[op], durability);
        }
        let master = match (self.role, self.master) {
            (Role::Client, Some(m)) => m,
            _ => return Err(CommitError::NotMaster(self.master)),
        };
        op.check(&self.cfg.limits).map_err(CommitError::Invalid)?;
        if self.forwards.len() >= self.cfg.limits.max_pending_commits as usize {
            return Err(CommitError::Busy);
        }
        let id = self.new_request();
        let flags = if durability == Durability::Sync {
            Flags::NONE
        } else {
            Flags::NO_SYNC
        };
        self.send(
            master,
            flags,
            &Message::ForwardWrite(ForwardWrite { request: id, op }),
        );
        self.forwards.push(Forward {
            id,
            to: master,
            deadline: now + self.cfg.timeouts.write_forward,
            committed: None,
        });
        self.stats.forwards_sent += 1;
        Ok(id)
    }

    /// FORWARD_WRITE, at the master: commit it and answer when done.
    pub(super) fn on_forward_write(
        &mut self,
        env: &Envelope,
        w: &ForwardWrite<'_>,
    ) -> Result<(), Drop> {
        let refuse = if self.role != Role::Master {
            Some(ForwardResult::NotMaster)
        } else if !self.cfg.forward_writes {
            Some(ForwardResult::Disabled)
        } else {
            None
        };
        if let Some(result) = refuse {
            self.send_forward_answer(env.from, w.request, result);
            return Ok(());
        }
        if self
            .forward_seen
            .get(&env.from)
            .is_some_and(|&last| w.request <= last)
        {
            return Err(Drop::Duplicate);
        }
        self.forward_seen.insert(env.from, w.request);
        let durability = if env.flags.contains(Flags::NO_SYNC) {
            Durability::WriteNoSync
        } else {
            Durability::Sync
        };
        match self.commit_inner(&[w.op], durability) {
            Ok(local) => {
                self.stats.forwards_served += 1;
                self.forwarded.push(Forwarded {
                    local,
                    client: env.from,
                    request: w.request,
                });
                // A commit that needed nothing more was answered inside
                // `commit_inner`, before it was known to be forwarded.
                if let Some(p) = self.out.iter().position(
                    |o| matches!(o, Output::Answer(Answer::Commit { id, .. }) if *id == local),
                ) {
                    if let Some(Output::Answer(a)) = self.out.remove(p) {
                        self.answer(a);
                    }
                }
            }
            Err(e) => {
                let result = match e {
                    CommitError::NotMaster(_) => ForwardResult::NotMaster,
                    CommitError::Invalid(_) => ForwardResult::TooLarge,
                    _ => ForwardResult::Failed,
                };
                self.send_forward_answer(env.from, w.request, result);
            }
        }
        Ok(())
    }

    /// An answer to one of the master's own commits: if the commit was a
    /// forwarded write, it goes back to the client instead of the
    /// application (and `None` is returned).
    pub(super) fn route_forwarded(&mut self, a: Answer) -> Option<Answer> {
        let Answer::Commit { id, result } = &a else {
            return Some(a);
        };
        let Some(p) = self.forwarded.iter().position(|f| f.local == *id) else {
            return Some(a);
        };
        let f = self.forwarded.swap_remove(p);
        let result = match result {
            Ok(o) => ForwardResult::Committed {
                token: o.token,
                permanent: o.permanent,
                acks: o.acks,
                needed: o.needed,
            },
            Err(_) => ForwardResult::Failed,
        };
        self.send_forward_answer(f.client, f.request, result);
        None
    }

    fn send_forward_answer(&mut self, to: SiteId, request: u64, result: ForwardResult) {
        self.send(to, Flags::NONE, &Message::ForwardAnswer { request, result });
    }

    /// A client announced itself anew or its connection broke: its
    /// request numbers start over.
    pub(super) fn forget_forwarder(&mut self, site: SiteId) {
        self.forward_seen.remove(&site);
    }

    /// FORWARD_ANSWER, at the client that forwarded the write.
    pub(super) fn on_forward_answer(
        &mut self,
        env: &Envelope,
        request: u64,
        result: ForwardResult,
    ) -> Result<(), Drop> {
        let Some(p) = self
            .forwards
            .iter()
            .position(|f| f.id == request && f.to == env.from && f.committed.is_none())
        else {
            return Err(Drop::Duplicate);
        };
        let error = match result {
            ForwardResult::Committed {
                token,
                permanent,
                acks,
                needed,
            } => {
                self.forwards[p].committed = Some(CommitOutcome {
                    token,
                    permanent,
                    acks,
                    needed,
                    flushed: false,
                    forwarded: true,
                });
                self.check_forwards();
                return Ok(());
            }
            ForwardResult::NotMaster => {
                CommitError::NotMaster(self.master.filter(|&m| m != env.from))
            }
            ForwardResult::Disabled => CommitError::ForwardDisabled,
            ForwardResult::TooLarge => {
                CommitError::Invalid(crate::log::RecordError::LimitExceeded(
                    "forwarded write (above the master's limits)",
                ))
            }
            ForwardResult::Failed => CommitError::ForwardFailed,
        };
        let f = self.forwards.swap_remove(p);
        self.answer(Answer::Commit {
            id: f.id,
            result: Err(error),
        });
        Ok(())
    }

    /// Answer every forwarded write the master committed that is now in
    /// this site's log (or known rolled back).
    pub(super) fn check_forwards(&mut self) {
        let mut i = 0;
        while i < self.forwards.len() {
            let f = self.forwards[i];
            let state = f
                .committed
                .and_then(|o| self.token_state(o.token).map(|s| (o, s)));
            match state {
                Some((mut o, Ok(()))) => {
                    o.flushed = self.flushed >= o.token.lsn;
                    self.forwards.swap_remove(i);
                    self.answer(Answer::Commit {
                        id: f.id,
                        result: Ok(o),
                    });
                }
                Some((_, Err(_))) => {
                    self.forwards.swap_remove(i);
                    self.answer(Answer::Commit {
                        id: f.id,
                        result: Err(CommitError::ForwardFailed),
                    });
                }
                None => i += 1,
            }
        }
    }

    /// The earliest write-forward deadline.
    pub(super) fn forward_deadline(&self) -> Option<Instant> {
        self.forwards.iter().map(|f| f.deadline).min()
    }

    /// Answer forwarded writes whose time is up: committed ones with what
    /// the master said (the write has not reached this site yet; wait for
    /// it with `txn_applied`), the others as timed out.
    pub(super) fn forward_timeouts(&mut self) {
        let now = self.now;
        let mut i = 0;
        while i < self.forwards.len() {
            let f = self.forwards[i];
            if f.deadline > now {
                i += 1;
                continue;
            }
            self.forwards.swap_remove(i);
            let result = match f.committed {
                Some(o) => Ok(o),
                None => Err(CommitError::ForwardTimeout),
            };
            self.answer(Answer::Commit { id: f.id, result });
        }
    }
}
