//! `SimNet`: the simulated network, and the one event queue every
//! delivery and disk completion goes through.
//!
//! Each directed link has a latency range, a loss rate, a duplication rate
//! and a reordering rate (a message held back by an extra delay). Links can
//! be cut one way or both ways, a site can be isolated, and a link can be
//! clogged until some time (messages sent meanwhile arrive late rather than
//! never). Every choice comes from one seeded [`Rng`]; events are ordered
//! by (time, sequence number), so two runs of one seed are identical.

use crate::rng::Rng;
use shoal_core::Instant;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How one directed link behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LinkConfig {
    /// Shortest one-way latency.
    pub latency_min: Duration,
    /// Longest one-way latency (uniform in between).
    pub latency_max: Duration,
    /// Messages lost, parts per million.
    pub loss_ppm: u32,
    /// Messages delivered twice, parts per million.
    pub dup_ppm: u32,
    /// Messages held back by an extra delay, parts per million.
    pub reorder_ppm: u32,
    /// The longest extra delay of a held-back message.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A reliable link with a fixed latency.
    pub fn fixed(latency: Duration) -> LinkConfig {
        LinkConfig {
            latency_min: latency,
            latency_max: latency,
            loss_ppm: 0,
            dup_ppm: 0,
            reorder_ppm: 0,
            reorder_delay: Duration::ZERO,
        }
    }

    /// A reliable link with a latency range (which reorders a little).
    pub fn jitter(min: Duration, max: Duration) -> LinkConfig {
        LinkConfig {
            latency_min: min,
            latency_max: max,
            ..LinkConfig::fixed(min)
        }
    }

    /// The same link without loss, duplication or reordering.
    pub fn reliable(self) -> LinkConfig {
        LinkConfig {
            loss_ppm: 0,
            dup_ppm: 0,
            reorder_ppm: 0,
            ..self
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig::jitter(Duration::from_millis(1), Duration::from_millis(5))
    }
}

/// What the network did, in total.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped by a cut link (at send or on arrival).
    pub cut: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Held back.
    pub reordered: u64,
    /// Delayed by a clog.
    pub clogged: u64,
}

/// The network between `n` sites (indexed from 0).
#[derive(Clone, Debug)]
pub struct SimNet {
    default: LinkConfig,
    links: BTreeMap<(usize, usize), LinkConfig>,
    cut: BTreeSet<(usize, usize)>,
    clogged: BTreeMap<(usize, usize), Instant>,
    rng: Rng,
    stats: NetStats,
    /// Bumped whenever reachability changes (cut, heal, isolate).
    epoch: u64,
}

impl SimNet {
    /// A network whose links all behave as `default`.
    pub fn new(default: LinkConfig, rng: Rng) -> SimNet {
        SimNet {
            default,
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            clogged: BTreeMap::new(),
            rng,
            stats: NetStats::default(),
            epoch: 0,
        }
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Changes whenever reachability changes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How every link without its own setting behaves.
    pub fn set_default(&mut self, link: LinkConfig) {
        self.default = link;
    }

    /// The default link setting.
    pub fn default_link(&self) -> LinkConfig {
        self.default
    }

    /// Give the link `from -> to` its own behaviour.
    pub fn set_link(&mut self, from: usize, to: usize, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// Forget the per-link setting of `from -> to`.
    pub fn clear_link(&mut self, from: usize, to: usize) {
        self.links.remove(&(from, to));
    }

    /// Forget every per-link setting.
    pub fn reset_links(&mut self) {
        self.links.clear();
    }

    /// The behaviour of `from -> to`.
    pub fn link(&self, from: usize, to: usize) -> LinkConfig {
        self.links.get(&(from, to)).copied().unwrap_or(self.default)
    }

    /// Messages from `from` to `to` are dropped (one-way partition).
    pub fn cut(&mut self, from: usize, to: usize) {
        if self.cut.insert((from, to)) {
            self.epoch += 1;
        }
    }

    /// Cut both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Every site of `left` loses `right` and the other way round.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        for &a in left {
            for &b in right {
                self.cut_both(a, b);
            }
        }
    }

    /// Cut `site` off from every other of the `n` sites.
    pub fn isolate(&mut self, site: usize, n: usize) {
        for other in 0..n {
            if other != site {
                self.cut_both(site, other);
            }
        }
    }

    /// Restore `from -> to`.
    pub fn heal(&mut self, from: usize, to: usize) {
        if self.cut.remove(&(from, to)) {
            self.epoch += 1;
        }
    }

    /// Restore every link and unclog everything (per-link behaviour stays).
    pub fn recover(&mut self) {
        if !self.cut.is_empty() {
            self.epoch += 1;
        }
        self.cut.clear();
        self.clogged.clear();
    }

    /// Messages on `from -> to` are held until `until`, then delivered.
    pub fn clog(&mut self, from: usize, to: usize, until: Instant) {
        self.clogged.insert((from, to), until);
    }

    /// `from -> to` delivers.
    pub fn is_open(&self, from: usize, to: usize) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Both directions deliver.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.is_open(a, b) && self.is_open(b, a)
    }

    /// Any link cut?
    pub fn has_cuts(&self) -> bool {
        !self.cut.is_empty()
    }

    /// A message leaves `from` for `to` at `now`: when does it arrive? No
    /// time for a lost message, two for a duplicated one.
    pub fn route(&mut self, now: Instant, from: usize, to: usize) -> Vec<Instant> {
        self.stats.sent += 1;
        if !self.is_open(from, to) {
            self.stats.cut += 1;
            return Vec::new();
        }
        let l = self.link(from, to);
        if self.rng.chance(l.loss_ppm) {
            self.stats.lost += 1;
            return Vec::new();
        }
        let copies = if self.rng.chance(l.dup_ppm) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut start = now;
        if let Some(&until) = self.clogged.get(&(from, to)) {
            if until > now {
                self.stats.clogged += 1;
                start = until;
            } else {
                self.clogged.remove(&(from, to));
            }
        }
        let mut out = Vec::with_capacity(copies);
        for _ in 0..copies {
            let lat = self.rng.range(
                l.latency_min.as_micros() as u64,
                l.latency_max.as_micros() as u64,
            );
            let mut at = Instant(start.0 + lat);
            if self.rng.chance(l.reorder_ppm) {
                self.stats.reordered += 1;
                at = Instant(at.0 + self.rng.range(0, l.reorder_delay.as_micros() as u64));
            }
            out.push(at);
        }
        out
    }

    /// A message arriving on `from -> to`: dropped if the link was cut
    /// meanwhile (the connection broke with it in flight).
    pub fn arrives(&mut self, from: usize, to: usize) -> bool {
        if self.is_open(from, to) {
            true
        } else {
            self.stats.cut += 1;
            false
        }
    }

    /// The network's random stream (for choices that belong to it).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Events ordered by (time, sequence number): equal times keep the order
/// they were scheduled in.
#[derive(Clone, Debug)]
pub struct EventQueue<E> {
    events: BTreeMap<(Instant, u64), E>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            events: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedule `e` at `at`.
    pub fn push(&mut self, at: Instant, e: E) {
        self.seq += 1;
        self.events.insert((at, self.seq), e);
    }

    /// When the next event is due.
    pub fn peek_time(&self) -> Option<Instant> {
        self.events.keys().next().map(|k| k.0)
    }

    /// Take the next event.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        self.events.pop_first().map(|((t, _), e)| (t, e))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// No events waiting.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Drop every event `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        self.events.retain(|_, e| keep(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn queue_orders_by_time_then_sequence() {
        let mut q = EventQueue::new();
        q.push(Instant(5), "b");
        q.push(Instant(3), "a");
        q.push(Instant(5), "c");
        assert_eq!(q.peek_time(), Some(Instant(3)));
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|x| x.1)).collect();
        assert_eq!(order, vec!["a", "b", "c"]);
    }

    #[test]
    fn latency_stays_in_range_and_same_seed_same_schedule() {
        let link = LinkConfig::jitter(ms(2), ms(9));
        let mut a = SimNet::new(link, Rng::new(3));
        let mut b = SimNet::new(link, Rng::new(3));
        for k in 0..500 {
            let t = a.route(Instant(k), 0, 1);
            assert_eq!(t, b.route(Instant(k), 0, 1));
            assert_eq!(t.len(), 1);
            assert!(t[0].0 >= k + 2000 && t[0].0 <= k + 9000);
        }
    }

    #[test]
    fn loss_duplication_and_reordering_happen_at_their_rates() {
        let link = LinkConfig {
            loss_ppm: 100_000,
            dup_ppm: 50_000,
            reorder_ppm: 100_000,
            reorder_delay: ms(100),
            ..LinkConfig::fixed(ms(1))
        };
        let mut n = SimNet::new(link, Rng::new(9));
        let mut copies = 0;
        for k in 0..10_000 {
            copies += n.route(Instant(k), 0, 1).len();
        }
        let s = n.stats();
        assert!((800..1200).contains(&s.lost), "{s:?}");
        assert!((300..700).contains(&s.duplicated), "{s:?}");
        assert!((700..1300).contains(&s.reordered), "{s:?}");
        assert_eq!(copies as u64, 10_000 - s.lost + s.duplicated);
    }

    #[test]
    fn cuts_are_one_way_and_heal() {
        let mut n = SimNet::new(LinkConfig::default(), Rng::new(1));
        n.cut(0, 1);
        assert!(n.route(Instant(0), 0, 1).is_empty());
        assert_eq!(n.route(Instant(0), 1, 0).len(), 1);
        assert!(!n.connected(0, 1));
        n.heal(0, 1);
        assert!(n.connected(0, 1));
        n.isolate(2, 4);
        for other in [0, 1, 3] {
            assert!(!n.is_open(2, other) && !n.is_open(other, 2));
        }
        assert!(n.connected(0, 3));
        n.recover();
        assert!(!n.has_cuts());
        n.partition(&[0], &[1, 2]);
        assert!(!n.connected(0, 2) && n.connected(1, 2));
        // Cut while in flight: dropped on arrival.
        assert!(!n.arrives(1, 0));
    }

    #[test]
    fn a_clogged_link_delivers_late() {
        let mut n = SimNet::new(LinkConfig::fixed(ms(1)), Rng::new(1));
        n.clog(0, 1, Instant(50_000));
        assert_eq!(n.route(Instant(0), 0, 1), vec![Instant(51_000)]);
        assert_eq!(n.route(Instant(60_000), 0, 1), vec![Instant(61_000)]);
        assert_eq!(n.stats().clogged, 1);
    }
}
