//! The shell blocks of the README and of docs/ are run, as a reader would
//! run them, wherever they can run here; the rest say why they cannot.
//!
//! A block whose fence reads ```` ```sh run ```` runs under `bash -eu -o
//! pipefail` from the repository's top, with this build's `pidbusd` and
//! `pidbusctl` first on `PATH` and a private `HOME` and `XDG_RUNTIME_DIR`;
//! ```` ```sh run-with-session-bus ```` runs the same way while a session
//! `pidbusd` (the default socket paths under that `XDG_RUNTIME_DIR`)
//! serves. Any other shell block must follow a `<!-- not run: REASON -->`
//! line, so that every command the docs show is either tried or known not
//! to be.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pidbus_tests::{PublicDir, binary};

/// A shell block of a document.
#[derive(Debug)]
struct Block {
    /// `file:line` of its opening fence.
    place: String,
    /// What follows the language on the fence (`run`, …).
    mode: String,
    /// Why it is not run, from the comment before it.
    not_run: Option<String>,
    script: String,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn documents() -> Vec<PathBuf> {
    let root = repository();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

/// The `sh`/`bash` blocks of `text` (from `name`).
fn shell_blocks(name: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let Some(info) = lines[at].strip_prefix("```") else {
            at += 1;
            continue;
        };
        let mut words = info.split_whitespace();
        let language = words.next().unwrap_or_default();
        let mode = words.collect::<Vec<_>>().join(" ");
        let end = (at + 1..lines.len())
            .find(|&i| lines[i].starts_with("```"))
            .unwrap_or(lines.len());
        if matches!(language, "sh" | "bash") {
            let before = lines[..at].iter().rev().find(|l| !l.trim().is_empty());
            let not_run = before
                .and_then(|l| l.trim().strip_prefix("<!-- not run:"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|reason| reason.trim().to_owned());
            blocks.push(Block {
                place: format!("{name}:{}", at + 1),
                mode,
                not_run,
                script: lines[at + 1..end].join("\n"),
            });
        }
        at = end + 1;
    }
    blocks
}

fn all_blocks() -> Vec<Block> {
    let root = repository();
    documents()
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("read a document");
            let name = path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string();
            shell_blocks(&name, &text)
        })
        .collect()
}

#[test]
fn every_shell_block_runs_here_or_says_why_not() {
    let unmarked: Vec<String> = all_blocks()
        .into_iter()
        .filter(|b| !b.mode.starts_with("run") && b.not_run.is_none())
        .map(|b| b.place)
        .collect();
    assert!(
        unmarked.is_empty(),
        "shell blocks neither run (```sh run) nor say why not (<!-- not run: … --> before them): {unmarked:#?}"
    );
}

#[test]
fn the_runnable_shell_blocks_of_the_docs_work() {
    let blocks: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|b| b.mode.starts_with("run"))
        .collect();
    assert!(blocks.len() >= 3, "too few runnable blocks: {blocks:#?}");
    for block in &blocks {
        run(block);
    }
}

fn run(block: &Block) {
    let home = PublicDir::new("doc-home");
    let runtime = home.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let bin_dir = binary("pidbusd").parent().expect("target dir").to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let session = match block.mode.as_str() {
        "run" => None,
        "run-with-session-bus" => Some(session_bus(&path, home.path(), &runtime)),
        other => panic!("{}: unknown block mode {other:?}", block.place),
    };
    let out = Command::new("timeout")
        .args(["120", "bash", "-eu", "-o", "pipefail", "-c", &block.script])
        .current_dir(repository())
        .env("PATH", &path)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("PIDBUS_ADDRESS")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    if let Some(mut broker) = session {
        let _ = broker.kill();
        let _ = broker.wait();
    }
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}\nstdout:\n{}\nstderr:\n{}",
        block.place,
        out.status,
        block.script,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A session broker on the default paths under `runtime`, serving once
/// its D-Bus socket exists (it prints its address when listening).
fn session_bus(path: &str, home: &Path, runtime: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut broker = Command::new(binary("pidbusd"))
        .args(["--session", "--print-address"])
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", runtime)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pidbusd --session");
    let mut line = String::new();
    std::io::BufReader::new(broker.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read its address");
    assert!(line.starts_with("unix:path="), "pidbusd printed {line:?}");
    broker
}

#[test]
fn blocks_are_found_with_their_mode_and_reason() {
    let text = "x\n```sh run\necho a\n```\n\n<!-- not run: needs systemd -->\n\n```bash\necho b\n```\n```toml\nx = 1\n```\n```sh\nc\n```\n";
    let blocks = shell_blocks("t.md", text);
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        (blocks[0].mode.as_str(), blocks[0].script.as_str()),
        ("run", "echo a")
    );
    assert_eq!(blocks[1].not_run.as_deref(), Some("needs systemd"));
    assert_eq!(blocks[1].place, "t.md:8");
    assert!(blocks[2].not_run.is_none() && blocks[2].mode.is_empty());
}
