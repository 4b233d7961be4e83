//! A small instant, lossless test network for driving sites directly.
//! Cuts drop frames both ways and report broken connections, as a host
//! would. (The deterministic simulator with latency, loss and disks lives
//! in shoal-tests.)
#![allow(dead_code)]

pub mod traced;

use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Answer, CommitOutcome, Dest, Event, Incoming, Output, Site};
use shoal_core::{Instant, SiteId};
use std::collections::VecDeque;
use std::time::Duration;

/// The envelope site `s` would put on a frame now, for tests that hand a
/// peer a message built by hand (as a hostile or odd peer could).
pub fn envelope_of(s: &Site<MemStorage>) -> shoal_core::wire::Envelope {
    shoal_core::wire::Envelope {
        from: s.id(),
        generation: s.generation(),
        egen: s.egen(),
        lsn: s.last_lsn(),
        flags: shoal_core::wire::Flags::NONE,
    }
}

pub struct Net {
    pub sites: Vec<Option<Site<MemStorage>>>,
    pub disks: Vec<Option<MemStorage>>,
    pub cfgs: Vec<Config>,
    pub now: Instant,
    pub answers: Vec<(usize, Answer)>,
    pub events: Vec<(usize, Event)>,
    /// Channel messages handed to each site's dispatch (W2).
    pub messages: Vec<(usize, Incoming)>,
    /// Pairs of site indexes that cannot talk.
    pub cut: Vec<(usize, usize)>,
    /// (from, to): frames dropped silently, the connection still up.
    pub silent: Vec<(usize, usize)>,
}

impl Net {
    pub fn new(cfgs: Vec<Config>) -> Net {
        let sites = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Some(
                    Site::open(
                        c.clone(),
                        &format!("s{i}"),
                        MemStorage::new(64 << 20),
                        Instant(0),
                    )
                    .expect("open"),
                )
            })
            .collect();
        let n = cfgs.len();
        Net {
            sites,
            disks: (0..n).map(|_| None).collect(),
            cfgs,
            now: Instant(0),
            answers: vec![],
            events: vec![],
            messages: vec![],
            cut: vec![],
            silent: vec![],
        }
    }

    pub fn site(&self, i: usize) -> &Site<MemStorage> {
        self.sites[i].as_ref().expect("site is up")
    }

    pub fn site_mut(&mut self, i: usize) -> &mut Site<MemStorage> {
        self.sites[i].as_mut().expect("site is up")
    }

    fn target(&self, d: &Dest) -> Option<usize> {
        self.sites.iter().position(|s| match (s, d) {
            (Some(s), Dest::Site(id)) => s.id() == *id,
            (Some(s), Dest::Address(a)) => s.address() == a,
            (None, _) => false,
        })
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a, b)) || self.cut.contains(&(b, a))
    }

    /// Deliver everything until quiet.
    pub fn run(&mut self) {
        let mut q: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
        for _round in 0..100_000 {
            let mut progressed = false;
            for i in 0..self.sites.len() {
                while let Some(o) = self.sites[i].as_mut().and_then(|s| s.poll_output()) {
                    progressed = true;
                    match o {
                        Output::Send { to, frame, .. } => {
                            if let Some(t) = self.target(&to) {
                                if !self.is_cut(i, t) && !self.silent.contains(&(i, t)) {
                                    q.push_back((t, frame));
                                }
                            }
                        }
                        Output::Flush { lsn } => {
                            let now = self.now;
                            self.site_mut(i).handle_flushed(now, lsn)
                        }
                        Output::Event(e) => self.events.push((i, e)),
                        Output::Answer(a) => self.answers.push((i, a)),
                        Output::Message(m) => self.messages.push((i, m)),
                    }
                }
            }
            while let Some((t, f)) = q.pop_front() {
                progressed = true;
                if _round > 99_990 {
                    if let Ok((env, msg)) =
                        shoal_core::wire::decode_frame(&f, &shoal_core::config::Limits::default())
                    {
                        eprintln!(
                            "loop: {:?} -> s{} {:?} egen {:?} gen {:?}",
                            env.from,
                            t,
                            msg.kind(),
                            env.egen,
                            env.generation
                        );
                    }
                }
                let now = self.now;
                if let Some(s) = self.sites[t].as_mut() {
                    let _ = s.handle_frame(now, &f);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .sites
                .iter()
                .flatten()
                .filter_map(|s| s.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for s in self.sites.iter_mut().flatten() {
                        s.handle_timeout(now);
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Site 0 creates the group, the others join through site 0.
    pub fn group(cfgs: Vec<Config>) -> Net {
        let n = cfgs.len();
        let mut net = Net::new(cfgs);
        net.site_mut(0).create_group(Instant(0)).unwrap();
        net.run();
        for i in 1..n {
            let now = net.now;
            net.site_mut(i).join(now, "s0");
            net.run();
        }
        net.connect_all();
        net.advance(Duration::from_millis(100));
        net
    }

    fn id_of(&self, i: usize) -> Option<SiteId> {
        self.sites[i].as_ref().map(|s| s.id())
    }

    fn set_link(&mut self, a: usize, b: usize, up: bool) {
        let now = self.now;
        if let (Some(ida), Some(idb)) = (self.id_of(a), self.id_of(b)) {
            if let Some(s) = self.sites[a].as_mut() {
                s.handle_connection(now, idb, up);
            }
            if let Some(s) = self.sites[b].as_mut() {
                s.handle_connection(now, ida, up);
            }
        }
    }

    pub fn connect_all(&mut self) {
        let n = self.sites.len();
        for a in 0..n {
            for b in a + 1..n {
                if !self.is_cut(a, b) {
                    self.set_link(a, b, true);
                }
            }
        }
        self.run();
    }

    /// Cut every link between the two sides.
    pub fn partition(&mut self, side: &[usize]) {
        let n = self.sites.len();
        for &a in side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                if !self.is_cut(a, b) {
                    self.cut.push((a, b));
                    self.set_link(a, b, false);
                }
            }
        }
        self.run();
    }

    /// Restore one cut link.
    pub fn reconnect(&mut self, a: usize, b: usize) {
        self.cut
            .retain(|&(x, y)| !((x, y) == (a, b) || (x, y) == (b, a)));
        self.set_link(a, b, true);
        self.run();
    }

    pub fn heal(&mut self) {
        let cut = std::mem::take(&mut self.cut);
        for (a, b) in cut {
            self.set_link(a, b, true);
        }
        self.run();
    }

    /// The site stops (its storage survives, as after a clean power cut of
    /// a MemStorage that syncs everything).
    pub fn crash(&mut self, i: usize) {
        let n = self.sites.len();
        let site = self.sites[i].take().expect("up");
        let id = site.id();
        self.disks[i] = Some(site.into_storage());
        let now = self.now;
        for b in (0..n).filter(|&b| b != i) {
            if let Some(s) = self.sites[b].as_mut() {
                s.handle_connection(now, id, false);
            }
        }
        self.run();
    }

    /// Reopen a crashed site from its storage as a client.
    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, |_| {});
    }

    /// Reopen a crashed site, set it up with `f` (as a host would after
    /// opening it), and start it as a client.
    pub fn restart_with(&mut self, i: usize, f: impl FnOnce(&mut Site<MemStorage>)) {
        let disk = self.disks[i].take().expect("crashed");
        let now = self.now;
        let mut s = Site::open(self.cfgs[i].clone(), &format!("s{i}"), disk, now).expect("reopen");
        f(&mut s);
        s.rep_start_client(now);
        self.sites[i] = Some(s);
        let n = self.sites.len();
        for b in (0..n).filter(|&b| b != i) {
            if self.sites[b].is_some() && !self.is_cut(i, b) {
                self.set_link(i, b, true);
            }
        }
        self.run();
    }

    pub fn masters(&self) -> Vec<usize> {
        (0..self.sites.len())
            .filter(|&i| {
                self.sites[i]
                    .as_ref()
                    .is_some_and(|s| s.role() == shoal_core::site::Role::Master)
            })
            .collect()
    }

    pub fn try_commit(
        &mut self,
        i: usize,
        key: &str,
        value: &str,
        d: Duration,
    ) -> Option<CommitOutcome> {
        let now = self.now;
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: value.as_bytes(),
        }];
        let id = self.site_mut(i).commit(now, &ops, Durability::Sync).ok()?;
        self.run();
        self.advance(d);
        let pos = self
            .answers
            .iter()
            .position(|(s, a)| *s == i && matches!(a, Answer::Commit { id: x, .. } if *x == id))?;
        match self.answers.remove(pos).1 {
            Answer::Commit { result, .. } => result.ok(),
            _ => None,
        }
    }

    pub fn commit(&mut self, i: usize, key: &str, value: &str) -> CommitOutcome {
        self.try_commit(i, key, value, Duration::from_millis(1))
            .expect("commit answered")
    }

    pub fn events_of(&self, i: usize) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, e)| e.clone())
            .collect()
    }
}
