//! A real PostgreSQL for the tests (Debian's `postgresql` package): one server per test process,
//! started on first use on a free loopback port with its data in a temp dir (fsync off), run as
//! the `postgres` user when the tests run as root, and killed when the test process ends. Each
//! test server gets a database of its own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's binaries.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// (uid, gid) to run the server as: the `postgres` user when we are root (PostgreSQL refuses to
/// run as root), else ourselves.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is read before any other call.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn command(bin: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null());
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown for postgres");
    }
}

/// The test process's PostgreSQL, started on first use; `None` (saying why once) when
/// PostgreSQL is not installed.
pub fn postgres() -> Option<&'static Postgres> {
    static PG: OnceLock<Option<Postgres>> = OnceLock::new();
    PG.get_or_init(|| {
        let Some(bin) = bin_dir() else {
            eprintln!("PostgreSQL is not installed (apt-get install postgresql): the PostgreSQL variants of the tests are skipped");
            return None;
        };
        Some(start(&bin))
    })
    .as_ref()
}

/// A PostgreSQL of the calling test's own, to stop and start (`None` when not installed).
pub fn dedicated() -> Option<Postgres> {
    postgres()?;
    Some(start(&bin_dir()?))
}

fn start(bin: &Path) -> Postgres {
    let owner = run_as();
    let dir = tempfile::Builder::new()
        .prefix("portcullis-pg-")
        .tempdir()
        .expect("temp dir");
    chown(dir.path(), owner);
    let data = dir.path().join("data");
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    chown(&sockets, owner);
    let out = command(&bin.join("initdb"), owner)
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
        ])
        .args(["--no-sync", "-E", "UTF8", "--locale=C"])
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pg = Postgres {
        port: super::free_port(),
        bin: bin.to_path_buf(),
        dir,
    };
    pg.run();
    pg
}

impl Postgres {
    /// Start the server on its data dir and wait until it answers.
    fn run(&self) {
        let owner = run_as();
        let port = self.port;
        // The server is started from a thread that lives as long as the process, so the
        // parent-death signal (sent when the *thread* that forked exits) kills it exactly when
        // the test process ends, however it ends.
        let (started, result) = std::sync::mpsc::channel();
        let (postgres, data_arg, socket_arg) = (
            self.bin.join("postgres"),
            self.dir.path().join("data").to_string_lossy().into_owned(),
            self.dir
                .path()
                .join("sockets")
                .to_string_lossy()
                .into_owned(),
        );
        std::thread::Builder::new()
            .name("test-postgres".into())
            .spawn(move || {
                let mut cmd = command(&postgres, owner);
                cmd.args(["-D", &data_arg, "-p", &port.to_string(), "-k", &socket_arg])
                    .args(["-c", "listen_addresses=127.0.0.1"])
                    .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                    .args(["-c", "full_page_writes=off", "-c", "max_connections=400"])
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
                        let _ = started.send(Ok(()));
                        // Reap it when it stops (`stop`), then keep the thread alive.
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
            .expect("postgres thread");
        result
            .recv()
            .expect("postgres thread")
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::block_on(self.admin()).is_err() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (fast shutdown: connections are closed) and wait until it is gone.
    pub fn stop(&self) {
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("postmaster.pid")
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a pid");
        // SAFETY: a signal to the server's own process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid_file.exists() {
            assert!(Instant::now() < deadline, "postgres did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start it again after `stop`, on the same port and data.
    pub fn restart(&self) {
        self.run();
    }
}

impl Drop for Postgres {
    /// A dedicated server goes with its test (the shared one lives as long as the process).
    fn drop(&mut self) {
        if self.dir.path().join("data").join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

impl Postgres {
    /// A connection to the `postgres` database as the superuser.
    pub async fn admin(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A new empty database; returns its URL.
    pub fn new_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        super::block_on(async {
            let client = self.admin().await.expect("connect to postgres");
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
        });
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Run SQL as the superuser (e.g. to end a backend with `pg_terminate_backend`).
    pub fn execute(&self, sql: &str) {
        super::block_on(async {
            let client = self.admin().await.expect("connect to postgres");
            client.batch_execute(sql).await.expect("admin SQL");
        });
    }
}
