//! What each fuzz target checks, as plain functions: the libFuzzer targets in
//! `fuzz_targets/` call them with generated inputs, and the workspace test
//! `crates/sluice-proto/tests/fuzz_corpus.rs` (which compiles this file too) replays the seed
//! corpus and every input that ever crashed (`regressions/`) through them on stable Rust.

use sluice_core::frames::{ClientFrame, MAX_CLIENT_MSG_ID_LEN, ServerFrame, parse_client_frame};
use sluice_proto::convert::{decode_queued, encode_queued};

/// WebSocket client frames: any text a client sends becomes a frame or a clear error, never
/// a panic; the error frame Sluice answers with always serializes.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_frame(text) {
        Ok(ClientFrame::Send { client_msg_id, .. }) => {
            assert!(!client_msg_id.is_empty() && client_msg_id.len() <= MAX_CLIENT_MSG_ID_LEN);
        }
        Ok(frame) => {
            let _ = frame.kind();
        }
        Err(e) => {
            let reply = ServerFrame::error(e.code, e.message, e.reference).to_json();
            assert!(reply.starts_with(r#"{"type":"error""#), "{reply}");
        }
    }
}

/// Queued message bodies: whatever sits in the queue decodes into a valid message or a reason
/// for the dead-letter queue, never a panic; a valid one encodes back to the same message.
pub fn queued_message(data: &[u8]) {
    if let Ok(m) = decode_queued(data, 64 * 1024) {
        let again = decode_queued(&encode_queued(&m), 64 * 1024).expect("what decoded once decodes again");
        assert_eq!(again, m);
    }
}
