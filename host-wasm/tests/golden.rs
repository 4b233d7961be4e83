//! The golden vectors of `core/testdata/golden/`, decoded through the
//! wasm-exported functions: the browser host must describe every record and
//! frame exactly as the native tests do.
//!
//! Runs under node:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test -p shoal-wasm --target wasm32-unknown-unknown`.
//! On any other target this file is empty.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::JsValue;
use wasm_bindgen_test::wasm_bindgen_test;

mod golden {
    include!(concat!(env!("OUT_DIR"), "/golden.rs"));
}

/// Parse "file offset" (the `LSN` file) or "[file][offset]".
fn parse_lsn(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (file, rest) = rest.split_once("][")?;
        let offset = rest.split_once(']')?.0;
        return Some((file.parse().ok()?, offset.parse().ok()?));
    }
    let mut it = s.split_whitespace();
    let file = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    Some((file, offset))
}

/// The LSN a record vector lives at: the directory's `LSN` file if there is
/// one, else the one its expected text starts with ("lsn [f][o] ...").
fn record_lsn(name: &str, expected: &str) -> (u32, u32) {
    if let Some(lsn) = golden::RECORD_LSN {
        return parse_lsn(lsn)
            .unwrap_or_else(|| panic!("records/LSN is not `file offset`: {lsn:?}"));
    }
    expected
        .strip_prefix("lsn ")
        .and_then(|rest| parse_lsn(rest.split_whitespace().next().unwrap_or("")))
        .unwrap_or_else(|| panic!("{name}: no records/LSN file and no `lsn [f][o]` at the start"))
}

fn message(err: wasm_bindgen::JsError) -> String {
    js_sys::Error::from(JsValue::from(err))
        .message()
        .as_string()
        .unwrap_or_default()
}

/// The text a vector's `.txt` must hold: the description, or for a vector
/// that must be refused, the core error's Display text.
fn same(name: &str, got: Result<String, wasm_bindgen::JsError>, expected: &str) {
    let got = got.unwrap_or_else(message);
    assert_eq!(
        got, expected,
        "golden vector {name} decodes differently in wasm"
    );
}

#[wasm_bindgen_test]
fn every_record_vector_describes_as_natively() {
    assert!(
        !golden::RECORDS.is_empty(),
        "no record vectors found in core/testdata/golden/records"
    );
    for (name, bytes, expected) in golden::RECORDS {
        let (file, offset) = record_lsn(name, expected);
        same(
            name,
            shoal_wasm::describe_record(bytes, file, offset),
            expected,
        );
    }
}

#[wasm_bindgen_test]
fn every_frame_vector_describes_as_natively() {
    assert!(
        !golden::FRAMES.is_empty(),
        "no frame vectors found in core/testdata/golden/frames"
    );
    for (name, bytes, expected) in golden::FRAMES {
        same(name, shoal_wasm::describe_frame(bytes), expected);
    }
}

#[wasm_bindgen_test]
fn errors_carry_the_core_message() {
    let err = shoal_wasm::describe_frame(&[]).unwrap_err();
    assert_eq!(message(err), "frame truncated");
    let err = shoal_wasm::describe_record(&[1, 2, 3], 1, 20).unwrap_err();
    assert_eq!(message(err), "log record truncated: need 16 bytes, have 3");
}

#[wasm_bindgen_test]
fn encoders_round_trip_through_the_decoders() {
    // The version FORMAT.md documents (and the golden frames carry).
    assert_eq!(shoal_wasm::protocol_version(), 6);
    let hb = shoal_wasm::heartbeat_frame(2, 5).unwrap();
    assert!(shoal_wasm::describe_frame(&hb)
        .unwrap()
        .starts_with("HEARTBEAT "));

    let mut c = shoal_wasm::CommitBuilder::new(1, 42);
    c.put("db".into(), b"key".to_vec(), b"value".to_vec());
    let rec = c.encode(1, 20, 5).unwrap();
    let text = shoal_wasm::describe_record(&rec, 1, 20).unwrap();
    assert!(
        text.starts_with("lsn [1][20] generation 5 Commit"),
        "{text}"
    );

    let log = shoal_wasm::log_frame(2, 5, &rec, 1, 20, 0, 0, true).unwrap();
    let text = shoal_wasm::describe_frame(&log).unwrap();
    assert!(text.starts_with("LOG "), "{text}");

    let ack = shoal_wasm::ack_frame(3, 5, 1, 20).unwrap();
    assert!(shoal_wasm::describe_frame(&ack)
        .unwrap()
        .starts_with("ACK "));

    let ng = shoal_wasm::new_generation_record(1, 20, 6, 2, 7).unwrap();
    let text = shoal_wasm::describe_record(&ng, 1, 20).unwrap();
    assert!(text.contains("NewGeneration"), "{text}");

    let mut big = shoal_wasm::CommitBuilder::new(2, 0);
    big.put("db".into(), vec![0; 1 << 20], Vec::new());
    assert_eq!(
        message(big.encode(1, 20, 5).unwrap_err()),
        "log record key is above its limit"
    );
}
