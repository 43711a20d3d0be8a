//! A headend as an operator runs one: a folder made by `headend init` in
//! a temporary directory, with its API on a free loopback port; the
//! daemon (`headend run`) while it runs; its CLI; and its admin API with
//! the folder's token.

use crate::process::{tail, Process};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// A headend's folder and, while it runs, its daemon (killed when
/// dropped, with the folder).
#[derive(Debug)]
pub struct Headend {
    program: PathBuf,
    dir: tempfile::TempDir,
    /// The API's port on 127.0.0.1.
    pub port: u16,
    /// The admin token (`admin.token`).
    pub token: String,
    /// An HTTP client with a 10 s timeout.
    pub agent: ureq::Agent,
    daemon: Option<Process>,
}

impl Headend {
    /// `headend init` with `program` (the `headend` binary:
    /// `env!("CARGO_BIN_EXE_headend")` in its own crate's tests,
    /// [`workspace_bin`](crate::workspace_bin) elsewhere), the given crypto
    /// period and EMM cycle (`None`: the default one), in a new temporary
    /// folder.
    pub fn init(
        program: impl AsRef<Path>,
        crypto_period_ms: u64,
        emm_cycle_ms: Option<u64>,
    ) -> Headend {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let port = crate::free_tcp_port();
        let program = program.as_ref().to_path_buf();
        let mut cmd = Command::new(&program);
        cmd.args(["init", "--dir"])
            .arg(dir.path().join("h"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--crypto-period-ms", &crypto_period_ms.to_string()]);
        if let Some(c) = emm_cycle_ms {
            cmd.args(["--emm-cycle-ms", &c.to_string()]);
        }
        let out = cmd.output().expect("run headend init");
        assert!(out.status.success(), "headend init: {out:?}");
        let token = std::fs::read_to_string(dir.path().join("h/admin.token"))
            .expect("admin.token")
            .trim()
            .to_string();
        Headend {
            program,
            dir,
            port,
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
            daemon: None,
        }
    }

    /// The headend's folder (`--dir` of `headend init`).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("h")
    }

    /// Its `headend.toml`.
    pub fn config(&self) -> PathBuf {
        self.home().join("headend.toml")
    }

    /// The daemon's log file (every run appends to it).
    pub fn log_path(&self) -> PathBuf {
        self.home().join("daemon.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path(), n)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The API's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url())
    }

    /// `headend run`; returns once it answers `/live` (`/ready` waits for
    /// every channel to be on the air, and their input may not be fed
    /// yet).
    pub fn start(&mut self) {
        self.start_with(&[], &[]);
    }

    /// [`Headend::start`] with more arguments for `headend run` and more
    /// environment variables.
    pub fn start_with(&mut self, args: &[&str], envs: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let mut p = Process::spawn(
            Command::new(&self.program)
                .args(["run", "--config"])
                .arg(self.config())
                .args(args)
                .env("RUST_LOG", "info")
                .envs(envs.iter().copied()),
            &self.log_path(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .agent
                .get(&self.url("/live"))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            if let Some(st) = p.exited() {
                panic!("headend run exited at start: {st}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "headend run not live after 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.daemon = Some(p);
    }

    /// Whether the daemon runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Process::is_running)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Process::pid)
    }

    /// SIGKILL, and waits for the daemon to be gone.
    pub fn kill9(&mut self) {
        self.daemon.take().expect("the daemon is running").kill();
    }

    /// SIGTERM; its exit status (it must exit within 10 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut p = self.daemon.take().expect("the daemon is running");
        p.terminate(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit 10 s after SIGTERM; log:\n{}", self.log_tail(30)))
    }

    /// SIGTERM, and asserts a clean exit.
    pub fn stop(&mut self) {
        let st = self.terminate();
        assert!(
            st.success(),
            "headend run did not stop cleanly on SIGTERM ({st}):\n{}",
            self.log_tail(30)
        );
    }

    /// A `headend` CLI subcommand on this headend (`--config` added); it
    /// must succeed.
    pub fn cli(&self, args: &[&str]) -> Output {
        let o = Command::new(&self.program)
            .args(args)
            .arg("--config")
            .arg(self.config())
            .env_remove("IODOFORM_CONFIG")
            .output()
            .expect("run the headend CLI");
        assert!(
            o.status.success(),
            "headend {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log_tail(20)
        );
        o
    }

    /// An API request with the admin token; the status and the JSON body
    /// (a string when it is not JSON), for errors too. A transport error
    /// (the daemon gone) is `None`.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let req = self
            .agent
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token));
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(_)) => return None,
        };
        let status = resp.status();
        let text = resp.into_string().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// GET, which must answer 200.
    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.request("GET", path, None).expect("the daemon answers");
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    /// POST, which must answer 2xx.
    pub fn post(&self, path: &str, body: Value) -> Value {
        let (st, v) = self
            .request("POST", path, Some(&body))
            .expect("the daemon answers");
        assert!((200..300).contains(&st), "POST {path} {body}: {st} {v}");
        v
    }
}

impl Drop for Headend {
    fn drop(&mut self) {
        // Before the folder goes.
        if let Some(mut p) = self.daemon.take() {
            p.kill();
        }
    }
}
