//! Every shell script of the repository answers `--help` and `-h` with its usage text and
//! exit 0, without doing any work (regression: `scripts/bench.sh --help` and
//! `scripts/compare-nginx.sh --help` exited 2). How: the scripts are the tracked `*.sh`
//! files plus `.ci/run` and everything in `scripts/` (`git ls-files`; without git, a walk
//! of the tree); each runs under bash with a time bound from an empty temporary working
//! directory, so one that ignored `--help` and started working would be stopped, and
//! would find nothing to work on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A script that answers `--help` prints and exits at once; anything longer is working.
const HELP_TIME_MAX: Duration = Duration::from_secs(10);

/// The scripts, relative to the repository root.
fn scripts(root: &Path) -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--", "*.sh", ".ci/run", "scripts"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output();
    let mut found: Vec<PathBuf> = match listed {
        Ok(output) if output.status.success() => output
            .stdout
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
            .collect(),
        _ => walk(root),
    };
    found.sort();
    found.dedup();
    found
}

/// Without git (a source tarball): every `*.sh` below the root outside build output,
/// plus `.ci/run` and `scripts/*`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = dir.join(&name);
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    pending.push(relative);
                }
            } else if name.ends_with(".sh") || relative.starts_with("scripts") {
                found.push(relative);
            }
        }
    }
    if root.join(".ci/run").is_file() {
        found.push(PathBuf::from(".ci/run"));
    }
    found
}

/// Runs `bash script flag` from an empty directory; the exit code (None when it had to
/// be stopped) and its output.
fn run_help(script: &Path, flag: &str) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .arg(script)
        .arg(flag)
        .current_dir(cwd.path())
        // A group of its own, so that a script that went to work is stopped with all it
        // started.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash");
    let deadline = Instant::now() + HELP_TIME_MAX;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) of the process group of a child we spawned and not reaped.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (code, text)
}

#[test]
fn every_script_answers_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = scripts(root);
    assert!(
        scripts.iter().any(|s| s.ends_with("scripts/bench.sh")),
        "the script list misses scripts/bench.sh: {scripts:?}"
    );
    let mut failures = Vec::new();
    for script in &scripts {
        for flag in ["--help", "-h"] {
            let (code, text) = run_help(&root.join(script), flag);
            if code != Some(0) || text.trim().is_empty() {
                failures.push(format!(
                    "{} {flag}: exit {code:?}, output {text:?}",
                    script.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
