#!/bin/sh
# Builds ./repo, the repository examples/stack/plan.yaml gates: a small shell project
# on `main`, a stack of three changes on top of it (feature/parser, then feature/retry
# stacked on it, then feature/cli on that), a change beside the stack (docs/usage),
# and one that conflicts with feature/parser (feature/rewrite).
#
# Commits have a fixed identity and date, so the repository (and every commit id in the
# plan's output) is the same on every machine. Running it again starts over.
set -eu
cd "$(dirname "$0")"
rm -rf repo
git init --quiet -b main repo
cd repo

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=Example GIT_AUTHOR_EMAIL=example@localhost
export GIT_COMMITTER_NAME=Example GIT_COMMITTER_EMAIL=example@localhost
export GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z

commit() {
    git add -A
    git commit --quiet -m "$1"
}

# main: a checker and one module with its test.
mkdir -p src tests docs
cat > check.sh <<'SH'
#!/bin/sh
# ./check.sh lint: every script parses. ./check.sh test: every test passes.
set -eu
case "$1" in
    lint) for f in src/*.sh tests/*.sh; do sh -n "$f"; done; echo "lint: ok" ;;
    test) for t in tests/*.sh; do sh "$t"; done; echo "test: ok" ;;
esac
SH
chmod +x check.sh
printf 'greet() { echo "hello, $1"; }\n' > src/greet.sh
printf '. src/greet.sh\n[ "$(greet world)" = "hello, world" ]\n' > tests/greet.sh
printf '# Usage\n\nRun ./check.sh.\n' > docs/usage.md
commit "main: greet"

# feature/parser: a parser module.
git checkout --quiet -b feature/parser
printf 'parse() { echo "${1%%%%=*}"; }\n' > src/parse.sh
printf '. src/parse.sh\n[ "$(parse key=value)" = key ]\n' > tests/parse.sh
commit "parser"

# feature/retry, stacked on feature/parser: uses it.
git checkout --quiet -b feature/retry
printf '. src/parse.sh\nretry() { n=$(parse "$1"); echo "retrying $n"; }\n' > src/retry.sh
printf '. src/retry.sh\n[ "$(retry job=3)" = "retrying job" ]\n' > tests/retry.sh
commit "retry, on the parser"

# feature/cli, stacked on feature/retry.
git checkout --quiet -b feature/cli
printf '. src/greet.sh\n. src/retry.sh\nmain() { greet "$1"; retry "$1=1"; }\n' > src/cli.sh
printf '. src/cli.sh\n[ "$(main me | wc -l)" -eq 2 ]\n' > tests/cli.sh
commit "cli, on retry"

# docs/usage, beside the stack (from main): merged onto whatever it is stacked on.
git checkout --quiet -b docs/usage main
printf '# Usage\n\nRun ./check.sh lint, then ./check.sh test.\n' > docs/usage.md
commit "docs: usage"

# feature/rewrite, from main: adds its own src/parse.sh, which conflicts with
# feature/parser's.
git checkout --quiet -b feature/rewrite main
printf 'parse() { echo "$1" | cut -d= -f1; }\n' > src/parse.sh
commit "rewrite the parser"

git checkout --quiet main
echo "made $(pwd): main, feature/parser, feature/retry, feature/cli, docs/usage, feature/rewrite"
