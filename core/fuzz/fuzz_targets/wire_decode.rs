//! Fuzz the frame decoder: any bytes into `wire::decode_frame` (default and
//! device limits) and `describe::frame`. Nothing may panic, and whatever
//! decodes must re-encode and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::config::Limits;
use shoal_core::{describe, wire};

fuzz_target!(|data: &[u8]| {
    for l in [Limits::default(), Limits::device()] {
        let described = describe::frame(data, &l);
        match wire::decode_frame(data, &l) {
            Ok((env, msg)) => {
                let text = described.expect("describe agrees with decode_frame");
                let mut out = Vec::new();
                wire::encode_frame(&env, &msg, &mut out, &l).expect("a decoded frame re-encodes");
                assert!(out.len() <= data.len(), "encoders write minimal varints");
                let (env2, msg2) = wire::decode_frame(&out, &l).expect("re-encoded frame decodes");
                assert_eq!(env2, env);
                assert_eq!(msg2, msg);
                assert_eq!(describe::frame(&out, &l).ok(), Some(text));
            }
            Err(e) => assert_eq!(described, Err(e)),
        }
        if data.len() >= 4 {
            let _ = wire::stream_frame_len([data[0], data[1], data[2], data[3]], &l);
        }
    }
});
