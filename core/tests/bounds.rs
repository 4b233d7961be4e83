//! Every message has a bounded encoded size (issue 2): for each message
//! type, the largest message `Limits::default()` and `Limits::device()`
//! allow encodes into at most `max_frame` bytes and decodes back, and one
//! byte (or one element) more in any payload is refused by both
//! `encode_frame` and `decode_frame`.

use serde::Serialize;
use shoal_core::config::{caps, Limits};
use shoal_core::ids::{CommitToken, ElectionGen, Generation, Instant, Lsn, SiteId};
use shoal_core::log::record::{encode_record, RecordBody};
use shoal_core::log::{Membership, Op, RecordError};
use shoal_core::wire::{
    self, decode_frame, encode_frame, BulkLog, ChannelError, ChannelMsg, DbSummary, DecodeError,
    EncodeError, Envelope, Flags, ForwardResult, ForwardWrite, Handshake, JoinAnswer, JoinReq,
    JoinResult, LogEntry, Member, Message, MessageKind, Page, RemoveResult, RequesterLimits,
    Update, Vote1, FRAME_OVERHEAD, PROTOCOL_VERSION,
};

const MAX: u32 = u32::MAX;
const LSN_MAX: Lsn = Lsn::new(MAX, MAX);
const TAKES_MAX: RequesterLimits = RequesterLimits {
    answer_bytes: MAX,
    bulk_bytes: MAX,
    record_bytes: MAX,
    page_bytes: MAX,
    max_key: MAX,
    max_value: MAX,
    max_txn_ops: MAX,
};

/// The envelope with every field at its longest encoding.
fn big_env() -> Envelope {
    Envelope {
        from: SiteId(MAX),
        generation: Generation(MAX),
        egen: ElectionGen(MAX),
        lsn: LSN_MAX,
        flags: Flags(Flags::KNOWN),
    }
}

/// A frame built without any check, as a hostile peer could send it.
fn raw_frame<M: Serialize>(env: &Envelope, msg: &M) -> Vec<u8> {
    let mut out = PROTOCOL_VERSION.to_le_bytes().to_vec();
    out = postcard::to_extend(env, out).unwrap();
    postcard::to_extend(msg, out).unwrap()
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Encoded length of a put of a `k`-byte key and a `v`-byte value to
/// database "d": variant, name, key, value (each with a varint length).
fn put_len(k: usize, v: usize) -> usize {
    1 + 2 + varint_len(k as u64) + k + varint_len(v as u64) + v
}

/// A put whose encoded length is exactly `len`, within the key and value
/// limits.
fn put_of_len(len: usize, l: &Limits) -> Option<(usize, usize)> {
    for k in 0..=l.max_key as usize {
        let Some(t) = len.checked_sub(3 + varint_len(k as u64) + k) else {
            break;
        };
        let v = (t.saturating_sub(5)..=t).find(|&v| v + varint_len(v as u64) == t);
        if let Some(v) = v.filter(|&v| v <= l.max_value as usize) {
            return Some((k, v));
        }
    }
    None
}

/// A commit record at `lsn` whose body is exactly `body` bytes (txn id 0,
/// timestamp 0, full-size puts and one put to fill), built with limits
/// raised just enough to allow it.
fn record_with_body(lsn: Lsn, body: usize, l: &Limits) -> Vec<u8> {
    let full = put_len(l.max_key as usize, l.max_value as usize);
    let mut plan = None;
    for f in 0..=l.max_txn_ops as usize {
        let base = 2 + varint_len(f as u64 + 1) + f * full;
        let Some(rest) = body.checked_sub(base) else {
            break;
        };
        if let Some(last) = put_of_len(rest, l) {
            plan = Some((f, last));
            break;
        }
    }
    let (f, (k, v)) = plan.unwrap_or_else(|| panic!("no commit body of exactly {body} bytes"));
    let key = vec![b'k'; l.max_key as usize];
    let value = vec![0x5a; l.max_value as usize];
    let mut ops = vec![
        Op::Put {
            db: "d",
            key: &key,
            value: &value,
        };
        f
    ];
    ops.push(Op::Put {
        db: "d",
        key: &key[..k],
        value: &value[..v],
    });
    let enc = Limits {
        max_record: body as u32,
        ..*l
    };
    let mut out = Vec::new();
    encode_record(
        lsn,
        Generation(MAX),
        &RecordBody::Commit {
            txn_id: 0,
            timestamp: Instant(0),
            ops: &ops,
        },
        &mut out,
        &enc,
    )
    .unwrap();
    assert_eq!(out.len(), 16 + body);
    out
}

/// Entries back to back for a BULK_LOG of exactly `total` bytes.
fn bulk_bytes(total: usize, l: &Limits) -> (u32, Vec<u8>) {
    let max_entry = l.max_record as usize + 16 + 20 + 5;
    let k = total.div_ceil(max_entry * 9 / 10);
    let mut out = Vec::new();
    for i in 0..k {
        let want = if i + 1 == k {
            total - out.len()
        } else {
            total / k
        };
        // entry = lsn (10) + prev + varint(record) + record
        let mut done = false;
        for prev in [Lsn::ZERO, Lsn::new(0, 200)] {
            let prev_len = varint_len(prev.file as u64) + varint_len(prev.offset as u64);
            let left = want - 10 - prev_len;
            // record length r with r + varint(r) == left
            let Some(r) =
                (left.saturating_sub(4)..=left).find(|&r| r + varint_len(r as u64) == left)
            else {
                continue;
            };
            let rec = record_with_body(LSN_MAX, r - 16, l);
            let before = out.len();
            out = postcard::to_extend(
                &LogEntry {
                    lsn: LSN_MAX,
                    prev,
                    record: &rec,
                },
                out,
            )
            .unwrap();
            assert_eq!(out.len() - before, want);
            done = true;
            break;
        }
        assert!(done, "no entry of exactly {want} bytes");
    }
    assert_eq!(out.len(), total);
    (k as u32, out)
}

fn s(n: usize) -> String {
    "x".repeat(n)
}

/// Owned buffers the largest messages borrow from.
struct Buffers {
    record: Vec<u8>,
    bulk: (u32, Vec<u8>),
    name: String,
    page: Vec<u8>,
    group: String,
    address: String,
    nonce: Vec<u8>,
    mac: Vec<u8>,
    channel: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Buffers {
    fn largest(l: &Limits) -> Self {
        Buffers {
            record: record_with_body(LSN_MAX, l.max_record as usize, l),
            bulk: bulk_bytes(l.max_bulk_bytes as usize + FRAME_OVERHEAD, l),
            name: s(caps::MAX_DB_NAME),
            page: vec![0xee; wire::max_page_bytes(l)],
            group: s(caps::MAX_GROUP_NAME),
            address: s(caps::MAX_ADDRESS),
            nonce: vec![0xaa; wire::MAX_HANDSHAKE_NONCE],
            mac: vec![0xab; wire::MAX_HANDSHAKE_MAC],
            channel: vec![0xcc; l.max_channel_message as usize],
            key: vec![b'k'; l.max_key as usize],
            value: vec![b'v'; l.max_value as usize],
        }
    }
}

/// The largest message of `kind` these limits allow.
fn largest<'a>(kind: MessageKind, b: &'a Buffers, l: &Limits) -> Message<'a> {
    use MessageKind as K;
    let entry = LogEntry {
        lsn: LSN_MAX,
        prev: LSN_MAX,
        record: &b.record,
    };
    match kind {
        K::Alive => Message::Alive,
        K::AliveReq => Message::AliveReq,
        K::AllReq => Message::AllReq {
            from: LSN_MAX,
            limits: TAKES_MAX,
        },
        K::Log => Message::Log(entry),
        K::LogMore => Message::LogMore { next: LSN_MAX },
        K::LogReq => Message::LogReq {
            from: LSN_MAX,
            to: LSN_MAX,
            limits: TAKES_MAX,
        },
        K::BulkLog => Message::BulkLog(BulkLog {
            count: b.bulk.0,
            bytes: &b.bulk.1,
        }),
        K::MasterReq => Message::MasterReq,
        K::NewClient => Message::NewClient,
        K::NewSite => Message::NewSite,
        K::NewMaster => Message::NewMaster,
        K::Heartbeat => Message::Heartbeat,
        K::Ack => Message::Ack { lsn: LSN_MAX },
        K::Vote1 => Message::Vote1(Vote1 {
            data_generation: Generation(MAX),
            last_lsn: LSN_MAX,
            priority: MAX,
            tiebreaker: MAX,
            nsites: MAX,
            nvotes: MAX,
        }),
        K::Vote2 => Message::Vote2 {
            candidate: SiteId(MAX),
        },
        K::DupMaster => Message::DupMaster,
        K::LeaseGrant => Message::LeaseGrant {
            master_time: Instant(u64::MAX),
        },
        K::LeaseReq => Message::LeaseReq {
            master_time: Instant(u64::MAX),
        },
        K::TransferMaster => Message::TransferMaster {
            to: SiteId(u32::MAX),
        },
        K::HandshakeProof => Message::HandshakeProof { mac: &b.mac },
        K::VerifyReq => Message::VerifyReq { lsn: LSN_MAX },
        K::Verify => Message::Verify(entry),
        K::VerifyFail => Message::VerifyFail { lsn: LSN_MAX },
        K::Rerequest => Message::Rerequest { lsn: LSN_MAX },
        K::UpdateReq => Message::UpdateReq { limits: TAKES_MAX },
        K::Update => {
            let mut databases = heapless::Vec::new();
            for _ in 0..l.max_databases {
                databases
                    .push(DbSummary {
                        name: &b.name,
                        pages: MAX,
                    })
                    .unwrap();
            }
            Message::Update(Update {
                first_lsn: LSN_MAX,
                snapshot_lsn: LSN_MAX,
                databases,
            })
        }
        K::PageReq => Message::PageReq {
            db: &b.name,
            page: MAX,
        },
        K::Page => Message::Page(Page {
            db: &b.name,
            page: MAX,
            data: &b.page,
        }),
        K::PageMore => Message::PageMore {
            db: &b.name,
            next: MAX,
        },
        K::PageFail => Message::PageFail {
            db: &b.name,
            page: MAX,
        },
        K::StartSync => Message::StartSync { lsn: LSN_MAX },
        K::Handshake => Message::Handshake(Handshake {
            group: &b.group,
            address: &b.address,
            site: SiteId(MAX),
            nonce: &b.nonce,
        }),
        K::JoinReq => Message::JoinReq(JoinReq {
            address: &b.address,
            priority: MAX,
            view: true,
        }),
        K::JoinAnswer => {
            let mut members = heapless::Vec::new();
            for _ in 0..l.max_sites {
                members
                    .push(Member {
                        site: SiteId(MAX),
                        address: &b.address,
                        flags: u8::MAX,
                    })
                    .unwrap();
            }
            Message::JoinAnswer(JoinAnswer {
                result: JoinResult::NotMaster(Some(SiteId(MAX))),
                site: SiteId(MAX),
                members,
            })
        }
        K::RemoveReq => Message::RemoveReq { site: SiteId(MAX) },
        K::RemoveAnswer => Message::RemoveAnswer {
            site: SiteId(MAX),
            result: RemoveResult::NotMaster(Some(SiteId(MAX))),
        },
        K::ChannelMsg => {
            // As many parts as allowed: more length prefixes.
            let n = caps::MAX_CHANNEL_PARTS;
            let each = b.channel.len() / n;
            let mut parts = heapless::Vec::new();
            for i in 0..n {
                let part = if i + 1 == n {
                    &b.channel[each * i..]
                } else {
                    &b.channel[each * i..each * (i + 1)]
                };
                parts.push(part).unwrap();
            }
            Message::ChannelMsg(ChannelMsg {
                request: u64::MAX,
                parts,
            })
        }
        K::ChannelResponse => Message::ChannelResponse {
            request: u64::MAX,
            part: &b.channel,
        },
        K::ChannelFail => Message::ChannelFail {
            request: u64::MAX,
            error: ChannelError::NotMaster,
        },
        K::ForwardWrite => Message::ForwardWrite(ForwardWrite {
            request: u64::MAX,
            op: Op::Put {
                db: &b.name,
                key: &b.key,
                value: &b.value,
            },
        }),
        K::ForwardAnswer => Message::ForwardAnswer {
            request: u64::MAX,
            result: ForwardResult::Committed {
                token: CommitToken {
                    lsn: LSN_MAX,
                    generation: Generation(MAX),
                },
                permanent: true,
                acks: MAX,
                needed: MAX,
            },
        },
    }
}

fn check_largest(l: &Limits, label: &str) {
    l.validate().unwrap();
    let b = Buffers::largest(l);
    let env = big_env();
    let mut sizes = Vec::new();
    for kind in MessageKind::ALL {
        let msg = largest(kind, &b, l);
        assert_eq!(msg.kind(), kind);
        let mut out = Vec::new();
        let n = encode_frame(&env, &msg, &mut out, l)
            .unwrap_or_else(|e| panic!("{label}: largest {}: {e}", kind.name()));
        assert_eq!(n, out.len());
        assert!(
            n <= l.max_frame as usize,
            "{label}: largest {} is {n} bytes, above max_frame {}",
            kind.name(),
            l.max_frame
        );
        let (e2, m2) = decode_frame(&out, l).unwrap_or_else(|e| panic!("{label}: {kind:?}: {e}"));
        assert_eq!((e2, &m2), (env, &msg), "{label}: {kind:?} round trip");
        sizes.push((kind, n));
    }
    // Messages without a payload are small whatever the limits.
    for (kind, n) in sizes {
        let payload = matches!(
            kind,
            MessageKind::Log
                | MessageKind::Verify
                | MessageKind::BulkLog
                | MessageKind::Update
                | MessageKind::Page
                | MessageKind::Handshake
                | MessageKind::HandshakeProof
                | MessageKind::JoinReq
                | MessageKind::JoinAnswer
                | MessageKind::ChannelMsg
                | MessageKind::ChannelResponse
                | MessageKind::ForwardWrite
                | MessageKind::PageReq
                | MessageKind::PageMore
                | MessageKind::PageFail
        );
        if !payload {
            // version 2 + envelope <= 26 + type 1 + fields <= 55
            // (LOG_REQ: two LSNs and the seven u32 of RequesterLimits)
            assert!(n <= 84, "{label}: {kind:?} is {n} bytes");
        }
    }
}

#[test]
fn largest_messages_fit_max_frame_default() {
    check_largest(&Limits::default(), "default");
}

#[test]
fn largest_messages_fit_max_frame_device() {
    check_largest(&Limits::device(), "device");
}

/// `msg` is refused by encode_frame, and its raw bytes by decode_frame.
fn refused<M: Serialize>(l: &Limits, label: &str, msg: Option<&Message<'_>>, raw: &M) {
    let env = big_env();
    if let Some(msg) = msg {
        let mut out = Vec::new();
        let r = encode_frame(&env, msg, &mut out, l);
        assert!(
            matches!(
                r,
                Err(EncodeError::Invalid(_)) | Err(EncodeError::TooLarge { .. })
            ),
            "{label}: encode accepted it: {r:?}"
        );
        assert!(out.is_empty(), "{label}: encode left bytes behind");
    }
    let bytes = raw_frame(&env, raw);
    let r = decode_frame(&bytes, l);
    assert!(
        matches!(
            r,
            Err(DecodeError::LimitExceeded(_))
                | Err(DecodeError::BelowMinimum(_))
                | Err(DecodeError::BadRecord(_))
                | Err(DecodeError::Malformed)
                | Err(DecodeError::TooLarge { .. })
        ),
        "{label}: decode gave {r:?}"
    );
    // And it is refused for the field, not just for the frame size.
    if bytes.len() <= l.max_frame as usize {
        assert!(!matches!(r, Err(DecodeError::TooLarge { .. })), "{label}");
    }
}

/// Mirrors of variable-length messages with std Vecs, to send more
/// elements than the fixed-capacity lists can hold.
enum Mirror<'a> {
    Update(u32, Lsn, Lsn, Vec<DbSummary<'a>>),
    JoinAnswer(u32, JoinResult, SiteId, Vec<Member<'a>>),
    ChannelMsg(u32, u64, Vec<&'a [u8]>),
}

impl Serialize for Mirror<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The message type as a varint, then the fields in order: what
        // postcard writes for the real variant.
        match self {
            Mirror::Update(t, a, b, v) => (t, a, b, v).serialize(s),
            Mirror::JoinAnswer(t, r, site, v) => (t, r, site, v).serialize(s),
            Mirror::ChannelMsg(t, req, v) => (t, req, v).serialize(s),
        }
    }
}

fn one_more(l: &Limits, label: &str) {
    let b = Buffers::largest(l);
    let k = |kind: MessageKind| kind as u32;

    // LOG and VERIFY: a record body one byte over max_record.
    let rec = record_with_body(LSN_MAX, l.max_record as usize + 1, l);
    for msg in [
        Message::Log(LogEntry {
            lsn: LSN_MAX,
            prev: LSN_MAX,
            record: &rec,
        }),
        Message::Verify(LogEntry {
            lsn: LSN_MAX,
            prev: LSN_MAX,
            record: &rec,
        }),
    ] {
        refused(
            l,
            &format!("{label}: {:?} +1", msg.kind()),
            Some(&msg),
            &msg,
        );
    }

    // BULK_LOG: one byte over.
    let (count, bulk) = bulk_bytes(l.max_bulk_bytes as usize + FRAME_OVERHEAD + 1, l);
    let msg = Message::BulkLog(BulkLog {
        count,
        bytes: &bulk,
    });
    refused(l, &format!("{label}: bulk +1"), Some(&msg), &msg);

    // UPDATE: one database more; a name one byte longer.
    let one = DbSummary {
        name: &b.name,
        pages: 1,
    };
    let dbs = vec![one; l.max_databases as usize + 1];
    let mirror = Mirror::Update(k(MessageKind::Update), LSN_MAX, LSN_MAX, dbs.clone());
    let typed = (dbs.len() <= caps::MAX_DATABASES).then(|| {
        Message::Update(Update {
            first_lsn: LSN_MAX,
            snapshot_lsn: LSN_MAX,
            databases: heapless::Vec::from_slice(&dbs).unwrap(),
        })
    });
    refused(
        l,
        &format!("{label}: update +1 db"),
        typed.as_ref(),
        &mirror,
    );
    let long = s(caps::MAX_DB_NAME + 1);
    let mut databases = heapless::Vec::new();
    databases
        .push(DbSummary {
            name: &long,
            pages: 1,
        })
        .unwrap();
    let msg = Message::Update(Update {
        first_lsn: LSN_MAX,
        snapshot_lsn: LSN_MAX,
        databases,
    });
    refused(l, &format!("{label}: update long name"), Some(&msg), &msg);

    // PAGE_REQ, PAGE_MORE, PAGE_FAIL, PAGE: a database name one longer.
    for msg in [
        Message::PageReq { db: &long, page: 1 },
        Message::PageMore { db: &long, next: 1 },
        Message::PageFail { db: &long, page: 1 },
        Message::Page(Page {
            db: &long,
            page: 1,
            data: b"",
        }),
    ] {
        refused(
            l,
            &format!("{label}: {:?} long name", msg.kind()),
            Some(&msg),
            &msg,
        );
    }
    // PAGE: one byte more of data.
    let data = vec![0u8; wire::max_page_bytes(l) + 1];
    let msg = Message::Page(Page {
        db: &b.name,
        page: 1,
        data: &data,
    });
    refused(l, &format!("{label}: page +1"), Some(&msg), &msg);

    // LOG_REQ, ALL_REQ, UPDATE_REQ: each announced limit one below the
    // smallest an answerer serves (R11, R13, S6) is refused, by name, both
    // ways; the smallest itself passes.
    let min = RequesterLimits::MIN;
    type Field = fn(&mut RequesterLimits) -> &mut u32;
    let fields: [(&str, Field); 7] = [
        ("answer size", |r| &mut r.answer_bytes),
        ("bulk size", |r| &mut r.bulk_bytes),
        ("record size", |r| &mut r.record_bytes),
        ("page size", |r| &mut r.page_bytes),
        ("key size", |r| &mut r.max_key),
        ("value size", |r| &mut r.max_value),
        ("operation count", |r| &mut r.max_txn_ops),
    ];
    let requests = |limits: RequesterLimits| {
        [
            Message::LogReq {
                from: LSN_MAX,
                to: LSN_MAX,
                limits,
            },
            Message::AllReq {
                from: LSN_MAX,
                limits,
            },
            Message::UpdateReq { limits },
        ]
    };
    for (what, field) in fields {
        let mut m = min;
        let lowest = *field(&mut m);
        for bad in [0, lowest - 1] {
            let mut r = min;
            *field(&mut r) = bad;
            // The other fields at their largest: only this one is wrong.
            let mut r2 = TAKES_MAX;
            *field(&mut r2) = bad;
            for limits in [r, r2] {
                for msg in requests(limits) {
                    let label = format!("{label}: {:?} {what} {bad}", msg.kind());
                    refused(l, &label, Some(&msg), &msg);
                    let bytes = raw_frame(&big_env(), &msg);
                    assert_eq!(
                        decode_frame(&bytes, l),
                        Err(DecodeError::BelowMinimum(what)),
                        "{label}"
                    );
                }
            }
        }
    }
    for msg in requests(min) {
        let mut out = Vec::new();
        encode_frame(&big_env(), &msg, &mut out, l).unwrap();
        assert_eq!(decode_frame(&out, l).unwrap().1, msg, "{label}: smallest");
    }
    // Every valid site announces limits an answerer takes.
    let own = RequesterLimits::of(l);
    assert_eq!(own.below_minimum(), None, "{label}: own");
    for msg in requests(own) {
        let mut out = Vec::new();
        encode_frame(&big_env(), &msg, &mut out, l).unwrap();
        assert_eq!(decode_frame(&out, l).unwrap().1, msg, "{label}: own");
    }

    // HANDSHAKE: group, address, nonce one byte longer.
    let long_group = s(caps::MAX_GROUP_NAME + 1);
    let long_addr = s(caps::MAX_ADDRESS + 1);
    let long_nonce = vec![0u8; wire::MAX_HANDSHAKE_NONCE + 1];
    for (what, h) in [
        (
            "group",
            Handshake {
                group: &long_group,
                address: &b.address,
                site: SiteId(1),
                nonce: &b.nonce,
            },
        ),
        (
            "address",
            Handshake {
                group: &b.group,
                address: &long_addr,
                site: SiteId(1),
                nonce: &b.nonce,
            },
        ),
        (
            "nonce",
            Handshake {
                group: &b.group,
                address: &b.address,
                site: SiteId(1),
                nonce: &long_nonce,
            },
        ),
    ] {
        let msg = Message::Handshake(h);
        refused(l, &format!("{label}: handshake {what}"), Some(&msg), &msg);
    }
    // HANDSHAKE_PROOF: a MAC one byte longer.
    let long_mac = vec![0u8; wire::MAX_HANDSHAKE_MAC + 1];
    let msg = Message::HandshakeProof { mac: &long_mac };
    refused(l, &format!("{label}: handshake proof"), Some(&msg), &msg);

    // JOIN_REQ: address one byte longer.
    let msg = Message::JoinReq(JoinReq {
        address: &long_addr,
        priority: 1,
        view: false,
    });
    refused(l, &format!("{label}: join_req address"), Some(&msg), &msg);

    // JOIN_ANSWER: one member more; an address one byte longer.
    let m = Member {
        site: SiteId(1),
        address: &b.address,
        flags: Membership::VIEW,
    };
    let members = vec![m; l.max_sites as usize + 1];
    let mirror = Mirror::JoinAnswer(
        k(MessageKind::JoinAnswer),
        JoinResult::Accepted,
        SiteId(1),
        members.clone(),
    );
    let typed = (members.len() <= caps::MAX_SITES).then(|| {
        Message::JoinAnswer(JoinAnswer {
            result: JoinResult::Accepted,
            site: SiteId(1),
            members: heapless::Vec::from_slice(&members).unwrap(),
        })
    });
    refused(
        l,
        &format!("{label}: join_answer +1 member"),
        typed.as_ref(),
        &mirror,
    );
    let mut one = heapless::Vec::new();
    one.push(Member {
        site: SiteId(1),
        address: &long_addr,
        flags: 0,
    })
    .unwrap();
    let msg = Message::JoinAnswer(JoinAnswer {
        result: JoinResult::Accepted,
        site: SiteId(1),
        members: one,
    });
    refused(
        l,
        &format!("{label}: join_answer address"),
        Some(&msg),
        &msg,
    );

    // CHANNEL_MSG: one byte more; one part more.
    let over = vec![1u8; l.max_channel_message as usize + 1];
    let mut parts = heapless::Vec::new();
    parts.push(&over[..1]).unwrap();
    parts.push(&over[1..]).unwrap();
    let msg = Message::ChannelMsg(ChannelMsg { request: 1, parts });
    refused(
        l,
        &format!("{label}: channel_msg +1 byte"),
        Some(&msg),
        &msg,
    );
    let many: Vec<&[u8]> = vec![b"p"; caps::MAX_CHANNEL_PARTS + 1];
    let mirror = Mirror::ChannelMsg(k(MessageKind::ChannelMsg), 1, many);
    refused(l, &format!("{label}: channel_msg +1 part"), None, &mirror);

    // CHANNEL_RESPONSE: one byte more.
    let msg = Message::ChannelResponse {
        request: 1,
        part: &over,
    };
    refused(
        l,
        &format!("{label}: channel_response +1"),
        Some(&msg),
        &msg,
    );

    // FORWARD_WRITE: key, value, database name one byte longer; an empty
    // database name.
    let long_key = vec![0u8; l.max_key as usize + 1];
    let long_value = vec![0u8; l.max_value as usize + 1];
    for (what, op) in [
        (
            "key",
            Op::Put {
                db: "d",
                key: &long_key,
                value: b"",
            },
        ),
        (
            "value",
            Op::Put {
                db: "d",
                key: b"k",
                value: &long_value,
            },
        ),
        (
            "db",
            Op::Delete {
                db: &long,
                key: b"k",
            },
        ),
        ("empty db", Op::Delete { db: "", key: b"k" }),
        (
            "delete key",
            Op::Delete {
                db: "d",
                key: &long_key,
            },
        ),
    ] {
        let msg = Message::ForwardWrite(ForwardWrite { request: 1, op });
        refused(
            l,
            &format!("{label}: forward_write {what}"),
            Some(&msg),
            &msg,
        );
    }
}

#[test]
fn one_byte_more_is_refused_default() {
    one_more(&Limits::default(), "default");
}

#[test]
fn one_byte_more_is_refused_device() {
    one_more(&Limits::device(), "device");
}

/// A frame one byte over max_frame is refused before anything is parsed,
/// and so is a stream length prefix announcing one.
#[test]
fn frames_over_max_frame_are_refused_unread() {
    for l in [Limits::default(), Limits::device()] {
        let max = l.max_frame as usize;
        let big = vec![0u8; max + 1];
        assert_eq!(
            decode_frame(&big, &l),
            Err(DecodeError::TooLarge { len: max + 1, max })
        );
        assert_eq!(
            wire::stream_frame_len((max as u32 + 1).to_le_bytes(), &l),
            Err(DecodeError::TooLarge { len: max + 1, max })
        );
        assert_eq!(
            wire::stream_frame_len((max as u32).to_le_bytes(), &l),
            Ok(max)
        );
        assert_eq!(
            wire::stream_frame_len(1u32.to_le_bytes(), &l),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            wire::stream_frame_len(u32::MAX.to_le_bytes(), &l),
            Err(DecodeError::TooLarge {
                len: u32::MAX as usize,
                max
            })
        );
    }
}

/// A shipped record whose checksum is right but whose body does not
/// decode is refused on the wire, as the log writer would refuse it.
#[test]
fn shipped_records_must_decode() {
    let l = Limits::default();
    let lsn = Lsn::new(2, 20);
    let mut rec = Vec::new();
    encode_record(
        lsn,
        Generation(1),
        &RecordBody::Commit {
            txn_id: 1,
            timestamp: Instant(1),
            ops: &[Op::Delete { db: "d", key: b"k" }],
        },
        &mut rec,
        &l,
    )
    .unwrap();
    // Claim two ops where there is one.
    rec[18] = 2;
    shoal_core::log::record::reseal(&mut rec, lsn);
    let msg = Message::Log(LogEntry {
        lsn,
        prev: Lsn::ZERO,
        record: &rec,
    });
    let mut out = Vec::new();
    assert_eq!(
        encode_frame(&big_env(), &msg, &mut out, &l),
        Err(EncodeError::Invalid(DecodeError::BadRecord(
            RecordError::BadBody
        )))
    );
    assert_eq!(
        decode_frame(&raw_frame(&big_env(), &msg), &l),
        Err(DecodeError::BadRecord(RecordError::BadBody))
    );
}
