//! Compiles `gatehouse/v1/*.proto` with the vendored protoc (no system protoc needed) and
//! writes a file descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        PathBuf::from("gatehouse/v1/cache.proto"),
        PathBuf::from("gatehouse/v1/common.proto"),
        PathBuf::from("gatehouse/v1/plan.proto"),
        PathBuf::from("gatehouse/v1/worker.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Rarely set and large: boxed, so every gate spec on the wire stays small.
    config.boxed(".gatehouse.v1.GateSpec.checkout");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("gatehouse_descriptor.bin"))
        .compile_with_config(
            config,
            &protos,
            &[PathBuf::from("."), protoc_bin_vendored::include_path()?],
        )?;
    Ok(())
}
