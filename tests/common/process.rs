//! Process-level test helpers: run the real `keyscope` binary as a server child process
//! (killed on drop), find its bound address and bootstrap token, and run CLI commands
//! against it. Every wait has a deadline and fails loudly; nothing sleeps to synchronise.
// Test helpers fail the test by panicking, with the process output in the message.
#![allow(dead_code, missing_docs, clippy::panic)]

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long a server may take to start, or a CLI command to finish.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The message of the log line that carries the bound address.
pub const SERVING: &str = "keyscope serving gRPC";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyscope")
}

/// A `keyscope` command with no `KEYSCOPE*` variable inherited from the developer's shell.
pub fn command() -> Command {
    wrapped_command(&[])
}

/// [`command`] run by `wrapper` (a program and its arguments, the binary's path added after
/// them, e.g. valgrind); the plain command when `wrapper` is empty.
fn wrapped_command(wrapper: &[String]) -> Command {
    let mut cmd = match wrapper.split_first() {
        None => Command::new(bin()),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(bin());
            cmd
        }
    };
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("KEYSCOPE") || name_text.starts_with("OTEL_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Lines read from a pipe by a background thread, until EOF.
#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<LinesState>, Condvar)>);

impl Lines {
    fn reader(pipe: impl Read + Send + 'static) -> (Lines, JoinHandle<()>) {
        let lines = Lines::default();
        let sink = lines.clone();
        let handle = std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                        let (lock, cvar) = &*sink.0;
                        lock.lock().unwrap_or_else(PoisonError::into_inner).lines.push(line);
                        cvar.notify_all();
                    }
                }
            }
            let (lock, cvar) = &*sink.0;
            lock.lock().unwrap_or_else(PoisonError::into_inner).eof = true;
            cvar.notify_all();
        });
        (lines, handle)
    }

    /// Every line read so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner).lines.clone()
    }

    /// Waits until the pipe reaches EOF; false at the deadline.
    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.eof {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }

    /// Waits until `found` returns something for the lines read so far, or panics with
    /// `what` at the deadline or when the pipe closes first.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut found: impl FnMut(&[String]) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.0;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = found(&state.lines) {
                return value;
            }
            if state.eof {
                panic!("the pipe closed before {what}; lines read:\n{}", state.lines.join("\n"));
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; lines read:\n{}", state.lines.join("\n"));
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// What a stopped server wrote.
#[derive(Debug, Clone)]
pub struct Captured {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Captured {
    /// stdout and stderr as one text.
    pub fn all(&self) -> String {
        let mut text = self.stdout.join("\n");
        text.push('\n');
        text.push_str(&self.stderr.join("\n"));
        text
    }
}

/// How to start a server.
pub struct ServerOptions {
    envs: Vec<(String, String)>,
    args: Vec<String>,
    /// Whether the server is expected to print a created bootstrap token on stdout.
    expect_token: bool,
    /// A program (and its arguments) that runs the binary, e.g. valgrind; none when empty.
    wrapper: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            envs: vec![
                ("KEYSCOPE__SERVER__GRPC_ADDR".into(), "127.0.0.1:0".into()),
                ("KEYSCOPE__SERVER__HTTP_ADDR".into(), "127.0.0.1:0".into()),
                ("KEYSCOPE__LOG__FORMAT".into(), "json".into()),
                ("RUST_LOG".into(), "info".into()),
                ("KEYSCOPE__SECURITY__PEPPER".into(), "process-test-pepper-0123456789".into()),
            ],
            args: Vec::new(),
            expect_token: true,
            wrapper: Vec::new(),
        }
    }
}

impl ServerOptions {
    /// Sets (or replaces) an environment variable of the server.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.retain(|(n, _)| n != name);
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Adds arguments after `serve`.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Whether a created bootstrap token is expected on stdout (default: yes).
    pub fn expect_token(mut self, yes: bool) -> Self {
        self.expect_token = yes;
        self
    }

    /// Runs the binary under `program` with `args` (e.g. `valgrind --tool=callgrind`): the
    /// process's id is then still the server's.
    pub fn wrapped<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, program: &str, args: I) -> Self {
        self.wrapper =
            std::iter::once(program.to_owned()).chain(args.into_iter().map(|a| a.as_ref().to_owned())).collect();
        self
    }

    /// Runs `keyscope serve` expecting it to stop by itself (a start that fails) within
    /// `timeout`: its exit code and everything it printed.
    pub fn run_to_exit(self, timeout: Duration) -> (Option<i32>, String) {
        let mut cmd = wrapped_command(&self.wrapper);
        cmd.arg("serve").args(&self.args);
        for (name, value) in &self.envs {
            cmd.env(name, value);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn keyscope serve");
        let (status, stdout, stderr) = wait_with_deadline(child, timeout, &["serve".to_owned()]);
        (status.code(), format!("{stdout}{stderr}"))
    }

    /// Starts the server and waits (up to [`DEADLINE`]) until it serves.
    pub fn start(self) -> Server {
        Server::start(self)
    }
}

/// A running `keyscope serve`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The bound gRPC address, `host:port`.
    pub addr: String,
    /// The bound HTTP address (metrics, probes), `host:port`.
    pub http_addr: String,
    /// The bootstrap admin token printed on stdout, when one was created and printed.
    pub token: Option<String>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

/// The `addr` and `http_addr` fields of a JSON `keyscope serving gRPC` log line.
fn serving_addr(line: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != SERVING {
        return None;
    }
    Some((fields.get("addr")?.as_str()?.to_owned(), fields.get("http_addr")?.as_str()?.to_owned()))
}

impl Server {
    /// A server with the default options: a created bootstrap token printed on stdout.
    pub fn start_default() -> Server {
        ServerOptions::default().start()
    }

    fn start(options: ServerOptions) -> Server {
        let mut cmd = wrapped_command(&options.wrapper);
        cmd.arg("serve").args(&options.args);
        for (name, value) in &options.envs {
            cmd.env(name, value);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn keyscope serve");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let stderr: ChildStderr = child.stderr.take().expect("piped stderr");
        let (out_lines, out_reader) = Lines::reader(stdout);
        let (err_lines, err_reader) = Lines::reader(stderr);
        let mut server = Server {
            child: Some(child),
            addr: String::new(),
            http_addr: String::new(),
            token: None,
            stdout: out_lines,
            stderr: err_lines,
            readers: vec![out_reader, err_reader],
        };
        // The guard owns the child from here: a panic below still kills it.
        (server.addr, server.http_addr) =
            server.stderr.wait_for("the `keyscope serving gRPC` log line", DEADLINE, |lines| {
                lines.iter().find_map(|l| serving_addr(l))
            });
        if options.expect_token {
            // The banner is printed before the serving line is logged, so it is already in
            // the pipe; the reader thread may just not have got to it yet.
            let token = server.stdout.wait_for("the three-line bootstrap banner on stdout", DEADLINE, |lines| {
                (lines.len() >= 3).then(|| lines[2].trim().to_owned())
            });
            assert!(!token.is_empty() && !token.contains(' '), "the banner's last line is not a token: {token:?}");
            server.token = Some(token);
        }
        server
    }

    /// `http://` URL of the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The created bootstrap admin token (panics when none was printed).
    pub fn admin_token(&self) -> &str {
        self.token.as_deref().expect("this server printed no bootstrap token")
    }

    /// stderr lines read so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// A CLI command aimed at this server (`--server`), with no token.
    pub fn cli_anonymous(&self) -> Cli {
        Cli::new().arg("--server").arg(self.url())
    }

    /// A CLI command aimed at this server with `--token <admin token>`.
    pub fn cli(&self) -> Cli {
        self.cli_with_token(self.admin_token())
    }

    /// A CLI command aimed at this server with the given admin token.
    pub fn cli_with_token(&self, token: &str) -> Cli {
        self.cli_anonymous().arg("--token").arg(token)
    }

    /// Kills the server and returns everything it wrote (the reader threads run to EOF).
    pub fn stop(mut self) -> Captured {
        self.kill();
        for reader in self.readers.drain(..) {
            reader.join().expect("pipe reader thread");
        }
        Captured { stdout: self.stdout.snapshot(), stderr: self.stderr.snapshot() }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("the server runs");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the server runs");
        loop {
            if let Some(status) = child.try_wait().expect("poll the child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the pipes to close and returns everything the server wrote (after it exited).
    pub fn output(mut self) -> Captured {
        for reader in self.readers.drain(..) {
            reader.join().expect("pipe reader thread");
        }
        Captured { stdout: self.stdout.snapshot(), stderr: self.stderr.snapshot() }
    }

    /// Stops the server gracefully (SIGTERM), waits for it to exit (failing after
    /// [`DEADLINE`]) and returns its exit code and everything it wrote.
    pub fn stop_gracefully(mut self) -> (Option<i32>, Captured) {
        self.terminate();
        let status = self.wait_exit(DEADLINE);
        let Some(status) = status else {
            self.kill();
            panic!("the server did not stop within {DEADLINE:?} of SIGTERM");
        };
        (status.code(), self.output())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine; either way reap it.
            drop(child.kill());
            drop(child.wait());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of one finished CLI run.
#[derive(Debug, Clone)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Run {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("`keyscope {}` was killed by a signal", self.args.join(" ")))
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "`keyscope {}` exited {} (expected {code})\n{}",
            self.args.join(" "),
            self.code(),
            self.describe()
        );
        self
    }

    /// Panics unless the command succeeded.
    pub fn success(self) -> Run {
        self.expect_code(0)
    }

    /// stdout parsed as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }

    /// Both streams, for failure messages.
    pub fn describe(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout, self.stderr)
    }
}

/// A CLI command being built.
pub struct Cli {
    cmd: Command,
    args: Vec<String>,
}

impl Default for Cli {
    fn default() -> Self {
        Cli::new()
    }
}

impl Cli {
    /// `keyscope` with no arguments and no inherited `KEYSCOPE*` variables.
    pub fn new() -> Cli {
        Cli { cmd: command(), args: Vec::new() }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cli {
        self.args.push(arg.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cli {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Cli {
        self.cmd.env(name, value);
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Cli {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs the command to completion (at most [`DEADLINE`]; then it is killed and the test
    /// fails).
    pub fn run(self) -> Run {
        self.run_within(DEADLINE)
    }

    /// Runs the command to completion within `timeout`, or kills it and fails the test.
    pub fn run_within(self, timeout: Duration) -> Run {
        let Cli { mut cmd, args } = self;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `keyscope {}`: {e}", args.join(" ")));
        let (status, stdout, stderr) = wait_with_deadline(child, timeout, &args);
        Run { status, stdout, stderr, args }
    }
}

/// A child process that is killed when dropped unless it was reaped.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

/// Waits for `child` to exit, collecting its output; kills it and panics after `timeout`.
/// The pipes reaching EOF tell that the process is gone, so nothing polls or sleeps.
pub fn wait_with_deadline(mut child: Child, timeout: Duration, args: &[String]) -> (ExitStatus, String, String) {
    let stdout = child.stdout.take().map(Lines::reader);
    let stderr = child.stderr.take().map(Lines::reader);
    let mut reaper = Reaper(Some(child));
    let deadline = Instant::now() + timeout;
    for (lines, _) in stdout.iter().chain(stderr.iter()) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(lines.wait_eof(left), "`keyscope {}` did not finish within {timeout:?}", args.join(" "));
    }
    let status = reaper.0.take().expect("child present until reaped").wait().expect("wait for keyscope");
    let collect = |pipe: Option<(Lines, JoinHandle<()>)>| {
        pipe.map(|(lines, handle)| {
            handle.join().expect("pipe reader thread");
            let mut text = lines.snapshot().join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            text
        })
        .unwrap_or_default()
    };
    (status, collect(stdout), collect(stderr))
}
