//! Replays the seed corpus and every saved crash through the fuzz checks, on stable Rust, so
//! a crash once found stays fixed (`regressions/<target>/` holds the inputs, one file each).

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails the {target} check", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn client_frame_inputs_pass() {
    assert!(replay("client_frame", sluice_fuzz::client_frame) >= 8, "the seed corpus is there");
}

#[test]
fn queued_message_inputs_pass() {
    assert!(replay("queued_message", sluice_fuzz::queued_message) >= 4, "the seed corpus is there");
}
