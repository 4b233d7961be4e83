//! Linearizability under faults with master leases (issue 4, items 5-6;
//! R10): clients send writes and reads to whichever sites believe they are
//! master — stale masters included — while partitions isolate the master,
//! sites crash and restart. Every answered operation is recorded with its
//! simulated call and answer times, and the whole history must be
//! linearizable: no read returns a value older than an acknowledged write,
//! and no two masters take writes over the same stretch of time. Now and
//! then the whole group loses power at once and restarts.
//!
//! A write answered as permanent took effect; a write answered as not
//! permanent, or never answered (its site crashed), may or may not have.
//! Reads are served only by a master holding its lease (`Site::read`).
//!
//! `cargo test -p shoal-tests --test linearizable` runs 500 seeds;
//! `SHOAL_SEEDS=100000 cargo test -p shoal-tests --release --test
//! linearizable` is the long mode; `SHOAL_SEED=n` replays one.

use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{Answer, Role};
use shoal_tests::disk::CrashMode;
use shoal_tests::linearizability::{check, Op as HOp, OpKind};
use shoal_tests::sim::{ms, Sim, SimConfig, Start};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whole-group restarts over all runs (the test checks they happen).
static GROUP_RESTARTS: AtomicU64 = AtomicU64::new(0);

fn lease_config() -> Config {
    let mut c = Config {
        leases: true,
        clock_skew_fast: 101,
        clock_skew_slow: 100,
        ..Config::default()
    };
    c.timeouts.lease = ms(400);
    c.timeouts.heartbeat_send = ms(50);
    c.timeouts.heartbeat_monitor = ms(200);
    c.timeouts.election = ms(300);
    c.timeouts.election_retry = ms(600);
    c.timeouts.ack = ms(300);
    c.timeouts.connection_retry = ms(100);
    c
}

struct Pending {
    site: usize,
    inc: usize,
    id: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    call: u64,
}

fn masters(sim: &Sim) -> Vec<usize> {
    sim.up()
        .into_iter()
        .filter(|&i| sim.site(i).role() == Role::Master)
        .collect()
}

/// One seeded run; returns the number of operations checked.
fn run(seed: u64) -> usize {
    let mut c = SimConfig::new("linearizable", "leases_keep_histories_linearizable", 5);
    c.seed = seed;
    c.site = lease_config();
    c.trace_tail = Some(3000);
    let mut sim = Sim::new(c);
    sim.start_group();
    let keys: Vec<Vec<u8>> = (0..6).map(|k| format!("k{k}").into_bytes()).collect();
    let mut history: Vec<HOp> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut incs = vec![0usize; sim.len()];
    for step in 0..250u64 {
        let r = sim.rng().below(100);
        let down: Vec<usize> = (0..sim.len()).filter(|&i| !sim.is_up(i)).collect();
        match r {
            0..=2 => {
                // Isolate the master (if any) with at most one other site.
                if let Some(&m) = masters(&sim).first() {
                    let other = (m + 1 + sim.rng().below(4) as usize) % 5;
                    let side = if sim.rng().below(2) == 0 {
                        vec![m]
                    } else {
                        vec![m, other]
                    };
                    let rest: Vec<usize> = (0..5).filter(|i| !side.contains(i)).collect();
                    sim.partition(&side, &rest);
                }
            }
            3..=5 => sim.heal(),
            6 if down.len() < 2 => {
                let up = sim.up();
                let i = up[sim.rng().below(up.len() as u64) as usize];
                sim.crash(i, CrashMode::Clean);
                incs[i] += 1;
            }
            10 if down.is_empty() && sim.rng().below(4) == 0 => {
                // The whole group restarts (seed 004's case): every site
                // loses power at once, then all come back.
                for (i, inc) in incs.iter_mut().enumerate() {
                    sim.crash(i, CrashMode::Torn);
                    *inc += 1;
                }
                GROUP_RESTARTS.fetch_add(1, Ordering::Relaxed);
                let pause = sim.rng().range(1, 200);
                sim.run_for(ms(pause));
                for i in 0..sim.len() {
                    sim.restart(i, Start::Rejoin);
                }
            }
            7..=9 if !down.is_empty() => {
                let i = down[sim.rng().below(down.len() as u64) as usize];
                sim.restart(i, Start::Rejoin);
            }
            _ => {
                let ms_ = masters(&sim);
                if !ms_.is_empty() {
                    let i = ms_[sim.rng().below(ms_.len() as u64) as usize];
                    let key = keys[sim.rng().below(keys.len() as u64) as usize].clone();
                    let now = sim.now().0;
                    if sim.rng().below(2) == 0 {
                        let value = format!("v{seed}-{step}").into_bytes();
                        let ops = [Op::Put {
                            db: "db",
                            key: &key,
                            value: &value,
                        }];
                        if let Ok(id) = sim.commit(i, &ops, Durability::Sync) {
                            pending.push(Pending {
                                site: i,
                                inc: incs[i],
                                id,
                                key,
                                value,
                                call: now,
                            });
                        }
                    } else {
                        let got = sim.act(i, "read (lease)", |s, t| {
                            s.read(t, "db", &key).map(|v| v.map(<[u8]>::to_vec))
                        });
                        if let Ok(v) = got {
                            history.push(HOp {
                                call: now,
                                answer: Some(now),
                                key,
                                kind: OpKind::Read(v),
                            });
                        }
                    }
                }
            }
        }
        let d = sim.rng().range(1, 40);
        sim.run_for(ms(d));
        settle(&sim, &mut pending, &mut history, &incs, false);
    }
    // Faults stop: every site back, the group converges.
    for i in 0..sim.len() {
        if !sim.is_up(i) {
            sim.restart(i, Start::Rejoin);
        }
    }
    sim.converge(ms(60_000));
    sim.run_for(ms(1_000));
    settle(&sim, &mut pending, &mut history, &incs, true);
    // Final reads on the master, once it holds its lease.
    let m = sim
        .master()
        .unwrap_or_else(|| sim.fail("no master after convergence"));
    sim.run_until_true(ms(5_000), "the master holds its lease", |s| {
        s.site(m).lease_valid(s.now())
    });
    for key in &keys {
        let now = sim.now().0;
        let v = sim
            .site(m)
            .read(sim.now(), "db", key)
            .unwrap_or_else(|e| sim.fail(&format!("final read refused: {e:?}")))
            .map(<[u8]>::to_vec);
        history.push(HOp {
            call: now,
            answer: Some(now),
            key: key.clone(),
            kind: OpKind::Read(v),
        });
    }
    if let Err(v) = check(&history) {
        sim.fail(&format!("history not linearizable: {v:?}"));
    }
    history.len()
}

/// Move answered writes from `pending` into the history; with `all`, the
/// rest become writes of unknown outcome.
fn settle(
    sim: &Sim,
    pending: &mut Vec<Pending>,
    history: &mut Vec<HOp>,
    incs: &[usize],
    all: bool,
) {
    pending.retain(|p| {
        let answered = if incs[p.site] == p.inc && sim.is_up(p.site) {
            sim.answers(p.site).iter().find_map(|(t, _, a)| match a {
                // Request ids restart with each incarnation of a site: only
                // an answer given after the call is this one's.
                Answer::Commit { id, result: Ok(o) } if *id == p.id && t.0 >= p.call => {
                    Some((t.0, o.permanent))
                }
                _ => None,
            })
        } else {
            None
        };
        let gone = incs[p.site] != p.inc || !sim.is_up(p.site);
        match answered {
            Some((t, permanent)) => {
                history.push(HOp {
                    call: p.call,
                    answer: permanent.then_some(t),
                    key: p.key.clone(),
                    kind: OpKind::Write(Some(p.value.clone())),
                });
                false
            }
            None if gone || all => {
                history.push(HOp {
                    call: p.call,
                    answer: None,
                    key: p.key.clone(),
                    kind: OpKind::Write(Some(p.value.clone())),
                });
                false
            }
            None => true,
        }
    });
}

#[test]
fn leases_keep_histories_linearizable() {
    let seeds: Vec<u64> = match std::env::var("SHOAL_SEED") {
        Ok(s) => vec![s.parse().expect("SHOAL_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("SHOAL_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
            (1..=n).collect()
        }
    };
    let many = seeds.len() >= 100;
    let mut ops = 0;
    for seed in seeds {
        ops += run(seed);
    }
    assert!(ops > 0, "no operation was checked");
    if many {
        assert!(
            GROUP_RESTARTS.load(Ordering::Relaxed) > 0,
            "no whole-group restart happened"
        );
    }
}
