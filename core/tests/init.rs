//! Internal initialisation (S6) and AUTOINIT off (S7) through the Site
//! state machine over an instant test network whose frames a test can
//! watch, lose or forge: a client far behind an archived master takes the
//! master's snapshot in pages (bounded per frame and per answer, PAGE_MORE
//! ahead), re-requests a lost page, starts over on PAGE_FAIL, cleans up an
//! interrupted initialisation when it reopens, and drops bad input with a
//! typed reason; a master serves each client pages of the size it
//! announced (a device under a server master, several sizes from one
//! snapshot, absurd sizes refused). The simulator (shoal-tests) adds
//! crashes of every kind.

mod common;

use common::traced::{self, Traced};
use shoal_core::config::{AckPolicy, Config, Durability, Limits};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Drop, Event, Role, Site, SNAPSHOT_DB};
use shoal_core::wire::{
    decode_frame, encode_frame, DbSummary, DecodeError, Envelope, Flags, Message, MessageKind,
    Page, RequesterLimits, Update,
};
use shoal_core::{Instant, Lsn};
use std::time::Duration;

/// One frame sent: who to whom, its type, and the page numbers it names.
#[derive(Clone, Debug)]
struct Sent {
    from: usize,
    to: usize,
    kind: MessageKind,
    len: usize,
    /// PAGE / PAGE_REQ: its page; PAGE_MORE: its `next`; UPDATE: its
    /// page count.
    page: Option<u32>,
    /// PAGE: its data's length.
    data: usize,
    /// UPDATE: the snapshot's LSN.
    lsn: Option<Lsn>,
    /// The frame whose handling sent it.
    cause: traced::Cause,
}

type Net = Traced<Sent>;

/// Sites over `cfgs`, the group formed, every link up; frames to or from a
/// silenced site are recorded (sent into the void), not delivered.
fn group(cfgs: Vec<Config>) -> Net {
    Traced::group(cfgs, describe, true)
}

/// The record of one frame: its type and the page numbers it names.
fn describe(limits: &Limits, from: usize, to: usize, frame: &[u8], cause: traced::Cause) -> Sent {
    let (_, msg) = decode_frame(frame, limits).expect("every frame sent decodes");
    let lsn = match &msg {
        Message::Update(u) => Some(u.snapshot_lsn),
        _ => None,
    };
    let (page, data) = match &msg {
        Message::Page(p) => (Some(p.page), p.data.len()),
        Message::PageReq { page, .. } => (Some(*page), 0),
        Message::PageMore { next, .. } => (Some(*next), 0),
        Message::Update(u) => (u.databases.first().map(|d| d.pages), 0),
        _ => (None, 0),
    };
    Sent {
        from,
        to,
        kind: msg.kind(),
        len: frame.len(),
        page,
        data,
        lsn,
        cause,
    }
}

impl Net {
    /// Stop delivering to and from site `i` (its connections stay up, as
    /// on a link that went silent).
    fn silence(&mut self, i: usize) {
        self.down.push(i);
    }

    fn commit(&mut self, key: &str, value: &[u8]) {
        let now = self.now;
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value,
        }];
        self.site(0)
            .commit(now, &ops, Durability::Sync)
            .expect("commit");
        self.run(&mut traced::all);
    }

    /// Site `c` stops and the master writes `rounds` rounds of commits,
    /// with a checkpoint after each, until it has archived the start of
    /// its log. The storage of `c` is returned.
    fn fall_far_behind(&mut self, c: usize, rounds: usize) -> MemStorage {
        let storage = self.sites[c].take().expect("up").into_storage();
        self.down.push(c);
        let value = vec![b'v'; 200];
        for round in 0..rounds {
            for k in 0..30 {
                self.commit(&format!("r{round}k{k:03}"), &value);
            }
            self.advance(Duration::from_millis(120), &mut traced::all);
        }
        let first = self.s(0).log_index()[0].lsn;
        assert!(first.file > 2, "the master archived its log ({first:?})");
        storage
    }

    /// Reopen site `c` over `storage` as a client and let it find the
    /// master. Returns the index of the first frame sent after.
    fn restart(&mut self, c: usize, storage: MemStorage) -> usize {
        let now = self.now;
        let mut s =
            Site::open(self.cfgs[c].clone(), &format!("s{c}"), storage, now).expect("reopen");
        s.rep_start_client(now);
        self.sites[c] = Some(s);
        self.down.retain(|&d| d != c);
        let mark = self.sent.len();
        self.links(true);
        mark
    }

    fn count(&self, from: usize, kind: MessageKind) -> usize {
        self.sent
            .iter()
            .filter(|s| s.from == from && s.kind == kind)
            .count()
    }

    fn events_of(&self, i: usize) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// A frame from site `from` as it would send it now.
    fn forge(&self, from: usize, msg: &Message<'_>) -> Vec<u8> {
        let s = self.s(from);
        let env = common::envelope_of(s);
        let mut out = Vec::new();
        encode_frame(&env, msg, &mut out, &self.cfgs[from].limits).expect("encodes");
        out
    }
}

/// Small segments archived soon after each checkpoint; acks are not what
/// these tests look at. The master keeps its role alone.
fn cfg() -> Config {
    let mut c = Config {
        ack_policy: AckPolicy::None,
        step_down_without_majority: false,
        log_retention_segments: Some(0),
        ..Config::default()
    };
    c.limits.max_key = 64;
    c.limits.max_value = 256;
    c.limits.max_record = 4096;
    c.limits.max_frame = 8192;
    c.limits.segment_size = 8192;
    c.limits.max_channel_message = 1024;
    c.limits.max_answer_bytes = 4096;
    c.limits.max_bulk_bytes = 4096;
    c.timeouts.checkpoint_delay = Duration::from_millis(100);
    c.timeouts.heartbeat_send = Duration::from_secs(60);
    c.timeouts.heartbeat_monitor = Duration::from_secs(300);
    c
}

/// Same log tail as the master from the client's first record on, same
/// store, and the client's disk reopens to the same state.
fn assert_initialised(net: &mut Net, c: usize) {
    let m = net.s(0);
    let s = net.s(c);
    assert_eq!(s.last_lsn(), m.last_lsn(), "s{c}'s log ends elsewhere");
    assert_eq!(
        s.store().digest(),
        m.store().digest(),
        "s{c}'s store differs"
    );
    assert_eq!(s.members().len(), m.members().len());
    let first = s.log_index()[0].lsn;
    assert_eq!(
        first.offset, 20,
        "the log starts at a segment's first record"
    );
    let from = m.log_index().partition_point(|e| e.lsn < first);
    assert_eq!(s.log_index(), &m.log_index()[from..], "the logs differ");
    assert!(!s.initializing() && !s.is_synchronizing());
    let events = net.events_of(c);
    let init = events.iter().position(|e| *e == Event::InitDone);
    let started = events.iter().rposition(|e| *e == Event::StartupDone);
    assert_eq!(
        events.iter().filter(|e| **e == Event::InitDone).count(),
        1,
        "INIT_DONE once: {events:?}"
    );
    assert!(init < started, "INIT_DONE before STARTUPDONE: {events:?}");
    assert!(!events.contains(&Event::JoinFailure));
    // The disk holds the snapshot and the log from F: it reopens to the
    // same state.
    let cfg = net.cfgs[c].clone();
    let storage = net.site(c).storage_mut().clone();
    let re = Site::open(cfg, "again", storage, Instant(0)).expect("reopens");
    let s = net.s(c);
    assert_eq!(re.log_index(), s.log_index());
    assert_eq!(re.store().digest(), s.store().digest());
    assert!(!re.initializing());
}

/// S6: a client that was away while the master wrote on and archived the
/// log it would need is sent the whole database, then the log from F, and
/// ends with the master's store and log tail.
#[test]
fn s6_a_client_far_behind_an_archived_master_is_initialised() {
    let mut net = group(vec![cfg(); 3]);
    net.commit("before", b"1");
    let storage = net.fall_far_behind(2, 6);
    let mark = net.restart(2, storage);
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert_initialised(&mut net, 2);
    let after = &net.sent[mark..];
    let count = |kind| after.iter().filter(|s| s.kind == kind).count();
    assert_eq!(count(MessageKind::UpdateReq), 1);
    assert_eq!(count(MessageKind::Update), 1);
    assert!(count(MessageKind::Page) >= 1);
    assert_eq!(count(MessageKind::PageFail), 0);
    let m = net.s(0).stats();
    assert_eq!(m.inits_served, 1);
    assert_eq!(m.pages_sent as usize, count(MessageKind::Page));
    let c = net.s(2).stats();
    assert_eq!((c.inits_installed, c.inits_done), (1, 1));
    assert_eq!(net.s(2).store().get("db", b"before"), Some(&b"1"[..]));
    // It replicates as usual afterwards.
    net.commit("after", b"2");
    assert_eq!(net.s(2).store().get("db", b"after"), Some(&b"2"[..]));
}

/// S6: with a device's small frames the snapshot comes in many pages,
/// none larger than a frame allows, over several answers each announced
/// by PAGE_MORE; no answer carries more than `max_answer_bytes` of pages.
#[test]
fn s6_pages_are_bounded_by_device_limits_and_come_in_several_answers() {
    let mut c = cfg();
    c.limits = Limits {
        segment_size: 8192,
        max_answer_bytes: 3 * 2048,
        max_frame: 2048 + 512,
        max_record: 1024,
        max_value: 256,
        max_channel_message: 512,
        max_bulk_bytes: 1024,
        ..Limits::device()
    };
    let mut net = group(vec![c.clone(); 2]);
    let storage = net.fall_far_behind(1, 6);
    let mark = net.restart(1, storage);
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert_initialised(&mut net, 1);
    let page = shoal_core::wire::max_page_bytes(&c.limits);
    assert_eq!(page, 2048);
    let after = net.sent[mark..].to_vec();
    let pages: Vec<&Sent> = after
        .iter()
        .filter(|s| s.kind == MessageKind::Page)
        .collect();
    assert!(pages.len() >= 6, "{} pages", pages.len());
    for p in &pages {
        assert!(p.len <= c.limits.max_frame as usize);
        assert!(p.data <= page);
    }
    // Every page but the last is full.
    for p in &pages[..pages.len() - 1] {
        assert_eq!(p.data, page);
    }
    let reqs = after
        .iter()
        .filter(|s| s.kind == MessageKind::PageReq)
        .count();
    let mores = after
        .iter()
        .filter(|s| s.kind == MessageKind::PageMore)
        .count();
    assert!(mores >= 2, "{mores} PAGE_MOREs");
    assert_eq!(reqs, mores + 1, "one request per answer");
    // One answer (the pages the network carries between two requests,
    // which it delivers in order): at most max_answer_bytes of pages.
    let mut run = 0usize;
    for s in &after {
        match s.kind {
            MessageKind::Page => {
                run += s.data;
                assert!(run <= c.limits.max_answer_bytes as usize);
            }
            MessageKind::PageReq => run = 0,
            _ => {}
        }
    }
}

/// S6: a page lost on the way leaves a gap; the next page shows it and
/// the client asks again from the missing one.
#[test]
fn s6_a_lost_page_is_re_requested() {
    let mut c = cfg();
    c.limits.max_answer_bytes = 1024;
    let mut net = group(vec![c.clone(); 2]);
    let storage = net.fall_far_behind(1, 4);
    let mark = net.restart(1, storage);
    let mut lost = false;
    let mut lose_page_one = |s: &Sent| {
        if s.kind == MessageKind::Page && s.page == Some(1) && !lost {
            lost = true;
            return false;
        }
        true
    };
    net.advance(Duration::from_millis(500), &mut lose_page_one);
    assert!(lost, "page 1 was sent");
    assert_initialised(&mut net, 1);
    let asked_for_one = net.sent[mark..]
        .iter()
        .filter(|s| s.kind == MessageKind::PageReq && s.page == Some(1))
        .count();
    assert!(asked_for_one >= 2, "page 1 was asked for again");
    let sent_one = net.sent[mark..]
        .iter()
        .filter(|s| s.kind == MessageKind::Page && s.page == Some(1))
        .count();
    assert!(sent_one >= 2, "page 1 was sent again");
}

/// S6: a client whose snapshot the master no longer keeps (its requests
/// were lost for longer than the master keeps an unused snapshot) gets
/// PAGE_FAIL, asks again, and is initialised from a new snapshot.
#[test]
fn s6_page_fail_makes_the_client_start_over() {
    let mut net = group(vec![cfg(); 2]);
    let storage = net.fall_far_behind(1, 4);
    let mark = net.restart(1, storage);
    // Every PAGE_REQ is lost for a while.
    let mut no_page_reqs = |s: &Sent| s.kind != MessageKind::PageReq;
    net.advance(Duration::from_secs(8), &mut no_page_reqs);
    assert!(net.s(1).is_synchronizing());
    assert_eq!(net.count(1, MessageKind::PageFail), 0);
    // The master has dropped the snapshot by now; the client's next
    // request is answered PAGE_FAIL and it starts over.
    net.advance(Duration::from_secs(3), &mut traced::all);
    assert!(net.sent[mark..]
        .iter()
        .any(|s| s.kind == MessageKind::PageFail && s.from == 0));
    let asks = net.sent[mark..]
        .iter()
        .filter(|s| s.kind == MessageKind::UpdateReq)
        .count();
    assert_eq!(asks, 2, "one UPDATE_REQ, and one after PAGE_FAIL");
    assert_eq!(net.s(0).stats().inits_served, 2);
    assert_initialised(&mut net, 1);
}

/// S7: with AUTOINIT off a client with no overlap says JOIN_FAILURE, asks
/// for nothing, and keeps its log and store exactly as they were.
#[test]
fn s7_autoinit_off_reports_join_failure_and_keeps_the_data() {
    let off = Config {
        autoinit: false,
        ..cfg()
    };
    let mut net = group(vec![cfg(), cfg(), off]);
    net.commit("mine", b"1");
    let storage = net.fall_far_behind(2, 6);
    let mark = net.restart(2, storage);
    let (last, digest, index) = (
        net.s(2).last_lsn(),
        net.s(2).store().digest(),
        net.s(2).log_index().to_vec(),
    );
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert!(net.events_of(2).contains(&Event::JoinFailure));
    assert!(!net.events_of(2).contains(&Event::InitDone));
    assert!(!net.sent[mark..]
        .iter()
        .any(|s| s.kind == MessageKind::UpdateReq));
    assert_eq!(net.s(2).last_lsn(), last);
    assert_eq!(net.s(2).store().digest(), digest);
    assert_eq!(net.s(2).log_index(), index.as_slice());
    assert_eq!(net.s(2).store().get("db", b"mine"), Some(&b"1"[..]));
    assert_eq!(net.s(0).stats().inits_served, 0);
    // Its disk still opens to the same state.
    let storage = net.site(2).storage_mut().clone();
    let re = Site::open(net.cfgs[2].clone(), "again", storage, Instant(0)).expect("reopens");
    assert_eq!(re.store().digest(), digest);
}

/// S6: a client that stops after it installed the snapshot but before its
/// log reached the snapshot's record reopens with its log removed and the
/// initialisation flagged; it initialises again and ends consistent. One
/// that stops after the log reached the record reopens as it was.
#[test]
fn s6_an_interrupted_initialisation_is_cleaned_up_on_reopen() {
    let mut net = group(vec![cfg(); 2]);
    let storage = net.fall_far_behind(1, 4);
    net.restart(1, storage);
    // The log from F never comes.
    let mut no_log =
        |s: &Sent| !(s.from == 0 && matches!(s.kind, MessageKind::BulkLog | MessageKind::Log));
    net.advance(Duration::from_millis(300), &mut no_log);
    assert!(net.s(1).initializing(), "installed, the log not yet there");
    assert_eq!(net.s(1).stats().inits_installed, 1);
    assert!(net.s(1).log_index().is_empty());
    let storage = net.sites[1].take().expect("up").into_storage();
    net.down.push(1);
    let re = Site::open(net.cfgs[1].clone(), "s1", storage, net.now).expect("reopens");
    assert!(re.initializing(), "still to be initialised");
    assert!(re.log_index().is_empty(), "the partial log is removed");
    assert!(
        re.members().len() == 2,
        "the group is known from the snapshot"
    );
    let storage = re.into_storage();
    net.restart(1, storage);
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert_initialised(&mut net, 1);
}

/// S6: a site whose store is ahead of its log (initialisation flagged)
/// neither becomes master nor stands for election.
#[test]
fn s6_an_initialising_site_does_not_become_master() {
    let mut net = group(vec![cfg(); 2]);
    let storage = net.fall_far_behind(1, 4);
    net.restart(1, storage);
    let mut no_log =
        |s: &Sent| !(s.from == 0 && matches!(s.kind, MessageKind::BulkLog | MessageKind::Log));
    net.advance(Duration::from_millis(300), &mut no_log);
    assert!(net.s(1).initializing());
    let now = net.now;
    assert!(net.site(1).rep_start_master(now).is_err());
    assert_eq!(net.s(1).role(), Role::Client);
}

/// S6: initialisation messages that do not fit are dropped with a typed
/// reason and change nothing; nothing panics.
#[test]
fn s6_bad_initialisation_messages_are_dropped_with_a_reason() {
    let mut net = group(vec![cfg(); 3]);
    let now = net.now;
    // An UPDATE nobody asked for.
    let update = |first: Lsn, pages: u32, name: &'static str| {
        let mut databases = heapless::Vec::new();
        databases.push(DbSummary { name, pages }).unwrap();
        Message::Update(Update {
            first_lsn: first,
            snapshot_lsn: Lsn::new(3, 20),
            databases,
        })
    };
    let f = net.forge(0, &update(Lsn::new(3, 20), 1, SNAPSHOT_DB));
    assert_eq!(net.site(1).handle_frame(now, &f), Err(Drop::Unexpected));
    let page =
        |db: &'static str, page: u32, data: &'static [u8]| Message::Page(Page { db, page, data });
    let f = net.forge(0, &page(SNAPSHOT_DB, 0, b"x"));
    assert_eq!(net.site(1).handle_frame(now, &f), Err(Drop::Unexpected));
    // Only a master serves initialisations.
    let f = net.forge(
        2,
        &Message::UpdateReq {
            limits: RequesterLimits {
                page_bytes: 4096,
                ..RequesterLimits::of(&Limits::default())
            },
        },
    );
    assert_eq!(net.site(1).handle_frame(now, &f), Err(Drop::WrongRole));
    let f = net.forge(2, &Message::PageReq { db: "", page: 0 });
    assert_eq!(net.site(1).handle_frame(now, &f), Err(Drop::WrongRole));
    // A page request for a snapshot the master never gave the requester.
    let f = net.forge(1, &Message::PageReq { db: "", page: 0 });
    assert_eq!(net.site(0).handle_frame(now, &f), Ok(()));
    net.run(&mut traced::all);
    assert_eq!(net.count(0, MessageKind::PageFail), 1);

    // s2 falls behind and starts an initialisation; its pages are held.
    let storage = net.fall_far_behind(2, 4);
    net.restart(2, storage);
    let mut no_pages = |s: &Sent| s.kind != MessageKind::Page;
    net.advance(Duration::from_millis(50), &mut no_pages);
    assert!(net.s(2).is_synchronizing());
    let now = net.now;
    let before = (net.s(2).last_lsn(), net.s(2).store().digest());
    // Unknown database, page out of range, from a site that is not its
    // master, an UPDATE while taking pages.
    let f = net.forge(0, &page("db", 0, b"x"));
    assert_eq!(net.site(2).handle_frame(now, &f), Err(Drop::BadInit));
    let f = net.forge(0, &page(SNAPSHOT_DB, 1_000_000, b"x"));
    assert_eq!(net.site(2).handle_frame(now, &f), Err(Drop::BadInit));
    let f = net.forge(1, &page(SNAPSHOT_DB, 0, b"x"));
    assert_eq!(net.site(2).handle_frame(now, &f), Err(Drop::Unexpected));
    let f = net.forge(0, &update(Lsn::new(3, 20), 1, SNAPSHOT_DB));
    assert_eq!(net.site(2).handle_frame(now, &f), Err(Drop::Unexpected));
    let f = net.forge(0, &Message::PageMore { db: "db", next: 1 });
    assert_eq!(net.site(2).handle_frame(now, &f), Err(Drop::BadInit));
    // An oversized page is refused when it is decoded.
    let mut big_limits = net.cfgs[0].limits;
    big_limits.max_frame *= 4;
    big_limits.max_answer_bytes *= 4;
    let data = vec![0u8; shoal_core::wire::max_page_bytes(&net.cfgs[0].limits) + 1];
    let s0 = net.s(0);
    let env = common::envelope_of(s0);
    let mut f = Vec::new();
    let msg = Message::Page(Page {
        db: SNAPSHOT_DB,
        page: 0,
        data: &data,
    });
    encode_frame(&env, &msg, &mut f, &big_limits).unwrap();
    assert_eq!(
        net.site(2).handle_frame(now, &f),
        Err(Drop::Malformed(DecodeError::LimitExceeded("page")))
    );
    assert_eq!(
        (net.s(2).last_lsn(), net.s(2).store().digest()),
        before,
        "nothing changed"
    );
    // Pages that do not decode to the announced snapshot: the client
    // starts over with a new UPDATE_REQ rather than install them.
    let asks = net.count(2, MessageKind::UpdateReq);
    let pages = net
        .sent
        .iter()
        .rev()
        .find(|s| s.kind == MessageKind::Update && s.to == 2)
        .and_then(|s| s.page)
        .expect("an UPDATE was sent");
    for p in 0..pages {
        let f = net.forge(0, &page(SNAPSHOT_DB, p, b"not a snapshot"));
        let _ = net.site(2).handle_frame(now, &f);
    }
    net.run(&mut no_pages);
    assert_eq!(net.count(2, MessageKind::UpdateReq), asks + 1);
    assert_eq!(net.s(2).stats().inits_installed, 0);
    assert_eq!(
        (net.s(2).last_lsn(), net.s(2).store().digest()),
        before,
        "nothing installed"
    );
    // Let it finish properly.
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert_initialised(&mut net, 2);
}

/// S6: a site that gave up its log for a snapshot votes only for a
/// candidate whose log reaches the snapshot's record: it held what it
/// acknowledged in the log it gave up, and must not help elect a site that
/// lacks it.
#[test]
fn s6_an_initialising_site_votes_only_for_a_candidate_holding_its_snapshot() {
    use shoal_core::wire::Vote1;
    for (behind, votes) in [(true, false), (false, true)] {
        let mut net = group(vec![cfg(); 3]);
        let storage = net.fall_far_behind(2, 4);
        net.restart(2, storage);
        let mut no_log =
            |s: &Sent| !(s.from == 0 && matches!(s.kind, MessageKind::BulkLog | MessageKind::Log));
        net.advance(Duration::from_millis(300), &mut no_log);
        assert!(net.s(2).initializing());
        // The snapshot reflects the master's log as it was.
        let (gen, last) = {
            let m = net.s(0);
            (m.log_index().last().unwrap().generation, m.last_lsn())
        };
        net.silence(0);
        net.silence(1);
        // s2 loses the master and calls an election; s1 answers, claiming
        // a log behind the snapshot or at it.
        let (now, m) = (net.now, net.s(0).id());
        let mark = net.sent.len();
        net.site(2).handle_connection(now, m, false);
        net.run(&mut traced::all);
        assert!(net.sent[mark..]
            .iter()
            .any(|s| s.from == 2 && s.kind == MessageKind::Vote1));
        let claim = if behind { Lsn::new(1, 20) } else { last };
        let s1 = net.s(1);
        let env = Envelope {
            from: s1.id(),
            generation: s1.generation(),
            egen: net.s(2).egen(),
            lsn: claim,
            flags: Flags::NONE,
        };
        let msg = Message::Vote1(Vote1 {
            data_generation: gen,
            last_lsn: claim,
            priority: 100,
            tiebreaker: 1,
            nsites: 3,
            nvotes: 2,
        });
        let mut f = Vec::new();
        encode_frame(&env, &msg, &mut f, &net.cfgs[1].limits).unwrap();
        let now = net.now;
        let mark = net.sent.len();
        let _ = net.site(2).handle_frame(now, &f);
        net.run(&mut traced::all);
        net.advance(Duration::from_secs(5), &mut traced::all);
        let voted = net.sent[mark..]
            .iter()
            .any(|s| s.from == 2 && s.kind == MessageKind::Vote2);
        assert_eq!(voted, votes, "candidate behind the snapshot: {behind}");
    }
}

// ------------------------------------------- page size per client (S6)

/// A server's limits (`Limits::default()`: frames, pages and bulk log
/// messages of 1 MiB), with segments and records small enough for these
/// tests to archive (a record must fit a segment, a put a record). The
/// log from F travels to a device in bulks cut to the size its LOG_REQ
/// announces (R11), as its pages are (S6).
fn server_limits() -> Limits {
    Limits {
        segment_size: 8192,
        max_record: 4096,
        max_key: 64,
        max_value: 256,
        ..Limits::default()
    }
}

/// A device's limits (`Limits::device()`: 8 KiB frames, so pages of at
/// most 7680 bytes), with the test's segment size and room for the
/// snapshot these tests build.
fn device_limits() -> Limits {
    Limits {
        segment_size: 8192,
        max_init_bytes: 256 << 10,
        ..Limits::device()
    }
}

fn with_limits(limits: Limits) -> Config {
    let mut c = cfg();
    c.limits = limits;
    c.validate().expect("test limits are consistent");
    c
}

/// Each PAGE sent to `to` after `mark`: (page number, data length).
fn pages_to(net: &Net, mark: usize, to: usize) -> Vec<(u32, usize)> {
    net.sent[mark..]
        .iter()
        .filter(|s| s.kind == MessageKind::Page && s.to == to)
        .map(|s| (s.page.unwrap_or(u32::MAX), s.data))
        .collect()
}

/// The UPDATEs sent to `to` after `mark`: (page count, snapshot LSN).
fn updates_to(net: &Net, mark: usize, to: usize) -> Vec<(u32, Lsn)> {
    net.sent[mark..]
        .iter()
        .filter(|s| s.kind == MessageKind::Update && s.to == to)
        .map(|s| (s.page.unwrap_or(0), s.lsn.unwrap_or(Lsn::ZERO)))
        .collect()
}

/// S6: a master with a server's limits initialises a client with a
/// device's much smaller frames. The client's UPDATE_REQ says the pages
/// it takes, and the master cuts its snapshot to that size: before, it
/// sent pages of its own size (1 MiB here), which the device refused
/// forever, re-requesting, never initialised. The master's limits are a
/// server's, bulk size included: the log from F reaches the device in
/// bulks cut to the size its LOG_REQ announces (R11).
#[test]
fn s6_a_device_client_of_a_server_master_is_initialised_in_its_page_size() {
    let (server, device) = (server_limits(), device_limits());
    let small = shoal_core::wire::max_page_bytes(&device);
    assert_eq!(small, 7680);
    assert!(shoal_core::wire::max_page_bytes(&server) >= 100 * small);
    let mut net = group(vec![with_limits(server), with_limits(device)]);
    net.commit("before", b"1");
    let storage = net.fall_far_behind(1, 6);
    // More of the log after the last checkpoint: the records from F the
    // device fetches after the snapshot are more than one of its bulks.
    for k in 0..20 {
        net.commit(&format!("tail{k:02}"), &[b't'; 200]);
    }
    let mark = net.restart(1, storage);
    net.advance(Duration::from_millis(500), &mut traced::all);
    assert_initialised(&mut net, 1);
    assert_eq!(net.s(1).store().get("db", b"before"), Some(&b"1"[..]));
    assert_eq!(
        net.s(1).store().get("db", b"tail19"),
        Some(&[b't'; 200][..])
    );
    let pages = pages_to(&net, mark, 1);
    let updates = updates_to(&net, mark, 1);
    assert_eq!(updates.len(), 1, "one UPDATE: {updates:?}");
    let n = updates[0].0 as usize;
    assert!(n > 1, "a snapshot of several device pages: {n}");
    assert_eq!(pages.len(), n, "every page once, none refused");
    for (i, (p, data)) in pages.iter().enumerate() {
        assert_eq!(*p as usize, i);
        assert!(*data <= small, "page {p} of {data} bytes");
        if i + 1 < n {
            assert_eq!(*data, small, "every page but the last is full");
        }
    }
    assert!(net.sent[mark..]
        .iter()
        .filter(|s| s.to == 1)
        .all(|s| s.len <= device.max_frame as usize));
    // Each answer within the answer size the device's UPDATE_REQ announced
    // (8 KiB, a quarter of its incoming queue: one 7680-byte page), not
    // the master's own 1 MiB (protocol version 6, R13).
    let take = shoal_core::wire::max_answer_take(&device);
    assert_eq!(take, 8192);
    let mut answers = std::collections::BTreeMap::<u64, usize>::new();
    for s in net.sent[mark..]
        .iter()
        .filter(|s| s.to == 1 && s.kind == MessageKind::Page)
    {
        if let Some((1, MessageKind::PageReq, id)) = s.cause {
            *answers.entry(id).or_default() += s.data;
        }
    }
    assert_eq!(answers.len(), n, "one page per answer: {answers:?}");
    assert!(answers.values().all(|&b| b <= take), "{answers:?}");
    // It replicates as usual afterwards.
    net.commit("after", b"2");
    assert_eq!(net.s(1).store().get("db", b"after"), Some(&b"2"[..]));
}

/// S6: three clients with three page sizes (a device's, a smaller one,
/// and one larger than the master's own) fetch the one snapshot the
/// master serves, at the same time: each is told the page count for its
/// size and served pages of min(its size, the master's), and all three
/// end with the master's data.
#[test]
fn s6_clients_with_different_page_sizes_share_one_served_snapshot() {
    // The master's pages: 16 KiB, so the snapshot takes several answers
    // and the three fetches overlap.
    let master = Limits {
        max_answer_bytes: 16 << 10,
        ..server_limits()
    };
    let tiny = Limits {
        max_answer_bytes: 2048,
        ..device_limits()
    };
    let cfgs = vec![
        with_limits(master),
        with_limits(device_limits()),
        with_limits(tiny),
        with_limits(server_limits()),
    ];
    let sizes = [0, 7680, 2048, 16 << 10];
    for (c, size) in cfgs.iter().zip(sizes).skip(1) {
        let own = shoal_core::wire::max_page_bytes(&c.limits);
        assert_eq!(own.min(16 << 10), size);
    }
    let mut net = group(cfgs);
    net.commit("before", b"1");
    let mut stored = Vec::new();
    for c in [2, 3] {
        stored.push((c, net.sites[c].take().expect("up").into_storage()));
        net.down.push(c);
    }
    let s1 = net.fall_far_behind(1, 8);
    let mark = net.sent.len();
    net.restart(1, s1);
    for (c, storage) in stored {
        net.restart(c, storage);
    }
    net.advance(Duration::from_millis(800), &mut traced::all);
    let mut spans = Vec::new();
    let mut total = None;
    for (c, &size) in sizes.iter().enumerate().skip(1) {
        assert_initialised(&mut net, c);
        assert_eq!(net.s(c).store().get("db", b"before"), Some(&b"1"[..]));
        let updates = updates_to(&net, mark, c);
        assert_eq!(updates.len(), 1, "s{c}: {updates:?}");
        let (n, lsn) = updates[0];
        let pages = pages_to(&net, mark, c);
        assert_eq!(pages.len(), n as usize, "s{c}: each page once");
        for (i, (p, data)) in pages.iter().enumerate() {
            assert_eq!(*p as usize, i, "s{c}");
            assert!(*data <= size, "s{c}: page {p} of {data} bytes");
            if i + 1 < pages.len() {
                assert_eq!(*data, size, "s{c}: page {p} is full");
            }
        }
        // The same snapshot, cut three ways.
        let bytes: usize = pages.iter().map(|(_, d)| d).sum();
        assert_eq!(*total.get_or_insert((bytes, lsn)), (bytes, lsn), "s{c}");
        assert_eq!(n as usize, bytes.div_ceil(size), "s{c}'s page count");
        let at = |s: &Sent| s.kind == MessageKind::Page && s.to == c;
        let first = net.sent[mark..].iter().position(at).expect("pages");
        let last = net.sent[mark..].iter().rposition(at).expect("pages");
        spans.push((first, last));
    }
    // The fetches overlapped.
    assert!(
        spans.iter().all(|(f, _)| spans.iter().all(|(_, l)| f < l)),
        "every fetch began before every other ended: {spans:?}"
    );
    assert_eq!(net.s(0).stats().inits_served, 3);
}

/// S6: an UPDATE_REQ announcing pages below `MIN_PAGE_BYTES` (0, 1, 63:
/// absurd, or a division by zero) is refused with a typed reason when it
/// is decoded; the master answers nothing and serves no snapshot. One
/// announcing more than any frame holds is served the master's own size.
/// The smallest page a valid site announces (64 bytes: `max_answer_bytes`
/// at its minimum) initialises it, in many small pages.
#[test]
fn s6_absurd_page_sizes_are_refused_or_clamped_without_panic() {
    use shoal_core::wire::{DecodeError, MIN_PAGE_BYTES, PROTOCOL_VERSION};
    let mut net = group(vec![cfg(); 2]);
    net.commit("before", b"1");
    let now = net.now;
    let s1 = net.s(1);
    let env = common::envelope_of(s1);
    // Built by hand, as a hostile peer could: the encoder refuses them.
    for page_bytes in [0, 1, MIN_PAGE_BYTES - 1] {
        let msg = Message::UpdateReq {
            limits: RequesterLimits {
                page_bytes,
                ..RequesterLimits::of(&Limits::default())
            },
        };
        let mut f = PROTOCOL_VERSION.to_le_bytes().to_vec();
        f = postcard::to_extend(&env, f).unwrap();
        f = postcard::to_extend(&msg, f).unwrap();
        let mut out = Vec::new();
        assert!(encode_frame(&env, &msg, &mut out, &net.cfgs[1].limits).is_err());
        let mark = net.sent.len();
        assert_eq!(
            net.site(0).handle_frame(now, &f),
            Err(Drop::Malformed(DecodeError::BelowMinimum("page size"))),
            "{page_bytes}"
        );
        net.run(&mut traced::all);
        assert!(
            !net.sent[mark..]
                .iter()
                .any(|s| s.from == 0 && matches!(s.kind, MessageKind::Update | MessageKind::Page)),
            "nothing served for {page_bytes}"
        );
    }
    assert_eq!(net.s(0).stats().inits_served, 0);
    // The largest announcement: the master's own page size is used.
    let mark = net.sent.len();
    let f = net.forge(
        1,
        &Message::UpdateReq {
            limits: RequesterLimits {
                answer_bytes: u32::MAX,
                bulk_bytes: u32::MAX,
                record_bytes: u32::MAX,
                page_bytes: u32::MAX,
                max_key: u32::MAX,
                max_value: u32::MAX,
                max_txn_ops: u32::MAX,
            },
        },
    );
    assert_eq!(net.site(0).handle_frame(now, &f), Ok(()));
    let f = net.forge(
        1,
        &Message::PageReq {
            db: SNAPSHOT_DB,
            page: 0,
        },
    );
    assert_eq!(net.site(0).handle_frame(now, &f), Ok(()));
    let mut only_master = |s: &Sent| s.from != 0;
    net.run(&mut only_master);
    let own = shoal_core::wire::max_page_bytes(&net.cfgs[0].limits);
    let pages = pages_to(&net, mark, 1);
    assert!(!pages.is_empty());
    assert!(pages.iter().all(|(_, d)| *d <= own));
    assert_eq!(net.s(0).stats().inits_served, 1);

    // A client at the smallest valid size is initialised in 64-byte
    // pages: many, each answer still bounded by the master's cap.
    let mut net = group(vec![
        cfg(),
        with_limits(Limits {
            max_answer_bytes: MIN_PAGE_BYTES,
            ..cfg().limits
        }),
    ]);
    let storage = net.fall_far_behind(1, 4);
    let mark = net.restart(1, storage);
    net.advance(Duration::from_secs(2), &mut traced::all);
    assert_initialised(&mut net, 1);
    let pages = pages_to(&net, mark, 1);
    let n = updates_to(&net, mark, 1)[0].0 as usize;
    assert!(n > 100, "{n} pages");
    assert!(pages.iter().all(|(_, d)| *d <= MIN_PAGE_BYTES as usize));
}
