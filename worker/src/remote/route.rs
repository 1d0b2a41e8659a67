//! [`Route`]: which coordinator URL the worker connects to next, and when it backs off.
//!
//! The configured URLs are tried in turn, each one after the other without a pause; a
//! *pass* ends once every one of them failed (no connection, no `Welcome`, or a
//! not-leader answer) and is followed by a backoff delay. A not-leader answer that names
//! the leader is a *redirect*: that URL (which need not be in the list) is tried next, at
//! once. At most [`MAX_REDIRECTS`] redirects are followed in a row, so two coordinators
//! that name each other cannot make the worker spin; past that, hints are ignored until
//! the next backoff. A lost session that had been welcomed starts over from the first
//! URL after one backoff delay.
//!
//! Pure state, owned by the reconnect loop; the delays themselves are
//! [`Backoff`](gatehouse_common::backoff::Backoff)'s.

/// Redirects followed in a row before hints are ignored until the next backoff.
pub(crate) const MAX_REDIRECTS: u32 = 3;

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Connect to this URL and open a session.
    Connect(String),
    /// Wait for the backoff delay first.
    Backoff,
}

/// The connection order of one worker.
#[derive(Debug)]
pub(crate) struct Route {
    /// The configured coordinator URLs (at least one).
    urls: Vec<String>,
    /// Index of the next list URL to try.
    next: usize,
    /// List URLs tried since the last backoff.
    tried: usize,
    /// A leader URL to try before the list.
    redirect: Option<String>,
    /// Redirects followed since the last backoff or welcome.
    redirects: u32,
}

impl Route {
    pub(crate) fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            next: 0,
            tried: 0,
            redirect: None,
            redirects: 0,
        }
    }

    /// The next step.
    pub(crate) fn next(&mut self) -> Next {
        if let Some(url) = self.redirect.take() {
            return Next::Connect(url);
        }
        if self.urls.is_empty() || self.tried >= self.urls.len() {
            self.tried = 0;
            self.redirects = 0;
            return Next::Backoff;
        }
        let url = self.urls[self.next].clone();
        self.next = (self.next + 1) % self.urls.len();
        self.tried += 1;
        Next::Connect(url)
    }

    /// The coordinator answered that it does not lead; `leader` is the URL it named.
    /// Returns whether that URL is tried next.
    pub(crate) fn not_leader(&mut self, leader: Option<String>) -> bool {
        match leader {
            Some(url) if self.redirects < MAX_REDIRECTS => {
                self.redirects += 1;
                self.redirect = Some(url);
                true
            }
            _ => false,
        }
    }

    /// A session was welcomed and has now ended: back off once, then start over from the
    /// first URL.
    pub(crate) fn session_lost(&mut self) {
        self.next = 0;
        self.tried = self.urls.len();
        self.redirect = None;
        self.redirects = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(urls: &[&str]) -> Route {
        Route::new(urls.iter().map(|u| (*u).to_owned()).collect())
    }

    fn connect(url: &str) -> Next {
        Next::Connect(url.to_owned())
    }

    #[test]
    fn failures_walk_the_list_then_back_off_and_start_again() {
        let mut r = route(&["a", "b", "c"]);
        assert_eq!(r.next(), connect("a"));
        assert_eq!(r.next(), connect("b"));
        assert_eq!(r.next(), connect("c"));
        assert_eq!(r.next(), Next::Backoff);
        assert_eq!(r.next(), connect("a"));
    }

    #[test]
    fn a_hint_is_tried_at_once_and_the_list_continues_after_it() {
        let mut r = route(&["a", "b", "c"]);
        assert_eq!(r.next(), connect("a"));
        assert!(r.not_leader(Some("http://leader".into())));
        assert_eq!(r.next(), connect("http://leader"));
        // The leader failed too: the list continues where it was.
        assert_eq!(r.next(), connect("b"));
        assert!(!r.not_leader(None), "no hint: the next URL");
        assert_eq!(r.next(), connect("c"));
        assert_eq!(r.next(), Next::Backoff);
    }

    #[test]
    fn coordinators_naming_each_other_cannot_make_the_worker_spin() {
        let mut r = route(&["a", "b"]);
        let mut connects_before_backoff = 0;
        let mut next = r.next();
        while next != Next::Backoff {
            let Next::Connect(url) = &next else {
                unreachable!()
            };
            connects_before_backoff += 1;
            assert!(connects_before_backoff < 100, "spins");
            let other = if url.ends_with('a') { "b" } else { "a" };
            r.not_leader(Some(other.to_owned()));
            next = r.next();
        }
        assert_eq!(
            connects_before_backoff,
            2 + MAX_REDIRECTS as usize,
            "the list once, plus at most MAX_REDIRECTS redirects"
        );
        // After the backoff, redirects are followed again.
        assert_eq!(r.next(), connect("a"));
        assert!(r.not_leader(Some("b".into())));
    }

    #[test]
    fn a_lost_session_backs_off_once_then_starts_from_the_first_url() {
        let mut r = route(&["a", "b"]);
        assert_eq!(r.next(), connect("a"));
        assert_eq!(r.next(), connect("b"));
        r.session_lost();
        assert_eq!(r.next(), Next::Backoff);
        assert_eq!(r.next(), connect("a"));
        assert_eq!(r.next(), connect("b"));
        assert_eq!(r.next(), Next::Backoff);
    }
}
