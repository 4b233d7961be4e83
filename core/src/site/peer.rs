//! Client-to-client synchronisation (S3): a client asks a configured peer
//! client for the log instead of the master, so catching-up clients do not
//! all load the master (S4).
//!
//! A request to a peer is a LOG_REQ marked ANYWHERE. A peer serves it only
//! from a log it knows to be a prefix of the master's: it is a client that
//! finished synchronising with the master of the requester's generation.
//! Otherwise, or when it lacks the records, it answers REREQUEST, and the
//! requester asks the master again at once, marked REREQUEST; a request
//! that gets no answer within the re-request back-off goes to the master
//! likewise (R13). The requester takes records, LOG_MORE and REREQUEST from
//! the peer it asked only: such traffic says nothing about the master.

use super::*;

impl<S: Storage> Site<S> {
    /// The peers to ask for the log before the master, by address, in
    /// order of preference (S3). A peer is used while it is a connected
    /// member other than the master; otherwise requests go to the master.
    /// At most `max_sites` addresses are kept; an empty list turns
    /// client-to-client synchronisation off.
    pub fn set_peers(&mut self, addresses: &[&str]) {
        self.peers = addresses
            .iter()
            .take(self.cfg.limits.max_sites as usize)
            .map(|a| String::from(*a))
            .collect();
    }

    /// The peers set with [`Site::set_peers`].
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// The first configured peer that can be asked now.
    fn pick_peer(&self) -> Option<SiteId> {
        let me = self.meta.site;
        self.peers.iter().find_map(|a| {
            let m = self.members.by_address(a)?;
            let usable = m.id != me && Some(m.id) != self.master && m.connected;
            usable.then_some(m.id)
        })
    }

    /// Where a log request goes and how it is marked: to a peer (ANYWHERE)
    /// for a first request when one can be asked, else to the master
    /// (REREQUEST when it repeats one).
    pub(super) fn log_request_dest(&mut self, master: SiteId, rerequest: bool) -> (SiteId, Flags) {
        if !rerequest {
            if let Some(p) = self.pick_peer() {
                self.asked_peer = Some(p);
                return (p, Flags::ANYWHERE);
            }
        }
        self.asked_peer = None;
        let flags = if rerequest {
            Flags::REREQUEST
        } else {
            Flags::NONE
        };
        (master, flags)
    }

    /// Is this traffic a peer's answer (marked ANYWHERE)? It carries
    /// records but says nothing about the master, so it is never taken for
    /// the master's. `Ok(true)`: the answer of the peer this client asked,
    /// in its generation, to use; `Ok(false)`: not a peer's answer;
    /// `Err(Stale)`: a peer's answer to drop (a request given up, another
    /// generation).
    pub(super) fn peer_answer(&self, env: &Envelope) -> Result<bool, Drop> {
        if !env.flags.contains(Flags::ANYWHERE) {
            return Ok(false);
        }
        let usable = self.role == Role::Client
            && self.asked_peer == Some(env.from)
            && self.master != Some(env.from)
            && env.generation == self.meta.generation;
        if usable {
            Ok(true)
        } else {
            Err(Drop::Stale)
        }
    }

    /// A peer could not serve the request from `lsn`: ask the master now.
    pub(super) fn on_rerequest(&mut self, env: &Envelope, _lsn: Lsn) -> Result<(), Drop> {
        if !self.peer_answer(env)? {
            return Err(Drop::Stale);
        }
        self.asked_peer = None;
        if self.want.is_some() {
            self.request_log(true);
        }
        Ok(())
    }

    /// A log request to this site as a client: serve it if it is marked
    /// ANYWHERE and this log is a prefix of the requester's master's (this
    /// site synchronised with the master of the requester's generation)
    /// holding the records asked for, in frames the requester takes (`fit`,
    /// as a master would: a peer may have larger limits than a device it
    /// serves); otherwise say REREQUEST.
    pub(super) fn serve_log_as_peer(
        &mut self,
        env: &Envelope,
        from: Lsn,
        to: Lsn,
        fit: Fit,
    ) -> Result<(), Drop> {
        if self.role != Role::Client || !env.flags.contains(Flags::ANYWHERE) {
            return Err(Drop::WrongRole);
        }
        match self.peer_start(env, from) {
            Some(start) => {
                self.stats.requests_served += 1;
                self.stats.peer_served += 1;
                self.answer_log(env.from, start, to, Flags::ANYWHERE, fit);
            }
            None => {
                self.stats.requests_refused += 1;
                self.send(env.from, Flags::ANYWHERE, &Message::Rerequest { lsn: from });
            }
        }
        Ok(())
    }

    /// Where in this log a peer's answer to a request from `from` starts,
    /// if this site may and can serve it.
    fn peer_start(&self, env: &Envelope, from: Lsn) -> Option<usize> {
        let synced = self.sync == SyncState::Ready
            && self.master.is_some()
            && self.master != Some(env.from)
            && env.generation == self.meta.generation;
        if !synced || self.cfg.limits.max_answer_bytes == 0 {
            return None;
        }
        if from.is_zero() && !self.has_full_history() {
            return None;
        }
        let start = self.index_from(from).ok()?;
        if !from.is_zero() && start == 0 && self.index.first().is_some_and(|e| e.lsn > from) {
            return None;
        }
        // Nothing past `from` here: the requester is as far as this site.
        (start < self.index.len()).then_some(start)
    }
}
