//! Compiles `proto/sluice/v1/*.proto` with protox (pure Rust, no system protoc), and keeps
//! the encoded descriptors for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may run for another that
    // shares the target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["sluice/v1/chat.proto", "sluice/v1/queue.proto", "sluice/v1/events.proto"];
    let fds = protox::compile(files, [&root])?;
    // The encoded descriptors, for gRPC server reflection (grpcurl without the proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sluice_v1_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().codec_path("crate::codec::StrictCodec").compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
