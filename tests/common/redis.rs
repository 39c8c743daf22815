//! A real Redis for the tests (Debian's `redis-server`), on a free loopback port, without
//! persistence, killed when the test process ends: one shared per process, or one of a test's
//! own to stop and start.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    pid: AtomicI32,
}

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The test process's Redis, started on first use; `None` (said once) when not installed.
pub fn redis() -> Option<&'static Redis> {
    static REDIS: OnceLock<Option<Redis>> = OnceLock::new();
    REDIS
        .get_or_init(|| {
            if !installed() {
                eprintln!("Redis is not installed (apt-get install redis-server): the Redis tests are skipped");
                return None;
            }
            Some(start())
        })
        .as_ref()
}

/// A Redis of the calling test's own, to stop and start.
pub fn dedicated() -> Option<Redis> {
    redis()?;
    Some(start())
}

fn start() -> Redis {
    let redis = Redis {
        port: super::free_port(),
        pid: AtomicI32::new(0),
    };
    redis.run();
    redis
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Start the server (from a thread that lives as long as the process, so the parent-death
    /// signal kills it exactly when the test process ends) and wait until it answers.
    fn run(&self) {
        let port = self.port;
        let (started, result) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-redis".into())
            .spawn(move || {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: prctl on the child between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                match cmd.spawn() {
                    Ok(mut child) => {
                        let _ = started.send(Ok(child.id() as i32));
                        let _ = child.wait();
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                    }
                }
            })
            .expect("redis thread");
        let pid = result
            .recv()
            .expect("redis thread")
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.pid.store(pid, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server and wait until it no longer answers.
    pub fn stop(&self) {
        // SAFETY: a signal to the server's own process.
        unsafe { libc::kill(self.pid.load(Ordering::SeqCst), libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start it again after `stop`, on the same port (empty: it keeps nothing).
    pub fn restart(&self) {
        self.run();
    }
}

impl Drop for Redis {
    /// A dedicated server goes with its test.
    fn drop(&mut self) {
        // SAFETY: a signal to the server's own process.
        unsafe { libc::kill(self.pid.load(Ordering::SeqCst), libc::SIGKILL) };
    }
}
