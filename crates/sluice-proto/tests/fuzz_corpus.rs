//! Replays the fuzz seed corpus and every saved crash through the fuzz checks, on stable Rust,
//! so a crash once found stays fixed (`fuzz/regressions/<target>/` holds the inputs, one file
//! each). The checks are `fuzz/src/lib.rs` itself, compiled here too: the replay runs with
//! the workspace's tests instead of building the fuzz crate's own dependency tree.

use std::path::Path;

#[path = "../../../fuzz/src/lib.rs"]
#[allow(unreachable_pub)]
mod checks;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
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
    assert!(replay("client_frame", checks::client_frame) >= 8, "the seed corpus is there");
}

#[test]
fn queued_message_inputs_pass() {
    assert!(replay("queued_message", checks::queued_message) >= 4, "the seed corpus is there");
}
