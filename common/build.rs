//! Compiles the protocol with protox (pure Rust): no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/cairn.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::Codec")
        // Object and shard data: decoded as a slice of the received buffer, not copied out,
        // and sent from the buffer a store read filled, not copied into a Vec first.
        .bytes(".cairn.v1.WriteAt.data")
        .bytes(".cairn.v1.ShardReadReply.data")
        .bytes(".cairn.v1.OpReply.data")
        .compile_fds(fds)?;
    Ok(())
}
