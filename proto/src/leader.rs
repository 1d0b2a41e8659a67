//! How a coordinator that is not the leader answers, and how callers find the leader.
//!
//! A follower answers every plan and worker call with `UNAVAILABLE`; the leader's
//! client-facing URL, when one is known, travels in the [`LEADER_METADATA`] response
//! metadata (and in the message, for people). Nothing was accepted by a call answered
//! this way, so a caller may always send it again to the leader.

use tonic::Status;
use tonic::metadata::MetadataValue;

/// Response metadata key carrying the leader's URL (`http://host:port`).
pub const LEADER_METADATA: &str = "gatehouse-leader";

/// The answer of a coordinator that does not lead; `leader` is the known leader's URL.
pub fn not_leader(leader: Option<&str>) -> Status {
    let mut status = match leader {
        Some(url) => Status::unavailable(format!(
            "this coordinator is not the leader; the leader is {url}"
        )),
        None => {
            Status::unavailable("this coordinator is not the leader and no leader is elected yet")
        }
    };
    if let Some(value) = leader.and_then(|url| MetadataValue::try_from(url).ok()) {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// The leader's URL named by a not-leader answer, if `status` is one and names it.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let url = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    (!url.is_empty()).then(|| url.to_owned())
}

/// Whether `status` is a not-leader answer (with or without a known leader).
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().contains("not the leader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_url_round_trips_through_the_status() {
        let status = not_leader(Some("http://127.0.0.1:7701"));
        assert_eq!(
            leader_hint(&status).as_deref(),
            Some("http://127.0.0.1:7701")
        );
        assert!(is_not_leader(&status));
        let none = not_leader(None);
        assert_eq!(leader_hint(&none), None);
        assert!(is_not_leader(&none));
        assert_eq!(leader_hint(&Status::internal("x")), None);
    }
}
