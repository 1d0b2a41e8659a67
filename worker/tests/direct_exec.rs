//! A plain command executed directly (no shell) behaves as it does through `/bin/sh -c`:
//! the same exit status, stdout and stderr, for generated commands; and one that cannot be
//! started directly gets the shell's error and status.

mod support;

use std::time::Duration;

use gatehouse_common::exec::{ExitStatus, GateResult};
use gatehouse_worker::{CancelSignal, ExecConfig, execute};
use proptest::prelude::*;
use support::{Monitor, attempt, spec};

/// Runs `run` as a gate in a fresh directory.
fn run(rt: &tokio::runtime::Runtime, monitor: &Monitor, run: &str) -> GateResult {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("data.txt"), "one\ntwo\nthree\n").expect("write");
    let spec = spec(run, dir.path());
    rt.block_on(execute(
        &spec,
        &attempt(0, 1),
        &ExecConfig::default(),
        CancelSignal::never(),
        &monitor.handle,
    ))
}

/// Programs (not shell builtins) whose output depends only on their arguments and the
/// directory's one file.
const PROGRAMS: &[&str] = &[
    "expr",
    "basename",
    "dirname",
    "seq",
    "head",
    "wc",
    "cat",
    "ls",
    "true",
    "false",
    "/bin/true",
    "tr",
    "cut",
    "sort",
    "no-such-program-here",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,6}",
        "-[a-z]{1,2}",
        "[0-9]{1,2}",
        Just("data.txt".to_string()),
        Just("+".to_string()),
        Just("a/b.c".to_string()),
        Just("--x=1".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_plain_command_behaves_the_same_without_the_shell(
        program in prop::sample::select(PROGRAMS),
        args in prop::collection::vec(word(), 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let monitor = rt.block_on(async { Monitor::start(Duration::from_millis(250)) });
        let plain = std::iter::once(program.to_string()).chain(args).collect::<Vec<_>>().join(" ");
        prop_assert!(gatehouse_worker::argv::direct(&plain).is_some(), "{plain}");
        // A trailing newline makes the shell run the same command.
        let through_shell = format!("{plain}\n");
        prop_assert!(gatehouse_worker::argv::direct(&through_shell).is_none());
        let direct = run(&rt, &monitor, &plain);
        let shell = run(&rt, &monitor, &through_shell);
        prop_assert_eq!(&direct.status, &shell.status, "{}", plain);
        prop_assert_eq!(&direct.stdout.bytes, &shell.stdout.bytes, "{}", plain);
        prop_assert_eq!(
            String::from_utf8_lossy(&direct.stderr.bytes),
            String::from_utf8_lossy(&shell.stderr.bytes),
            "{}", plain
        );
        rt.block_on(monitor.stop());
    }
}

#[test]
fn a_relative_program_path_is_relative_to_the_workdir() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let monitor = rt.block_on(async { Monitor::start(Duration::from_millis(250)) });
    // The gate's directory has bin/hello; it runs from there, as the shell runs it.
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("bin/hello");
    std::fs::create_dir_all(script.parent().expect("parent")).expect("mkdir");
    std::fs::write(&script, "#!/bin/sh\necho hello from the workdir\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(gatehouse_worker::argv::direct("bin/hello").is_some());
    let spec = spec("bin/hello", dir.path());
    let result = rt.block_on(execute(
        &spec,
        &attempt(0, 1),
        &ExecConfig::default(),
        CancelSignal::never(),
        &monitor.handle,
    ));
    assert_eq!(result.status, ExitStatus::Exited(0));
    assert_eq!(result.stdout.bytes, b"hello from the workdir\n");
    rt.block_on(monitor.stop());
}

#[test]
fn a_program_that_cannot_start_directly_gets_the_shells_status() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let monitor = rt.block_on(async { Monitor::start(Duration::from_millis(250)) });
    let missing = run(&rt, &monitor, "no-such-program-here --flag");
    assert_eq!(missing.status, ExitStatus::Exited(127));
    assert!(
        String::from_utf8_lossy(&missing.stderr.bytes).contains("not found"),
        "{:?}",
        missing.stderr
    );
    let not_executable = run(&rt, &monitor, "./data.txt");
    assert_eq!(not_executable.status, ExitStatus::Exited(126));
    rt.block_on(monitor.stop());
}
