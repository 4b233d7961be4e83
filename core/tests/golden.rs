//! Golden vectors (issue 2): every log record kind and every wire message
//! type, encoded from the values written below and kept byte for byte in
//! `testdata/golden/`.
//!
//! Layout (the wasm host's tests read exactly this):
//!
//! - `testdata/golden/records/LSN`: one line `file offset`, the LSN every
//!   record vector lives at;
//! - `testdata/golden/records/<name>.bin` and `<name>.txt`: a record and
//!   `describe::record(bin, lsn, &Limits::default())`;
//! - `testdata/golden/frames/<name>.bin` and `<name>.txt`: a frame and
//!   `describe::frame(bin, &Limits::default())`.
//!
//! Without `SHOAL_BLESS=1` the test only compares: the values below must
//! encode to the stored bytes, the stored bytes must decode to the stored
//! description and re-encode to themselves, and every message type must
//! have a vector. With `SHOAL_BLESS=1` it rewrites the files instead.

use shoal_core::config::Limits;
use shoal_core::describe;
use shoal_core::ids::{CommitToken, ElectionGen, Generation, Instant, Lsn, SiteId};
use shoal_core::log::record::{encode_record, reencode, RecordBody};
use shoal_core::log::{Checkpoint, MemberAction, Membership, NewGeneration, Op, RecordView};
use shoal_core::wire::{
    self, BulkLog, ChannelError, ChannelMsg, DbSummary, Envelope, Flags, ForwardResult,
    ForwardWrite, Handshake, JoinAnswer, JoinReq, JoinResult, LogEntry, Member, Message,
    MessageKind, Page, RemoveResult, RequesterLimits, Update, Vote1,
};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn blessing() -> bool {
    std::env::var("SHOAL_BLESS").is_ok_and(|v| v == "1")
}

/// The LSN every record vector lives at.
const RECORD_LSN: Lsn = Lsn::new(1, 20);

/// What a `Limits::device()` site announces in its requests.
const DEVICE_TAKES: RequesterLimits = RequesterLimits {
    answer_bytes: 8_192,
    bulk_bytes: 4_096,
    record_bytes: 4_112,
    page_bytes: 7_680,
    max_key: 64,
    max_value: 512,
    max_txn_ops: 16,
};

/// What a `Limits::default()` site announces in its requests.
const DEFAULT_TAKES: RequesterLimits = RequesterLimits {
    answer_bytes: 1_048_576,
    bulk_bytes: 1_048_576,
    record_bytes: 1_048_592,
    page_bytes: 1_048_576,
    max_key: 1_024,
    max_value: 65_536,
    max_txn_ops: 1_024,
};

#[test]
fn the_requester_limits_in_the_vectors_are_what_sites_announce() {
    assert_eq!(RequesterLimits::of(&Limits::device()), DEVICE_TAKES);
    assert_eq!(RequesterLimits::of(&Limits::default()), DEFAULT_TAKES);
}

fn limits() -> Limits {
    Limits::default()
}

// ---------------------------------------------------------------- records

fn record(lsn: Lsn, generation: u32, body: &RecordBody<'_, '_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(lsn, Generation(generation), body, &mut out, &limits()).expect("encode record");
    out
}

/// Every record vector, encoded at `lsn`.
fn record_vectors(lsn: Lsn) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let binary: Vec<u8> = (0u8..=255).step_by(17).collect();
    let ops = [
        Op::Put {
            db: "users",
            key: b"alice",
            value: br#"{"age":31,"city":"Oslo"}"#,
        },
        Op::Put {
            db: "orders",
            key: b"o-1001",
            value: &binary,
        },
        Op::Delete {
            db: "users",
            key: b"bob",
        },
        Op::Delete {
            db: "orders",
            key: &[0x00, 0xff, 0x80],
        },
    ];
    v.push((
        "commit_two_dbs",
        record(
            lsn,
            7,
            &RecordBody::Commit {
                txn_id: 0x1234_5678_9abc,
                timestamp: Instant(1_700_000_000_123_456),
                ops: &ops,
            },
        ),
    ));
    v.push((
        "commit_empty",
        record(
            lsn,
            1,
            &RecordBody::Commit {
                txn_id: 0,
                timestamp: Instant(0),
                ops: &[],
            },
        ),
    ));
    v.push((
        "commit_empty_key_value",
        record(
            lsn,
            2,
            &RecordBody::Commit {
                txn_id: 127,
                timestamp: Instant(128),
                ops: &[
                    Op::Put {
                        db: "d",
                        key: b"",
                        value: b"",
                    },
                    Op::Delete { db: "d", key: b"" },
                ],
            },
        ),
    ));
    let long: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    v.push((
        "commit_long_value",
        record(
            lsn,
            0x0102_0304,
            &RecordBody::Commit {
                txn_id: u64::MAX,
                timestamp: Instant(u64::MAX),
                ops: &[Op::Put {
                    db: "blobs",
                    key: b"blob/300",
                    value: &long,
                }],
            },
        ),
    ));
    v.push((
        "checkpoint",
        record(
            lsn,
            7,
            &RecordBody::Checkpoint(Checkpoint {
                lsn: Lsn::new(12, 40_960),
                timestamp: Instant(1_700_000_100_000_000),
            }),
        ),
    ));
    v.push((
        "membership_add",
        record(
            lsn,
            3,
            &RecordBody::Membership(Membership {
                action: MemberAction::Add,
                site: SiteId(5),
                address: "10.0.0.5:5020",
                flags: Membership::VIEW,
            }),
        ),
    ));
    v.push((
        "membership_remove",
        record(
            lsn,
            3,
            &RecordBody::Membership(Membership {
                action: MemberAction::Remove,
                site: SiteId(300),
                address: "",
                flags: 0,
            }),
        ),
    ));
    v.push((
        "membership_update",
        record(
            lsn,
            4,
            &RecordBody::Membership(Membership {
                action: MemberAction::Update,
                site: SiteId(2),
                address: "db-2.example.net:6000",
                flags: 0,
            }),
        ),
    ));
    v.push((
        "new_generation",
        record(
            lsn,
            8,
            &RecordBody::NewGeneration(NewGeneration {
                generation: Generation(8),
                master: SiteId(4),
                timestamp: Instant(1_700_000_200_000_001),
            }),
        ),
    ));
    v
}

// ----------------------------------------------------------------- frames

fn env(from: u32, generation: u32, egen: u32, lsn: Lsn, flags: Flags) -> Envelope {
    Envelope {
        from: SiteId(from),
        generation: Generation(generation),
        egen: ElectionGen(egen),
        lsn,
        flags,
    }
}

fn frame(env: &Envelope, msg: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(env, msg, &mut out, &limits()).expect("encode frame");
    out
}

/// Every frame vector: at least one per message type.
fn frame_vectors() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add =
        |name: &str, e: Envelope, m: Message<'_>| v.push((name.to_string(), frame(&e, &m)));

    let master = |flags| env(1, 7, 9, Lsn::new(3, 4_096), flags);
    let client = |flags| env(2, 7, 9, Lsn::new(3, 1_200), flags);

    // A commit record at (3, 1200), the record before it at (3, 1100).
    let rec_lsn = Lsn::new(3, 1_200);
    let commit = record(
        rec_lsn,
        7,
        &RecordBody::Commit {
            txn_id: 42,
            timestamp: Instant(1_700_000_000_000_000),
            ops: &[
                Op::Put {
                    db: "users",
                    key: b"carol",
                    value: b"admin",
                },
                Op::Delete {
                    db: "sessions",
                    key: b"s-17",
                },
            ],
        },
    );
    let newgen_lsn = Lsn::new(4, 20);
    let newgen = record(
        newgen_lsn,
        8,
        &RecordBody::NewGeneration(NewGeneration {
            generation: Generation(8),
            master: SiteId(1),
            timestamp: Instant(1_700_000_000_500_000),
        }),
    );
    let ckp_lsn = Lsn::new(4, 20 + newgen.len() as u32);
    let ckp = record(
        ckp_lsn,
        8,
        &RecordBody::Checkpoint(Checkpoint {
            lsn: Lsn::new(3, 1_200),
            timestamp: Instant(1_700_000_000_600_000),
        }),
    );
    let mut bulk = Vec::new();
    for e in [
        LogEntry {
            lsn: rec_lsn,
            prev: Lsn::new(3, 1_100),
            record: &commit,
        },
        LogEntry {
            lsn: newgen_lsn,
            prev: rec_lsn,
            record: &newgen,
        },
        LogEntry {
            lsn: ckp_lsn,
            prev: newgen_lsn,
            record: &ckp,
        },
    ] {
        bulk = postcard::to_extend(&e, bulk).unwrap();
    }

    add(
        "alive",
        env(3, 7, 10, Lsn::new(3, 900), Flags::NONE),
        Message::Alive,
    );
    add(
        "alive_req",
        env(2, 7, 10, Lsn::new(3, 1_200), Flags::NONE),
        Message::AliveReq,
    );
    add(
        "all_req",
        client(Flags::ANYWHERE),
        Message::AllReq {
            from: Lsn::new(2, 20),
            limits: DEVICE_TAKES,
        },
    );
    add(
        "log",
        master(Flags::PERMANENT.with(Flags::LEASE_REQ)),
        Message::Log(LogEntry {
            lsn: rec_lsn,
            prev: Lsn::new(3, 1_100),
            record: &commit,
        }),
    );
    add(
        "log_more",
        master(Flags::NONE),
        Message::LogMore {
            next: Lsn::new(3, 70_000),
        },
    );
    add(
        "log_req",
        client(Flags::ANYWHERE),
        Message::LogReq {
            from: Lsn::new(3, 1_100),
            to: Lsn::new(3, 4_096),
            limits: DEVICE_TAKES,
        },
    );
    add(
        "log_req_rerequest",
        client(Flags::REREQUEST),
        Message::LogReq {
            from: Lsn::new(3, 1_100),
            to: Lsn::ZERO,
            limits: DEFAULT_TAKES,
        },
    );
    add(
        "bulk_log",
        master(Flags::PERMANENT),
        Message::BulkLog(BulkLog {
            count: 3,
            bytes: &bulk,
        }),
    );
    add(
        "master_req",
        env(6, 0, 1, Lsn::ZERO, Flags::NONE),
        Message::MasterReq,
    );
    add(
        "newclient",
        env(6, 0, 1, Lsn::ZERO, Flags::NONE),
        Message::NewClient,
    );
    add(
        "newsite",
        env(7, 5, 6, Lsn::new(2, 20), Flags::NONE),
        Message::NewSite,
    );
    add(
        "newmaster",
        env(1, 8, 9, Lsn::new(4, 20), Flags::NONE),
        Message::NewMaster,
    );
    add("heartbeat", master(Flags::LEASE_REQ), Message::Heartbeat);
    add("ack", client(Flags::NONE), Message::Ack { lsn: rec_lsn });
    add(
        "vote1",
        env(2, 7, 10, Lsn::new(3, 1_200), Flags::NONE),
        Message::Vote1(Vote1 {
            data_generation: Generation(7),
            last_lsn: Lsn::new(3, 1_200),
            priority: 100,
            tiebreaker: 0xdead_beef,
            nsites: 5,
            nvotes: 3,
        }),
    );
    add(
        "vote2",
        env(3, 7, 10, Lsn::new(3, 900), Flags::NONE),
        Message::Vote2 {
            candidate: SiteId(2),
        },
    );
    add(
        "dupmaster",
        env(5, 7, 9, Lsn::new(3, 2_000), Flags::NONE),
        Message::DupMaster,
    );
    add(
        "lease_grant",
        client(Flags::NONE),
        Message::LeaseGrant {
            master_time: Instant(86_400_000_000),
        },
    );
    add(
        "verify_req",
        env(2, 8, 9, Lsn::new(3, 1_200), Flags::NONE),
        Message::VerifyReq { lsn: rec_lsn },
    );
    add(
        "verify",
        env(1, 8, 9, Lsn::new(4, 20), Flags::NONE),
        Message::Verify(LogEntry {
            lsn: rec_lsn,
            prev: Lsn::new(3, 1_100),
            record: &commit,
        }),
    );
    add(
        "verify_fail",
        env(1, 8, 9, Lsn::new(40, 20), Flags::NONE),
        Message::VerifyFail {
            lsn: Lsn::new(2, 512),
        },
    );
    add(
        "rerequest",
        env(4, 7, 9, Lsn::new(3, 700), Flags::NONE),
        Message::Rerequest {
            lsn: Lsn::new(3, 1_100),
        },
    );
    add(
        "update_req",
        env(2, 8, 9, Lsn::new(1, 20), Flags::NONE),
        // A device's limits (S6: its page size is max_page_bytes of
        // Limits::device()).
        Message::UpdateReq {
            limits: DEVICE_TAKES,
        },
    );
    let mut databases = heapless::Vec::new();
    for (name, pages) in [("users", 12u32), ("orders", 300), ("sessions", 0)] {
        databases.push(DbSummary { name, pages }).unwrap();
    }
    add(
        "update",
        env(1, 8, 9, Lsn::new(40, 2_048), Flags::NONE),
        Message::Update(Update {
            first_lsn: Lsn::new(40, 20),
            snapshot_lsn: Lsn::new(39, 65_000),
            databases,
        }),
    );
    add(
        "page_req",
        env(2, 8, 9, Lsn::ZERO, Flags::ANYWHERE),
        Message::PageReq {
            db: "orders",
            page: 17,
        },
    );
    let page: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    add(
        "page",
        env(1, 8, 9, Lsn::new(40, 2_048), Flags::NONE),
        Message::Page(Page {
            db: "orders",
            page: 17,
            data: &page,
        }),
    );
    add(
        "page_more",
        env(1, 8, 9, Lsn::new(40, 2_048), Flags::NONE),
        Message::PageMore {
            db: "orders",
            next: 200,
        },
    );
    add(
        "page_fail",
        env(3, 8, 9, Lsn::new(40, 2_048), Flags::NONE),
        Message::PageFail {
            db: "orders",
            page: 201,
        },
    );
    add(
        "start_sync",
        env(1, 8, 9, Lsn::new(4, 20), Flags::NONE),
        Message::StartSync {
            lsn: Lsn::new(4, 20),
        },
    );
    add(
        "handshake",
        env(2, 7, 9, Lsn::new(3, 1_200), Flags::NONE),
        Message::Handshake(Handshake {
            group: "inventory-eu",
            address: "10.0.0.2:5020",
            site: SiteId(2),
            nonce: &[0xa5; 32],
        }),
    );
    add(
        "handshake_new_site",
        env(0, 0, 0, Lsn::ZERO, Flags::NONE),
        Message::Handshake(Handshake {
            group: "inventory-eu",
            address: "wss://tab-17.example.net/shoal",
            site: SiteId(0),
            nonce: &[],
        }),
    );
    add(
        "join_req",
        env(0, 0, 0, Lsn::ZERO, Flags::NONE),
        Message::JoinReq(JoinReq {
            address: "10.0.0.9:5020",
            priority: 50,
            view: true,
        }),
    );
    let mut members = heapless::Vec::new();
    for (site, address, flags) in [
        (1u32, "10.0.0.1:5020", 0u8),
        (2, "10.0.0.2:5020", 0),
        (9, "10.0.0.9:5020", Membership::VIEW),
    ] {
        members
            .push(Member {
                site: SiteId(site),
                address,
                flags,
            })
            .unwrap();
    }
    add(
        "join_answer",
        master(Flags::NONE),
        Message::JoinAnswer(JoinAnswer {
            result: JoinResult::Accepted,
            site: SiteId(9),
            members,
        }),
    );
    add(
        "join_answer_not_master",
        client(Flags::NONE),
        Message::JoinAnswer(JoinAnswer {
            result: JoinResult::NotMaster(Some(SiteId(1))),
            site: SiteId(0),
            members: heapless::Vec::new(),
        }),
    );
    add(
        "join_answer_group_full",
        master(Flags::NONE),
        Message::JoinAnswer(JoinAnswer {
            result: JoinResult::GroupFull,
            site: SiteId(0),
            members: heapless::Vec::new(),
        }),
    );
    add(
        "remove_req",
        client(Flags::NONE),
        Message::RemoveReq { site: SiteId(5) },
    );
    add(
        "remove_answer",
        master(Flags::NONE),
        Message::RemoveAnswer {
            site: SiteId(5),
            result: RemoveResult::Removed,
        },
    );
    add(
        "remove_answer_not_master",
        client(Flags::NONE),
        Message::RemoveAnswer {
            site: SiteId(5),
            result: RemoveResult::NotMaster(None),
        },
    );
    let mut parts = heapless::Vec::new();
    parts.push(&b"GET"[..]).unwrap();
    parts.push(&b"inventory/sku-42"[..]).unwrap();
    parts.push(&b""[..]).unwrap();
    add(
        "channel_msg",
        client(Flags::NONE),
        Message::ChannelMsg(ChannelMsg {
            request: 0x0102_0304_0506,
            parts,
        }),
    );
    let mut one = heapless::Vec::new();
    one.push(&b"fire and forget"[..]).unwrap();
    add(
        "channel_msg_no_response",
        master(Flags::NONE),
        Message::ChannelMsg(ChannelMsg {
            request: 0,
            parts: one,
        }),
    );
    add(
        "channel_response",
        master(Flags::NONE),
        Message::ChannelResponse {
            request: 0x0102_0304_0506,
            part: b"{\"sku\":42,\"stock\":7}",
        },
    );
    add(
        "channel_fail",
        master(Flags::NONE),
        Message::ChannelFail {
            request: 0x0102_0304_0506,
            error: ChannelError::NoDispatch,
        },
    );
    add(
        "forward_write",
        client(Flags::NONE),
        Message::ForwardWrite(ForwardWrite {
            request: 77,
            op: Op::Put {
                db: "users",
                key: b"dave",
                value: b"\x01\x02\x03",
            },
        }),
    );
    add(
        "forward_write_delete",
        client(Flags::NONE),
        Message::ForwardWrite(ForwardWrite {
            request: 78,
            op: Op::Delete {
                db: "users",
                key: b"erin",
            },
        }),
    );
    add(
        "forward_answer",
        master(Flags::NONE),
        Message::ForwardAnswer {
            request: 77,
            result: ForwardResult::Committed {
                token: CommitToken {
                    lsn: Lsn::new(3, 4_096),
                    generation: Generation(7),
                },
                permanent: true,
                acks: 2,
                needed: 2,
            },
        },
    );
    add(
        "forward_answer_disabled",
        master(Flags::NONE),
        Message::ForwardAnswer {
            request: 78,
            result: ForwardResult::Disabled,
        },
    );
    add(
        "lease_req",
        master(Flags::NONE),
        Message::LeaseReq {
            master_time: Instant(1_700_000_123_456),
        },
    );
    add(
        "transfer_master",
        master(Flags::NONE),
        Message::TransferMaster { to: SiteId(4) },
    );
    add(
        "handshake_proof",
        env(2, 0, 0, Lsn::ZERO, Flags::NONE),
        Message::HandshakeProof { mac: &[0x5a; 32] },
    );
    v
}

/// The file name a message type's main vector has.
fn kind_file_name(kind: MessageKind) -> String {
    kind.name().to_ascii_lowercase()
}

// ------------------------------------------------------------ file checks

/// Every difference found, so one run reports them all.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} golden mismatch(es) (rerun with SHOAL_BLESS=1 to regenerate, \
             then review the diff):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

fn read(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// The `.bin` names stored in `dir`.
fn stored_names(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "bin" || x == "txt") {
                names.insert(p.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    names
}

/// Compare (or, blessing, write) one vector and check the stored bytes
/// decode to the stored description and re-encode to themselves.
fn check_vector(
    report: &mut Report,
    dir: &Path,
    name: &str,
    generated: &[u8],
    describe: impl Fn(&[u8]) -> Result<String, String>,
    reencode: impl Fn(&[u8]) -> Result<Vec<u8>, String>,
) {
    let bin = dir.join(format!("{name}.bin"));
    let txt = dir.join(format!("{name}.txt"));
    if blessing() {
        let text = describe(generated).unwrap_or_else(|e| panic!("{name}: {e}"));
        write(&bin, generated);
        write(&txt, text.as_bytes());
    }
    let Some(stored) = read(&bin) else {
        report.0.push(format!("{}: missing", bin.display()));
        return;
    };
    report.check(stored == generated, || {
        format!(
            "{name}.bin: the values in golden.rs encode to\n  {}\nbut the file holds\n  {}",
            hex(generated),
            hex(&stored)
        )
    });
    let Some(text) = read(&txt) else {
        report.0.push(format!("{}: missing", txt.display()));
        return;
    };
    let text = String::from_utf8_lossy(&text).into_owned();
    match describe(&stored) {
        Ok(d) => report.check(d == text, || {
            format!(
                "{name}.txt: decoding {name}.bin describes it as\n{d}\nbut the file says\n{text}"
            )
        }),
        Err(e) => report.0.push(format!("{name}.bin does not decode: {e}")),
    }
    match reencode(&stored) {
        Ok(again) => report.check(again == stored, || {
            format!(
                "{name}.bin: decoding and re-encoding gives\n  {}\ninstead of\n  {}",
                hex(&again),
                hex(&stored)
            )
        }),
        Err(e) => report.0.push(format!("{name}.bin does not re-encode: {e}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_names(report: &mut Report, dir: &Path, names: &BTreeSet<String>) {
    for stale in stored_names(dir).difference(names) {
        if blessing() {
            let _ = fs::remove_file(dir.join(format!("{stale}.bin")));
            let _ = fs::remove_file(dir.join(format!("{stale}.txt")));
        } else {
            report.0.push(format!(
                "{}: {stale} has no vector in golden.rs",
                dir.display()
            ));
        }
    }
}

fn record_lsn_from_file(dir: &Path) -> Lsn {
    let path = dir.join("LSN");
    if blessing() {
        write(
            &path,
            format!("{} {}\n", RECORD_LSN.file, RECORD_LSN.offset).as_bytes(),
        );
    }
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with SHOAL_BLESS=1)", path.display()));
    let mut lines = text.lines();
    let line = lines.next().expect("LSN file is empty");
    assert!(
        lines.all(|l| l.trim().is_empty()),
        "LSN file has more than one line"
    );
    let mut parts = line.split_whitespace();
    let file: u32 = parts.next().expect("LSN file").parse().expect("file");
    let offset: u32 = parts.next().expect("LSN offset").parse().expect("offset");
    assert!(parts.next().is_none(), "LSN line has more than two numbers");
    Lsn::new(file, offset)
}

// ------------------------------------------------------------------ tests

#[test]
fn golden_records() {
    let dir = golden_dir().join("records");
    let lsn = record_lsn_from_file(&dir);
    assert_eq!(lsn, RECORD_LSN, "records/LSN must say `1 20`");
    let l = limits();
    let mut report = Report::default();
    let vectors = record_vectors(lsn);
    let mut names = BTreeSet::new();
    for (name, bytes) in &vectors {
        assert!(names.insert(name.to_string()), "duplicate vector {name}");
        check_vector(
            &mut report,
            &dir,
            name,
            bytes,
            |b| describe::record(b, lsn, &l).map_err(|e| e.to_string()),
            |b| {
                let view = RecordView::parse(b, lsn, &l).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                reencode(&view, &l, &mut out).map_err(|e| e.to_string())?;
                Ok(out)
            },
        );
    }
    check_names(&mut report, &dir, &names);
    report.finish();
}

#[test]
fn golden_frames() {
    let dir = golden_dir().join("frames");
    let l = limits();
    let mut report = Report::default();
    let mut names = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for (name, bytes) in &frame_vectors() {
        assert!(names.insert(name.clone()), "duplicate vector {name}");
        let (_, msg) = wire::decode_frame(bytes, &l).expect("generated frame decodes");
        kinds.insert(msg.kind());
        check_vector(
            &mut report,
            &dir,
            name,
            bytes,
            |b| describe::frame(b, &l).map_err(|e| e.to_string()),
            |b| {
                let (env, msg) = wire::decode_frame(b, &l).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                wire::encode_frame(&env, &msg, &mut out, &l).map_err(|e| e.to_string())?;
                Ok(out)
            },
        );
    }
    for kind in MessageKind::ALL {
        report.check(kinds.contains(&kind), || {
            format!("message type {} has no golden vector", kind.name())
        });
        // The vector named after the type holds that type.
        let main = kind_file_name(kind);
        report.check(names.contains(&main), || {
            format!("no vector named {main} for {}", kind.name())
        });
        if let Some(b) = read(&dir.join(format!("{main}.bin"))) {
            let got = wire::decode_frame(&b, &l).map(|(_, m)| m.kind());
            report.check(got == Ok(kind), || {
                format!("{main}.bin decodes as {got:?}, not {}", kind.name())
            });
        }
    }
    check_names(&mut report, &dir, &names);
    report.finish();
}

/// The stored frames hold one message of every type, and the type byte
/// is the variant index in `MessageKind::ALL` order.
#[test]
fn message_type_byte_is_the_wire_order() {
    let l = limits();
    for (name, bytes) in &frame_vectors() {
        let (env, msg) = wire::decode_frame(bytes, &l).unwrap();
        let env_len = postcard::to_allocvec(&env).unwrap().len();
        let type_byte = bytes[2 + env_len];
        assert_eq!(
            type_byte as usize,
            MessageKind::ALL
                .iter()
                .position(|k| *k == msg.kind())
                .unwrap(),
            "{name}"
        );
        assert_eq!(type_byte, msg.kind() as u8, "{name}");
    }
    assert_eq!(MessageKind::ALL.len(), MessageKind::COUNT);
    for (i, k) in MessageKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i);
    }
}

/// A record vector moved to another LSN no longer checks.
#[test]
fn records_are_bound_to_their_lsn() {
    let l = limits();
    for (name, bytes) in record_vectors(RECORD_LSN) {
        for other in [Lsn::new(1, 21), Lsn::new(2, 20), Lsn::new(0, 20)] {
            assert!(
                RecordView::parse(&bytes, other, &l).is_err(),
                "{name} parses at {other:?}"
            );
        }
    }
}

/// The segment header and metadata bytes FORMAT.md shows.
#[test]
fn segment_header_and_meta_bytes_are_as_documented() {
    use shoal_core::log::segment::SegmentHeader;
    use shoal_core::meta::Meta;
    let unhex = |s: &str| -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    assert_eq!(
        SegmentHeader { number: 1 }.encode().to_vec(),
        unhex("53 48 4f 41 4c 4c 4f 47 01 00 00 00 01 00 00 00 da 6a a1 ed")
    );
    assert_eq!(
        Meta::default().encode(),
        unhex("01 35 76 72 45 00 00 00 00 00")
    );
    let m = Meta {
        site: SiteId(3),
        generation: Generation(9),
        egen: ElectionGen(11),
        voted_for: Some(SiteId(2)),
        init_in_progress: true,
    };
    assert_eq!(m.encode(), unhex("01 21 18 e9 7a 03 09 0b 01 02 01"));
    assert_eq!(Meta::decode(&m.encode()), Ok(m));
    // CRC-32C's check value.
    assert_eq!(shoal_core::crc::checksum(b"123456789"), 0xe306_9283);
    // The worked frame example.
    let f = std::fs::read(golden_dir().join("frames/log_req.bin")).unwrap();
    assert_eq!(
        f,
        unhex(
            "06 00 02 07 09 03 b0 09 01 05 03 cc 08 03 80 20 80 40 80 20 90 20 80 3c 40 80 04 10"
        )
    );
    let r = std::fs::read(golden_dir().join("records/commit_empty.bin")).unwrap();
    assert_eq!(
        r,
        unhex("03 00 00 00 69 f7 bb e3 01 00 00 00 01 01 00 00 00 00 00")
    );
}
