//! The trace: every step the simulator takes (time, site, input, and a
//! summary of what the site asked for), kept compactly and formatted only
//! when someone reads it. Two runs of one seed give byte-identical traces.

use shoal_core::config::Limits;
use shoal_core::site::{Answer, Drop, Event};
use shoal_core::wire::{decode_frame, Flags, Message, MessageKind};
use shoal_core::{Generation, Instant, Lsn, SiteId};
use std::collections::VecDeque;
use std::fmt::{self, Write as _};

/// A frame as the trace shows it: type, envelope, and the message's LSNs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MsgSum {
    /// The message type (None: did not decode).
    pub kind: Option<MessageKind>,
    /// The sender, as the envelope says.
    pub from: SiteId,
    /// The sender's generation.
    pub generation: Generation,
    /// The sender's election generation.
    pub egen: u32,
    /// The site a VOTE2 is for (zero otherwise).
    pub candidate: SiteId,
    /// The sender's last LSN.
    pub lsn: Lsn,
    /// Envelope flags.
    pub flags: u8,
    /// The message's first LSN field, if any (LOG: its LSN; LOG_REQ: from).
    pub a: Lsn,
    /// The message's second LSN field, if any (LOG: prev; LOG_REQ: to).
    pub b: Lsn,
}

impl MsgSum {
    /// Summarise an encoded frame.
    pub fn of(frame: &[u8], limits: &Limits) -> MsgSum {
        match decode_frame(frame, limits) {
            Ok((env, msg)) => {
                let (a, b) = match &msg {
                    Message::Log(e) | Message::Verify(e) => (e.lsn, e.prev),
                    Message::LogReq { from, to, .. } => (*from, *to),
                    Message::AllReq { from, .. } => (*from, Lsn::ZERO),
                    Message::LogMore { next } => (*next, Lsn::ZERO),
                    Message::Ack { lsn }
                    | Message::VerifyReq { lsn }
                    | Message::VerifyFail { lsn }
                    | Message::Rerequest { lsn }
                    | Message::StartSync { lsn } => (*lsn, Lsn::ZERO),
                    _ => (Lsn::ZERO, Lsn::ZERO),
                };
                let candidate = match &msg {
                    Message::Vote2 { candidate } => *candidate,
                    _ => SiteId(0),
                };
                MsgSum {
                    kind: Some(msg.kind()),
                    from: env.from,
                    generation: env.generation,
                    egen: env.egen.0,
                    candidate,
                    lsn: env.lsn,
                    flags: env.flags.0,
                    a,
                    b,
                }
            }
            Err(_) => MsgSum {
                kind: None,
                from: SiteId(0),
                generation: Generation(0),
                egen: 0,
                candidate: SiteId(0),
                lsn: Lsn::ZERO,
                flags: 0,
                a: Lsn::ZERO,
                b: Lsn::ZERO,
            },
        }
    }

    /// The envelope carries `f`.
    pub fn has(&self, f: Flags) -> bool {
        self.flags & f.0 == f.0
    }
}

impl fmt::Display for MsgSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(kind) = self.kind else {
            return write!(f, "MALFORMED");
        };
        write!(f, "{}", kind.name())?;
        for (flag, c) in [
            (Flags::PERMANENT, 'P'),
            (Flags::REREQUEST, 'R'),
            (Flags::ANYWHERE, 'A'),
        ] {
            if self.has(flag) {
                write!(f, "+{c}")?;
            }
        }
        write!(f, " g{} at {:?}", self.generation.0, self.lsn)?;
        if matches!(
            kind,
            MessageKind::Vote1 | MessageKind::Vote2 | MessageKind::Alive
        ) {
            write!(f, " egen {}", self.egen)?;
        }
        if self.candidate.0 != 0 {
            write!(f, " for site {}", self.candidate.0)?;
        }
        if !self.a.is_zero() || !self.b.is_zero() {
            write!(f, " ({:?}, {:?})", self.a, self.b)?;
        }
        Ok(())
    }
}

/// What a step fed a site.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Input {
    /// A frame from another site (by simulator index).
    Frame {
        /// Sender index.
        from: usize,
        /// The frame.
        msg: MsgSum,
    },
    /// A deadline passed.
    Timeout,
    /// The host finished a flush.
    Flushed(Lsn),
    /// The host reports a connection.
    Connection {
        /// The peer.
        peer: SiteId,
        /// Up or down.
        up: bool,
    },
    /// An application call or an operator / harness action.
    App(String),
}

/// One thing a site asked of the host, summarised.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Out {
    /// A frame to another site; `to` is None when the destination is
    /// unknown; `copies` is how many the network will deliver (0, 1, 2).
    Send {
        /// Recipient index.
        to: Option<usize>,
        /// The frame.
        msg: MsgSum,
        /// Deliveries scheduled.
        copies: u8,
    },
    /// A flush request.
    Flush(Lsn),
    /// An application event.
    Event(Event),
    /// An answer.
    Answer(Answer),
    /// A channel message for the dispatch (W2).
    Message(shoal_core::site::Incoming),
}

/// One step of the simulation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Step {
    /// Simulated time.
    pub time: Instant,
    /// The site (simulator index).
    pub site: usize,
    /// What it was fed.
    pub input: Input,
    /// Why the site refused a frame, if it did.
    pub dropped: Option<Drop>,
    /// What it asked for.
    pub outputs: Vec<Out>,
}

fn time(t: Instant) -> String {
    format!("{}.{:06}", t.0 / 1_000_000, t.0 % 1_000_000)
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.site == usize::MAX {
            write!(f, "{} -- ", time(self.time))?;
        } else {
            write!(f, "{} s{} ", time(self.time), self.site)?;
        }
        match &self.input {
            Input::Frame { from, msg } => write!(f, "<- s{from} {msg}")?,
            Input::Timeout => write!(f, "timeout")?,
            Input::Flushed(l) => write!(f, "flushed {l:?}")?,
            Input::Connection { peer, up } => write!(
                f,
                "connection {} {}",
                peer.0,
                if *up { "up" } else { "down" }
            )?,
            Input::App(s) => write!(f, "{s}")?,
        }
        if let Some(d) = &self.dropped {
            write!(f, " [dropped: {d:?}]")?;
        }
        for o in &self.outputs {
            write!(f, "\n    ")?;
            match o {
                Out::Send { to, msg, copies } => {
                    match to {
                        Some(t) => write!(f, "-> s{t} {msg}")?,
                        None => write!(f, "-> ? {msg}")?,
                    }
                    match copies {
                        0 => write!(f, " [lost]")?,
                        1 => {}
                        n => write!(f, " [x{n}]")?,
                    }
                }
                Out::Flush(l) => write!(f, "flush {l:?}")?,
                Out::Event(e) => write!(f, "event {e:?}")?,
                Out::Answer(a) => write!(f, "answer {a:?}")?,
                Out::Message(m) => write!(
                    f,
                    "message from {} ({} parts{})",
                    m.from.0,
                    m.parts.len(),
                    if m.reply.is_some() {
                        ", wants a response"
                    } else {
                        ""
                    }
                )?,
            }
        }
        Ok(())
    }
}

/// The steps of a run: all of them, or only the last few (the randomized
/// runs keep a tail for failure reports, which is far cheaper).
#[derive(Clone, Debug)]
pub struct Trace {
    steps: VecDeque<Step>,
    keep: Option<usize>,
    total: u64,
}

impl Trace {
    /// Keep every step.
    pub fn full() -> Trace {
        Trace {
            steps: VecDeque::new(),
            keep: None,
            total: 0,
        }
    }

    /// Keep the last `n` steps.
    pub fn tail(n: usize) -> Trace {
        Trace {
            steps: VecDeque::with_capacity(n),
            keep: Some(n),
            total: 0,
        }
    }

    /// Record a step.
    pub fn push(&mut self, s: Step) {
        self.total += 1;
        if self.keep == Some(0) {
            return;
        }
        if let Some(n) = self.keep {
            if self.steps.len() >= n {
                self.steps.pop_front();
            }
        }
        self.steps.push_back(s);
    }

    /// Steps taken in total.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The steps kept, oldest first.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter()
    }

    /// The kept steps as text, one step (and its outputs) per line group.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for st in &self.steps {
            let _ = writeln!(s, "{st}");
        }
        s
    }

    /// The last `n` kept steps as text.
    pub fn render_tail(&self, n: usize) -> String {
        let mut s = String::new();
        let skip = self.steps.len().saturating_sub(n);
        for st in self.steps.iter().skip(skip) {
            let _ = writeln!(s, "{st}");
        }
        s
    }
}
