//! Catch-up records per second through the replication state machine
//! (issue 5): a master holding `N` commits the client lacks (16-byte keys,
//! 100-byte values, one put each) and a client restarted from its old log,
//! in-process over an instant network with in-memory storage whose flush
//! completes at once. Timed: from the client's restart (both sites opened
//! and the master started beforehand) until the client's last LSN is the
//! master's. Both sites run on the one measuring thread, so the figure is
//! the CPU cost of master and client together, with no overlap between
//! them (a real group runs them in parallel).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Dest, Output, Site};
use shoal_core::{Instant, Lsn};
use std::collections::VecDeque;
use std::hint::black_box;

const N: usize = 100_000;

fn config() -> Config {
    let mut cfg = Config {
        log_retention_segments: None,
        ..Config::default()
    };
    cfg.timeouts.checkpoint_delay = std::time::Duration::from_secs(3600);
    cfg
}

/// Deliver every output between `sites` until quiet; sites in `down` get
/// nothing. Flushes complete after the frames of a round, as a host's
/// fsync at the end of a step.
fn run(
    sites: &mut [Option<Site<MemStorage>>],
    now: Instant,
    stop: impl Fn(&[Option<Site<MemStorage>>]) -> bool,
) {
    let mut q: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let mut flushes: Vec<(usize, Lsn)> = Vec::new();
    loop {
        let mut busy = false;
        for i in 0..sites.len() {
            while let Some(o) = sites[i].as_mut().and_then(|s| s.poll_output()) {
                busy = true;
                match o {
                    Output::Send { to, frame, .. } => {
                        let t = sites.iter().position(|s| match (s, &to) {
                            (Some(s), Dest::Site(id)) => s.id() == *id,
                            (Some(s), Dest::Address(a)) => s.address() == a,
                            _ => false,
                        });
                        if let Some(t) = t {
                            q.push_back((t, frame));
                        }
                    }
                    Output::Flush { lsn } => flushes.push((i, lsn)),
                    _ => {}
                }
            }
        }
        while let Some((t, f)) = q.pop_front() {
            busy = true;
            if let Some(s) = sites[t].as_mut() {
                let _ = s.handle_frame(now, &f);
            }
        }
        for (i, lsn) in std::mem::take(&mut flushes) {
            busy = true;
            if let Some(s) = sites[i].as_mut() {
                s.handle_flushed(now, lsn);
            }
        }
        if !busy || stop(sites) {
            return;
        }
    }
}

/// The master's and the lagging client's storage: the group first
/// commits `prefill` records together; then the client stops and the
/// master commits `N` more, with a checkpoint every `checkpoint_every` of
/// them when that is not zero (time passes 100 µs a commit).
fn build(prefill: usize, checkpoint_every: usize) -> (MemStorage, MemStorage) {
    let mut cfg = config();
    if checkpoint_every > 0 {
        cfg.timeouts.checkpoint_delay =
            std::time::Duration::from_micros(100 * checkpoint_every as u64);
    }
    let mut sites: Vec<Option<Site<MemStorage>>> = (0..3)
        .map(|i| {
            Some(
                Site::open(
                    cfg.clone(),
                    &format!("s{i}"),
                    MemStorage::new(1 << 30),
                    Instant(0),
                )
                .unwrap(),
            )
        })
        .collect();
    let now = Instant(1);
    sites[0].as_mut().unwrap().create_group(now).unwrap();
    run(&mut sites, now, |_| false);
    for i in 1..3 {
        sites[i].as_mut().unwrap().join(now, "s0");
        run(&mut sites, now, |_| false);
    }
    let value = [7u8; 100];
    let mut now = now;
    let mut client = None;
    for k in 0..prefill + N {
        if k == prefill {
            // The client stops; the master commits N records with the
            // third site.
            client = Some(sites[1].take().unwrap().into_storage());
        }
        let key = format!("{k:016}");
        let ops = [Op::Put {
            db: "bench",
            key: key.as_bytes(),
            value: &value,
        }];
        now = Instant(now.0 + 100);
        sites[0]
            .as_mut()
            .unwrap()
            .commit(now, &ops, Durability::NoSync)
            .unwrap();
        if k % 64 == 63 {
            for s in sites.iter_mut().flatten() {
                s.handle_timeout(now);
            }
            run(&mut sites, now, |_| false);
        }
    }
    run(&mut sites, now, |_| false);
    (sites[0].take().unwrap().into_storage(), client.unwrap())
}

fn catch_up(c: &mut Criterion) {
    let mut group = c.benchmark_group("catch_up");
    group.throughput(Throughput::Elements(N as u64));
    // An empty client; one that holds 100,000 keys already, with a
    // checkpoint (so a store snapshot) every 20,000 records it lacks.
    for (name, prefill, every) in [
        ("from_empty", 0, 0),
        ("100k_keys_checkpoints", 100_000, 20_000),
    ] {
        let (master, client) = build(prefill, every);
        group.bench_function(format!("{N}_records_{name}"), |b| {
            b.iter_batched(
                || {
                    let cfg = config();
                    let now = Instant(1 << 40);
                    let mut m = Site::open(cfg.clone(), "s0", master.clone(), now).unwrap();
                    m.rep_start_master(now).unwrap();
                    let c = Site::open(cfg.clone(), "s1", client.clone(), now).unwrap();
                    let mut sites = vec![Some(m), Some(c)];
                    run(&mut sites, now, |_| false);
                    sites
                },
                |mut sites| {
                    let now = Instant((1 << 40) + 1);
                    let ids: Vec<_> = sites.iter().flatten().map(|s| s.id()).collect();
                    sites[1].as_mut().unwrap().rep_start_client(now);
                    sites[0]
                        .as_mut()
                        .unwrap()
                        .handle_connection(now, ids[1], true);
                    sites[1]
                        .as_mut()
                        .unwrap()
                        .handle_connection(now, ids[0], true);
                    let target = sites[0].as_ref().unwrap().last_lsn();
                    run(&mut sites, now, |s| {
                        s[1].as_ref().is_some_and(|c| c.last_lsn() >= target)
                    });
                    let last = sites[1].as_ref().unwrap().last_lsn();
                    assert_eq!(last, target, "the client caught up");
                    black_box(sites)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    targets = catch_up
}
criterion_main!(benches);
