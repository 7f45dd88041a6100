//! Throwaway database servers for the restart faults: the suite starts its own PostgreSQL
//! (initdb + pg_ctl) and MariaDB (mariadb-install-db + mariadbd) in a temporary directory on a
//! free port, restarts them at will, and stops them when dropped. The servers the rest of the
//! suite uses are never touched.
//!
//! The binaries come from the Debian packages `postgresql` and `mariadb-server`
//! (scripts/services.sh installs them); a missing binary is an error (the case fails, it is
//! never skipped). As root, PostgreSQL runs as the `postgres` user (initdb refuses root) and
//! MariaDB with `--user=root`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

/// A server this process started: its data directory, port and process.
pub struct Server {
    kind: Kind,
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL: the bin directory (initdb, pg_ctl); MariaDB: the server binary.
    bin: PathBuf,
    /// MariaDB: the running server process (PostgreSQL's is managed by pg_ctl).
    child: Option<Child>,
    running: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A TCP port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The first existing file among `candidates`.
fn first_existing(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// PostgreSQL's bin directory: the newest /usr/lib/postgresql/<version>/bin with initdb.
fn postgres_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install the Debian package postgresql)"))?
        .filter_map(|d| d.ok())
        .filter_map(|d| {
            let v = d.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = d.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb (install postgresql)".to_owned())
}

/// Waits until something accepts TCP connections on `port`.
fn wait_port(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Server {
    /// Creates and starts a PostgreSQL cluster of its own.
    pub fn postgres() -> Result<Server, String> {
        let bin = postgres_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("diesel-budget-faults-pg")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if is_root() {
            run(
                "chown the data directory to postgres",
                Command::new("chown").arg("postgres:").arg(dir.path()),
            )?;
        }
        let mut server = Server {
            kind: Kind::Postgres,
            port: free_port()?,
            dir,
            bin,
            child: None,
            running: false,
        };
        let data = server.data();
        server.as_owner(
            "initdb",
            &mut server.pg("initdb"),
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        server.start()?;
        Ok(server)
    }

    /// Creates and starts a MariaDB server of its own.
    pub fn mariadb() -> Result<Server, String> {
        let install = first_existing(&[
            "/usr/bin/mariadb-install-db".into(),
            "/usr/bin/mysql_install_db".into(),
        ])
        .ok_or("no mariadb-install-db (install the Debian package mariadb-server)")?;
        let bin = first_existing(&["/usr/sbin/mariadbd".into(), "/usr/sbin/mysqld".into()])
            .ok_or("no mariadbd (install the Debian package mariadb-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("diesel-budget-faults-my")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut server = Server {
            kind: Kind::Mariadb,
            port: free_port()?,
            dir,
            bin,
            child: None,
            running: false,
        };
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", server.data().display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if is_root() {
            cmd.arg("--user=root");
        }
        run("mariadb-install-db", &mut cmd)?;
        server.start()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg(&self, tool: &str) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        }
    }

    fn as_owner(&self, what: &str, cmd: &mut Command, args: &[&str]) -> Result<(), String> {
        run(what, cmd.args(args))
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/{name}", self.port),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{}/{name}", self.port),
        }
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start(&mut self) -> Result<(), String> {
        if self.running {
            return Ok(());
        }
        let dir = path_str(self.dir.path())?.to_owned();
        let data = self.data();
        match self.kind {
            Kind::Postgres => {
                let log = self.dir.path().join("server.log");
                let options = format!(
                    "-c listen_addresses=127.0.0.1 -p {} -k {dir} -c fsync=off \
                     -c full_page_writes=off -c max_connections=40",
                    self.port
                );
                let mut cmd = self.pg("pg_ctl");
                self.as_owner(
                    "pg_ctl start",
                    &mut cmd,
                    &[
                        "-D",
                        path_str(&data)?,
                        "-l",
                        path_str(&log)?,
                        "-w",
                        "-t",
                        "30",
                        "-o",
                        &options,
                        "start",
                    ],
                )?;
            }
            Kind::Mariadb => {
                let mut cmd = Command::new(&self.bin);
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--socket={dir}/sock"))
                    .arg(format!("--pid-file={dir}/pid"))
                    .arg(format!("--log-error={dir}/server.log"))
                    .arg(format!("--port={}", self.port))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--innodb-buffer-pool-size=16M",
                        "--max-connections=40",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if is_root() {
                    cmd.arg("--user=root");
                }
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
                self.child = Some(child);
                if !wait_port(self.port, Duration::from_secs(30)) {
                    return Err(format!(
                        "mariadbd did not listen on {} within 30 s: {}",
                        self.port,
                        self.log_tail()
                    ));
                }
            }
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (PostgreSQL: fast shutdown, sessions terminated; MariaDB: SIGTERM,
    /// a normal shutdown) and waits until it is gone.
    pub fn stop(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        match self.kind {
            Kind::Postgres => {
                let data = self.data();
                let mut cmd = self.pg("pg_ctl");
                self.as_owner(
                    "pg_ctl stop",
                    &mut cmd,
                    &[
                        "-D",
                        path_str(&data)?,
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                    ],
                )
            }
            Kind::Mariadb => {
                let Some(mut child) = self.child.take() else {
                    return Ok(());
                };
                let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
                // SAFETY: signals the server process this struct started (not yet reaped).
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(30) {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                Err("mariadbd did not stop within 30 s of SIGTERM (killed)".into())
            }
        }
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("not UTF-8: {}", p.display()))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the throwaway server: {e}");
        }
    }
}
