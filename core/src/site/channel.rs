//! Message channels (W2): the application sends its own messages to one
//! site or to "the master" over the group's connections.
//!
//! A message is one or more byte parts, at most
//! [`caps::MAX_CHANNEL_PARTS`] of them and at most
//! [`Limits::max_channel_message`](crate::config::Limits) bytes together.
//! [`Site::channel_send`] is fire-and-forget: CHANNEL_MSG with request 0.
//! [`Site::channel_request`] sends CHANNEL_MSG with a request number and
//! waits, with bounded state ([`Limits::max_channel_requests`](crate::config::Limits)),
//! for one CHANNEL_RESPONSE part or a CHANNEL_FAIL; the outcome arrives as
//! [`Answer::Channel`]. A request also ends early, without waiting for its
//! timeout, when the connection to its site breaks or, on a channel to the
//! master, when the master changes before the answer.
//!
//! The receiving site hands each message to its host as
//! [`Output::Message`] when the host said it has a dispatch
//! ([`Site::set_channel_dispatch`]); a request carries a [`ReplyTo`] the
//! host answers with [`Site::channel_respond`] (or [`Site::channel_refuse`]).
//! Without a dispatch a request is answered CHANNEL_FAIL NoDispatch and a
//! plain message is dropped (counted). A message on a channel to the master
//! carries the envelope flag TO_MASTER: a site that is not master refuses it
//! (NotMaster), so it is never handled by a site that was master a moment
//! ago. A master sending to the master, or any site sending to itself,
//! delivers locally without the network.
//!
//! Frames are not retried: a message may be lost when a connection breaks,
//! and a request then ends with an error. The receiver keeps no state per
//! request (the reply names the asker and its number), so a peer cannot make
//! it grow.
//!
//! Right after a site joins (or any site starts), two things are still
//! settling, and a frame sent into them used to vanish, leaving a request
//! to end with nothing better than `Timeout` in a healthy group (seed 002):
//!
//! - Connections: on a host that reports connections
//!   ([`Site::handle_connection`]; it has reported one since this site
//!   opened), a frame (request, response, refusal or message) to a member
//!   the host has reported no connection to since this site opened or
//!   learned of it waits for that first report. It leaves when the
//!   connection comes up; a request still waiting at its deadline, or when
//!   the host reports the connection down or a failed try, ends with
//!   `Send(Unreachable)`, which says why. Once the host has reported on a
//!   site, frames to it go at once, as before.
//! - Membership: a CHANNEL_MSG from a site this site's membership does not
//!   know (it joined a moment ago and the master's record adding it has
//!   not arrived) is held until that record is applied, then handled.
//!
//! Both wait at most the configured `channel_request` timeout, and together
//! hold at most `max_channel_requests` frames (requests are bounded by it
//! already); past that a frame goes (or is dropped) as before. Each is
//! counted in [`Stats::channel_held`](super::Stats).

use super::*;
use crate::config::caps;
use crate::wire::{ChannelError, ChannelMsg};
use heapless::Vec as HVec;

/// Where a channel sends (W2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelTarget {
    /// One member of the group.
    Site(SiteId),
    /// Whichever site is master when the message is sent: the channel
    /// follows the master as it changes.
    Master,
}

impl fmt::Display for ChannelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelTarget::Site(s) => write!(f, "{s}"),
            ChannelTarget::Master => write!(f, "the master"),
        }
    }
}

/// How to answer a received request: the asking site and its request
/// number. Pass it to [`Site::channel_respond`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReplyTo {
    /// The site that asked (this site itself for a local request).
    pub site: SiteId,
    /// Its request number.
    pub request: u64,
}

/// A channel message for the application's dispatch (W2).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Incoming {
    /// The sending site (this site for a local delivery).
    pub from: SiteId,
    /// Set when the sender waits for one response part: answer with
    /// [`Site::channel_respond`].
    pub reply: Option<ReplyTo>,
    /// It was sent on a channel to the master.
    pub to_master: bool,
    /// The message parts, in order.
    pub parts: Vec<Vec<u8>>,
}

impl Incoming {
    /// The sender waits for a response.
    pub fn needs_response(&self) -> bool {
        self.reply.is_some()
    }
}

/// Why a channel message, request or response could not be sent (W2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelSendError {
    /// A message needs at least one part.
    Empty,
    /// More parts than one message may carry.
    TooManyParts {
        /// Parts given.
        parts: usize,
        /// Most allowed ([`caps::MAX_CHANNEL_PARTS`]).
        max: usize,
    },
    /// The parts together (or the response part) are above
    /// `max_channel_message`.
    TooLarge {
        /// Bytes given.
        size: usize,
        /// Most allowed.
        max: usize,
    },
    /// A channel to the master, and no master is known now.
    NoMaster,
    /// The target is not a member of the group.
    UnknownSite(SiteId),
    /// This site has not created or joined a group yet.
    NotMember,
    /// Too many requests already wait for their answer
    /// (`max_channel_requests`).
    Busy,
    /// The request being answered is no longer waited for (a local
    /// request that ended), or was never made.
    NoRequest,
    /// The host has no connection to the site now (it reports this after
    /// trying to send, W2); retry once the site is reachable.
    Unreachable(SiteId),
}

impl fmt::Display for ChannelSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelSendError::Empty => write!(f, "a channel message needs at least one part"),
            ChannelSendError::TooManyParts { parts, max } => write!(
                f,
                "a channel message has at most {max} parts; this one has {parts}"
            ),
            ChannelSendError::TooLarge { size, max } => write!(
                f,
                "the channel message is {size} bytes, above max_channel_message ({max} bytes)"
            ),
            ChannelSendError::NoMaster => {
                write!(f, "no master is known now; retry once one is elected")
            }
            ChannelSendError::UnknownSite(s) => write!(f, "{s} is not a member of the group"),
            ChannelSendError::NotMember => {
                write!(f, "this site has not created or joined a group yet")
            }
            ChannelSendError::Busy => write!(
                f,
                "too many channel requests wait for an answer (max_channel_requests); retry"
            ),
            ChannelSendError::NoRequest => {
                write!(f, "that request is no longer waiting for a response")
            }
            ChannelSendError::Unreachable(s) => {
                write!(f, "no connection to {s} now; retry once it is reachable")
            }
        }
    }
}

/// Why a channel request ended without a response (W2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelRequestError {
    /// It could not be sent.
    Send(ChannelSendError),
    /// No response within the request's timeout.
    Timeout,
    /// The receiving site has no dispatch to handle channel messages.
    NoDispatch,
    /// The receiving site's dispatch did not answer the request.
    NoResponse,
    /// The receiving site refused the message as above its limits.
    TooLarge,
    /// On a channel to the master: the site it reached was no longer
    /// master.
    NotMaster,
    /// On a channel to the master: the master changed (or was lost) before
    /// the answer came; the request may or may not have been handled.
    MasterChanged,
    /// The connection to the site broke before the answer came; the
    /// request may or may not have been handled.
    Disconnected(SiteId),
}

impl From<ChannelSendError> for ChannelRequestError {
    fn from(e: ChannelSendError) -> Self {
        ChannelRequestError::Send(e)
    }
}

impl fmt::Display for ChannelRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelRequestError::Send(e) => write!(f, "{e}"),
            ChannelRequestError::Timeout => write!(f, "no response within the request's timeout"),
            ChannelRequestError::NoDispatch => write!(
                f,
                "the receiving site has no message dispatch (nothing listens for channel messages there)"
            ),
            ChannelRequestError::NoResponse => {
                write!(f, "the receiving site's dispatch did not answer the request")
            }
            ChannelRequestError::TooLarge => {
                write!(f, "the receiving site refused the message as above its limits")
            }
            ChannelRequestError::NotMaster => {
                write!(f, "the site reached is no longer the master; retry")
            }
            ChannelRequestError::MasterChanged => write!(
                f,
                "the master changed before it answered; the request may or may not have been handled"
            ),
            ChannelRequestError::Disconnected(s) => write!(
                f,
                "the connection to {s} broke before it answered; the request may or may not have been handled"
            ),
        }
    }
}

impl From<ChannelError> for ChannelRequestError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::NoDispatch => ChannelRequestError::NoDispatch,
            ChannelError::NoResponse => ChannelRequestError::NoResponse,
            ChannelError::TooLarge => ChannelRequestError::TooLarge,
            ChannelError::NotMaster => ChannelRequestError::NotMaster,
        }
    }
}

/// A request this site waits on.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    /// The application's request id, also the wire request number.
    id: RequestId,
    /// Sent on a channel to the master.
    to_master: bool,
    /// The site it went to (this site for a local request).
    to: SiteId,
    deadline: Instant,
    /// The request's frame while it waits for the site's first connection
    /// (see [`Site::channel_waits_for`]); `None` once sent.
    frame: Option<Vec<u8>>,
}

/// A response, refusal or plain message waiting for its site's first
/// connection.
#[derive(Clone, Debug)]
pub(super) struct Parked {
    to: SiteId,
    frame: Vec<u8>,
    until: Instant,
}

/// Most channel messages held from one site the membership does not know
/// yet: a site that just joined sends a request or two before its member
/// record reaches everyone.
pub const HELD_PER_SENDER: usize = 4;

/// A channel message from a site this site's membership does not know
/// yet (it joined a moment ago), held until the membership does.
#[derive(Clone, Debug)]
pub(super) struct Held {
    from: SiteId,
    request: u64,
    to_master: bool,
    parts: Vec<Vec<u8>>,
    until: Instant,
}

impl<S: Storage> Site<S> {
    /// Whether the host has a dispatch for channel messages (W2). Without
    /// one (the default), a request from another site is answered
    /// CHANNEL_FAIL NoDispatch and a plain message is dropped.
    pub fn set_channel_dispatch(&mut self, on: bool) {
        self.channel_dispatch = on;
    }

    /// Whether the host said it has a dispatch.
    pub fn channel_dispatch(&self) -> bool {
        self.channel_dispatch
    }

    /// Channel requests waiting for their answer.
    pub fn channel_pending(&self) -> usize {
        self.channel_requests.len()
    }

    /// Check the parts against the limits.
    fn check_parts(&self, parts: &[&[u8]]) -> Result<(), ChannelSendError> {
        if parts.is_empty() {
            return Err(ChannelSendError::Empty);
        }
        if parts.len() > caps::MAX_CHANNEL_PARTS {
            return Err(ChannelSendError::TooManyParts {
                parts: parts.len(),
                max: caps::MAX_CHANNEL_PARTS,
            });
        }
        let size = parts
            .iter()
            .map(|p| p.len())
            .fold(0usize, usize::saturating_add);
        let max = self.cfg.limits.max_channel_message as usize;
        if size > max {
            return Err(ChannelSendError::TooLarge { size, max });
        }
        Ok(())
    }

    /// The site a message to `target` goes to now.
    fn channel_dest(&self, target: ChannelTarget) -> Result<SiteId, ChannelSendError> {
        if self.meta.site.0 == 0 {
            return Err(ChannelSendError::NotMember);
        }
        match target {
            ChannelTarget::Master => self.master.ok_or(ChannelSendError::NoMaster),
            ChannelTarget::Site(s) if s == self.meta.site => Ok(s),
            ChannelTarget::Site(s) if self.members.get(s).is_some() => Ok(s),
            ChannelTarget::Site(s) => Err(ChannelSendError::UnknownSite(s)),
        }
    }

    fn channel_frame(&self, to_master: bool, request: u64, parts: &[&[u8]]) -> Option<Vec<u8>> {
        let mut list: HVec<&[u8], { caps::MAX_CHANNEL_PARTS }> = HVec::new();
        for p in parts {
            list.push(p).ok()?;
        }
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let flags = if to_master {
            Flags::TO_MASTER
        } else {
            Flags::NONE
        };
        self.encode(
            flags,
            &Message::ChannelMsg(ChannelMsg {
                request,
                parts: list,
            }),
            size + 128,
        )
    }

    /// Hand a message to the host's dispatch, if the output queue has room.
    fn deliver_message(&mut self, m: Incoming) -> bool {
        if self.out.len() >= self.cfg.limits.max_outputs as usize {
            self.stats.channel_refused += 1;
            return false;
        }
        self.stats.channel_received += 1;
        self.out.push_back(Output::Message(m));
        true
    }

    /// Send a message on a channel, fire-and-forget (`send_msg`, W2). To
    /// the master when this site is master, or to this site itself, it is
    /// delivered locally (as [`Output::Message`], when a dispatch is set).
    /// Returns the site it went to.
    pub fn channel_send(
        &mut self,
        now: Instant,
        target: ChannelTarget,
        parts: &[&[u8]],
    ) -> Result<SiteId, ChannelSendError> {
        self.now = now;
        self.check_parts(parts)?;
        let to = self.channel_dest(target)?;
        let to_master = target == ChannelTarget::Master;
        self.stats.channel_sent += 1;
        if to == self.meta.site {
            if self.channel_dispatch {
                self.deliver_message(Incoming {
                    from: to,
                    reply: None,
                    to_master,
                    parts: parts.iter().map(|p| p.to_vec()).collect(),
                });
            } else {
                self.stats.channel_refused += 1;
            }
            return Ok(to);
        }
        if let Some(frame) = self.channel_frame(to_master, 0, parts) {
            self.channel_out(to, frame);
        }
        Ok(to)
    }

    /// Send a request on a channel and wait for one response part
    /// (`send_request`, W2), for `timeout` or, when `None`, the configured
    /// `channel_request` timeout. The outcome arrives as
    /// [`Answer::Channel`]; it ends early when the connection to the site
    /// breaks or, on a channel to the master, when the master changes.
    pub fn channel_request(
        &mut self,
        now: Instant,
        target: ChannelTarget,
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<RequestId, ChannelSendError> {
        self.now = now;
        self.check_parts(parts)?;
        let to = self.channel_dest(target)?;
        if self.channel_requests.len() >= self.cfg.limits.max_channel_requests as usize {
            return Err(ChannelSendError::Busy);
        }
        let to_master = target == ChannelTarget::Master;
        let id = self.new_request();
        let timeout = timeout.unwrap_or(self.cfg.timeouts.channel_request);
        self.stats.channel_sent += 1;
        self.channel_requests.push(Pending {
            id,
            to_master,
            to,
            deadline: now + timeout,
            frame: None,
        });
        if to == self.meta.site {
            let delivered = self.channel_dispatch
                && self.deliver_message(Incoming {
                    from: to,
                    reply: Some(ReplyTo {
                        site: to,
                        request: id,
                    }),
                    to_master,
                    parts: parts.iter().map(|p| p.to_vec()).collect(),
                });
            if !delivered {
                let error = if self.channel_dispatch {
                    ChannelRequestError::NoResponse
                } else {
                    ChannelRequestError::NoDispatch
                };
                self.finish_channel(id, Err(error));
            }
            return Ok(id);
        }
        if let Some(frame) = self.channel_frame(to_master, id, parts) {
            if self.channel_waits_for(to) {
                // Sent when the connection comes up, within the timeout.
                self.stats.channel_held += 1;
                if let Some(p) = self.channel_requests.iter_mut().find(|p| p.id == id) {
                    p.frame = Some(frame);
                }
            } else {
                self.send_frame(Dest::Site(to), frame);
            }
        }
        Ok(id)
    }

    /// Answer a request the dispatch received with one part (W2).
    pub fn channel_respond(
        &mut self,
        now: Instant,
        reply: ReplyTo,
        part: &[u8],
    ) -> Result<(), ChannelSendError> {
        self.now = now;
        let max = self.cfg.limits.max_channel_message as usize;
        if part.len() > max {
            return Err(ChannelSendError::TooLarge {
                size: part.len(),
                max,
            });
        }
        if reply.site == self.meta.site {
            return if self.channel_requests.iter().any(|p| p.id == reply.request) {
                self.finish_channel(reply.request, Ok(part.to_vec()));
                Ok(())
            } else {
                Err(ChannelSendError::NoRequest)
            };
        }
        let msg = Message::ChannelResponse {
            request: reply.request,
            part,
        };
        if let Some(frame) = self.encode(Flags::NONE, &msg, part.len() + 64) {
            self.channel_out(reply.site, frame);
        }
        Ok(())
    }

    /// Refuse a request the dispatch received (W2): the asker's request
    /// ends with `error` (NoResponse when the dispatch gave no answer).
    pub fn channel_refuse(&mut self, now: Instant, reply: ReplyTo, error: ChannelError) {
        self.now = now;
        if reply.site == self.meta.site {
            if self.channel_requests.iter().any(|p| p.id == reply.request) {
                self.finish_channel(reply.request, Err(error.into()));
            }
            return;
        }
        self.send_channel_fail(reply.site, reply.request, error);
    }

    fn send_channel_fail(&mut self, to: SiteId, request: u64, error: ChannelError) {
        self.stats.channel_refused += 1;
        if let Some(frame) = self.encode(Flags::NONE, &Message::ChannelFail { request, error }, 64)
        {
            self.channel_out(to, frame);
        }
    }

    /// Whether a channel frame to `to` waits for the connection: `to` is a
    /// member the host has not reported any connection to (nor a failed
    /// try) since this site opened or learned of it, so its first
    /// connection is most likely still forming. A frame sent now would be
    /// refused by the host or lost, and a request would end with nothing
    /// better than its timeout. Once the host reported on the site, frames
    /// go at once, as before (a broken connection ends requests early).
    ///
    /// Only on a host that reports connections (it has reported one since
    /// this site opened): on a host that reports none, frames go at once.
    fn channel_waits_for(&self, to: SiteId) -> bool {
        self.reports_connections
            && to != self.meta.site
            && self.members.get(to).is_some_and(|m| !m.connected)
            && !self.channel_reported.contains(&to)
    }

    /// Send a channel response, refusal or message to `to`, or keep it
    /// until the site's first connection (bounded by
    /// `max_channel_requests`; past it the frame goes at once).
    fn channel_out(&mut self, to: SiteId, frame: Vec<u8>) {
        let room = self.channel_outbox.len() + self.channel_held.len()
            < self.cfg.limits.max_channel_requests as usize;
        if room && self.channel_waits_for(to) {
            self.stats.channel_held += 1;
            let until = self.now + self.cfg.timeouts.channel_request;
            self.channel_outbox.push(Parked { to, frame, until });
        } else {
            self.send_frame(Dest::Site(to), frame);
        }
    }

    /// The host reported on the connection to member `site` (W2): frames
    /// that waited for it leave when it is up; when it is down (or a try
    /// failed), requests that waited end now with `Unreachable` and the
    /// rest is dropped.
    pub(super) fn channel_connection(&mut self, site: SiteId, up: bool) {
        self.reports_connections = true;
        // Members only, so the set stays within max_sites: a report on a
        // site not (yet) a member says nothing channel_waits_for asks, and
        // its entry would be cleared when it is added anyway.
        if self.members.get(site).is_some() {
            self.channel_reported.insert(site);
        }
        let mut sends: Vec<Vec<u8>> = Vec::new();
        let mut ended: Vec<RequestId> = Vec::new();
        for p in self.channel_requests.iter_mut().filter(|p| p.to == site) {
            if let Some(f) = p.frame.take() {
                if up {
                    sends.push(f);
                } else {
                    ended.push(p.id);
                }
            }
        }
        let mut i = 0;
        while i < self.channel_outbox.len() {
            if self.channel_outbox[i].to == site {
                let p = self.channel_outbox.swap_remove(i);
                if up {
                    sends.push(p.frame);
                } else {
                    self.stats.channel_refused += 1;
                }
            } else {
                i += 1;
            }
        }
        for f in sends {
            self.send_frame(Dest::Site(site), f);
        }
        for id in ended {
            self.finish_channel(
                id,
                Err(ChannelRequestError::Send(ChannelSendError::Unreachable(
                    site,
                ))),
            );
        }
    }

    /// CHANNEL_MSG from a site the membership does not know: held until
    /// the record that adds it is applied, at most the request timeout. A
    /// site that joined a moment ago can write to a client before the
    /// master's record adding it reached that client; dropping its message
    /// would leave its request to time out. Any peer can claim an id no
    /// member has, so what is held is bounded apart from this site's own
    /// waiting frames: at most [`HELD_PER_SENDER`] from one id, and at
    /// most a quarter of `max_channel_requests` in all (at least one), so
    /// made-up ids never take the room this site's own requests need.
    pub(super) fn hold_channel_msg(
        &mut self,
        env: &Envelope,
        m: &ChannelMsg<'_>,
    ) -> Result<(), Drop> {
        let limit = self.cfg.limits.max_channel_requests as usize;
        let held_cap = (limit / 4).max(1);
        let from_sender = self
            .channel_held
            .iter()
            .filter(|h| h.from == env.from)
            .count();
        let room = self.channel_outbox.len() + self.channel_held.len() < limit
            && self.channel_held.len() < held_cap
            && from_sender < HELD_PER_SENDER;
        if env.from.0 == 0 || !room {
            self.stats.channel_refused += 1;
            return Err(Drop::UnknownSite);
        }
        self.stats.channel_held += 1;
        self.channel_held.push(Held {
            from: env.from,
            request: m.request,
            to_master: env.flags.contains(Flags::TO_MASTER),
            parts: m.parts.iter().map(|p| p.to_vec()).collect(),
            until: self.now + self.cfg.timeouts.channel_request,
        });
        Ok(())
    }

    /// Member `site` was added (W2): take the messages it sent before.
    pub(super) fn channel_member_added(&mut self, site: SiteId) {
        self.channel_reported.remove(&site);
        let mut i = 0;
        while i < self.channel_held.len() {
            if self.channel_held[i].from == site {
                let h = self.channel_held.remove(i);
                self.take_channel_msg(h.from, h.request, h.to_master, h.parts);
            } else {
                i += 1;
            }
        }
    }

    /// Member `site` was removed (W2): its waiting frames go.
    pub(super) fn channel_member_removed(&mut self, site: SiteId) {
        self.channel_reported.remove(&site);
        let before = self.channel_outbox.len() + self.channel_held.len();
        self.channel_outbox.retain(|p| p.to != site);
        self.channel_held.retain(|h| h.from != site);
        let dropped = before - self.channel_outbox.len() - self.channel_held.len();
        self.stats.channel_refused += dropped as u64;
        let ended: Vec<RequestId> = self
            .channel_requests
            .iter()
            .filter(|p| p.to == site && p.frame.is_some())
            .map(|p| p.id)
            .collect();
        for id in ended {
            self.finish_channel(
                id,
                Err(ChannelRequestError::Send(ChannelSendError::UnknownSite(
                    site,
                ))),
            );
        }
    }

    /// The host could not send request `id`'s frame to `to` (no
    /// connection): the request ends now with `Send(Unreachable)`. Returns
    /// whether it was waiting.
    pub fn channel_unreachable(&mut self, now: Instant, id: RequestId, to: SiteId) -> bool {
        self.now = now;
        let waiting = self
            .channel_requests
            .iter()
            .any(|p| p.id == id && p.to == to && to != self.meta.site);
        if waiting {
            self.finish_channel(
                id,
                Err(ChannelRequestError::Send(ChannelSendError::Unreachable(to))),
            );
        }
        waiting
    }

    /// End request `id` with `result`.
    fn finish_channel(&mut self, id: RequestId, result: Result<Vec<u8>, ChannelRequestError>) {
        if let Some(p) = self.channel_requests.iter().position(|p| p.id == id) {
            self.channel_requests.swap_remove(p);
            if result.is_err() {
                self.stats.channel_failed += 1;
            }
            self.out
                .push_back(Output::Answer(Answer::Channel { id, result }));
        }
    }

    /// CHANNEL_MSG, at the receiver.
    pub(super) fn on_channel_msg(
        &mut self,
        env: &Envelope,
        m: &ChannelMsg<'_>,
    ) -> Result<(), Drop> {
        let parts = m.parts.iter().map(|p| p.to_vec()).collect();
        self.take_channel_msg(
            env.from,
            m.request,
            env.flags.contains(Flags::TO_MASTER),
            parts,
        );
        Ok(())
    }

    /// A channel message from member `from`: to the dispatch, or refused.
    fn take_channel_msg(
        &mut self,
        from: SiteId,
        request: u64,
        to_master: bool,
        parts: Vec<Vec<u8>>,
    ) {
        let refuse = if to_master && self.role != Role::Master {
            Some(ChannelError::NotMaster)
        } else if !self.channel_dispatch {
            Some(ChannelError::NoDispatch)
        } else {
            None
        };
        if let Some(error) = refuse {
            if request != 0 {
                self.send_channel_fail(from, request, error);
                return;
            }
            // A plain message nobody can take: dropped, counted.
            self.stats.channel_refused += 1;
            return;
        }
        let reply = (request != 0).then_some(ReplyTo {
            site: from,
            request,
        });
        let delivered = self.deliver_message(Incoming {
            from,
            reply,
            to_master,
            parts,
        });
        if !delivered {
            if let Some(r) = reply {
                self.send_channel_fail(r.site, r.request, ChannelError::NoResponse);
            }
        }
    }

    /// The request `request` from `from`, if this site waits on it.
    fn channel_waiting(&self, from: SiteId, request: u64) -> Option<RequestId> {
        self.channel_requests
            .iter()
            .find(|p| p.id == request && p.to == from)
            .map(|p| p.id)
    }

    /// CHANNEL_RESPONSE, at the asker.
    pub(super) fn on_channel_response(
        &mut self,
        env: &Envelope,
        request: u64,
        part: &[u8],
    ) -> Result<(), Drop> {
        let id = self
            .channel_waiting(env.from, request)
            .ok_or(Drop::Duplicate)?;
        self.finish_channel(id, Ok(part.to_vec()));
        Ok(())
    }

    /// CHANNEL_FAIL, at the asker.
    pub(super) fn on_channel_fail(
        &mut self,
        env: &Envelope,
        request: u64,
        error: ChannelError,
    ) -> Result<(), Drop> {
        let id = self
            .channel_waiting(env.from, request)
            .ok_or(Drop::Duplicate)?;
        self.finish_channel(id, Err(error.into()));
        Ok(())
    }

    /// The master may have changed: requests on a channel to the master
    /// that went to another site end now.
    pub(super) fn channel_follow_master(&mut self) {
        let master = self.master;
        let moved: Vec<RequestId> = self
            .channel_requests
            .iter()
            .filter(|p| p.to_master && Some(p.to) != master)
            .map(|p| p.id)
            .collect();
        for id in moved {
            self.finish_channel(id, Err(ChannelRequestError::MasterChanged));
        }
    }

    /// The connection to `site` broke: requests to it end now.
    pub(super) fn channel_disconnected(&mut self, site: SiteId) {
        let gone: Vec<RequestId> = self
            .channel_requests
            .iter()
            .filter(|p| p.to == site)
            .map(|p| p.id)
            .collect();
        for id in gone {
            self.finish_channel(id, Err(ChannelRequestError::Disconnected(site)));
        }
    }

    /// The earliest channel request deadline.
    pub(super) fn channel_deadline(&self) -> Option<Instant> {
        let requests = self.channel_requests.iter().map(|p| p.deadline);
        let parked = self.channel_outbox.iter().map(|p| p.until);
        let held = self.channel_held.iter().map(|h| h.until);
        requests.chain(parked).chain(held).min()
    }

    /// End requests whose time is up.
    pub(super) fn channel_timeouts(&mut self) {
        let now = self.now;
        let due: Vec<(RequestId, Option<SiteId>)> = self
            .channel_requests
            .iter()
            .filter(|p| p.deadline <= now)
            .map(|p| (p.id, p.frame.as_ref().map(|_| p.to)))
            .collect();
        for (id, waited_for) in due {
            // A request whose site's connection never came up says so.
            let error = match waited_for {
                Some(to) => ChannelRequestError::Send(ChannelSendError::Unreachable(to)),
                None => ChannelRequestError::Timeout,
            };
            self.finish_channel(id, Err(error));
        }
        let before = self.channel_outbox.len() + self.channel_held.len();
        self.channel_outbox.retain(|p| p.until > now);
        self.channel_held.retain(|h| h.until > now);
        let dropped = before - self.channel_outbox.len() - self.channel_held.len();
        self.stats.channel_refused += dropped as u64;
    }
}
