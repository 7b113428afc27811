//! Compiles the node's protobuf schema (Raft log records, snapshots, gRPC services).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gavel/node/v1/node.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=../ledger/proto/gavel/ledger/v1/ledger.proto");
    tonic_prost_build::configure()
        .extern_path(".gavel.ledger.v1", "::ledger::pb")
        // A log entry's proposal stays the bytes the leader encoded: a follower keeps the
        // buffer it received, writes it to its log and decodes it once for apply.
        .bytes(".gavel.node.v1.Entry.proposal")
        .compile_protos(&[proto], &["proto", "../ledger/proto"])?;
    Ok(())
}
