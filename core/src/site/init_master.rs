//! The master's half of internal initialisation (S6): serving a client
//! whose log has no overlap with this one the whole database.
//!
//! On UPDATE_REQ the master fixes what it will send before it sends any
//! page: a snapshot of its store and membership as of its last record S,
//! and the first LSN F, the first record of S's segment (a log must start
//! at a segment's first record, and the client's log must hold S for the
//! snapshot to be usable when it reopens). It answers UPDATE { F, S, one
//! database "" of n pages } once S is durable here: a client being
//! initialised votes only for a candidate whose log reaches S (see
//! `init_client`), and this master, restarted, must be one. The snapshot is encoded once ([`snapshot`]
//! format, which carries its own checksum) and split into pages of at
//! most [`crate::wire::max_page_bytes`]; PAGE_REQ is answered with pages
//! up to `max_answer_bytes`, PAGE_MORE ahead of them when more remain.
//!
//! Memory: one encoded snapshot at most, kept while clients fetch it and
//! dropped after [`Site::init_idle`] without a request, or when this site
//! stops being master. While it is kept, archiving keeps F's segment, so
//! the log from F stays available. A client given another snapshot than
//! the one kept (it was replaced or dropped) gets PAGE_FAIL and starts
//! over.
//!
//! [`snapshot`]: crate::snapshot

use super::*;
use crate::wire::{DbSummary, Page, Update};
use core::time::Duration;

/// The name under which the store snapshot travels in UPDATE and PAGE
/// messages: the empty name, which no database can have (an operation's
/// database name has 1 to 64 bytes), so it never clashes with one.
pub const SNAPSHOT_DB: &str = "";

/// The snapshot this master serves to initialising clients.
#[derive(Clone, Debug)]
pub(super) struct Serving {
    /// Where the client's log restarts (F).
    pub(super) first: Lsn,
    /// The record the snapshot reflects (S).
    pub(super) lsn: Lsn,
    /// The encoded snapshot.
    bytes: Vec<u8>,
    /// Bytes per page.
    page: usize,
    /// Sites that asked for this snapshot (at most `max_sites`).
    clients: Vec<SiteId>,
    /// Of those, the ones still owed their UPDATE (sent once S is durable).
    owed: Vec<SiteId>,
    /// Last request for it.
    used_at: Instant,
}

impl Serving {
    fn pages(&self) -> u32 {
        self.bytes.len().div_ceil(self.page.max(1)) as u32
    }

    fn page_bytes(&self, n: u32) -> &[u8] {
        let start = (n as usize).saturating_mul(self.page).min(self.bytes.len());
        let end = start.saturating_add(self.page).min(self.bytes.len());
        &self.bytes[start..end]
    }
}

impl<S: Storage> Site<S> {
    /// How long a served snapshot is kept without a request for it: four
    /// times the longest re-request back-off, so a client that is still
    /// fetching (and re-requests at least that often) never loses it.
    pub(super) fn init_idle(&self) -> Duration {
        self.cfg.timeouts.rerequest_max * 4
    }

    /// When the served snapshot is dropped, if one is kept.
    pub(super) fn serving_deadline(&self) -> Option<Instant> {
        self.serving.as_ref().map(|s| s.used_at + self.init_idle())
    }

    /// Drop the served snapshot once it has gone unused for a while.
    pub(super) fn serving_timeouts(&mut self) {
        if self.serving_deadline().is_some_and(|d| d <= self.now) {
            self.serving = None;
        }
    }

    /// The segment archiving must keep while a snapshot is served: F's.
    pub(super) fn serving_keeps(&self) -> Option<u32> {
        self.serving.as_ref().map(|s| s.first.file)
    }

    /// The kept snapshot, if the log from its F is still here.
    fn usable_serving(&mut self) -> Option<&mut Serving> {
        let first = self.serving.as_ref()?.first;
        if self.index_of(first).is_none() {
            self.serving = None;
        }
        self.serving.as_mut()
    }

    /// UPDATE_REQ: a client needs the whole database. Only the master
    /// serves it (S3's client-to-client service is for logs).
    pub(super) fn on_update_req(&mut self, env: &Envelope) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        let now = self.now;
        let max_sites = self.cfg.limits.max_sites as usize;
        let fresh = self.usable_serving().is_none();
        if fresh && !self.take_serving() {
            return Ok(());
        }
        let Some(s) = self.serving.as_mut() else {
            return Ok(());
        };
        s.used_at = now;
        if !s.clients.contains(&env.from) {
            if s.clients.len() >= max_sites {
                s.clients.remove(0);
            }
            s.clients.push(env.from);
        }
        if !s.owed.contains(&env.from) {
            s.owed.push(env.from);
        }
        let lsn = s.lsn;
        if self.flushed >= lsn {
            self.send_updates();
        } else {
            self.ask_flush(lsn);
        }
        Ok(())
    }

    /// The log is durable to a new point: send the UPDATEs owed, if the
    /// snapshot's record is durable now.
    pub(super) fn send_updates(&mut self) {
        let Some(s) = self.serving.as_mut() else {
            return;
        };
        if self.flushed < s.lsn || s.owed.is_empty() {
            return;
        }
        let owed = core::mem::take(&mut s.owed);
        let (first, lsn, pages) = (s.first, s.lsn, s.pages());
        let mut databases = heapless::Vec::new();
        let _ = databases.push(DbSummary {
            name: SNAPSHOT_DB,
            pages,
        });
        let msg = Message::Update(Update {
            first_lsn: first,
            snapshot_lsn: lsn,
            databases,
        });
        let dests: Vec<Dest> = owed.into_iter().map(Dest::Site).collect();
        self.stats.inits_served += dests.len() as u64;
        self.send_many(&dests, Flags::NONE, &msg);
    }

    /// Encode the store and membership as of the last record, with F the
    /// first record of that record's segment. False if the log is empty.
    fn take_serving(&mut self) -> bool {
        let Some(last) = self.index.last().copied() else {
            return false;
        };
        let seg = self.index.partition_point(|e| e.lsn.file < last.lsn.file);
        let first = self.index[seg].lsn;
        let bytes = crate::snapshot::encode(last.lsn, last.generation, &self.store, &self.members);
        self.serving = Some(Serving {
            first,
            lsn: last.lsn,
            bytes,
            page: crate::wire::max_page_bytes(&self.cfg.limits).max(1),
            clients: Vec::new(),
            owed: Vec::new(),
            used_at: self.now,
        });
        true
    }

    /// PAGE_REQ: pages of the served snapshot from `page` on, at most
    /// `max_answer_bytes` of them (at least one), PAGE_MORE first when
    /// more remain. PAGE_FAIL when the requester's snapshot is gone.
    pub(super) fn on_page_req(&mut self, env: &Envelope, db: &str, page: u32) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        let now = self.now;
        let budget = self.cfg.limits.max_answer_bytes as usize;
        let known = db == SNAPSHOT_DB
            && self
                .usable_serving()
                .is_some_and(|s| s.clients.contains(&env.from) && page < s.pages());
        if !known {
            self.send(env.from, Flags::NONE, &Message::PageFail { db, page });
            return Ok(());
        }
        let Some(s) = self.serving.as_mut() else {
            return Ok(());
        };
        s.used_at = now;
        let pages = s.pages();
        let mut end = page;
        let mut bytes = 0usize;
        while end < pages {
            let len = s.page_bytes(end).len();
            if end > page && bytes + len > budget {
                break;
            }
            bytes += len;
            end += 1;
        }
        let mut frames = Vec::new();
        if let Some(s) = self.serving.as_ref() {
            for n in page..end {
                let data = s.page_bytes(n);
                let msg = Message::Page(Page {
                    db: SNAPSHOT_DB,
                    page: n,
                    data,
                });
                frames.extend(self.encode(Flags::NONE, &msg, data.len() + 64));
            }
        }
        // PAGE_MORE goes first, as LOG_MORE does (R13): the client asks
        // for the next part while this one is on its way.
        if end < pages {
            self.send(
                env.from,
                Flags::NONE,
                &Message::PageMore {
                    db: SNAPSHOT_DB,
                    next: end,
                },
            );
        }
        for f in frames {
            self.stats.pages_sent += 1;
            self.send_frame(Dest::Site(env.from), f);
        }
        Ok(())
    }
}
