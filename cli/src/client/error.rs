//! What can go wrong in a client command, the one line printed for it and the exit code.
//!
//! | case | exit |
//! | --- | --- |
//! | no coordinator URL reachable or no leader within the failover timeout, a call unanswered, a watch that could not be resumed | 3 |
//! | a resumed watch whose plan the coordinator no longer knows | 3 |
//! | a submit that broke after it was sent (it may have been accepted; not re-sent) | 3 |
//! | the coordinator refused the request (`INVALID_ARGUMENT`, `NOT_FOUND`, ...), bad usage | 2 |
//! | the coordinator is unavailable (`UNAVAILABLE`) | 3 |
//! | any other server error, or a local failure | 1 |

use std::time::Duration;

use tonic::Code;

use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE};

/// A client command's failure.
#[derive(Debug)]
pub enum ClientError {
    /// No URL of the list accepted a connection (or the call) before the failover
    /// timeout ran out.
    Unreachable {
        /// The configured URLs.
        urls: Vec<String>,
        /// The last failure, with its URL.
        reason: String,
        /// How long the URLs were retried.
        after: Duration,
    },
    /// Coordinators answered, but none as the leader, before the failover timeout ran
    /// out (an election that did not end, or coordinators that disagree).
    NoLeader {
        /// The configured URLs.
        urls: Vec<String>,
        /// The last answer, with its URL.
        reason: String,
        /// How long the URLs were retried.
        after: Duration,
    },
    /// A call got no answer in time.
    NoAnswer {
        /// The coordinator called.
        url: String,
        /// How long it was given.
        after: Duration,
    },
    /// A watch broke and could not be resumed in time.
    Lost {
        /// The coordinator last watched.
        url: String,
        /// Why the last attempt failed.
        reason: String,
        /// How long resuming was tried.
        after: Duration,
    },
    /// A resumed watch found the plan gone (the coordinator restarted without its
    /// state).
    PlanLost {
        /// The coordinator that answered.
        url: String,
        /// The plan.
        plan: String,
    },
    /// A call that must not run twice (`SubmitPlan`) broke after it was sent (the
    /// connection failed, or the coordinator was unavailable): it may or may not have
    /// been accepted, so it was not re-sent.
    MaybeAccepted {
        /// The coordinator called.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The coordinator answered with an error.
    Status {
        /// The coordinator that answered.
        url: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// Bad usage found before anything was sent.
    Usage(String),
    /// A failure on this side (runtime, signal handlers).
    Local(anyhow::Error),
}

impl ClientError {
    /// The exit code for this failure (see the module doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::NoLeader { .. }
            | ClientError::NoAnswer { .. }
            | ClientError::MaybeAccepted { .. }
            | ClientError::Lost { .. }
            | ClientError::PlanLost { .. } => EXIT_UNREACHABLE,
            ClientError::Status { status, .. } => status_exit_code(status.code()),
            ClientError::Usage(_) => EXIT_INVALID,
            ClientError::Local(_) => EXIT_FAILED,
        }
    }

    /// The message printed after `error: `.
    pub fn message(&self) -> String {
        match self {
            ClientError::Unreachable {
                urls,
                reason,
                after,
            } => format!(
                "cannot reach the coordinator at {}{}: {reason}",
                urls.join(", "),
                retried_for(*after)
            ),
            ClientError::NoLeader {
                urls,
                reason,
                after,
            } => format!(
                "no leader among the coordinators at {}{}: {reason}",
                urls.join(", "),
                retried_for(*after)
            ),
            ClientError::NoAnswer { url, after } => format!(
                "the coordinator at {url} did not answer within {}s",
                after.as_secs()
            ),
            ClientError::Lost { url, reason, after } => format!(
                "lost the connection to the coordinator at {url} and could not resume within {}s: {reason}",
                after.as_secs()
            ),
            ClientError::PlanLost { url, plan } => format!(
                "lost plan {plan}: the coordinator at {url} no longer knows it (restarted without its state?)"
            ),
            ClientError::MaybeAccepted { url, reason } => format!(
                "the call to the coordinator at {url} broke after it was sent, so it may have \
                 been accepted and was not sent again (`gatehouse plans` shows whether the plan \
                 arrived): {reason}"
            ),
            ClientError::Status { url, status } if status.code() == Code::Unavailable => {
                format!(
                    "cannot reach the coordinator at {url}: {}",
                    status_message(status)
                )
            }
            ClientError::Status { status, .. } => status_message(status),
            ClientError::Usage(msg) => msg.clone(),
            ClientError::Local(e) => format!("{e:#}"),
        }
    }

    /// Prints the one line for this failure on stderr.
    pub fn report(&self) {
        eprintln!("error: {}", self.message());
    }
}

impl From<anyhow::Error> for ClientError {
    fn from(e: anyhow::Error) -> Self {
        ClientError::Local(e)
    }
}

/// ` (retried for Ns)`, or nothing when nothing was retried.
fn retried_for(after: Duration) -> String {
    if after.is_zero() {
        String::new()
    } else {
        format!(" (retried for {}s)", after.as_secs_f64().round())
    }
}

/// The exit code for a server error status: 2 when the request itself was refused
/// (nothing was done: bad plan, unknown plan id, limits, wrong service), 3 when the
/// coordinator is unavailable, 1 for everything else.
pub fn status_exit_code(code: Code) -> u8 {
    match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => EXIT_INVALID,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNREACHABLE,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Internal
        | Code::DataLoss => EXIT_FAILED,
    }
}

/// The status's message as sent (validation messages are printed as they are), or
/// the code's description when it has none, with the transport's causes appended.
pub fn status_message(status: &tonic::Status) -> String {
    let mut msg = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    if let Some(source) = std::error::Error::source(status) {
        let causes = error_chain(source);
        if !msg.contains(&causes) {
            msg.push_str(": ");
            msg.push_str(&causes);
        }
    }
    msg
}

/// `error: cause: cause...`, leaving out a cause whose text is already shown.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_statuses_map_to_documented_exit_codes() {
        assert_eq!(status_exit_code(Code::InvalidArgument), EXIT_INVALID);
        assert_eq!(status_exit_code(Code::NotFound), EXIT_INVALID);
        assert_eq!(status_exit_code(Code::ResourceExhausted), EXIT_INVALID);
        assert_eq!(status_exit_code(Code::Unimplemented), EXIT_INVALID);
        assert_eq!(status_exit_code(Code::Unavailable), EXIT_UNREACHABLE);
        assert_eq!(status_exit_code(Code::Internal), EXIT_FAILED);
        assert_eq!(status_exit_code(Code::Unknown), EXIT_FAILED);
    }

    #[test]
    fn messages_are_one_line_and_name_the_coordinator() {
        let e = ClientError::Unreachable {
            urls: vec!["http://a:1".into(), "http://b:2".into()],
            reason: "http://b:2: connection refused".into(),
            after: Duration::ZERO,
        };
        assert_eq!(
            e.message(),
            "cannot reach the coordinator at http://a:1, http://b:2: http://b:2: connection refused"
        );
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let e = ClientError::NoLeader {
            urls: vec!["http://a:1".into()],
            reason: "http://a:1: no leader is elected yet".into(),
            after: Duration::from_millis(30_200),
        };
        assert_eq!(
            e.message(),
            "no leader among the coordinators at http://a:1 (retried for 30s): http://a:1: no leader is elected yet"
        );
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let invalid = ClientError::Status {
            url: "http://a:1".into(),
            status: tonic::Status::invalid_argument("plan.yaml:3: unknown gate \"x\""),
        };
        assert_eq!(invalid.message(), "plan.yaml:3: unknown gate \"x\"");
        assert_eq!(invalid.exit_code(), EXIT_INVALID);
        let down = ClientError::Status {
            url: "http://a:1".into(),
            status: tonic::Status::unavailable(""),
        };
        assert_eq!(
            down.message(),
            "cannot reach the coordinator at http://a:1: The service is currently unavailable"
        );
        assert_eq!(down.exit_code(), EXIT_UNREACHABLE);
        let uncertain = ClientError::MaybeAccepted {
            url: "http://a:1".into(),
            reason: "connection reset".into(),
        };
        assert!(
            uncertain.message().contains("may have been accepted"),
            "{}",
            uncertain.message()
        );
        assert_eq!(uncertain.exit_code(), EXIT_UNREACHABLE);
    }
}
