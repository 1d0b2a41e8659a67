//! Object ids: [`CommitId`] and [`TreeId`], full lowercase hex (SHA-1 or SHA-256).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! object_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                Self::parse(&text).ok_or_else(|| format!("not a full object id: {text:?}"))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            /// `text` if it is a full object id (40 or 64 hex digits; case-insensitive).
            pub fn parse(text: &str) -> Option<Self> {
                let text = text.trim();
                let full = matches!(text.len(), 40 | 64);
                (full && text.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Self(text.to_ascii_lowercase()))
            }

            /// The id as hex.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

object_id!(
    /// A commit's id.
    CommitId
);
object_id!(
    /// A tree's id.
    TreeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_hex_ids_parse() {
        let sha1 = "172b4e9af7dc4ceac2dd370edc95230d15214d32";
        assert_eq!(
            CommitId::parse(sha1).map(|c| c.to_string()),
            Some(sha1.into())
        );
        assert_eq!(
            CommitId::parse(&sha1.to_uppercase()).map(|c| c.to_string()),
            Some(sha1.into())
        );
        assert!(CommitId::parse(&"a".repeat(64)).is_some());
        assert!(
            CommitId::parse("172b4e9").is_none(),
            "abbreviations are names"
        );
        assert!(CommitId::parse("main").is_none());
        assert!(TreeId::parse(&"g".repeat(40)).is_none());
    }
}
