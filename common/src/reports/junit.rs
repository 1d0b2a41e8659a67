//! A streaming reader of JUnit XML reports, as the common test runners write them
//! (pytest `--junitxml`, cargo-nextest, Maven Surefire and Gradle, jest-junit,
//! go-junit-report, PHPUnit).
//!
//! What it accepts:
//! - a `<testsuites>` or `<testsuite>` root; suites nested in suites (jest, PHPUnit);
//! - `<testcase name= classname= time= file= line=>` with `<failure>`, `<error>`,
//!   `<skipped>` (an empty case passed), Surefire's reruns (`flakyFailure`,
//!   `flakyError`, `rerunFailure`, `rerunError`), and anything else (`system-out`,
//!   `system-err`, `properties`), which is skipped over.
//!
//! How: one pass of pull events ([`quick_xml::Reader`]); the only text kept is the
//! first line of a failure's text, up to [`Limits::max_message_bytes`]. The reader
//! is bounded: at most [`Limits::max_bytes`] are read, nesting deeper than
//! [`Limits::max_depth`] stops it, and test cases beyond [`Limits::max_cases`] are
//! only counted. A document type declaration is refused (so no entity is ever
//! defined or expanded), and only the five predefined entities and character
//! references are resolved. One text or attribute is held whole while it is read
//! (bounded by the file's size).
//!
//! Anything else — bad XML, a truncated file, another root — is a [`ReportError`]
//! naming what and where; it never panics.

use std::io::{BufRead, BufReader, Read};

use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};

use std::borrow::Cow;

use super::{CaseRef, Limits, Outcome, TestCase, TestId};

/// Why a report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be read.
    #[error("cannot read the report: {0}")]
    Io(#[from] std::io::Error),
    /// It is larger than allowed.
    #[error("the report is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Elements nest deeper than allowed.
    #[error("elements nest deeper than the limit of {limit} (at byte {at})")]
    TooDeep {
        /// The limit.
        limit: u32,
        /// Where.
        at: u64,
    },
    /// It declares a document type (which could define entities).
    #[error("document type declarations are not accepted (at byte {at})")]
    Dtd {
        /// Where.
        at: u64,
    },
    /// It refers to an entity that is not one of XML's five.
    #[error("undefined entity &{name}; (at byte {at})")]
    Entity {
        /// The entity's name.
        name: String,
        /// Where.
        at: u64,
    },
    /// The root is not a JUnit report's.
    #[error("not a JUnit report: the root element is <{root}>, not <testsuites> or <testsuite>")]
    NotJunit {
        /// The root element's name.
        root: String,
    },
    /// It ends before its root element does.
    #[error("the report ends before its root element is closed (truncated?)")]
    Truncated,
    /// It is not well-formed XML.
    #[error("invalid XML at byte {at}: {message}")]
    Xml {
        /// Where.
        at: u64,
        /// What.
        message: String,
    },
}

/// Reads one JUnit XML report from `input` under `limits`, handing each test case to
/// `on_case` as it ends (the caller keeps what it needs; nothing else is held).
pub fn read(
    input: impl Read,
    limits: &Limits,
    on_case: &mut dyn FnMut(CaseRef<'_>),
) -> Result<(), ReportError> {
    // One byte more than allowed is read, to tell a file at the limit from a larger one.
    let bounded =
        BufReader::with_capacity(64 << 10, input.take(limits.max_bytes.saturating_add(1)));
    Parser::new(bounded, limits, on_case).run()
}

/// The test case being read.
struct Case {
    case: TestCase,
    /// Depth of its `<testcase>` element.
    depth: u32,
    /// Collecting the text of its failure (no `message` attribute was given).
    text: Option<String>,
}

struct Parser<'l, R: BufRead> {
    reader: quick_xml::Reader<R>,
    limits: &'l Limits,
    on_case: &'l mut dyn FnMut(CaseRef<'_>),
    /// The open suites: the length of `suite_path` before each was entered.
    suites: Vec<usize>,
    /// The open suites' names, joined with `/` (empty names left out).
    suite_path: String,
    depth: u32,
    root_seen: bool,
    case: Option<Case>,
    /// Depth of the failure element whose text is collected.
    text_depth: Option<u32>,
}

impl<'l, R: BufRead> Parser<'l, R> {
    fn new(input: R, limits: &'l Limits, on_case: &'l mut dyn FnMut(CaseRef<'_>)) -> Self {
        let mut reader = quick_xml::Reader::from_reader(input);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        Self {
            reader,
            limits,
            on_case,
            suites: Vec::new(),
            suite_path: String::new(),
            depth: 0,
            root_seen: false,
            case: None,
            text_depth: None,
        }
    }

    fn at(&self) -> u64 {
        self.reader.buffer_position()
    }

    fn xml_error(&self, e: impl std::fmt::Display) -> ReportError {
        ReportError::Xml {
            at: self.reader.error_position(),
            message: e.to_string(),
        }
    }

    fn run(mut self) -> Result<(), ReportError> {
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            let event = match self.reader.read_event_into(&mut buf) {
                Ok(event) => event,
                Err(quick_xml::Error::Io(e)) => {
                    return Err(ReportError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    )));
                }
                Err(e) => {
                    if self.reader.buffer_position() > self.limits.max_bytes {
                        return Err(ReportError::TooLarge {
                            limit: self.limits.max_bytes,
                        });
                    }
                    return Err(self.xml_error(e));
                }
            };
            if self.reader.buffer_position() > self.limits.max_bytes {
                return Err(ReportError::TooLarge {
                    limit: self.limits.max_bytes,
                });
            }
            match event {
                Event::Start(e) => {
                    self.depth += 1;
                    if self.depth > self.limits.max_depth {
                        return Err(ReportError::TooDeep {
                            limit: self.limits.max_depth,
                            at: self.at(),
                        });
                    }
                    self.open(&e, false)?;
                }
                Event::Empty(e) => {
                    if self.depth + 1 > self.limits.max_depth {
                        return Err(ReportError::TooDeep {
                            limit: self.limits.max_depth,
                            at: self.at(),
                        });
                    }
                    self.open(&e, true)?;
                }
                Event::End(e) => {
                    let name = e.local_name();
                    self.close(name.as_ref());
                    self.depth = self.depth.saturating_sub(1);
                }
                Event::Text(t) => {
                    if self.text_depth.is_some() {
                        let text = t.xml10_content();
                        self.push_text(&text);
                    }
                }
                Event::CData(t) => {
                    if self.text_depth.is_some() {
                        let text = t.xml10_content();
                        self.push_text(&text);
                    }
                }
                Event::GeneralRef(r) => {
                    let c = self.resolve(&r)?;
                    if self.text_depth.is_some() {
                        self.push_text(c.encode_utf8(&mut [0; 4]));
                    }
                }
                Event::DocType(_) => return Err(ReportError::Dtd { at: self.at() }),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if !self.root_seen || self.depth != 0 {
            return Err(ReportError::Truncated);
        }
        Ok(())
    }

    /// A predefined entity or a character reference.
    fn resolve(&self, r: &BytesRef<'_>) -> Result<char, ReportError> {
        if r.is_char_ref() {
            return match r.resolve_char_ref() {
                Ok(Some(c)) => Ok(c),
                Ok(None) => Err(self.entity(r)),
                Err(e) => Err(self.xml_error(e)),
            };
        }
        match &**r {
            "lt" => Ok('<'),
            "gt" => Ok('>'),
            "amp" => Ok('&'),
            "apos" => Ok('\''),
            "quot" => Ok('"'),
            _ => Err(self.entity(r)),
        }
    }

    fn entity(&self, r: &BytesRef<'_>) -> ReportError {
        ReportError::Entity {
            name: r.to_string(),
            at: self.at(),
        }
    }

    /// An element starts (`empty`: and ends at once).
    fn open(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), ReportError> {
        let local = e.local_name();
        let name = local.as_ref();
        if !self.root_seen {
            if name != "testsuites" && name != "testsuite" {
                return Err(ReportError::NotJunit {
                    root: name.to_string(),
                });
            }
            self.root_seen = true;
        }
        match name {
            "testsuite" if self.case.is_none() && !empty => {
                let suite =
                    normalize(self.attr(e, "name")?.unwrap_or_default().into()).into_owned();
                self.suites.push(self.suite_path.len());
                if !suite.is_empty() {
                    if !self.suite_path.is_empty() {
                        self.suite_path.push('/');
                    }
                    self.suite_path.push_str(&suite);
                }
            }
            "testcase" if self.case.is_none() => {
                let mut name = None;
                let mut class = None;
                let mut duration_ms = 0;
                let mut file = None;
                let mut line = None;
                for attr in e.attributes().with_checks(false) {
                    let attr = attr.map_err(|err| self.xml_error(err))?;
                    let key = attr.key.local_name();
                    let key = key.as_ref();
                    if !matches!(key, "name" | "classname" | "time" | "file" | "line") {
                        continue;
                    }
                    let value = self.value(&attr)?;
                    match key {
                        "name" => name = Some(normalize(value)),
                        "classname" => class = Some(normalize(value)),
                        "time" => duration_ms = seconds_to_ms(&value),
                        "file" => file = Some(value),
                        _ => line = value.trim().parse().ok(),
                    }
                }
                let class = class.unwrap_or_default();
                let name = name.unwrap_or_default();
                if empty {
                    // Ends here: handed over borrowed, nothing copied.
                    (self.on_case)(CaseRef {
                        suite: &self.suite_path,
                        class: &class,
                        name: &name,
                        outcome: Outcome::Passed,
                        duration_ms,
                        message: None,
                        reruns_failed: 0,
                        file: file.as_deref(),
                        line,
                    });
                    return Ok(());
                }
                let case = TestCase {
                    id: TestId {
                        suite: self.suite_path.clone(),
                        class: class.into_owned(),
                        name: name.into_owned(),
                    },
                    outcome: Outcome::Passed,
                    duration_ms,
                    message: None,
                    reruns_failed: 0,
                    file: file.map(Cow::into_owned),
                    line,
                };
                self.case = Some(Case {
                    case,
                    depth: self.depth,
                    text: None,
                });
            }
            "failure" | "error" | "skipped" if self.case.is_some() => {
                let outcome = match name {
                    "failure" => Outcome::Failed,
                    "error" => Outcome::Errored,
                    _ => Outcome::Skipped,
                };
                let message = self.attr(e, "message")?.filter(|m| !m.trim().is_empty());
                let max = self.limits.max_message_bytes;
                let text_depth = self.depth;
                let Some(case) = self.case.as_mut() else {
                    return Ok(());
                };
                // A failure outweighs a skip; the first failure is the one kept.
                if case.case.outcome.is_failure()
                    || (outcome == Outcome::Skipped && case.case.outcome != Outcome::Passed)
                {
                    return Ok(());
                }
                case.case.outcome = outcome;
                case.case.message = message.as_deref().map(|m| first_line(m, max));
                if outcome.is_failure() && case.case.message.is_none() && !empty {
                    case.text = Some(String::new());
                    self.text_depth = Some(text_depth);
                }
            }
            "flakyFailure" | "flakyError" | "rerunFailure" | "rerunError" => {
                let message = self.attr(e, "message")?.filter(|m| !m.trim().is_empty());
                let max = self.limits.max_message_bytes;
                if let Some(case) = self.case.as_mut() {
                    case.case.reruns_failed += 1;
                    // How the first failed rerun failed, unless a final failure says more.
                    if case.case.message.is_none() {
                        case.case.message = message.as_deref().map(|m| first_line(m, max));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An element ends.
    fn close(&mut self, name: &str) {
        if self.text_depth == Some(self.depth) {
            self.text_depth = None;
            if let Some(case) = self.case.as_mut()
                && let Some(text) = case.text.take()
            {
                let line = first_line(&text, self.limits.max_message_bytes);
                case.case.message = (!line.is_empty()).then_some(line);
            }
        }
        match name {
            "testcase" if self.case.as_ref().is_some_and(|c| c.depth == self.depth) => {
                if let Some(case) = self.case.take() {
                    self.keep(case.case);
                }
            }
            "testsuite" if self.case.is_none() => {
                if let Some(len) = self.suites.pop() {
                    self.suite_path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn keep(&mut self, case: TestCase) {
        (self.on_case)(case.as_ref());
    }

    fn push_text(&mut self, text: &str) {
        let max = self.limits.max_message_bytes;
        if let Some(buf) = self.case.as_mut().and_then(|c| c.text.as_mut())
            && buf.len() < max
        {
            // Only the first line is wanted; a little more than `max` is enough to
            // cut it right.
            let room = max - buf.len();
            buf.push_str(cut(text, room));
        }
    }

    /// An attribute's value, entities resolved and whitespace normalized (the common
    /// value, with neither, is taken as it is).
    fn value<'a>(
        &self,
        attr: &quick_xml::events::attributes::Attribute<'a>,
    ) -> Result<std::borrow::Cow<'a, str>, ReportError> {
        let raw: &str = &attr.value;
        // Without an early exit, so the scan is vectorized (values are short).
        let special = raw.bytes().fold(false, |seen, b| {
            seen | matches!(b, b'&' | b'\t' | b'\n' | b'\r')
        });
        if !special {
            return Ok(attr.value.clone());
        }
        attr.normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| self.xml_error(err))
    }

    /// An attribute's value, entities resolved.
    fn attr(&self, e: &BytesStart<'_>, key: &str) -> Result<Option<String>, ReportError> {
        for attr in e.attributes() {
            let attr = attr.map_err(|err| self.xml_error(err))?;
            if attr.key.local_name().as_ref() == key {
                let value = attr
                    .normalized_value(XmlVersion::Implicit1_0)
                    .map_err(|err| self.xml_error(err))?;
                return Ok(Some(value.into_owned()));
            }
        }
        Ok(None)
    }
}

/// Trimmed, with runs of whitespace made one space.
fn normalize(s: Cow<'_, str>) -> Cow<'_, str> {
    // The common case, an ASCII name already in that form, is one pass and no copy.
    if s.is_ascii() {
        let mut after_space = true;
        let mut clean = true;
        for &b in s.as_bytes() {
            if b.is_ascii_whitespace() {
                if b != b' ' || after_space {
                    clean = false;
                    break;
                }
                after_space = true;
            } else {
                after_space = false;
            }
        }
        if clean && (!after_space || s.is_empty()) {
            return s;
        }
    }
    Cow::Owned(s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The first non-empty line of `s`, trimmed, cut to `max` bytes (on a char boundary).
fn first_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    cut(line, max).to_string()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `time` (seconds, possibly with thousands separators) in milliseconds.
fn seconds_to_ms(text: &str) -> u64 {
    let text = text.trim();
    let seconds = match text.parse::<f64>() {
        Ok(s) => s,
        Err(_) if text.contains(',') => text.replace(',', "").parse().unwrap_or(-1.0),
        Err(_) => -1.0,
    };
    if seconds.is_finite() && seconds >= 0.0 {
        (seconds * 1000.0).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

#[cfg(test)]
#[path = "junit_tests.rs"]
mod tests;
