//! Throwaway cache tier servers for the shared-cache faults: the suite starts its own
//! `redis-server` or `memcached` on a free port, freezes (SIGSTOP), kills and restarts it at
//! will, and stops it when dropped. The shared servers on 6379 / 11211 are never touched.
//!
//! The binaries come from the Debian packages `redis-server` and `memcached`; a missing binary
//! is an error (the case fails, it is never skipped).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Memcached,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Memcached => "memcached",
        }
    }
}

/// A tier server this process started, on a port of its own.
pub struct TierServer {
    kind: Kind,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

impl TierServer {
    /// Starts a server of `kind` on a free port.
    pub fn start(kind: Kind) -> Result<TierServer, String> {
        let mut server = TierServer {
            kind,
            port: free_port()?,
            child: None,
        };
        server.up()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/` or `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}/", self.port),
            Kind::Memcached => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Starts the server (empty: no persistence) on its port and waits until it listens.
    pub fn up(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let (program, args): (&str, Vec<&str>) = match self.kind {
            Kind::Redis => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
            ),
            Kind::Memcached => (
                "memcached",
                vec!["-p", &port, "-l", "127.0.0.1", "-U", "0", "-u", "nobody"],
            ),
        };
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("{program} on port {port} exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{program} did not listen on {port} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: a signal to our own child process (not yet reaped: `down` reaps it).
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Freezes the server: it keeps its connections and data and answers nothing.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server run again.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills the server (SIGKILL): its connections are reset, its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `signal`; a frozen process is woken so that it dies at once.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.up()
    }
}

impl Drop for TierServer {
    fn drop(&mut self) {
        self.kill();
    }
}
