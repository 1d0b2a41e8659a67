//! [`RemoteWorkerConfig`], its validation, and the parsing of `k=v` labels.
//!
//! Everything here is pure: validation turns the configured coordinator URLs into
//! [`Endpoint`]s once, before anything connects, so a typo is a clear startup error
//! rather than an endless reconnect loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_common::ids::WorkerId;
use gatehouse_proto::tls::Tls;
use tonic::transport::Endpoint;

use crate::ExecConfig;
use crate::remote::RemoteWorkerError;

/// Settings of one remote worker process. Build it with [`RemoteWorkerConfig::new`] and
/// adjust the public fields; [`run`](crate::remote::run) validates it.
#[derive(Clone, Debug)]
pub struct RemoteWorkerConfig {
    /// Coordinator URLs (`http://host:port`, or `https://` for TLS with [`Self::tls`]),
    /// tried in this order on every (re)connect;
    /// a not-leader answer that names the leader sends the worker there next (see the
    /// module docs of [`remote`](crate::remote)).
    pub coordinators: Vec<String>,
    /// This worker's id, sent in `Hello`; unique among the coordinator's workers.
    pub id: WorkerId,
    /// How many attempts may run at once; advertised in `Hello`, at least 1.
    pub slots: u32,
    /// Labels advertised in `Hello`; gates that require labels only run on workers
    /// that have all of them.
    pub labels: BTreeMap<String, String>,
    /// Simulated total memory: when set, `Hello` advertises it and heartbeats report it
    /// as available (the coordinator subtracts its own reservations) with the running
    /// gates' requests as used. When unset, the machine's real total, used and available
    /// memory (sysinfo) are reported.
    pub memory_total: Option<u64>,
    /// Memory-pressure threshold sent in `Hello` (fraction of total memory in use above
    /// which this worker gets no new gates); `None`: the coordinator's default.
    pub memory_pressure: Option<f64>,
    /// Shared workspace directory that relative gate workdirs resolve against; when
    /// unset, each attempt gets a fresh scratch directory (see the module docs of
    /// [`remote`](crate::remote)).
    pub workspace: Option<PathBuf>,
    /// How long a drain waits for running attempts before cancelling them. Default 30 s.
    pub drain_grace: Duration,
    /// How long attempts keep running after their session was lost while the worker
    /// reconnects (to the same coordinator or to a new leader, which may adopt them);
    /// past it without a `Welcome`, they are cancelled with the executor's kill grace
    /// and their results kept for the next coordinator. Default 60 s.
    pub orphan_grace: Duration,
    /// First reconnect delay after a failed connect or a lost session. Default 100 ms.
    pub reconnect_initial: Duration,
    /// Cap of the exponentially growing reconnect delay. Default 5 s.
    pub reconnect_max: Duration,
    /// Bound on establishing the TCP/HTTP2 connection to one URL. Default 5 s.
    pub connect_timeout: Duration,
    /// Bound on opening the session and receiving `Welcome`; past it the worker
    /// reconnects. Default 10 s.
    pub welcome_timeout: Duration,
    /// HTTP/2 keep-alive ping interval; a coordinator that stops answering pings for as
    /// long is treated as lost even when no frame is due. Default 10 s.
    pub keepalive: Duration,
    /// Bound on waiting for the coordinator to close its side after this worker ended
    /// the stream (drain or shutdown), so the last reports are flushed. Default 5 s.
    pub close_timeout: Duration,
    /// Settings of the executor that runs the attempts.
    pub exec: ExecConfig,
    /// Serve part of the shared result cache (`--cache-listen`) on
    /// [`WorkerListeners::cache`](crate::remote::WorkerListeners::cache); `None`: not a
    /// node.
    pub cache_node: Option<gatehouse_cache::node::CacheNodeConfig>,
    /// How this worker writes passed results to the cache's replicas.
    pub cache_client: gatehouse_cache::ClientConfig,
    /// TLS: of the connections to `https://` coordinators (presenting the certificate
    /// when one is set), and of the cache listener, served when a certificate is set.
    /// The cache client's writes use [`gatehouse_cache::ClientConfig::tls`].
    pub tls: Tls,
}

impl RemoteWorkerConfig {
    /// A configuration with one slot, no labels, real memory, scratch workspaces and the
    /// documented default timings.
    pub fn new(coordinators: Vec<String>, id: WorkerId) -> Self {
        Self {
            coordinators,
            id,
            slots: 1,
            labels: BTreeMap::new(),
            memory_total: None,
            memory_pressure: None,
            workspace: None,
            drain_grace: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(60),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            welcome_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            exec: ExecConfig::default(),
            cache_node: None,
            cache_client: gatehouse_cache::ClientConfig::default(),
            tls: Tls::default(),
        }
    }

    /// Parses every coordinator URL into an endpoint carrying the connection settings.
    pub(crate) fn endpoints(&self) -> Result<Vec<(String, Endpoint)>, RemoteWorkerError> {
        if self.coordinators.is_empty() {
            return Err(RemoteWorkerError::NoCoordinators);
        }
        self.coordinators
            .iter()
            .map(|url| Ok((url.clone(), self.endpoint(url)?)))
            .collect()
    }

    /// Parses one coordinator URL (configured, or named by a not-leader answer) into an
    /// endpoint carrying the connection settings.
    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint, RemoteWorkerError> {
        Ok(parse_endpoint(url, &self.tls)?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true))
    }

    /// Checks the settings that do not need I/O.
    pub(crate) fn validate(&self) -> Result<(), RemoteWorkerError> {
        if self.slots == 0 {
            return Err(RemoteWorkerError::NoSlots);
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(RemoteWorkerError::InvalidBackoff {
                initial: self.reconnect_initial,
                max: self.reconnect_max,
            });
        }
        Ok(())
    }
}

/// Parses one `http://host:port` or `https://host:port` coordinator URL.
fn parse_endpoint(url: &str, tls: &Tls) -> Result<Endpoint, RemoteWorkerError> {
    let invalid = |reason: &str| RemoteWorkerError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let endpoint = tls.endpoint(url).map_err(|e| invalid(&e.to_string()))?;
    let uri = endpoint.uri();
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(invalid(&format!(
                "unsupported scheme {other:?}; use http:// or https://"
            )));
        }
        None => return Err(invalid("missing scheme; expected http://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("missing host; expected http://host:port"));
    }
    Ok(endpoint)
}

/// A malformed `k=v` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No `=` between key and value.
    #[error("label {0:?} is not of the form key=value")]
    MissingEquals(String),
    /// The key is empty or uses characters other than `[A-Za-z0-9._/-]`.
    #[error("label key {0:?} is invalid; use letters, digits, '.', '_', '/' or '-'")]
    InvalidKey(String),
    /// The same key was given twice.
    #[error("label key {0:?} is given more than once")]
    Duplicate(String),
}

/// Parses one `key=value` label. The value may be empty and may contain `=`.
pub fn parse_label(s: &str) -> Result<(String, String), LabelError> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| LabelError::MissingEquals(s.to_owned()))?;
    let valid_key = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
    if !valid_key {
        return Err(LabelError::InvalidKey(key.to_owned()));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a comma-separated `k=v,k2=v2` list (empty entries are ignored) into a map,
/// rejecting a key given twice.
pub fn parse_labels<'a>(
    specs: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, LabelError> {
    let mut labels = BTreeMap::new();
    for spec in specs {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = parse_label(part)?;
            if labels.contains_key(&key) {
                return Err(LabelError::Duplicate(key));
            }
            labels.insert(key, value);
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_lists_and_reject_bad_input() {
        let labels = parse_labels(["arch=x86_64, gpu=", "zone=eu/1=a"]).expect("valid");
        assert_eq!(
            labels,
            BTreeMap::from([
                ("arch".to_owned(), "x86_64".to_owned()),
                ("gpu".to_owned(), String::new()),
                ("zone".to_owned(), "eu/1=a".to_owned()),
            ])
        );
        assert_eq!(parse_labels([""]).expect("empty"), BTreeMap::new());
        assert_eq!(
            parse_labels(["arch"]),
            Err(LabelError::MissingEquals("arch".into()))
        );
        assert_eq!(
            parse_labels(["=x"]),
            Err(LabelError::InvalidKey(String::new()))
        );
        assert_eq!(
            parse_labels(["a b=x"]),
            Err(LabelError::InvalidKey("a b".into()))
        );
        assert_eq!(
            parse_labels(["a=1", "a=2"]),
            Err(LabelError::Duplicate("a".into()))
        );
    }

    #[test]
    fn urls_are_validated_up_front() {
        let cfg = |urls: &[&str]| {
            RemoteWorkerConfig::new(
                urls.iter().map(|u| (*u).to_owned()).collect(),
                WorkerId::new("w"),
            )
        };
        let ok = cfg(&[
            "http://127.0.0.1:7700",
            "http://coord.example:80/",
            "https://coord.example:7700",
        ])
        .endpoints()
        .expect("valid urls");
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[0].0, "http://127.0.0.1:7700");
        for bad in [
            "127.0.0.1:7700",
            "ftp://h:1",
            "https://",
            "http://",
            "not a url",
        ] {
            let err = cfg(&[bad]).endpoints().expect_err(bad);
            assert!(
                matches!(&err, RemoteWorkerError::InvalidUrl { url, .. } if url == bad),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            cfg(&[]).endpoints(),
            Err(RemoteWorkerError::NoCoordinators)
        ));
    }

    #[test]
    fn validation_rejects_zero_slots_and_bad_backoff() {
        let mut cfg = RemoteWorkerConfig::new(vec!["http://h:1".into()], WorkerId::new("w"));
        assert!(cfg.validate().is_ok());
        cfg.slots = 0;
        assert!(matches!(cfg.validate(), Err(RemoteWorkerError::NoSlots)));
        cfg.slots = 2;
        cfg.reconnect_max = Duration::from_millis(1);
        assert!(matches!(
            cfg.validate(),
            Err(RemoteWorkerError::InvalidBackoff { .. })
        ));
    }
}
