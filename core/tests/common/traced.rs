//! An instant test network whose frames a test can watch and lose: each
//! frame sent is described by the test's own `describe` and kept in
//! `sent`, and `run` / `advance` take a filter that returns false to lose
//! it. Frames are delivered one at a time, in order; each description
//! names the frame whose handling caused it. (`Net` in `mod.rs` is the
//! plain network.)

use shoal_core::config::{Config, Limits};
use shoal_core::mem::MemStorage;
use shoal_core::site::{Dest, Event, Output, Site};
use shoal_core::wire::{decode_frame, MessageKind};
use shoal_core::{Instant, Lsn};
use std::collections::VecDeque;
use std::time::Duration;

/// The frame whose handling sent a frame: (sender, its type, its number
/// in handling order). None: a timeout or an application call.
pub type Cause = Option<(usize, MessageKind, u64)>;

/// Turns a frame sent from `from` to `to` into the test's record of it.
pub type Describe<R> = fn(&Limits, usize, usize, &[u8], Cause) -> R;

/// Decides whether a frame is delivered (false: lost).
pub type Filter<'a, R> = &'a mut dyn FnMut(&R) -> bool;

/// Delivers every frame.
pub fn all<R>(_: &R) -> bool {
    true
}

pub struct Traced<R> {
    pub sites: Vec<Option<Site<MemStorage>>>,
    pub cfgs: Vec<Config>,
    pub now: Instant,
    /// Every frame sent, described.
    pub sent: Vec<R>,
    pub events: Vec<(usize, Event)>,
    /// Every flush asked for: (site, LSN); each completes at once.
    pub flushes: Vec<(usize, Lsn)>,
    /// Sites cut off: nothing is delivered to or from them.
    pub down: Vec<usize>,
    /// Frames handled so far (numbers a cause).
    pub handled: u64,
    describe: Describe<R>,
    /// Frames to or from a cut-off site are described and kept too.
    keep_undelivered: bool,
}

impl<R> Traced<R> {
    /// Sites s0, s1, ... over `cfgs`: s0 creates the group, the others
    /// join through it, every link is up and 100 ms have passed.
    pub fn group(cfgs: Vec<Config>, describe: Describe<R>, keep_undelivered: bool) -> Self {
        let sites = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Some(
                    Site::open(
                        c.clone(),
                        &format!("s{i}"),
                        MemStorage::new(1 << 30),
                        Instant(0),
                    )
                    .expect("open"),
                )
            })
            .collect();
        let mut net = Traced {
            sites,
            cfgs,
            now: Instant(0),
            sent: vec![],
            events: vec![],
            flushes: vec![],
            down: vec![],
            handled: 0,
            describe,
            keep_undelivered,
        };
        net.site(0).create_group(Instant(0)).unwrap();
        net.run(&mut all);
        for i in 1..net.sites.len() {
            let now = net.now;
            net.site(i).join(now, "s0");
            net.run(&mut all);
        }
        net.links(true);
        net.advance(Duration::from_millis(100), &mut all);
        net
    }

    pub fn site(&mut self, i: usize) -> &mut Site<MemStorage> {
        self.sites[i].as_mut().expect("up")
    }

    pub fn s(&self, i: usize) -> &Site<MemStorage> {
        self.sites[i].as_ref().expect("up")
    }

    /// Tell every pair of sites that are not cut off that their link is up
    /// (or down).
    pub fn links(&mut self, up: bool) {
        let now = self.now;
        let ids: Vec<_> = self
            .sites
            .iter()
            .map(|s| s.as_ref().map(|s| s.id()))
            .collect();
        for a in 0..self.sites.len() {
            for (b, id) in ids.iter().enumerate() {
                if a == b || self.down.contains(&a) || self.down.contains(&b) {
                    continue;
                }
                if let (Some(s), Some(id)) = (self.sites[a].as_mut(), *id) {
                    s.handle_connection(now, id, up);
                }
            }
        }
    }

    fn target(&self, d: &Dest) -> Option<usize> {
        self.sites.iter().position(|s| match (s, d) {
            (Some(s), Dest::Site(id)) => s.id() == *id,
            (Some(s), Dest::Address(a)) => s.address() == a,
            _ => false,
        })
    }

    /// Take site `i`'s outputs: frames described and queued, flushes
    /// completed, events kept.
    fn collect(
        &mut self,
        i: usize,
        cause: Cause,
        q: &mut VecDeque<(usize, usize, Vec<u8>)>,
        keep: Filter<'_, R>,
    ) {
        while let Some(o) = self.sites[i].as_mut().and_then(|s| s.poll_output()) {
            match o {
                Output::Send { to, frame, .. } => {
                    let Some(t) = self.target(&to) else { continue };
                    let cut = self.down.contains(&t) || self.down.contains(&i);
                    if cut && !self.keep_undelivered {
                        continue;
                    }
                    let s = (self.describe)(&self.cfgs[i].limits, i, t, &frame, cause);
                    let pass = !cut && keep(&s);
                    self.sent.push(s);
                    if pass {
                        q.push_back((i, t, frame));
                    }
                }
                Output::Flush { lsn } => {
                    self.flushes.push((i, lsn));
                    let now = self.now;
                    self.site(i).handle_flushed(now, lsn);
                }
                Output::Event(e) => self.events.push((i, e)),
                Output::Answer(_) | Output::Message(_) => {}
            }
        }
    }

    /// Deliver every frame, one at a time, until quiet. `keep` sees each
    /// frame sent and returns false to lose it.
    pub fn run(&mut self, keep: Filter<'_, R>) {
        let mut q = VecDeque::new();
        for i in 0..self.sites.len() {
            self.collect(i, None, &mut q, keep);
        }
        while let Some((from, to, frame)) = q.pop_front() {
            let now = self.now;
            let kind = decode_frame(&frame, &self.cfgs[from].limits)
                .expect("every frame sent decodes")
                .1
                .kind();
            self.handled += 1;
            let id = self.handled;
            if let Some(s) = self.sites[to].as_mut() {
                let _ = s.handle_frame(now, &frame);
            }
            self.collect(to, Some((from, kind, id)), &mut q, keep);
            for i in 0..self.sites.len() {
                self.collect(i, None, &mut q, keep);
            }
        }
    }

    /// Let `d` pass, firing every deadline on the way and delivering what
    /// it sends.
    pub fn advance(&mut self, d: Duration, keep: Filter<'_, R>) {
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
                    self.run(keep);
                }
                _ => break,
            }
        }
        self.now = end;
    }
}
