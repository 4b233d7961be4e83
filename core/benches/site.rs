//! Commits per second through the replication state machine (issue 3):
//! a 3-site group under QUORUM, in-process, over an instant network with
//! in-memory storage whose flush completes at once. One writer commits and
//! waits for its answer; 64 writers each have a commit in flight, so one
//! flush and one ack serve many commits (group commit).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Answer, Dest, Output, Site};
use shoal_core::Instant;
use std::collections::VecDeque;
use std::hint::black_box;

struct Group {
    sites: Vec<Site<MemStorage>>,
    q: VecDeque<(usize, Vec<u8>)>,
    flushes: Vec<(usize, shoal_core::Lsn)>,
    answered: usize,
}

impl Group {
    fn new() -> Group {
        // Keep the log from being archived mid-measurement.
        let mut cfg = Config {
            log_retention_segments: None,
            ..Config::default()
        };
        cfg.timeouts.checkpoint_delay = std::time::Duration::from_secs(3600);
        let sites = (0..3)
            .map(|i| {
                Site::open(
                    cfg.clone(),
                    &format!("s{i}"),
                    MemStorage::new(1 << 30),
                    Instant(0),
                )
                .unwrap()
            })
            .collect();
        let mut g = Group {
            sites,
            q: VecDeque::new(),
            flushes: vec![],
            answered: 0,
        };
        g.sites[0].create_group(Instant(0)).unwrap();
        g.run();
        for i in 1..3 {
            g.sites[i].join(Instant(0), "s0");
            g.run();
        }
        g
    }

    fn run(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.sites.len() {
                while let Some(o) = self.sites[i].poll_output() {
                    busy = true;
                    match o {
                        Output::Send { to, frame, .. } => {
                            let t = match &to {
                                Dest::Site(id) => self.sites.iter().position(|s| s.id() == *id),
                                Dest::Address(a) => {
                                    self.sites.iter().position(|s| s.address() == a)
                                }
                            };
                            if let Some(t) = t {
                                self.q.push_back((t, frame));
                            }
                        }
                        // Flushes are completed after the current messages
                        // are handled, as a host's fsync would be.
                        Output::Flush { lsn } => self.flushes.push((i, lsn)),
                        Output::Answer(Answer::Commit { .. }) => self.answered += 1,
                        _ => {}
                    }
                }
            }
            while let Some((t, f)) = self.q.pop_front() {
                busy = true;
                let _ = self.sites[t].handle_frame(Instant(1), &f);
            }
            for (i, lsn) in std::mem::take(&mut self.flushes) {
                busy = true;
                self.sites[i].handle_flushed(Instant(1), lsn);
            }
            if !busy {
                return;
            }
        }
    }

    fn commits(&mut self, writers: usize, n: usize, key: &mut u64) {
        let value = [7u8; 100];
        let mut left = n;
        while left > 0 {
            let batch = writers.min(left);
            let target = self.answered + batch;
            for _ in 0..batch {
                *key += 1;
                let k = format!("{:016}", *key);
                let ops = [Op::Put {
                    db: "bench",
                    key: k.as_bytes(),
                    value: &value,
                }];
                self.sites[0]
                    .commit(Instant(1), &ops, Durability::Sync)
                    .unwrap();
            }
            self.run();
            assert_eq!(self.answered, target, "every commit answered");
            left -= batch;
        }
    }
}

fn commits(c: &mut Criterion) {
    let mut group = c.benchmark_group("commits_3_sites_quorum");
    for writers in [1usize, 64] {
        let n = 2048;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{writers}_writers"), |b| {
            b.iter_batched(
                Group::new,
                |mut g| {
                    let mut key = 0;
                    g.commits(writers, n, &mut key);
                    black_box(g.answered)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(10));
    targets = commits
}
criterion_main!(benches);
