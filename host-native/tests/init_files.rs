//! Internal initialisation (S6) over real files: a client whose log has no
//! overlap with its master's is stopped after each step of its
//! initialisation, as a killed process leaves its files (appends not yet
//! written out are lost, the metadata and snapshot files are replaced
//! atomically). Each time, the files left behind open consistently, and
//! the client finishes with the master's store.

use shoal_core::config::{AckPolicy, Config, Durability};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Dest, Event, Output, Site};
use shoal_core::traits::Storage;
use shoal_core::Instant;
use shoal_native::storage::FileStorage;
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

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
    c.limits.max_answer_bytes = 2048;
    c.limits.max_bulk_bytes = 2048;
    c.timeouts.checkpoint_delay = Duration::from_millis(100);
    c.timeouts.heartbeat_send = Duration::from_secs(600);
    c.timeouts.heartbeat_monitor = Duration::from_secs(3000);
    c
}

/// A master in memory and a client over files, and the frames between.
struct Pair {
    m: Site<MemStorage>,
    c: Option<Site<FileStorage>>,
    now: Instant,
    /// (to the client?, frame)
    q: VecDeque<(bool, Vec<u8>)>,
    /// Inputs the client has handled (frames and timeouts).
    steps: usize,
    client_events: Vec<Event>,
}

impl Pair {
    fn outputs(&mut self) {
        let now = self.now;
        while let Some(o) = self.m.poll_output() {
            match o {
                Output::Send { to, frame, .. } => {
                    let to_client = match &to {
                        Dest::Site(id) => self.c.as_ref().is_some_and(|c| c.id() == *id),
                        Dest::Address(a) => a == "c",
                    };
                    if to_client {
                        self.q.push_back((true, frame));
                    }
                }
                Output::Flush { lsn } => self.m.handle_flushed(now, lsn),
                _ => {}
            }
        }
        while let Some(o) = self.c.as_mut().and_then(|c| c.poll_output()) {
            match o {
                Output::Send { .. } => {
                    if let Output::Send { frame, .. } = o {
                        self.q.push_back((false, frame));
                    }
                }
                Output::Flush { lsn } => {
                    let c = self.c.as_mut().expect("up");
                    c.storage_mut().sync().expect("sync");
                    c.handle_flushed(now, lsn);
                }
                Output::Event(e) => self.client_events.push(e),
                Output::Answer(_) | Output::Message(_) => {}
            }
        }
    }

    /// Deliver until quiet, or until the client has handled `stop` inputs
    /// (then true).
    fn run(&mut self, stop: Option<usize>) -> bool {
        self.outputs();
        while let Some((to_client, frame)) = self.q.pop_front() {
            let now = self.now;
            if to_client {
                let Some(c) = self.c.as_mut() else { continue };
                let _ = c.handle_frame(now, &frame);
                self.steps += 1;
            } else {
                let _ = self.m.handle_frame(now, &frame);
            }
            self.outputs();
            if stop.is_some_and(|s| self.steps >= s) {
                return true;
            }
        }
        false
    }

    fn advance(&mut self, d: Duration, stop: Option<usize>) -> bool {
        let end = self.now + d;
        loop {
            let next = [
                self.m.poll_timeout(),
                self.c.as_ref().and_then(|c| c.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.m.handle_timeout(now);
                    if let Some(c) = self.c.as_mut() {
                        c.handle_timeout(now);
                        self.steps += 1;
                    }
                    if self.run(stop) || stop.is_some_and(|s| self.steps >= s) {
                        return true;
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        false
    }

    fn commit(&mut self, key: &str) {
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: &[b'v'; 200],
        }];
        let now = self.now;
        self.m.commit(now, &ops, Durability::Sync).expect("commit");
        self.run(None);
    }

    /// Open the client over `home` and connect it (nothing delivered yet).
    fn start_client(&mut self, home: &Path) {
        let storage = FileStorage::open(home).expect("the files open");
        let c = Site::open(cfg(), "c", storage, self.now).expect("the site opens");
        self.c = Some(c);
        let now = self.now;
        let (mid, cid) = (self.m.id(), self.c.as_ref().map(|c| c.id()).unwrap());
        let c = self.c.as_mut().unwrap();
        c.join(now, "m");
        if cid.0 != 0 {
            c.handle_connection(now, mid, true);
            self.m.handle_connection(now, cid, true);
        }
    }

    /// The client process dies: its files stay as they are.
    fn kill_client(&mut self) {
        let now = self.now;
        if let Some(c) = self.c.take() {
            self.m.handle_connection(now, c.id(), false);
        }
        self.q.clear();
        self.run(None);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with("LOCK") || e.path().is_dir() {
            continue;
        }
        std::fs::copy(e.path(), to.join(name)).unwrap();
    }
}

/// S6: stopped after any step of its initialisation, a client over files
/// reopens to a consistent state and finishes.
#[test]
fn s6_a_client_over_files_stopped_at_any_step_of_its_initialisation_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("client");
    let m = Site::open(cfg(), "m", MemStorage::new(1 << 30), Instant(0)).unwrap();
    let mut p = Pair {
        m,
        c: None,
        now: Instant(0),
        q: VecDeque::new(),
        steps: 0,
        client_events: vec![],
    };
    p.m.create_group(Instant(0)).unwrap();
    p.run(None);
    p.start_client(&home);
    p.run(None);
    p.advance(Duration::from_millis(100), None);
    let (mid, cid) = (p.m.id(), p.c.as_ref().unwrap().id());
    assert_ne!(cid.0, 0, "the client joined");
    let now = p.now;
    p.c.as_mut().unwrap().handle_connection(now, mid, true);
    p.m.handle_connection(now, cid, true);
    p.commit("early");
    p.advance(Duration::from_millis(100), None);
    assert_eq!(p.c.as_ref().unwrap().last_lsn(), p.m.last_lsn());
    p.c.as_mut().unwrap().storage_mut().sync().unwrap();
    p.kill_client();
    // The master writes on and archives what the client would need.
    for round in 0..5 {
        for k in 0..30 {
            p.commit(&format!("r{round}k{k:02}"));
        }
        p.advance(Duration::from_millis(150), None);
    }
    assert!(p.m.log_index()[0].lsn.file > 2, "the master archived");
    let base = dir.path().join("base");
    copy_dir(&home, &base);

    // A whole initialisation, counting the client's steps.
    let full = dir.path().join("full");
    copy_dir(&base, &full);
    p.steps = 0;
    p.client_events.clear();
    p.start_client(&full);
    p.run(None);
    p.advance(Duration::from_secs(2), None);
    assert!(p.client_events.contains(&Event::InitDone));
    assert_eq!(p.c.as_ref().unwrap().store().digest(), p.m.store().digest());
    let total = p.steps;
    assert!(total > 5, "{total} steps");
    p.kill_client();

    // Stopped after each step in turn, then reopened from its files.
    let digest = p.m.store().digest();
    let mut interrupted = 0;
    for stop in 1..total {
        let home = dir.path().join(format!("stop{stop}"));
        copy_dir(&base, &home);
        p.steps = 0;
        p.client_events.clear();
        p.start_client(&home);
        if !p.run(Some(stop)) && !p.advance(Duration::from_secs(2), Some(stop)) {
            // Done before this many steps (timing of the master's answers).
            p.kill_client();
            continue;
        }
        if p.c.as_ref().unwrap().initializing() {
            interrupted += 1;
        }
        p.kill_client();
        // The files left behind open, and the client finishes.
        p.start_client(&home);
        p.run(None);
        p.advance(Duration::from_secs(3), None);
        let c = p.c.as_ref().unwrap();
        assert!(!c.initializing(), "stopped after step {stop}");
        assert_eq!(c.store().digest(), digest, "stopped after step {stop}");
        assert_eq!(c.last_lsn(), p.m.last_lsn(), "stopped after step {stop}");
        p.kill_client();
        std::fs::remove_dir_all(&home).unwrap();
    }
    assert!(
        interrupted > 0,
        "some stops came with the snapshot installed"
    );
}
