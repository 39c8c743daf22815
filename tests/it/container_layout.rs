//! The Docker image's runtime layout without Docker (no engine runs here): the binary runs as an
//! unprivileged user with the Dockerfile's and docker-compose.yml's environment and paths
//! (container paths mapped into a temp dir, 0.0.0.0 mapped to loopback), and serves.

use crate::common::{client, EchoUpstream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// `ENV KEY=value …` lines of the Dockerfile (with `\` continuations).
fn dockerfile_env() -> Vec<(String, String)> {
    let text = repo_file("Dockerfile").replace("\\\n", " ");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ENV "))
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The `environment:` map of the `portcullis` service in docker-compose.yml.
fn compose_env() -> Vec<(String, String)> {
    let text = repo_file("docker-compose.yml");
    let mut in_service = false;
    let mut in_env = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            in_service = line.trim() == "portcullis:";
            in_env = false;
            continue;
        }
        if in_service && line.trim() == "environment:" {
            in_env = true;
            continue;
        }
        if in_env {
            let indent = line.len() - line.trim_start().len();
            if indent < 6 || line.trim().is_empty() {
                in_env = false;
                continue;
            }
            if let Some((k, v)) = line.trim().split_once(": ") {
                if !k.starts_with('#') {
                    out.push((k.to_string(), v.trim().trim_matches('\'').to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn the_image_layout_serves_as_an_unprivileged_user() {
    let env: Vec<(String, String)> = dockerfile_env().into_iter().chain(compose_env()).collect();
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "PORTCULLIS_CONFIG",
        "PORTCULLIS_DATA_DIR",
        "DATABASE_URL",
        "LOG_DATABASE_URL",
        "PORTCULLIS_ROUTES",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from the image/compose environment: {names:?}"
        );
    }

    let upstream = EchoUpstream::start();
    let root = tempfile::tempdir().unwrap();
    let (data, etc) = (root.path().join("data"), root.path().join("etc"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("portcullis.toml"),
        repo_file("config/default.toml"),
    )
    .unwrap();
    let binary = root.path().join("portcullis");
    std::fs::copy(env!("CARGO_BIN_EXE_portcullis"), &binary).unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (listen, admin) = crate::common::free_port_pair();
    let map = |v: &str| {
        v.replace("/etc/portcullis", &etc.to_string_lossy())
            .replace("/data", &data.to_string_lossy())
            .replace("0.0.0.0:8000", &format!("127.0.0.1:{listen}"))
            .replace("0.0.0.0:9400", &format!("127.0.0.1:{admin}"))
            .replace("echo:9000", &upstream.addr.to_string())
    };
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), map(v))).collect();

    let root_user = unsafe { libc::geteuid() } == 0;
    let run = |args: &[&str]| {
        let mut cmd = if root_user {
            // As in the image: a system user that owns only the data dir.
            std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        cmd.args(args)
            .current_dir(&data)
            .env_clear()
            .envs(env.iter().cloned());
        cmd
    };
    let mut child = run(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client()
        .get(format!("{base}/auth/"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(child.try_wait().unwrap().is_none(), "portcullis exited");
        assert!(Instant::now() < deadline, "portcullis did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        client()
            .get(format!("{base}/api/x"))
            .send()
            .unwrap()
            .status(),
        401,
        "the compose route needs a token"
    );
    let pw = "Tr1cky-Horse!";
    let resp = client()
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({"email": "c@example.com", "nickname": "c", "password": pw, "passphrase": "correct horse battery staple"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let login: serde_json::Value = client()
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": "c@example.com", "password": pw}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(
        client()
            .get(format!("{base}/api/x"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(upstream.count(), 1);

    // The HEALTHCHECK command, as the same user.
    assert!(run(&["healthcheck"]).status().unwrap().success());
    // The databases carry the compose file's names, and belong to the unprivileged user.
    for name in [
        "portcullis-accounts.redb",
        "portcullis-audit.redb",
        "secret.key",
    ] {
        let meta = std::fs::metadata(data.join(name)).unwrap_or_else(|_| panic!("{name} missing"));
        if root_user {
            assert_eq!(meta.uid(), NOBODY, "{name} owner");
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// The environment of the replicas in examples/ha/docker-compose.yml (the `&replica-env` map).
fn ha_replica_env() -> Vec<(String, String)> {
    let text = repo_file("examples/ha/docker-compose.yml");
    let mut in_env = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("environment: &replica-env") {
            in_env = true;
            continue;
        }
        if in_env {
            let indent = line.len() - line.trim_start().len();
            if indent < 6 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.trim().split_once(": ") {
                if !k.starts_with('#') {
                    out.push((k.to_string(), v.trim().trim_matches('\'').to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn the_high_availability_example_configures_replicas_on_postgresql() {
    let env = ha_replica_env();
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "PORTCULLIS_ROUTES",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("check-config").current_dir(dir.path()).env_clear();
    for (k, v) in &env {
        let v = match k.as_str() {
            "SECRET_KEY" => {
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string()
            }
            // The compose network's name for the upstream does not resolve here.
            "PORTCULLIS_ROUTES" => {
                assert!(v.contains("echo:9000"), "{v}");
                v.replace("echo:9000", "127.0.0.1:9000")
            }
            _ => v.clone(),
        };
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("postgres://portcullis:********@postgres:5432/portcullis"),
        "{stdout}"
    );
    assert!(!stdout.contains("portcullis-example-password"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9000"));
    // nginx balances both replicas; Prometheus scrapes both admin listeners.
    let nginx = repo_file("examples/ha/nginx.conf");
    let prometheus = repo_file("examples/ha/prometheus.yml");
    for replica in ["portcullis-a", "portcullis-b"] {
        assert!(
            nginx.contains(&format!("server {replica}:8000")),
            "{replica}"
        );
        assert!(prometheus.contains(&format!("{replica}:9400")), "{replica}");
    }
}
