//! Compiles the versioned protobuf schema (`proto/`) with protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gavel/ledger/v1/ledger.proto";
    println!("cargo:rerun-if-changed={proto}");
    prost_build::Config::new().compile_protos(&[proto], &["proto"])?;
    Ok(())
}
