//! Where a plan's code lives: [`RepoUrl`], parsed once from the plan's `source.repo`.
//!
//! Accepted: `https://`, `http://`, `ssh://`, `git://` and `file://` URLs, scp-like
//! `user@host:path`, and a local path (a relative one is resolved by the caller against
//! the plan file's directory). Shown only redacted: the userinfo of any form (a token in
//! `https://x-access-token:TOKEN@host/...`, a user name) becomes `***`, in logs, errors,
//! events and `status` alike. The mirror of a repository is named after the URL without
//! its userinfo, so changing credentials does not start a new mirror.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A repository location. See the module docs.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoUrl {
    /// What git is given (userinfo included).
    raw: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// A URL with a scheme; `userinfo` is the byte range of `user[:pass]@`.
    Url {
        scheme: String,
        userinfo: Option<(usize, usize)>,
    },
    /// `user@host:path`.
    Scp { userinfo: Option<(usize, usize)> },
    /// A directory on this machine, written as a path (`url: false`) or as a
    /// `file://` URL (`url: true`).
    Local { path: PathBuf, url: bool },
}

/// Why a `repo` value is not a repository location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Empty.
    #[error("the repository is empty")]
    Empty,
    /// A scheme git cannot fetch from here.
    #[error("unsupported scheme {0:?}: use https, http, ssh, git or file, or a path")]
    Scheme(String),
    /// Malformed otherwise.
    #[error("not a repository URL or path: {0}")]
    Malformed(String),
}

const SCHEMES: [&str; 5] = ["https", "http", "ssh", "git", "file"];

impl RepoUrl {
    /// Parses `value`; a relative path is taken relative to `base`.
    pub fn parse(value: &str, base: &Path) -> Result<Self, UrlError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(UrlError::Empty);
        }
        // Never an option to git, never a remote helper (`helper::address`).
        if value.starts_with('-') {
            return Err(UrlError::Malformed(format!("starts with `-`: {value}")));
        }
        if let Some((helper, _)) = value.split_once("::")
            && !helper.contains('/')
        {
            return Err(UrlError::Scheme(format!("{helper}::")));
        }
        if let Some((scheme, rest)) = value.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if !SCHEMES.contains(&scheme.as_str()) {
                return Err(UrlError::Scheme(scheme));
            }
            if scheme == "file" {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(UrlError::Malformed(format!(
                        "file:// needs an absolute path: {value}"
                    )));
                }
                return Ok(Self::local(path, true));
            }
            let start = scheme.len() + 3;
            let authority_end = rest.find('/').map_or(value.len(), |i| start + i);
            let authority = &value[start..authority_end];
            if authority.is_empty() || authority_end == value.len() {
                return Err(UrlError::Malformed(format!(
                    "{scheme} URL without host and path"
                )));
            }
            let userinfo = authority.rfind('@').map(|at| (start, start + at + 1));
            return Ok(Self {
                raw: value.to_string(),
                kind: Kind::Url { scheme, userinfo },
            });
        }
        // scp-like `[user@]host:path`: a colon before any slash.
        if let Some(colon) = value.find(':')
            && !value[..colon].contains('/')
            && colon > 0
        {
            let userinfo = value[..colon].rfind('@').map(|at| (0, at + 1));
            if colon + 1 == value.len() {
                return Err(UrlError::Malformed(format!(
                    "no path after the host: {value}"
                )));
            }
            return Ok(Self {
                raw: value.to_string(),
                kind: Kind::Scp { userinfo },
            });
        }
        let path = Path::new(value);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(Self::local(path, false))
    }

    fn local(path: PathBuf, url: bool) -> Self {
        let raw = if url {
            format!("file://{}", path.display())
        } else {
            path.display().to_string()
        };
        Self {
            raw,
            kind: Kind::Local { path, url },
        }
    }

    /// What git is given.
    pub fn as_git_arg(&self) -> &str {
        &self.raw
    }

    /// The directory, for a repository on this machine (a path or a `file://` URL).
    pub fn local_path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Whether it was written as a path, not a URL: a location only the machine that
    /// read the plan can see (a `file://` URL says it is meant to be shared).
    pub fn is_path(&self) -> bool {
        matches!(self.kind, Kind::Local { url: false, .. })
    }

    /// The URL without its userinfo: what a mirror is named after.
    pub fn identity(&self) -> String {
        match self.userinfo() {
            Some((a, b)) => format!("{}{}", &self.raw[..a], &self.raw[b..]),
            None => self.raw.clone(),
        }
    }

    /// A directory name for this repository's mirror: readable and unique.
    pub fn mirror_name(&self) -> String {
        let identity = self.identity();
        let hash = blake3::hash(identity.as_bytes()).to_hex();
        let tail: String = identity
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("repo")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        format!("{tail}-{}", &hash[..16])
    }

    fn userinfo(&self) -> Option<(usize, usize)> {
        match &self.kind {
            Kind::Url { userinfo, .. } | Kind::Scp { userinfo } => *userinfo,
            Kind::Local { .. } => None,
        }
    }
}

/// Serialized as what git is given (credentials included: a worker needs them), so
/// only absolute locations round-trip; a relative path was resolved when parsed.
impl TryFrom<String> for RepoUrl {
    type Error = UrlError;

    fn try_from(raw: String) -> Result<Self, UrlError> {
        Self::parse(&raw, Path::new("/"))
    }
}

impl From<RepoUrl> for String {
    fn from(url: RepoUrl) -> String {
        url.raw
    }
}

impl fmt::Display for RepoUrl {
    /// Redacted: the userinfo is `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.userinfo() {
            Some((a, b)) => write!(f, "{}***@{}", &self.raw[..a], &self.raw[b..]),
            None => f.write_str(&self.raw),
        }
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<RepoUrl, UrlError> {
        RepoUrl::parse(v, Path::new("/plans"))
    }

    #[test]
    fn every_form_parses_and_shows_no_userinfo() {
        let cases = [
            (
                "https://x-access-token:s3cret@git.example.com/acme/app.git",
                "https://***@git.example.com/acme/app.git",
            ),
            (
                "https://git.example.com/acme/app.git",
                "https://git.example.com/acme/app.git",
            ),
            (
                "ssh://git@host:2222/acme/app",
                "ssh://***@host:2222/acme/app",
            ),
            ("git@github.com:acme/app.git", "***@github.com:acme/app.git"),
            (
                "git://127.0.0.1:9418/app.git",
                "git://127.0.0.1:9418/app.git",
            ),
            ("file:///srv/git/app.git", "file:///srv/git/app.git"),
            ("/srv/git/app", "/srv/git/app"),
            ("../app", "/plans/../app"),
        ];
        for (input, shown) in cases {
            let url = parse(input).expect(input);
            assert_eq!(url.to_string(), shown, "{input}");
            assert!(!format!("{url:?}").contains("s3cret"));
        }
        assert_eq!(
            parse("https://user:pw@h/a.git").expect("url").as_git_arg(),
            "https://user:pw@h/a.git",
            "git gets the credentials"
        );
        assert!(parse("/srv/app").expect("path").local_path().is_some());
        assert!(
            parse("file:///srv/app")
                .expect("file")
                .local_path()
                .is_some()
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert_eq!(parse("  "), Err(UrlError::Empty));
        assert_eq!(parse("ftp://h/a"), Err(UrlError::Scheme("ftp".into())));
        assert!(matches!(parse("https://"), Err(UrlError::Malformed(_))));
        assert!(matches!(parse("https://host"), Err(UrlError::Malformed(_))));
        assert!(matches!(
            parse("file://relative/x"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(parse("host:"), Err(UrlError::Malformed(_))));
        assert!(matches!(
            parse("-upload-pack=x:y"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(parse("--help"), Err(UrlError::Malformed(_))));
        assert_eq!(parse("ext::sh -c x"), Err(UrlError::Scheme("ext::".into())));
        assert_eq!(parse("foo::bar"), Err(UrlError::Scheme("foo::".into())));
    }

    #[test]
    fn mirrors_are_named_without_credentials() {
        let a = parse("https://u:one@h.example/acme/app.git").expect("a");
        let b = parse("https://u:two@h.example/acme/app.git").expect("b");
        let c = parse("https://h.example/acme/other.git").expect("c");
        assert_eq!(a.mirror_name(), b.mirror_name());
        assert_ne!(a.mirror_name(), c.mirror_name());
        assert!(a.mirror_name().starts_with("app-"), "{}", a.mirror_name());
        assert!(!a.mirror_name().contains("one"));
    }
}
