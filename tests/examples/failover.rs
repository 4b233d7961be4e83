//! Failover time in simulated time (issue 4, item 7): from the master's
//! failure to a new master whose first commit is answered permanent, for
//! 3, 5 and 7 sites, with heartbeats every 250 ms, heartbeat monitor 1 s
//! and election timeout 2 s, over 0.2-1 ms links and 0.2-2 ms fsyncs.
//!
//! Two failures: the master's machine dies and its peers see the
//! connections break (as TCP does when the host is gone or the process is
//! killed), and the master falls silent (a black hole: nothing reported,
//! only the heartbeat monitor notices). Simulated time is exact, so each
//! figure is a median over seeds of a deterministic run, not a noisy wall
//! clock.
//!
//! cargo run -p shoal-tests --release --example failover

use shoal_core::config::Config;
use shoal_core::site::Role;
use shoal_tests::disk::CrashMode;
use shoal_tests::net::LinkConfig;
use shoal_tests::sim::{ms, Sim, SimConfig};
use std::time::Duration;

fn config(sites: usize, seed: u64) -> SimConfig {
    let mut c = SimConfig::new("failover", "failover", sites);
    c.seed = seed;
    c.trace_tail = Some(1000);
    let mut link = LinkConfig::fixed(Duration::from_micros(200));
    link.latency_max = Duration::from_millis(1);
    c.link = link;
    let mut site = Config::default();
    site.timeouts.heartbeat_send = ms(250);
    site.timeouts.heartbeat_monitor = ms(1000);
    site.timeouts.election = ms(2000);
    c.site = site;
    c
}

/// Returns (ms to a new master, ms to its first permanent commit).
fn one(sites: usize, seed: u64, silent: bool) -> (f64, f64) {
    let mut sim = Sim::new(config(sites, seed));
    sim.start_group();
    for k in 0..20 {
        sim.write(0, &format!("k{k}"), "v");
    }
    // Let a few heartbeats go by, so the failure lands at a random point
    // of the heartbeat cycle.
    sim.run_for(ms(1000 + seed * 37 % 250));
    let old = sim.master().expect("a master");
    let t0 = sim.now();
    if silent {
        for j in 0..sites {
            if j != old {
                sim.clog(old, j, Duration::from_secs(600));
                sim.clog(j, old, Duration::from_secs(600));
            }
        }
    } else {
        sim.crash(old, CrashMode::Clean);
    }
    sim.run_until_true(Duration::from_secs(60), "a new master", |s| {
        s.up()
            .into_iter()
            .any(|i| i != old && s.site(i).role() == Role::Master)
    });
    let m = sim
        .up()
        .into_iter()
        .find(|&i| i != old && sim.site(i).role() == Role::Master)
        .expect("new master");
    let elected = sim.now().since(t0);
    let out = sim.write(m, "after", "v");
    assert!(
        out.permanent,
        "seed {seed}: first commit on the new master: {out:?}"
    );
    let written = sim.now().since(t0);
    (elected.as_secs_f64() * 1e3, written.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.1), q(0.9))
}

fn main() {
    let seeds: u64 = std::env::var("SHOAL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    println!("failover in simulated time: heartbeat 250 ms, monitor 1 s, election timeout 2 s,");
    println!("links 0.2-1 ms, fsync 0.2-2 ms; median [p10, p90] over {seeds} seeds\n");
    println!(
        "{:<6} {:<18} {:>26} {:>30}",
        "sites", "failure", "new master (ms)", "first permanent commit (ms)"
    );
    for sites in [3usize, 5, 7] {
        for silent in [false, true] {
            let (mut e, mut w) = (Vec::new(), Vec::new());
            for seed in 1..=seeds {
                let (a, b) = one(sites, seed, silent);
                e.push(a);
                w.push(b);
            }
            let (e50, e10, e90) = median(e);
            let (w50, w10, w90) = median(w);
            println!(
                "{:<6} {:<18} {:>10.1} [{:>6.1}, {:>6.1}] {:>14.1} [{:>6.1}, {:>6.1}]",
                sites,
                if silent {
                    "silent (monitor)"
                } else {
                    "connection breaks"
                },
                e50,
                e10,
                e90,
                w50,
                w10,
                w90
            );
        }
    }
}
