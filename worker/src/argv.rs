//! Whether a gate's `run` needs a shell at all. Like GNU make, a command that is a plain
//! program name followed by plain words — nothing the shell would interpret — is split
//! into its words and executed directly, which saves the `sh` exec every gate would
//! otherwise pay. Everything else runs as `/bin/sh -c <run>`.
//!
//! Plain means: only ASCII letters, digits and `-_./:=,+@%^` in words separated by spaces
//! or tabs, so no quoting, escapes, expansions (`$`, `` ` ``, `~`, globs), redirections,
//! pipes, lists, grouping or comments; a first word that is not an assignment
//! (`A=1 cmd`), not a reserved word and not a builtin of the POSIX shell (whose
//! behaviour can differ from a program of the same name: `echo`, `test`, `cd`...;
//! `true` and `false` behave alike and are executed directly). For such a command the
//! shell would do exactly this split and a `PATH` search, so both paths give the same
//! process, arguments, environment, exit status and output. If the program cannot be
//! started directly (not found, not executable), the gate runs through the shell after
//! all, so its error and exit status (127, 126) are the shell's.

/// Characters a plain word may hold.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./:=,+@%^".contains(c)
}

/// Reserved words and builtins of the POSIX shell (and common extensions) whose meaning
/// a direct exec would not have.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "]]", "{", "}", "alias", "bg", "break", "case", "cd", "command",
    "continue", "do", "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export",
    "fc", "fg", "fi", "for", "function", "getopts", "hash", "if", "in", "jobs", "kill", "local",
    "printf", "pwd", "read", "readonly", "return", "select", "set", "shift", "source", "test",
    "then", "time", "times", "trap", "type", "typeset", "ulimit", "umask", "unalias", "unset",
    "until", "wait", "while",
];

/// The words to execute directly, or `None` when `run` needs the shell.
pub fn direct(run: &str) -> Option<Vec<&str>> {
    if !run.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let words: Vec<&str> = run.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let first = *words.first()?;
    if first.contains('=') || SHELL_WORDS.contains(&first) {
        return None;
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_commands_skip_the_shell() {
        let direct_ones = [
            ("true", vec!["true"]),
            ("/bin/true", vec!["/bin/true"]),
            (
                "cargo test --workspace",
                vec!["cargo", "test", "--workspace"],
            ),
            ("  make  -j4\tall ", vec!["make", "-j4", "all"]),
            (
                "pytest -q tests/unit --junitxml=out/junit.xml",
                vec!["pytest", "-q", "tests/unit", "--junitxml=out/junit.xml"],
            ),
            (
                "go test ./... -run=TestX",
                vec!["go", "test", "./...", "-run=TestX"],
            ),
            ("npm run lint:fix", vec!["npm", "run", "lint:fix"]),
            ("expr 1 + 2", vec!["expr", "1", "+", "2"]),
            (
                "git log -1 --format=%H",
                vec!["git", "log", "-1", "--format=%H"],
            ),
        ];
        for (run, words) in direct_ones {
            assert_eq!(direct(run), Some(words), "{run:?}");
        }
        let shell_ones = [
            "",
            "   ",
            "echo hi",
            "test -f x",
            "[ -f x ]",
            "cd sub",
            "exit 3",
            "A=1 make",
            "make && make test",
            "make || true",
            "make; true",
            "make | tee log",
            "make > log",
            "make < in",
            "make 2>&1",
            "sleep 1 &",
            "echo $HOME",
            "ls *.rs",
            "ls ?",
            "ls [ab]",
            "ls ~",
            "cat 'a b'",
            "cat \"a b\"",
            "cat a\\ b",
            "echo `date`",
            "(make)",
            "{ make; }",
            "make # comment",
            "if true; then make; fi",
            "make\nmake test",
            "echo é",
            "! make",
            "time make",
            "exec make",
        ];
        for run in shell_ones {
            assert_eq!(direct(run), None, "{run:?}");
        }
    }
}
