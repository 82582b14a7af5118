//! The benchmark's child processes. Each writes its output to a log in a scratch folder, and
//! dropping [`Procs`] kills them all and removes the folder, on success, error or panic alike.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cpus::CpuSet;

/// Lines of a child's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 20;

pub struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
    /// Where children started from now on run; `None`: anywhere.
    cpus: Option<CpuSet>,
}

impl Procs {
    pub fn new() -> Result<Procs, String> {
        // Unique per instance too: tests create several in one process.
        static INSTANCES: AtomicU32 = AtomicU32::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("proxy-bench-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Procs {
            dir,
            children: Vec::new(),
            cpus: None,
        })
    }

    /// The scratch folder, for files the children read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Runs the children started from now on on these CPUs only (`None`: anywhere).
    pub fn set_cpus(&mut self, cpus: Option<&[usize]>) {
        self.cpus = cpus.map(CpuSet::of);
    }

    /// Starts `program` with stdout and stderr in its log; `name` labels it in errors.
    pub fn spawn(&mut self, name: &str, program: &Path, args: &[&str]) -> Result<(), String> {
        let path = self.log_path(name);
        let log = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("sharing {}: {e}", path.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(cpus) = self.cpus {
            // SAFETY: the closure only makes the sched_setaffinity system call.
            unsafe { command.pre_exec(move || cpus.pin_current()) };
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// The process id of the child called `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find_map(|(n, child)| (n == name).then(|| child.id()))
    }

    /// Polls `probe` until it yields a value, failing early if the child exits.
    pub fn wait_until<T>(
        &mut self,
        name: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return Ok(value);
            }
            let child = self
                .children
                .iter_mut()
                .find_map(|(n, child)| (n == name).then_some(child))
                .ok_or_else(|| format!("no child process named {name}"))?;
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}) before it was ready; its output:\n{}",
                    self.log_tail(name)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} not ready after {timeout:?}; its output:\n{}",
                    self.log_tail(name)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            // SIGKILL: nothing to drain, and Pingora's graceful exit would only add waiting.
            if let Err(e) = child.kill() {
                eprintln!("proxy-bench: killing {name}: {e}");
            }
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago: bound to port 0, then released for a child to take.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// The address in `tollgate-mock`'s `listening on ADDR` line.
pub fn find_listen_addr(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("listening on "))
        .and_then(|addr| addr.trim().parse().ok())
}

pub fn accepts_tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether `GET path` answers 200, with a plain blocking HTTP/1.1 exchange.
pub fn get_is_ok(addr: SocketAddr, path: &str) -> bool {
    let exchange = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    exchange().is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mock_address() {
        let out = "some log line\nlistening on 127.0.0.1:4567\n";
        assert_eq!(
            find_listen_addr(out),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        assert_eq!(find_listen_addr("listening on "), None);
        assert_eq!(find_listen_addr(""), None);
    }

    #[test]
    fn kills_children_and_cleans_up_on_drop() {
        let mut procs = Procs::new().unwrap();
        procs.spawn("sleeper", Path::new("sleep"), &["30"]).unwrap();
        let pid = procs.pid("sleeper").unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(procs.pid("nobody"), None);
        let dir = procs.dir().to_owned();
        let err = procs
            .wait_until("sleeper", Duration::from_millis(100), || None::<()>)
            .unwrap_err();
        assert!(err.contains("not ready"), "{err}");
        drop(procs);
        assert!(!dir.exists());
    }

    #[test]
    fn children_run_on_the_cpus_they_are_given() {
        let cpus = crate::cpus::allowed();
        let mut procs = Procs::new().unwrap();
        procs.set_cpus(Some(&cpus[..1]));
        procs
            .spawn(
                "pinned",
                Path::new("sh"),
                &["-c", "grep Cpus_allowed_list /proc/self/status"],
            )
            .unwrap();
        let log = procs.log_path("pinned");
        let line = procs
            .wait_until("pinned", Duration::from_secs(10), || {
                let text = fs::read_to_string(&log).ok()?;
                text.contains('\n').then_some(text)
            })
            .unwrap();
        assert_eq!(
            line.split_whitespace().last(),
            Some(cpus[0].to_string().as_str()),
            "{line}"
        );
    }

    #[test]
    fn reports_a_child_that_dies() {
        let mut procs = Procs::new().unwrap();
        procs
            .spawn("talker", Path::new("sh"), &["-c", "echo boom >&2; exit 3"])
            .unwrap();
        let err = procs
            .wait_until("talker", Duration::from_secs(10), || None::<()>)
            .unwrap_err();
        assert!(err.contains("exited") && err.contains("boom"), "{err}");
    }
}
