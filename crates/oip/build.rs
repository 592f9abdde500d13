//! Generates the gRPC messages, client and server of `proto/` with protox
//! (a protobuf compiler in Rust): building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_inference.proto");
    let files = protox::compile(["grpc_inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
