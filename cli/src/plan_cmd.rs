//! `gatehouse plan --from-branches BASE`: writes a source plan from a repository's
//! branches that are not yet in `BASE`, one item per branch.
//!
//! Reading the repository (the git CLI) is kept apart from deciding the plan
//! ([`plan_value`], pure): a branch whose head contains another candidate's head is
//! stacked on it (`deps` are the nearest such branches only; the rest follows), and
//! its gates come from the template: `gates` for every item, plus each `rules` entry
//! whose `paths` globs match a file the branch's own commits touch. The plan written
//! is validated like any other before it is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use gatehouse_common::ids::is_valid_id;
use gatehouse_common::plan::{PlanFormat, parse_plan};
use gatehouse_source::Git;
use globset::{Glob, GlobSetBuilder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_PASSED};

/// Deadline of each local git command.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct PlanArgs {
    /// Make one item per branch not yet merged into BASE (a local branch, or with
    /// --remote, a branch of that remote).
    #[arg(long, value_name = "BASE")]
    from_branches: String,
    /// Read the remote-tracking branches of this remote (`git fetch` it first); the
    /// plan's `source.repo` is then its URL.
    #[arg(long, value_name = "R")]
    remote: Option<String>,
    /// Gate template: `gates` for every item, `rules` (`paths` globs, `gates`) for
    /// items whose change touches matching files, and optional `policy` and `verify`
    /// copied into the plan.
    #[arg(long, value_name = "FILE")]
    gates: PathBuf,
    /// The repository (default: the current directory).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Write the plan here instead of stdout (`source.repo` is then relative to it).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The plan's `name` (default: `branches-of-BASE`).
    #[arg(long)]
    name: Option<String>,
    /// Only branches whose name matches one of these globs (`queue/*`, `feature/**`;
    /// repeatable). Default: every branch.
    #[arg(long = "match", value_name = "GLOB")]
    matching: Vec<String>,
}

/// The gate template file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Gates of every item.
    #[serde(default)]
    pub gates: Vec<Value>,
    /// Gates of the items whose own commits touch matching paths.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Copied into the plan.
    pub policy: Option<Value>,
    /// Copied into the plan.
    pub verify: Option<Vec<Value>>,
}

/// One per-path rule of the template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Globs relative to the repository's root.
    pub paths: Vec<String>,
    /// The gates it adds.
    pub gates: Vec<Value>,
}

/// One candidate branch, as read from the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    /// Its name as the plan's `ref` (without `refs/heads/` or the remote's prefix).
    pub name: String,
    /// Its head commit.
    pub head: String,
    /// The other candidates whose heads are strict ancestors of its head.
    pub below: BTreeSet<String>,
    /// Files its own commits (not in BASE or any branch below it) touch.
    pub changed: Vec<String>,
}

pub fn main(args: PlanArgs) -> u8 {
    for glob in &args.matching {
        if let Err(e) = globset::Glob::new(glob) {
            eprintln!("error: --match: bad glob {glob:?}: {e}");
            return EXIT_INVALID;
        }
    }
    let template = match read_template(&args.gates) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let result = crate::block_on(async {
        let git = Git::find().await.context("cannot read the repository")?;
        read_branches(&git, &args).await
    });
    let (branches, repo) = match result {
        Err(code) => return code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            return EXIT_FAILED;
        }
        Ok(Ok(found)) => found,
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("branches-of-{}", args.from_branches));
    let plan = match plan_value(&name, &repo, &args.from_branches, &branches, &template) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let text = match render(&plan, &args) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_INVALID;
        }
    };
    let written = match &args.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write the plan")
        }
    };
    match written {
        Ok(()) => {
            eprintln!(
                "{} items from the branches not in {}",
                branches.len(),
                args.from_branches
            );
            EXIT_PASSED
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

fn read_template(path: &Path) -> anyhow::Result<Template> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the gate template {}", path.display()))?;
    let template: Template = serde_saphyr::from_str(&text)
        .with_context(|| format!("{}: not a gate template", path.display()))?;
    if template.gates.is_empty() && template.rules.is_empty() {
        bail!(
            "{}: the template has no `gates` and no `rules`; give the gates every item runs",
            path.display()
        );
    }
    for rule in &template.rules {
        for glob in &rule.paths {
            Glob::new(glob).with_context(|| format!("{}: bad glob {glob:?}", path.display()))?;
        }
    }
    Ok(template)
}

/// The plan as YAML, checked by the plan validator (against the output's directory).
fn render(plan: &Value, args: &PlanArgs) -> anyhow::Result<String> {
    let mut body = serde_saphyr::to_string(plan).context("cannot write the plan as YAML")?;
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let text = format!(
        "# gatehouse plan --from-branches {}: one item per branch not yet in it.\n{body}",
        args.from_branches
    );
    let dir = match &args.output {
        Some(out) => out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    if let Err(errors) = parse_plan(&text, PlanFormat::Yaml, "<generated plan>", &dir) {
        bail!("the plan made from the branches and the template is invalid:\n{errors}");
    }
    Ok(text)
}

/// Reads the candidate branches and the plan's `source.repo`.
async fn read_branches(git: &Git, args: &PlanArgs) -> anyhow::Result<(Vec<Branch>, String)> {
    let top = git_out(git, &args.repo, &["rev-parse", "--show-toplevel"])
        .await
        .or_else(|_| {
            // A bare repository has no top level: itself.
            Ok::<_, anyhow::Error>(args.repo.display().to_string())
        })?;
    let top = PathBuf::from(top.trim());
    let (namespace, base_ref, repo) = match &args.remote {
        Some(remote) => {
            let url = git_out(git, &top, &["remote", "get-url", remote])
                .await
                .with_context(|| format!("no remote {remote:?} in {}", top.display()))?;
            (
                format!("refs/remotes/{remote}/"),
                format!("refs/remotes/{remote}/{}", args.from_branches),
                url.trim().to_string(),
            )
        }
        None => (
            "refs/heads/".to_string(),
            format!("refs/heads/{}", args.from_branches),
            repo_path(&top, args.output.as_deref()),
        ),
    };
    git_out(
        git,
        &top,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{base_ref}^{{commit}}"),
        ],
    )
    .await
    .with_context(|| format!("{base_ref} is not a branch of {}", top.display()))?;
    let list = |filter: String| {
        let namespace = namespace.clone();
        let top = top.clone();
        async move {
            let out = git_out(
                git,
                &top,
                &[
                    "for-each-ref",
                    &filter,
                    "--format=%(refname) %(objectname)",
                    &namespace,
                ],
            )
            .await?;
            let mut heads = BTreeMap::new();
            for line in out.lines() {
                let Some((name, head)) = line.split_once(' ') else {
                    continue;
                };
                let short = name.strip_prefix(namespace.as_str()).unwrap_or(name);
                if short != "HEAD" {
                    heads.insert(short.to_string(), head.to_string());
                }
            }
            anyhow::Ok(heads)
        }
    };
    let mut candidates = list(format!("--no-merged={base_ref}")).await?;
    if !args.matching.is_empty() {
        let mut set = GlobSetBuilder::new();
        for glob in &args.matching {
            // `*` does not cross `/` (as in git's own ref patterns); `**` does.
            let glob = globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .with_context(|| format!("--match: bad glob {glob:?}"))?;
            set.add(glob);
        }
        let set = set.build().context("--match")?;
        candidates.retain(|name, _| set.is_match(name));
    }
    let mut branches = Vec::with_capacity(candidates.len());
    for (name, head) in &candidates {
        let merged = list(format!("--merged={namespace}{name}")).await?;
        let below: BTreeSet<String> = merged
            .into_iter()
            .filter(|(other, other_head)| {
                other != name && candidates.contains_key(other) && other_head != head
            })
            .map(|(other, _)| other)
            .collect();
        let mut log = vec![
            "log".to_string(),
            "--format=".into(),
            "--name-only".into(),
            "--no-renames".into(),
            format!("{namespace}{name}"),
            "--not".into(),
            base_ref.clone(),
        ];
        log.extend(below.iter().map(|b| format!("{namespace}{b}")));
        let args: Vec<&str> = log.iter().map(String::as_str).collect();
        let touched = git_out(git, &top, &args).await?;
        let changed: BTreeSet<String> = touched
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        branches.push(Branch {
            name: name.clone(),
            head: head.clone(),
            below,
            changed: changed.into_iter().collect(),
        });
    }
    Ok((branches, repo))
}

/// The repository as the plan names it: relative to the plan's directory when it is
/// written to a file there or below, else absolute.
fn repo_path(top: &Path, output: Option<&Path>) -> String {
    let top = std::fs::canonicalize(top).unwrap_or_else(|_| top.to_path_buf());
    let Some(out) = output else {
        return top.display().to_string();
    };
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok();
    let Some(dir) = dir else {
        return top.display().to_string();
    };
    if let Ok(rel) = dir.strip_prefix(&top) {
        let up = rel.components().count();
        return if up == 0 {
            ".".into()
        } else {
            vec![".."; up].join("/")
        };
    }
    match top.strip_prefix(&dir) {
        Ok(down) => down.display().to_string(),
        Err(_) => top.display().to_string(),
    }
}

async fn git_out(git: &Git, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = git.run(dir, args, GIT_TIMEOUT).ok().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The plan for `branches` (pure). Items are in stack order (a branch after every
/// branch below it), ties by name; ids are branch names with every character an id
/// cannot hold replaced by `-`.
pub fn plan_value(
    name: &str,
    repo: &str,
    base: &str,
    branches: &[Branch],
    template: &Template,
) -> anyhow::Result<Value> {
    if branches.is_empty() {
        bail!("every branch is already in {base}: nothing to plan");
    }
    let ids = item_ids(branches);
    let rules = template
        .rules
        .iter()
        .map(|rule| {
            let mut set = GlobSetBuilder::new();
            for glob in &rule.paths {
                set.add(Glob::new(glob)?);
            }
            Ok((set.build()?, &rule.gates))
        })
        .collect::<Result<Vec<_>, globset::Error>>()?;
    let by_name: BTreeMap<&str, &Branch> = branches.iter().map(|b| (b.name.as_str(), b)).collect();
    let mut order: Vec<&Branch> = branches.iter().collect();
    order.sort_by(|a, b| (a.below.len(), &a.name).cmp(&(b.below.len(), &b.name)));
    let mut items = Vec::with_capacity(branches.len());
    for branch in order {
        // The nearest branches below: those not below another branch below it.
        let deps: Vec<&str> = branch
            .below
            .iter()
            .filter(|d| {
                !branch.below.iter().any(|o| {
                    o != *d
                        && by_name
                            .get(o.as_str())
                            .is_some_and(|o| o.below.contains(*d))
                })
            })
            .map(|d| ids[d.as_str()].as_str())
            .collect();
        let mut gates = template.gates.clone();
        for (set, rule_gates) in &rules {
            if branch.changed.iter().any(|p| set.is_match(p)) {
                gates.extend(rule_gates.iter().cloned());
            }
        }
        if gates.is_empty() {
            bail!(
                "branch {} gets no gate: its changes ({}) match no rule, and the template has no `gates` for every item",
                branch.name,
                branch.changed.join(", ")
            );
        }
        let mut item = json!({ "id": ids[branch.name.as_str()], "ref": branch.name });
        if !deps.is_empty() {
            item["deps"] = json!(deps);
        }
        item["gates"] = Value::Array(gates);
        items.push(item);
    }
    let mut plan = json!({
        "version": 1,
        "name": name,
        "source": { "repo": repo, "base": base },
    });
    if let Some(policy) = &template.policy {
        plan["policy"] = policy.clone();
    }
    if let Some(verify) = &template.verify {
        plan["verify"] = json!(verify);
    }
    plan["items"] = Value::Array(items);
    Ok(plan)
}

/// Item ids for branch names, unique.
fn item_ids(branches: &[Branch]) -> BTreeMap<&str, String> {
    let mut taken = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for b in branches {
        let mut id: String = b
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(120)
            .collect();
        if !is_valid_id(&id) {
            id = "branch".into();
        }
        let mut unique = id.clone();
        let mut n = 2;
        while !taken.insert(unique.clone()) {
            unique = format!("{id}-{n}");
            n += 1;
        }
        ids.insert(b.name.as_str(), unique);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(name: &str, below: &[&str], changed: &[&str]) -> Branch {
        Branch {
            name: name.into(),
            head: format!("{name}-head"),
            below: below.iter().map(|s| s.to_string()).collect(),
            changed: changed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn template(text: &str) -> Template {
        serde_saphyr::from_str(text).expect("template")
    }

    #[test]
    fn stacks_get_their_nearest_branch_as_dep_and_rules_add_gates_by_path() {
        let branches = [
            branch("feature/b", &["feature/a"], &["src/b.rs"]),
            branch("feature/a", &[], &["src/a.rs"]),
            branch("feature/c", &["feature/a", "feature/b"], &["docs/c.md"]),
            branch("docs", &[], &["docs/x.md"]),
        ];
        let t = template(
            "gates: [ { id: test, run: make test } ]\nrules:\n  - paths: ['docs/**']\n    gates: [ { id: words, run: ./words } ]\nverify: [ { id: all, run: make } ]\n",
        );
        let plan = plan_value("p", "git://h/r", "main", &branches, &t).expect("plan");
        let items = plan["items"].as_array().expect("items");
        let ids: Vec<&str> = items
            .iter()
            .map(|i| i["id"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(ids, ["docs", "feature-a", "feature-b", "feature-c"]);
        assert_eq!(items[2]["deps"], json!(["feature-a"]));
        assert_eq!(items[3]["deps"], json!(["feature-b"]), "the nearest only");
        assert_eq!(items[3]["ref"], "feature/c");
        let gate_ids = |i: usize| -> Vec<String> {
            items[i]["gates"]
                .as_array()
                .expect("gates")
                .iter()
                .map(|g| g["id"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(gate_ids(0), ["test", "words"]);
        assert_eq!(gate_ids(1), ["test"]);
        assert_eq!(gate_ids(3), ["test", "words"]);
        assert_eq!(plan["verify"][0]["id"], "all");
        assert_eq!(
            plan["source"],
            json!({ "repo": "git://h/r", "base": "main" })
        );
        assert!(items[0].get("deps").is_none());
    }

    #[test]
    fn nothing_to_plan_and_ungated_branches_are_errors() {
        let t = template("rules:\n  - paths: ['docs/**']\n    gates: [ { id: words, run: w } ]\n");
        let e = plan_value("p", "r", "main", &[], &t).expect_err("empty");
        assert!(e.to_string().contains("already in main"), "{e}");
        let e =
            plan_value("p", "r", "main", &[branch("x", &[], &["src/a"])], &t).expect_err("no gate");
        assert!(e.to_string().contains("branch x gets no gate"), "{e}");
    }

    #[test]
    fn ids_are_made_valid_and_unique() {
        let branches = [
            branch("a/b", &[], &[]),
            branch("a-b", &[], &[]),
            branch("ü", &[], &[]),
        ];
        let ids = item_ids(&branches);
        assert_eq!(ids["a/b"], "a-b");
        assert_eq!(ids["a-b"], "a-b-2");
        assert_eq!(ids["ü"], "-");
    }
}
