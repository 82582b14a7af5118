//! A process's resident memory, read from Linux's `/proc/PID/status`.

use std::fs;

/// Resident set size now and at its highest so far, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rss {
    pub current_kib: u64,
    pub peak_kib: u64,
}

impl Rss {
    pub fn of(pid: u32) -> Result<Rss, String> {
        let path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        Rss::parse(&status).ok_or_else(|| format!("{path} has no VmRSS or VmHWM line"))
    }

    fn parse(status: &str) -> Option<Rss> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        };
        Some(Rss {
            current_kib: field("VmRSS")?,
            peak_kib: field("VmHWM")?,
        })
    }
}

/// KiB as MiB with one decimal, for tables.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_and_peak() {
        let status =
            "Name:\ttollgate\nVmPeak:\t  900000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   80000 kB\n";
        assert_eq!(
            Rss::parse(status),
            Some(Rss {
                current_kib: 80000,
                peak_kib: 81234
            })
        );
        assert_eq!(Rss::parse("Name:\tx\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let rss = Rss::of(std::process::id()).unwrap();
        assert!(
            rss.current_kib > 0 && rss.peak_kib >= rss.current_kib,
            "{rss:?}"
        );
        assert_eq!(mib(1536), "1.5 MiB");
    }
}
