//! A source plan's resolution as the wire shows it ([`v1::SourceInfo`]): what `status`,
//! `watch` and `gatehouse run` print before the gates. Credentials never appear: the
//! repository is shown redacted.

use gatehouse_common::plan::Plan;
use gatehouse_common::source::ItemState;

use crate::v1;

/// What `plan`'s refs resolved to, or `None` for a plan without a prepared source.
pub fn source_info(plan: &Plan) -> Option<v1::SourceInfo> {
    let source = plan.source.as_ref()?;
    let r = source.resolution.as_ref()?;
    let mut info = v1::SourceInfo {
        repo: source.repo.to_string(),
        ..v1::SourceInfo::default()
    };
    match &r.base {
        Ok(base) => {
            info.base_ref = base.git_ref.clone();
            info.base_commit = base.commit.to_string();
            info.base_tree = base.tree.to_string();
        }
        Err(message) => info.error = message.clone(),
    }
    info.items = plan
        .items
        .iter()
        .zip(&r.items)
        .map(|(item, s)| {
            let mut out = v1::ItemSource {
                item_id: item.id.to_string(),
                r#ref: s.git_ref.clone().unwrap_or_default(),
                commit: s
                    .commit
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                ..v1::ItemSource::default()
            };
            match &s.state {
                ItemState::Ready { commit, tree, .. } => {
                    out.speculative_commit = commit.to_string();
                    out.tree = tree.to_string();
                }
                ItemState::Blocked {
                    reason,
                    message,
                    paths,
                } => {
                    out.reason = reason.as_str().to_string();
                    out.error = message.clone();
                    out.paths = paths.clone();
                }
                ItemState::BelowBlocked => out.reason = "dependency_failed".into(),
            }
            out
        })
        .collect();
    Some(info)
}
