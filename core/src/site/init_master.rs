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
//! `init_client`), and this master, restarted, must be one.
//!
//! The snapshot is encoded once ([`snapshot`] format, which carries its
//! own checksum) and cut into pages for each client on its own: the
//! UPDATE_REQ says the largest page the client takes (its
//! [`crate::wire::max_page_bytes`], which a device's small frames make far
//! smaller than a server's), and the client is served pages of the smaller
//! of that and this master's own size. So several clients fetch the one
//! snapshot at once in pages of different sizes, each told its own page
//! count n. A request for pages below [`crate::wire::MIN_PAGE_BYTES`]
//! never gets here: it does not decode. PAGE_REQ is answered with pages up
//! to the smaller of `max_answer_bytes` and the answer size the client's
//! UPDATE_REQ announced (protocol version 6: what its incoming queue
//! takes), PAGE_MORE ahead of them when more remain.
//!
//! Memory: one encoded snapshot at most, kept while clients fetch it and
//! dropped after [`Site::init_idle`] without a request, or when this site
//! stops being master. Its clients (at most `max_sites`) each add only
//! their page size; an answer holds at most `max_answer_bytes` of pages of
//! at least [`crate::wire::MIN_PAGE_BYTES`] each. While it is kept,
//! archiving keeps F's segment, so the log from F stays available. A
//! client given another snapshot than the one kept (it was replaced or
//! dropped) gets PAGE_FAIL and starts over.
//!
//! [`snapshot`]: crate::snapshot

use super::*;
use crate::wire::{DbSummary, Page, RequesterLimits, Update};
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
    /// Sites that asked for this snapshot (at most `max_sites`), each with
    /// what it is served.
    clients: Vec<(SiteId, Cut)>,
    /// Of those, the ones still owed their UPDATE (sent once S is durable).
    owed: Vec<SiteId>,
    /// Last request for it.
    used_at: Instant,
}

impl Serving {
    /// The page count in pages of `size` bytes.
    fn pages(&self, size: usize) -> u32 {
        u32::try_from(self.bytes.len().div_ceil(size.max(1))).unwrap_or(u32::MAX)
    }

    /// Page `n` in pages of `size` bytes (empty past the end).
    fn page_bytes(&self, size: usize, n: u32) -> &[u8] {
        let size = size.max(1);
        let start = (n as usize).saturating_mul(size).min(self.bytes.len());
        let end = start.saturating_add(size).min(self.bytes.len());
        self.bytes.get(start..end).unwrap_or_default()
    }

    /// How `site` is served, if it asked for this snapshot.
    fn cut_of(&self, site: SiteId) -> Option<Cut> {
        self.clients
            .iter()
            .find(|(id, _)| *id == site)
            .map(|(_, cut)| *cut)
    }
}

/// How one client is served the snapshot: the smaller of what its
/// UPDATE_REQ announced and this master's own limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cut {
    /// Bytes per page (at least 1).
    page: usize,
    /// Most bytes of pages in one answer (at least one page is sent).
    answer: usize,
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

    /// How a client that announced `r` is served: pages and answers of
    /// the smaller of its sizes and this master's own, never 0.
    fn cut_for(&self, r: &RequesterLimits) -> Cut {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let own = &self.cfg.limits;
        Cut {
            page: crate::wire::max_page_bytes(own)
                .min(size(r.page_bytes))
                .max(1),
            answer: (own.max_answer_bytes as usize).min(size(r.answer_bytes)),
        }
    }

    /// UPDATE_REQ: a client needs the whole database, in pages and answers
    /// its announced limits `r` take. Only the master serves it (S3's
    /// client-to-client service is for logs).
    pub(super) fn on_update_req(
        &mut self,
        env: &Envelope,
        r: &RequesterLimits,
    ) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        let now = self.now;
        let max_sites = self.cfg.limits.max_sites as usize;
        let cut = self.cut_for(r);
        let fresh = self.usable_serving().is_none();
        if fresh && !self.take_serving() {
            return Ok(());
        }
        let Some(s) = self.serving.as_mut() else {
            return Ok(());
        };
        s.used_at = now;
        // A client asking again (its UPDATE was lost, or it restarted with
        // other limits) is served in the size it asks for now.
        if let Some(c) = s.clients.iter_mut().find(|(id, _)| *id == env.from) {
            c.1 = cut;
        } else {
            if s.clients.len() >= max_sites && !s.clients.is_empty() {
                let (gone, _) = s.clients.remove(0);
                s.owed.retain(|id| *id != gone);
            }
            s.clients.push((env.from, cut));
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
    /// snapshot's record is durable now, each with the page count in the
    /// page size its client is served.
    pub(super) fn send_updates(&mut self) {
        let Some(s) = self.serving.as_mut() else {
            return;
        };
        if self.flushed < s.lsn || s.owed.is_empty() {
            return;
        }
        let owed = core::mem::take(&mut s.owed);
        let (first, lsn) = (s.first, s.lsn);
        let sends: Vec<(SiteId, u32)> = owed
            .into_iter()
            .filter_map(|id| s.cut_of(id).map(|cut| (id, s.pages(cut.page))))
            .collect();
        for (to, pages) in sends {
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
            self.stats.inits_served += 1;
            self.send(to, Flags::NONE, &msg);
        }
    }

    /// Encode the store and membership as of the last record, with F the
    /// first record of that record's segment. False if the log is empty.
    fn take_serving(&mut self) -> bool {
        // A partial view's store is not the master's (R12): it must never
        // initialise a site (it is never master, so this only guards).
        if self.cfg.is_partial_view() {
            return false;
        }
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
            clients: Vec::new(),
            owed: Vec::new(),
            used_at: self.now,
        });
        true
    }

    /// PAGE_REQ: pages of the served snapshot from `page` on, in the
    /// requester's page size, at most the smaller of `max_answer_bytes`
    /// and its announced answer size of them (at least one), PAGE_MORE
    /// first when more remain. PAGE_FAIL when the
    /// requester's snapshot is gone.
    pub(super) fn on_page_req(&mut self, env: &Envelope, db: &str, page: u32) -> Result<(), Drop> {
        if self.role != Role::Master {
            return Err(Drop::WrongRole);
        }
        if env.generation < self.meta.generation {
            return Err(Drop::Stale);
        }
        let now = self.now;
        let cut = if db == SNAPSHOT_DB {
            self.usable_serving()
                .and_then(|s| s.cut_of(env.from).filter(|c| page < s.pages(c.page)))
        } else {
            None
        };
        let Some(Cut {
            page: size,
            answer: budget,
        }) = cut
        else {
            self.send(env.from, Flags::NONE, &Message::PageFail { db, page });
            return Ok(());
        };
        let Some(s) = self.serving.as_mut() else {
            return Ok(());
        };
        s.used_at = now;
        let pages = s.pages(size);
        let mut end = page;
        let mut bytes = 0usize;
        while end < pages {
            let len = s.page_bytes(size, end).len();
            if end > page && bytes + len > budget {
                break;
            }
            bytes += len;
            end += 1;
        }
        let mut frames = Vec::new();
        if let Some(s) = self.serving.as_ref() {
            for n in page..end {
                let data = s.page_bytes(size, n);
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
