//! gRPC services of the coordinator. Each method decodes, makes one handle call and
//! encodes the reply; state lives in the actors (`scheduler`, `registry`) and in the
//! worker session tasks.

mod cache_members;
mod plan_service;
mod sessions;
pub mod wire;
mod worker_service;

pub use cache_members::CacheMembers;
pub use plan_service::PlanServiceImpl;
pub use sessions::{GrpcTransport, SessionAcks, Sessions};
pub use worker_service::{SessionConfig, WorkerServiceImpl};

use crate::registry::RegistryError;

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::BeyondEnd { .. } => tonic::Status::out_of_range(e.to_string()),
            RegistryError::ShuttingDown => tonic::Status::unavailable(e.to_string()),
            RegistryError::TooLarge { .. } => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}
