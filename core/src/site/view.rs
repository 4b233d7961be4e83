//! Views (R12): a site that replicates but never votes, acks or becomes
//! master, and may apply only some databases.
//!
//! What a view leaves out is spread over the other files, each at its
//! decision: it joins with the VIEW membership flag (`own_flags`), never
//! acks (`client::maybe_ack`), never stands or votes (`election`), grants
//! no leases, refuses `rep_start_master`, and the master counts it in
//! neither nsites nor acks (`master::group_shape`, `progress_commits`). It
//! serves LOG_REQ / ALL_REQ from peers like any client (`peer`).
//!
//! This file holds the partial view, modelled on the reference system's:
//! with [`crate::config::Config::view_databases`] set, the view's LOG is
//! still the master's whole log (every record is appended, checked and
//! indexed), so it verifies against any new master and serves any peer
//! the log it asks for; only what reaches its STORE is restricted. Every
//! path that fills the store goes through here: a record applied live or
//! in catch-up (`append_replicated`), a record replayed at recovery or
//! after a rollback (`replay_from`), a snapshot it starts from (its own,
//! or a master's in an internal initialisation, S6: only its databases
//! are kept, and the snapshot it writes holds only them). So its
//! checkpoint snapshots hold only its databases, its store digest covers
//! only them (equal to the master's `digest_where` over them), and a read
//! of another database is refused with [`ReadError::NotReplicated`]
//! rather than answered empty.
//!
//! Its snapshots (checkpoints, and the master's it was initialised from,
//! re-encoded) are written as snapshot version 3, which names the
//! databases they cover: a site whose list was widened since (or that is
//! no longer a partial view) does not start from one, since it lacks the
//! added databases' past (see `usable_base`).
//!
//! A partial view can never initialise another site: its store is not
//! the master's. It never does: UPDATE_REQ is sent to the master only and
//! served by a master only (a view never is one), and `take_serving`
//! refuses on a partial view besides.

use super::*;
use crate::log::Commit;

impl<S: Storage> Site<S> {
    /// Apply one commit's operations on the databases this site
    /// replicates (all of them, except on a partial view).
    pub(super) fn apply_commit(&mut self, c: &Commit<'_>) -> Result<(), crate::log::RecordError> {
        let cfg = &self.cfg;
        self.store.apply_where(c, |db| cfg.replicates(db))
    }

    /// Keep only the databases this site replicates, after the store was
    /// replaced by a snapshot's (which may be the master's, or one written
    /// before the site's database list changed).
    pub(super) fn restrict_store(&mut self) {
        if self.cfg.is_partial_view() {
            let cfg = &self.cfg;
            self.store.retain_databases(|db| cfg.replicates(db));
        }
    }

    /// A master's snapshot, made a partial view's own: its databases only,
    /// re-encoded (same records) so what the view writes to its disk holds
    /// nothing it does not replicate. Any other site takes it as it came.
    pub(super) fn own_snapshot(
        &self,
        mut snap: crate::snapshot::Snapshot,
        bytes: Vec<u8>,
    ) -> (crate::snapshot::Snapshot, Vec<u8>) {
        if !self.cfg.is_partial_view() {
            return (snap, bytes);
        }
        drop(bytes);
        let cfg = &self.cfg;
        snap.store.retain_databases(|db| cfg.replicates(db));
        snap.covers = Some(cfg.view_databases.clone());
        let bytes = crate::snapshot::encode_spanning(&snap);
        (snap, bytes)
    }

    /// The databases this site's snapshots cover when not all: a partial
    /// view's (written as snapshot version 3).
    pub(super) fn snapshot_covers(&self) -> Option<&[String]> {
        self.cfg
            .is_partial_view()
            .then_some(self.cfg.view_databases.as_slice())
    }

    /// A stored snapshot this site may start from: one that holds every
    /// database it applies. A partial view's snapshot lacks the others, so
    /// a site that now applies more (its list widened, or it is no longer
    /// a partial view) must not take it: it replays its whole log instead,
    /// or, with the log's start archived, cannot open
    /// ([`OpenError::ViewSnapshotTooNarrow`]). Returns the snapshot if
    /// usable, and whether one was refused.
    pub(super) fn usable_base(
        &self,
        base: Option<crate::snapshot::Snapshot>,
    ) -> (Option<crate::snapshot::Snapshot>, bool) {
        match base {
            Some(b) if !b.covers_all(&self.cfg.view_databases) => (None, true),
            b => (b, false),
        }
    }

    /// May a read of `db` be answered here?
    pub(super) fn check_replicated(&self, db: &str) -> Result<(), ReadError> {
        if self.cfg.replicates(db) {
            Ok(())
        } else {
            Err(ReadError::NotReplicated)
        }
    }

    /// Is this site a view (R12)?
    pub fn is_view(&self) -> bool {
        self.cfg.view
    }

    /// The databases this view applies; empty: every database (R12).
    pub fn view_databases(&self) -> &[String] {
        &self.cfg.view_databases
    }
}
