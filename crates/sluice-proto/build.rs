//! Compiles `proto/sluice/v1/*.proto` with protox (pure Rust, no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["sluice/v1/chat.proto", "sluice/v1/queue.proto", "sluice/v1/events.proto"];
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().codec_path("crate::codec::StrictCodec").compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
