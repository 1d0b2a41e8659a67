//! Reading a plan document for `gatehouse submit`: the exact text that is validated
//! locally is the text sent, so the coordinator sees what the user checked.

use std::io::Read;
use std::path::Path;

use gatehouse_common::plan::error::PlanErrorKind;
use gatehouse_common::plan::validate::{MAX_PLAN_BYTES, STDIN_NAME};
use gatehouse_common::plan::{Plan, PlanErrors, PlanFormat, load_reader};
use gatehouse_proto::v1;

/// A plan document read and validated on this side.
pub struct Document {
    /// The text as read (UTF-8, at most `MAX_PLAN_BYTES`).
    pub text: String,
    /// Its syntax.
    pub format: PlanFormat,
    /// The name used in validation messages (the path as given, or `<stdin>`).
    pub source_name: String,
    /// The validated plan (for the display of `--watch`).
    pub plan: Plan,
}

impl Document {
    /// The request that submits this document.
    pub fn request(&self, no_cache: bool) -> v1::SubmitPlanRequest {
        let format = match self.format {
            PlanFormat::Yaml => v1::PlanFormat::Yaml,
            PlanFormat::Json => v1::PlanFormat::Json,
        };
        v1::SubmitPlanRequest {
            document: self.text.clone(),
            format: format as i32,
            source_name: self.source_name.clone(),
            no_cache,
            ..v1::SubmitPlanRequest::default()
        }
    }
}

/// Reads `path` (`-`: YAML on stdin) and validates it as `gatehouse validate` does
/// (same base directory, limits and messages as `load_file`).
pub fn load(path: &Path) -> Result<Document, PlanErrors> {
    let read_error = |name: &str, error| PlanErrors::single(name, 0, PlanErrorKind::Read { error });
    let (source_name, format, base_dir, bytes) = if path == Path::new("-") {
        let base_dir = std::env::current_dir().map_err(|e| read_error(STDIN_NAME, e))?;
        let bytes = read_limited(std::io::stdin().lock()).map_err(|e| read_error(STDIN_NAME, e))?;
        (STDIN_NAME.to_string(), PlanFormat::Yaml, base_dir, bytes)
    } else {
        let name = path.display().to_string();
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let base_dir = std::path::absolute(parent).map_err(|e| read_error(&name, e))?;
        let bytes = std::fs::File::open(path)
            .and_then(read_limited)
            .map_err(|e| read_error(&name, e))?;
        (name, PlanFormat::from_path(path), base_dir, bytes)
    };
    // Size, encoding, syntax and every semantic check, with the usual messages.
    let plan = load_reader(bytes.as_slice(), format, &source_name, &base_dir)?;
    // The coordinator and the workers resolve the repository: a path here means nothing
    // there.
    if let Some(source) = plan.source.as_ref().filter(|s| s.repo.is_path()) {
        let path = source.repo.to_string();
        let kind = PlanErrorKind::LocalRepoInCluster { path };
        return Err(PlanErrors::single(&source_name, 0, kind));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| PlanErrors::single(&source_name, 0, PlanErrorKind::NotUtf8))?;
    Ok(Document {
        text,
        format,
        source_name,
        plan,
    })
}

/// Reads at most one byte more than the plan limit (so an oversize input is reported
/// as such, without reading all of it).
fn read_limited(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_file_is_sent_as_read_with_its_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plan.json");
        let text = r#"{"version":1,"name":"j","gates":[{"id":"a","run":"true"}]}"#;
        std::fs::write(&path, text).expect("write");
        let doc = load(&path).expect("valid");
        let req = doc.request(true);
        assert_eq!(req.document, text);
        assert_eq!(req.format, v1::PlanFormat::Json as i32);
        assert_eq!(req.source_name, path.display().to_string());
        assert!(req.no_cache);
        assert_eq!(doc.plan.name, "j");
    }

    #[test]
    fn an_invalid_or_missing_file_reports_plan_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, "version: 1\nname: x\ngates: []\n").expect("write");
        assert!(load(&path).is_err());
        let missing = load(&dir.path().join("nope.yaml"))
            .err()
            .expect("missing file");
        assert!(
            missing.to_string().contains("cannot read plan file"),
            "{missing}"
        );
    }
}
