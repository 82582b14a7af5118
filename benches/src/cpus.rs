//! Keeping the proxy under test and the load apart on the CPUs: on a small machine a load
//! generator and a mock that share the proxy's cores take turns with it, and the proxy's
//! figures then measure the scheduler as much as the proxy.

use std::io;

/// A set of CPUs, as `sched_setaffinity` takes it.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    pub fn of(cpus: &[usize]) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET only writes inside it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        CpuSet(set)
    }

    /// Pins the calling thread; threads it starts afterwards inherit the set. Only makes a
    /// system call, so it is safe between `fork` and `exec`.
    pub fn pin_current(&self) -> io::Result<()> {
        // SAFETY: the set is a valid cpu_set_t of the size passed.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Which CPUs run the proxy under test and which run the load (generator and mock).
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub proxy: Vec<usize>,
    pub load: Vec<usize>,
}

impl Placement {
    /// The proxy gets as many CPUs as it has worker threads, from the top, and the load the
    /// rest, keeping at least one; `None` with fewer than two CPUs, where nothing can be apart.
    pub fn split(allowed: &[usize], proxy_threads: usize) -> Option<Placement> {
        if allowed.len() < 2 {
            return None;
        }
        let proxy_count = proxy_threads.clamp(1, allowed.len() - 1);
        let (load, proxy) = allowed.split_at(allowed.len() - proxy_count);
        Some(Placement {
            proxy: proxy.to_vec(),
            load: load.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_takes_cpus_from_the_top_and_the_load_keeps_one() {
        let split = Placement::split(&[0, 1, 2, 3], 1).unwrap();
        assert_eq!((split.proxy, split.load), (vec![3], vec![0, 1, 2]));
        let split = Placement::split(&[0, 1, 2, 3], 8).unwrap();
        assert_eq!((split.proxy, split.load), (vec![1, 2, 3], vec![0]));
        assert_eq!(Placement::split(&[5], 1), None);
    }

    #[test]
    fn this_process_may_run_somewhere_and_can_pin_a_thread_there() {
        let cpus = allowed();
        assert!(!cpus.is_empty());
        std::thread::spawn(move || CpuSet::of(&cpus[..1]).pin_current().unwrap())
            .join()
            .unwrap();
    }
}
