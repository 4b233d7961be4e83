//! Message channels (W2) through the Site state machine over the instant
//! test network: a fire-and-forget message reaches the target's dispatch;
//! a request is answered with one part; requests time out, are refused
//! without a dispatch (NoDispatch) or by a site that is not master
//! (NotMaster), end early when the connection breaks or the master
//! changes; sizes, parts and outstanding requests are bounded; a master
//! sending to the master delivers to itself; a channel to the master
//! follows a new master.
//!
//! Closing a channel is a host concept (the handle): the native host's
//! tests check that a closed channel refuses every call.

mod common;

use common::Net;
use shoal_core::config::{caps, Config};
use shoal_core::site::{
    Answer, ChannelRequestError, ChannelSendError, ChannelTarget, Dest, Incoming, Output, Role,
};
use shoal_core::wire::{decode_frame, encode_frame, ChannelError, Flags, Message, MessageKind};
use shoal_core::{Limits, SiteId};
use std::time::Duration;

fn cfg() -> Config {
    let mut c = Config {
        step_down_without_majority: false,
        ..Config::default()
    };
    c.timeouts.heartbeat_send = Duration::from_secs(60);
    c.timeouts.heartbeat_monitor = Duration::from_secs(300);
    c
}

/// A group of `n`, every site with a dispatch.
fn group(n: usize) -> Net {
    let mut net = Net::group(vec![cfg(); n]);
    for i in 0..n {
        net.site_mut(i).set_channel_dispatch(true);
    }
    net
}

fn id(net: &Net, i: usize) -> SiteId {
    net.site(i).id()
}

fn request(
    net: &mut Net,
    i: usize,
    target: ChannelTarget,
    parts: &[&[u8]],
    timeout: Option<Duration>,
) -> Result<u64, ChannelSendError> {
    let now = net.now;
    let r = net.site_mut(i).channel_request(now, target, parts, timeout);
    net.run();
    r
}

fn send(
    net: &mut Net,
    i: usize,
    target: ChannelTarget,
    parts: &[&[u8]],
) -> Result<SiteId, ChannelSendError> {
    let now = net.now;
    let r = net.site_mut(i).channel_send(now, target, parts);
    net.run();
    r
}

/// Messages site `i`'s dispatch received, taken.
fn take_messages(net: &mut Net, i: usize) -> Vec<Incoming> {
    let (mine, rest): (Vec<_>, Vec<_>) = net.messages.drain(..).partition(|(s, _)| *s == i);
    net.messages = rest;
    mine.into_iter().map(|(_, m)| m).collect()
}

/// Answer every request site `i` received with `part`.
fn respond_all(net: &mut Net, i: usize, part: &[u8]) -> usize {
    let ms = take_messages(net, i);
    let mut n = 0;
    for m in ms {
        if let Some(r) = m.reply {
            let now = net.now;
            net.site_mut(i)
                .channel_respond(now, r, part)
                .expect("respond");
            n += 1;
        }
    }
    net.run();
    n
}

fn outcome(net: &Net, i: usize, id: u64) -> Option<Result<Vec<u8>, ChannelRequestError>> {
    net.answers.iter().find_map(|(s, a)| match a {
        Answer::Channel { id: x, result } if *s == i && *x == id => Some(result.clone()),
        _ => None,
    })
}

/// W2: send_msg is fire-and-forget; the target's dispatch gets the parts,
/// the sender and no reply; a channel to the master says so.
#[test]
fn w2_a_message_reaches_the_targets_dispatch() {
    let mut net = group(3);
    let s2 = id(&net, 2);
    let to = send(
        &mut net,
        1,
        ChannelTarget::Site(s2),
        &[b"hello", b"", b"world"],
    )
    .expect("sent");
    assert_eq!(to, id(&net, 2));
    let got = take_messages(&mut net, 2);
    assert_eq!(got.len(), 1, "one message at s2");
    assert_eq!(got[0].from, id(&net, 1));
    assert_eq!(
        got[0].parts,
        vec![b"hello".to_vec(), vec![], b"world".to_vec()]
    );
    assert!(!got[0].needs_response());
    assert!(!got[0].to_master);
    assert!(take_messages(&mut net, 0).is_empty(), "only the target");

    let to = send(&mut net, 2, ChannelTarget::Master, &[b"to the master"]).expect("sent");
    assert_eq!(to, id(&net, 0));
    let got = take_messages(&mut net, 0);
    assert_eq!(got.len(), 1);
    assert!(got[0].to_master);
    assert_eq!(net.site(2).stats().channel_sent, 1);
    assert_eq!(net.site(0).stats().channel_received, 1);
    assert!(
        net.answers
            .iter()
            .all(|(_, a)| !matches!(a, Answer::Channel { .. })),
        "a message is never answered"
    );
}

/// W2: send_request gets the one response part.
#[test]
fn w2_a_request_gets_its_response() {
    let mut net = group(3);
    let r = request(&mut net, 1, ChannelTarget::Master, &[b"ping", b"2"], None).expect("sent");
    assert!(
        outcome(&net, 1, r).is_none(),
        "not answered before the dispatch"
    );
    let got = take_messages(&mut net, 0);
    assert_eq!(got.len(), 1);
    assert!(got[0].needs_response());
    assert_eq!(got[0].parts, vec![b"ping".to_vec(), b"2".to_vec()]);
    let now = net.now;
    net.site_mut(0)
        .channel_respond(now, got[0].reply.expect("reply"), b"pong from s0")
        .expect("respond");
    net.run();
    assert_eq!(outcome(&net, 1, r), Some(Ok(b"pong from s0".to_vec())));
    assert_eq!(net.site(1).channel_pending(), 0);
    // A second response to the same request is ignored.
    net.site_mut(0)
        .channel_respond(now, got[0].reply.expect("reply"), b"again")
        .expect("respond");
    net.run();
    let n = net
        .answers
        .iter()
        .filter(|(s, a)| *s == 1 && matches!(a, Answer::Channel { .. }))
        .count();
    assert_eq!(n, 1, "answered once");
}

/// W2: a request with no response ends at its timeout (its own, or the
/// configured one).
#[test]
fn w2_an_unanswered_request_times_out() {
    let mut net = group(2);
    let r = request(
        &mut net,
        1,
        ChannelTarget::Master,
        &[b"q"],
        Some(Duration::from_millis(300)),
    )
    .expect("sent");
    assert_eq!(
        take_messages(&mut net, 0).len(),
        1,
        "delivered, not answered"
    );
    net.advance(Duration::from_millis(299));
    assert!(outcome(&net, 1, r).is_none(), "not before its timeout");
    net.advance(Duration::from_millis(2));
    assert_eq!(outcome(&net, 1, r), Some(Err(ChannelRequestError::Timeout)));
    assert_eq!(net.site(1).stats().channel_failed, 1);

    // The configured default (5 s).
    let r = request(&mut net, 1, ChannelTarget::Master, &[b"q"], None).expect("sent");
    net.advance(Duration::from_millis(4_900));
    assert!(outcome(&net, 1, r).is_none());
    net.advance(Duration::from_millis(200));
    assert_eq!(outcome(&net, 1, r), Some(Err(ChannelRequestError::Timeout)));
}

/// W2: without a dispatch a request is answered NoDispatch at once, and a
/// plain message is dropped (counted).
#[test]
fn w2_no_dispatch_answers_nodispatch() {
    let mut net = group(2);
    net.site_mut(0).set_channel_dispatch(false);
    let r = request(&mut net, 1, ChannelTarget::Master, &[b"q"], None).expect("sent");
    assert_eq!(
        outcome(&net, 1, r),
        Some(Err(ChannelRequestError::NoDispatch))
    );
    send(&mut net, 1, ChannelTarget::Master, &[b"m"]).expect("sent");
    assert!(take_messages(&mut net, 0).is_empty());
    assert_eq!(net.site(0).stats().channel_refused, 2);
    // The refused request is a failed one at the asker.
    assert_eq!(net.site(1).stats().channel_failed, 1);
    // The dispatch may also refuse a request itself.
    net.site_mut(0).set_channel_dispatch(true);
    let r = request(&mut net, 1, ChannelTarget::Master, &[b"q"], None).expect("sent");
    let m = take_messages(&mut net, 0).pop().expect("delivered");
    let now = net.now;
    net.site_mut(0)
        .channel_refuse(now, m.reply.expect("reply"), ChannelError::NoResponse);
    net.run();
    assert_eq!(
        outcome(&net, 1, r),
        Some(Err(ChannelRequestError::NoResponse))
    );
}

/// W2: parts and sizes are checked before anything is sent.
#[test]
fn w2_sizes_and_parts_are_bounded() {
    let mut net = group(2);
    let max = net.site(1).config().limits.max_channel_message as usize;
    let big = vec![7u8; max + 1];
    let m = ChannelTarget::Master;
    assert_eq!(
        send(&mut net, 1, m, &[&big]),
        Err(ChannelSendError::TooLarge { size: max + 1, max })
    );
    let half = vec![1u8; max / 2 + 1];
    assert!(matches!(
        request(&mut net, 1, m, &[&half, &half], None),
        Err(ChannelSendError::TooLarge { .. })
    ));
    let exact = vec![1u8; max];
    send(&mut net, 1, m, &[&exact]).expect("exactly the limit is fine");
    assert_eq!(take_messages(&mut net, 0)[0].parts[0].len(), max);
    let parts: Vec<&[u8]> = vec![b"p"; caps::MAX_CHANNEL_PARTS + 1];
    assert_eq!(
        send(&mut net, 1, m, &parts),
        Err(ChannelSendError::TooManyParts {
            parts: caps::MAX_CHANNEL_PARTS + 1,
            max: caps::MAX_CHANNEL_PARTS
        })
    );
    send(&mut net, 1, m, &parts[..caps::MAX_CHANNEL_PARTS]).expect("16 parts are fine");
    assert_eq!(
        take_messages(&mut net, 0)[0].parts.len(),
        caps::MAX_CHANNEL_PARTS
    );
    assert_eq!(send(&mut net, 1, m, &[]), Err(ChannelSendError::Empty));
    assert_eq!(
        send(&mut net, 1, ChannelTarget::Site(SiteId(42)), &[b"x"]),
        Err(ChannelSendError::UnknownSite(SiteId(42)))
    );
    // A response above the limit is refused at the responder.
    let r = request(&mut net, 1, m, &[b"q"], None).expect("sent");
    let msg = take_messages(&mut net, 0).pop().expect("delivered");
    let now = net.now;
    assert!(matches!(
        net.site_mut(0)
            .channel_respond(now, msg.reply.expect("reply"), &big),
        Err(ChannelSendError::TooLarge { .. })
    ));
    assert!(outcome(&net, 1, r).is_none());
    assert_eq!(
        net.site(1).stats().channel_sent,
        3,
        "refused sends count not"
    );
}

/// W2: at most max_channel_requests requests wait at once.
#[test]
fn w2_outstanding_requests_are_bounded() {
    let mut c = cfg();
    c.limits.max_channel_requests = 2;
    let mut net = Net::group(vec![c; 2]);
    net.site_mut(0).set_channel_dispatch(true);
    let m = ChannelTarget::Master;
    let a = request(&mut net, 1, m, &[b"1"], None).expect("first");
    request(&mut net, 1, m, &[b"2"], None).expect("second");
    assert_eq!(
        request(&mut net, 1, m, &[b"3"], None),
        Err(ChannelSendError::Busy)
    );
    assert_eq!(net.site(1).channel_pending(), 2);
    // Once one is answered there is room again.
    let first = take_messages(&mut net, 0).remove(0);
    let now = net.now;
    net.site_mut(0)
        .channel_respond(now, first.reply.expect("reply"), b"one")
        .expect("respond");
    net.run();
    assert_eq!(outcome(&net, 1, a), Some(Ok(b"one".to_vec())));
    request(&mut net, 1, m, &[b"3"], None).expect("room again");
    assert_eq!(Limits::device().max_channel_requests, 8);
}

/// W2: a master sending to the master receives its own message, locally:
/// nothing goes on the network.
#[test]
fn w2_a_master_sending_to_the_master_receives_it_itself() {
    let mut net = group(2);
    let now = net.now;
    let s0 = id(&net, 0);
    let to = net
        .site_mut(0)
        .channel_send(now, ChannelTarget::Master, &[b"echo"])
        .expect("sent");
    assert_eq!(to, s0);
    let mut outs = Vec::new();
    while let Some(o) = net.site_mut(0).poll_output() {
        outs.push(o);
    }
    assert!(
        outs.iter().all(|o| !matches!(o, Output::Send { .. })),
        "no frame sent: {outs:?}"
    );
    let Some(Output::Message(m)) = outs.into_iter().find(|o| matches!(o, Output::Message(_)))
    else {
        panic!("the master's own dispatch did not get the message");
    };
    assert_eq!(m.from, s0);
    assert!(m.to_master);
    assert_eq!(m.parts, vec![b"echo".to_vec()]);

    // A request to itself is answered through its own dispatch.
    let r = request(&mut net, 0, ChannelTarget::Master, &[b"who"], None).expect("sent");
    assert_eq!(respond_all(&mut net, 0, b"me"), 1);
    assert_eq!(outcome(&net, 0, r), Some(Ok(b"me".to_vec())));
    // Without a dispatch it fails at once.
    net.site_mut(0).set_channel_dispatch(false);
    let r = request(&mut net, 0, ChannelTarget::Master, &[b"who"], None).expect("sent");
    assert_eq!(
        outcome(&net, 0, r),
        Some(Err(ChannelRequestError::NoDispatch))
    );
    // A client can address itself by id, too.
    let s1 = id(&net, 1);
    let r = request(&mut net, 1, ChannelTarget::Site(s1), &[b"me?"], None).expect("sent");
    assert_eq!(respond_all(&mut net, 1, b"yes"), 1);
    assert_eq!(outcome(&net, 1, r), Some(Ok(b"yes".to_vec())));
}

/// W2: a message to the master when none is known fails with NoMaster.
#[test]
fn w2_no_master_known_is_a_typed_error() {
    // Two sites under 2SITE_STRICT: the client left alone cannot elect
    // itself, so no master is known.
    let mut net = group(2);
    net.crash(0);
    assert_eq!(net.site(1).master(), None);
    assert_eq!(
        send(&mut net, 1, ChannelTarget::Master, &[b"x"]),
        Err(ChannelSendError::NoMaster)
    );
    assert_eq!(
        request(&mut net, 1, ChannelTarget::Master, &[b"x"], None),
        Err(ChannelSendError::NoMaster)
    );
    assert_eq!(
        ChannelSendError::NoMaster.to_string(),
        "no master is known now; retry once one is elected"
    );
}

/// W2: a request ends at once when the connection to its site breaks, and
/// a request on the master channel when the master changes.
#[test]
fn w2_requests_end_early_when_the_connection_breaks_or_the_master_changes() {
    let mut net = group(3);
    let s2 = id(&net, 2);
    let r = request(&mut net, 1, ChannelTarget::Site(s2), &[b"q"], None).expect("sent");
    take_messages(&mut net, 2);
    net.partition(&[2]);
    assert_eq!(
        outcome(&net, 1, r),
        Some(Err(ChannelRequestError::Disconnected(s2))),
        "not at the 5 s timeout: at once"
    );
    net.heal();
    // The master channel: s0 is master; a request waits there; s0 hands
    // mastership to s2.
    let r = request(&mut net, 1, ChannelTarget::Master, &[b"q"], None).expect("sent");
    assert_eq!(take_messages(&mut net, 0).len(), 1);
    let now = net.now;
    net.site_mut(0).transfer_master(now, s2).expect("transfer");
    net.run();
    net.advance(Duration::from_secs(3));
    assert_eq!(net.masters(), vec![2], "s2 took over");
    assert_eq!(
        outcome(&net, 1, r),
        Some(Err(ChannelRequestError::MasterChanged))
    );
}

/// W2: the channel to the master follows the master: after a failover the
/// same target reaches the new master, which answers.
#[test]
fn w2_the_master_channel_follows_a_new_master() {
    let mut net = group(3);
    let r = request(
        &mut net,
        2,
        ChannelTarget::Master,
        &[b"who is master"],
        None,
    )
    .expect("sent");
    respond_all(&mut net, 0, b"s0");
    assert_eq!(outcome(&net, 2, r), Some(Ok(b"s0".to_vec())));
    net.crash(0);
    net.advance(Duration::from_secs(5));
    let masters = net.masters();
    assert_eq!(masters.len(), 1, "a new master was elected");
    let new = masters[0];
    assert_ne!(new, 0);
    net.site_mut(new).set_channel_dispatch(true);
    let r = request(
        &mut net,
        2,
        ChannelTarget::Master,
        &[b"who is master"],
        None,
    )
    .expect("sent");
    let name = format!("s{new}");
    respond_all(&mut net, new, name.as_bytes());
    assert_eq!(outcome(&net, 2, r), Some(Ok(name.into_bytes())));
    assert_eq!(net.site(2).master(), Some(id(&net, new)));
    assert_eq!(net.site(new).role(), Role::Master);
}

/// W2: a message sent to the master that reaches a site which is not
/// master is refused: a request with NotMaster, a message dropped.
#[test]
fn w2_a_site_that_is_not_master_refuses_the_master_channel() {
    let mut net = group(3);
    let s1 = id(&net, 1);
    // s1 asks s2 directly, flagged as for the master (as a stale view of
    // who is master would).
    let now = net.now;
    let s2 = id(&net, 2);
    let r = net
        .site_mut(1)
        .channel_request(now, ChannelTarget::Site(s2), &[b"q"], None)
        .expect("sent");
    let frame = loop {
        match net.site_mut(1).poll_output() {
            Some(Output::Send { frame, .. }) => break frame,
            Some(_) => continue,
            None => panic!("no frame"),
        }
    };
    let limits = net.site(1).config().limits;
    let (mut env, msg) = decode_frame(&frame, &limits).expect("decodes");
    assert_eq!(msg.kind(), MessageKind::ChannelMsg);
    env.flags = Flags::TO_MASTER;
    let mut flagged = Vec::new();
    encode_frame(&env, &msg, &mut flagged, &limits).expect("encodes");
    let now = net.now;
    net.site_mut(2)
        .handle_frame(now, &flagged)
        .expect("handled");
    let answer = loop {
        match net.site_mut(2).poll_output() {
            Some(Output::Send { to, frame, .. }) => break (to, frame),
            Some(Output::Message(_)) => panic!("a client took a message for the master"),
            Some(_) => continue,
            None => panic!("no answer"),
        }
    };
    assert_eq!(answer.0, Dest::Site(s1));
    let (_, fail) = decode_frame(&answer.1, &limits).expect("decodes");
    assert_eq!(
        fail,
        Message::ChannelFail {
            request: r,
            error: ChannelError::NotMaster
        }
    );
    net.site_mut(1).handle_frame(now, &answer.1).expect("taken");
    net.run();
    assert_eq!(
        outcome(&net, 1, r),
        Some(Err(ChannelRequestError::NotMaster))
    );
}

/// W2: messages from ids no member has (a site that joined a moment ago,
/// or a peer making ids up) are held, but boundedly: at most
/// HELD_PER_SENDER from one id and a quarter of max_channel_requests in
/// all; the rest are refused and counted. The site's own requests keep
/// their room. (A held message is handled once its sender's member record
/// is applied: see the W2 scenarios in shoal-tests.)
#[test]
fn w2_messages_from_unknown_sites_are_held_within_bounds() {
    let mut c = cfg();
    c.limits.max_channel_requests = 16;
    let mut net = Net::group(vec![c; 2]);
    for i in 0..2 {
        net.site_mut(i).set_channel_dispatch(true);
    }
    let limits = net.site(1).config().limits;
    let env0 = common::envelope_of(net.site(0));
    let unknown = |k: u32| {
        let mut env = env0;
        env.from = SiteId(1000 + k);
        let mut parts = heapless::Vec::new();
        parts.push(&b"hello"[..]).expect("one part");
        let mut f = Vec::new();
        let msg = Message::ChannelMsg(shoal_core::wire::ChannelMsg { request: 7, parts });
        encode_frame(&env, &msg, &mut f, &limits).expect("encodes");
        f
    };
    // One id sends ten: HELD_PER_SENDER are held.
    let now = net.now;
    let one: Vec<Vec<u8>> = (0..10).map(|_| unknown(0)).collect();
    let taken = one
        .iter()
        .filter(|f| net.site_mut(1).handle_frame(now, f).is_ok())
        .count();
    assert_eq!(taken, shoal_core::site::HELD_PER_SENDER);
    // Twenty made-up ids: at most a quarter of 16 held in all.
    let many: Vec<Vec<u8>> = (1..=20).map(unknown).collect();
    for f in &many {
        let _ = net.site_mut(1).handle_frame(now, f);
    }
    let st = net.site(1).stats();
    assert_eq!(st.channel_held, 4, "held beyond a quarter of the room");
    assert_eq!(st.channel_refused, 6 + 20);
    assert!(
        take_messages(&mut net, 1).is_empty(),
        "an unknown site's message reached the dispatch"
    );
    // The site's own requests still have their room: all 12 of the rest.
    for k in 0..12u8 {
        request(&mut net, 1, ChannelTarget::Master, &[&[k]], None)
            .unwrap_or_else(|e| panic!("request {k} refused: {e:?}"));
    }
}
