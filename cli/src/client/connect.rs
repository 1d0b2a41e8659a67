//! Reaching one coordinator: the `--coordinator URL[,URL...]` list, connecting to one
//! URL, and unary calls bounded by a deadline.
//!
//! Each URL gets [`CONNECT_TIMEOUT`] to accept a connection. The channel sends HTTP/2
//! keep-alive pings so a watch notices a coordinator that died without closing its
//! connections. Nothing here retries: finding the leader among the URLs (and retrying
//! while there is none) is [`super::leader`]'s job, resuming a broken watch
//! [`super::follow`]'s.

use std::future::Future;
use std::time::Duration;

use gatehouse_proto::tls::Tls;
use gatehouse_proto::v1::plan_service_client::PlanServiceClient;
use tonic::transport::{Channel, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::error::{ClientError, error_chain};

/// Used when neither `--coordinator` nor `GATEHOUSE_COORDINATOR` is given.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7700";
/// Time each URL gets to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a unary call gets to answer.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of HTTP/2 keep-alive pings, and how long an unanswered one may stay
/// unanswered before the connection counts as dead.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Largest message accepted from the coordinator (a `GetPlan` of a large plan carries
/// every gate's output tail).
const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// The coordinators to try, in order (at least one; `http://` or `https://` URLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorUrls(Vec<String>);

impl CoordinatorUrls {
    /// The URLs, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Parses `URL[,URL...]`: blanks around commas are ignored, a URL without a scheme gets
/// `http://`, and each must be an `http` or `https` URL with a host.
pub fn parse_urls(s: &str) -> Result<CoordinatorUrls, String> {
    let urls = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_url)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err("no coordinator URL given; use --coordinator http://HOST:PORT".into());
    }
    Ok(CoordinatorUrls(urls))
}

/// Parses one coordinator URL (as given by the user, or as named by a not-leader
/// answer) into `http://HOST:PORT` or `https://HOST:PORT`.
pub fn parse_url(part: &str) -> Result<String, String> {
    let url = if part.contains("://") {
        part.to_string()
    } else {
        format!("http://{part}")
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid coordinator URL {part:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "invalid coordinator URL {part:?}: scheme {other:?} is not supported; use http://HOST:PORT or https://HOST:PORT"
            ));
        }
        None => return Err(format!("invalid coordinator URL {part:?}: no scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("invalid coordinator URL {part:?}: no host"));
    }
    let path = uri.path();
    if !(path.is_empty() || path == "/") || uri.query().is_some() {
        return Err(format!(
            "invalid coordinator URL {part:?}: give only http://HOST:PORT, without a path"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// A connection to one coordinator.
#[derive(Clone, Debug)]
pub struct Coordinator {
    /// The URL it was reached at (for messages).
    pub url: String,
    client: PlanServiceClient<Channel>,
}

impl Coordinator {
    /// Connects to `url`; the error says why it could not.
    pub async fn connect(url: &str, tls: &Tls) -> Result<Self, String> {
        let channel = connect_one(url, tls).await?;
        let client = PlanServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            url: url.to_string(),
            client,
        })
    }

    /// A client on this connection (cheap: clones share the channel).
    pub fn client(&self) -> PlanServiceClient<Channel> {
        self.client.clone()
    }

    /// Awaits a unary call for at most `limit`.
    pub async fn unary<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::Status {
                url: self.url.clone(),
                status,
            }),
            Err(_) => Err(ClientError::NoAnswer {
                url: self.url.clone(),
                after: limit,
            }),
        }
    }
}

async fn connect_one(url: &str, tls: &Tls) -> Result<Channel, String> {
    let endpoint = tls
        .endpoint(url)
        .map_err(|e| error_chain(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true);
    // Name resolution is not covered by the connect timeout; bound the whole attempt.
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) if gatehouse_proto::tls::is_https(url) => confirm_tls(channel).await,
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!(
            "no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Makes one health check on a new TLS connection. Under TLS 1.3 a server checks the
/// client's certificate after the client considers the handshake done, so a refused
/// certificate would only show on the first call, as a call that broke and may have
/// been accepted; checked first, it is a connection failure like any other.
async fn confirm_tls(channel: Channel) -> Result<Channel, String> {
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(CONNECT_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(channel),
        Ok(Err(status)) => match std::error::Error::source(&status) {
            // A transport failure: the TLS session does not work.
            Some(transport) => Err(error_chain(transport)),
            // Any answer from the coordinator (even NOT_FOUND) means the session works.
            None => Ok(channel),
        },
        Err(_) => Err(format!(
            "no answer on the TLS connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<String> {
        parse_urls(s).expect("valid").as_slice().to_vec()
    }

    #[test]
    fn url_lists_are_split_trimmed_and_given_a_scheme() {
        assert_eq!(ok(DEFAULT_COORDINATOR), ["http://127.0.0.1:7700"]);
        assert_eq!(
            ok(" http://a:1, b:2 ,,http://[::1]:3/ "),
            ["http://a:1", "http://b:2", "http://[::1]:3"]
        );
        assert_eq!(ok("localhost:7700"), ["http://localhost:7700"]);
        assert_eq!(ok("https://a:1"), ["https://a:1"]);
    }

    #[test]
    fn bad_url_lists_are_refused_with_the_offending_url() {
        for (input, needle) in [
            ("", "no coordinator URL"),
            (" , ", "no coordinator URL"),
            ("https://", "\"https://\""),
            ("ftp://a:1", "not supported"),
            ("http://a:1/api", "without a path"),
            ("http://a b:1", "invalid coordinator URL"),
            ("a:1,http://", "\"http://\""),
        ] {
            let err = parse_urls(input).expect_err(input);
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }
}
