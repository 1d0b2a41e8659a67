//! A gate's `inputs`, read from a tree instead of the file system: the paths and object
//! ids of the tree entries its globs match, for its cache key. No file is read.
//!
//! Globs are the plan's (relative to the gate's `workdir`, globset syntax: `*`, `?` and
//! `[..]` never match `/`, `**` matches any number of directories, a leading `./` is
//! ignored, `..` only at the start). Each is joined to the workdir and normalised into a
//! pattern from the tree's root; one that climbs above the root is an error. Every blob
//! and submodule is a candidate (a symlink counts as its target path, by the link's own
//! object id); `.git` never appears in a tree.

use globset::{GlobBuilder, GlobSetBuilder};

use crate::mirror::TreeEntry;

/// Why a gate's inputs cannot be read from the tree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputsError {
    /// A glob climbs above the repository's root.
    #[error("input {glob:?} of workdir {workdir:?} points outside the repository")]
    OutsideTree {
        /// The glob.
        glob: String,
        /// The workdir.
        workdir: String,
    },
    /// globset refused a glob.
    #[error("invalid input glob {glob:?}: {reason}")]
    Glob {
        /// The glob.
        glob: String,
        /// Why.
        reason: String,
    },
}

/// `workdir/glob`, normalised to a pattern from the root (`.` and `..` resolved).
fn rooted(workdir: &str, glob: &str) -> Result<String, InputsError> {
    let mut parts: Vec<&str> = Vec::new();
    let joined = format!("{workdir}/{glob}");
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(InputsError::OutsideTree {
                        glob: glob.to_string(),
                        workdir: workdir.to_string(),
                    });
                }
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// The literal leading paths of `globs` (relative to `workdir`): every entry the globs
/// can match lies under one of them, so listing only those paths of a tree is enough.
/// `None` when a glob starts with a pattern (`**/*.rs`): the whole tree is needed.
pub fn literal_prefixes(
    workdir: &str,
    globs: &[String],
) -> Result<Option<Vec<String>>, InputsError> {
    let mut prefixes = Vec::with_capacity(globs.len());
    for glob in globs {
        let pattern = rooted(workdir, glob)?;
        let literal: Vec<&str> = pattern
            .split('/')
            .take_while(|part| !part.contains(['*', '?', '[', '{', '\\']))
            .collect();
        if literal.is_empty() {
            return Ok(None);
        }
        prefixes.push(literal.join("/"));
    }
    prefixes.sort();
    prefixes.dedup();
    Ok(Some(prefixes))
}

/// The entries of a tree that `globs` (relative to `workdir`, itself relative to the
/// tree's root) match, sorted by path.
pub fn matching<'a>(
    entries: &'a [TreeEntry],
    workdir: &str,
    globs: &[String],
) -> Result<Vec<&'a TreeEntry>, InputsError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let pattern = rooted(workdir, glob)?;
        let compiled = GlobBuilder::new(&pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| InputsError::Glob {
                glob: glob.clone(),
                reason: e.kind().to_string(),
            })?;
        set.add(compiled);
    }
    let set = set.build().map_err(|e| InputsError::Glob {
        glob: globs.join(", "),
        reason: e.kind().to_string(),
    })?;
    let mut matched: Vec<&TreeEntry> = entries.iter().filter(|e| set.is_match(&e.path)).collect();
    matched.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            oid: format!("oid-of-{path}"),
            mode: "100644".into(),
        }
    }

    fn paths(entries: &[TreeEntry], workdir: &str, globs: &[&str]) -> Vec<String> {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        matching(entries, workdir, &globs)
            .expect("globs")
            .into_iter()
            .map(|e| e.path.clone())
            .collect()
    }

    #[test]
    fn globs_match_from_the_workdir_like_on_disk() {
        let tree = [
            entry("Cargo.lock"),
            entry("app/src/main.rs"),
            entry("app/src/deep/lib.rs"),
            entry("app/README.md"),
            entry("shared/util.rs"),
        ];
        assert_eq!(
            paths(&tree, "app", &["src/**"]),
            ["app/src/deep/lib.rs", "app/src/main.rs"]
        );
        assert_eq!(
            paths(&tree, "app", &["src/*.rs"]),
            ["app/src/main.rs"],
            "* stops at /"
        );
        assert_eq!(paths(&tree, ".", &["./Cargo.lock"]), ["Cargo.lock"]);
        assert_eq!(paths(&tree, "app", &["../shared/**"]), ["shared/util.rs"]);
        assert_eq!(paths(&tree, "", &["**/*.md"]), ["app/README.md"]);
        assert!(
            paths(&tree, "app", &["missing.txt"]).is_empty(),
            "no match is no error"
        );
    }

    #[test]
    fn prefixes_are_the_literal_directories_a_listing_can_stop_at() {
        let globs = |g: &[&str]| g.iter().map(|g| g.to_string()).collect::<Vec<_>>();
        assert_eq!(
            literal_prefixes("app", &globs(&["src/**", "Cargo.lock", "../shared/*.rs"])),
            Ok(Some(vec![
                "app/Cargo.lock".into(),
                "app/src".into(),
                "shared".into()
            ]))
        );
        assert_eq!(
            literal_prefixes(".", &globs(&["src/**", "**/*.md"])),
            Ok(None)
        );
        assert_eq!(literal_prefixes("", &globs(&["*.toml"])), Ok(None));
    }

    #[test]
    fn a_glob_above_the_root_or_a_bad_glob_is_an_error() {
        let tree = [entry("a")];
        let err = matching(&tree, "app", &["../../etc/passwd".into()]);
        assert!(
            matches!(err, Err(InputsError::OutsideTree { .. })),
            "{err:?}"
        );
        let err = matching(&tree, ".", &["src/[".into()]);
        assert!(matches!(err, Err(InputsError::Glob { .. })), "{err:?}");
    }
}
