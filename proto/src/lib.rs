//! The Gatehouse gRPC API (`gatehouse.v1`, see `proto/gatehouse/v1/*.proto` and
//! `docs/api.md`) and the conversions between wire and domain types. Generated code
//! lives only here; other crates convert at their gRPC edge with [`convert`].

pub mod cache;
pub mod convert;
pub mod leader;
pub mod tls;

/// Generated messages and services of `gatehouse.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("gatehouse.v1");
}

/// Encoded file descriptor set of `gatehouse.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gatehouse_descriptor");
