//! `redis-server` as a child process on a port of its own, without persistence.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

/// A loopback port where connections are refused, for "the server is down"
/// cases. Not a freed ephemeral port: tests run in parallel, and the OS may
/// hand that port to a server another test starts a moment later (seen in
/// CI: a "Redis is unreachable" seed found a test's redis-server there).
/// Port 1 is never what a bind to port 0 returns, and nothing here binds it.
pub const REFUSED_PORT: u16 = 1;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts on `port` and waits until it answers PING.
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, None)
    }

    /// With `requirepass`: its `url()` carries the password, as a real
    /// deployment's REDIS_URL does.
    pub fn start_with_password(password: &str) -> Self {
        Self::spawn(free_port(), Some(password.to_owned()))
    }

    fn spawn(port: u16, password: Option<String>) -> Self {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if password.is_some() {
            // The password as config on stdin (`-`), not argv: tests check
            // that no process shows it in `ps`.
            cmd.arg("-").stdin(Stdio::piped());
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: apt-get install -y redis-server (scripts/test.sh checks for it)");
        if let Some(pw) = &password {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "requirepass {pw}").expect("redis-server reads its config");
        }
        let pid = child.id();
        let mut server = Self {
            child: Some(child),
            port,
            password,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Our own server, not whichever one answers on this port: when a
            // parallel test's redis-server took the port first, ours exits
            // (address in use) and theirs would answer the PING.
            if let Some(info) = server.try_query(&["INFO", "server"]) {
                let theirs: Option<u32> = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|v| v.trim().parse().ok());
                assert_eq!(
                    theirs,
                    Some(pid),
                    "port {port} is answered by another redis-server (a port race)"
                );
                return server;
            }
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {port} exited at start ({status}): port taken?");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Runs a command with `redis-cli` (a client independent of the code
    /// under test) and returns its reply as text, e.g. `["DBSIZE"]` → `5`.
    pub fn query(&self, args: &[&str]) -> String {
        self.try_query(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} against port {} failed", self.port))
    }

    fn try_query(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"]);
        if let Some(pw) = &self.password {
            // Through the environment, so it is in no test's `ps` either.
            cmd.env("REDISCLI_AUTH", pw);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli not found: apt-get install -y redis-tools (scripts/test.sh checks for it)");
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        // redis-cli exits 0 on a refused connection too, saying so on stdout.
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
