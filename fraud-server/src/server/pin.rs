//! Pinning the HTTP worker threads to CPUs (`limits.pin_workers`, `FRAUD_PIN_WORKERS`). Each
//! worker owns its connections for their whole life; left to the scheduler, two workers can
//! share a CPU while another runs something else, and the answers of one worker's
//! connections wait out the other's time slices. Pinned, worker `i` runs on the `i`-th CPU
//! the process may use (round the list again when there are more workers than CPUs). Threads
//! a worker starts afterwards (its blocking pool, which scores with `sync` durability) stay
//! on its CPU too. Off by default: on a machine shared with other busy programs a pinned
//! worker cannot move away from them.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The CPUs to pin workers to, handed out in turn.
#[derive(Debug)]
pub struct Pins {
    cpus: Vec<usize>,
    next: AtomicUsize,
}

impl Pins {
    /// The CPUs the process may use now (its affinity mask), or why workers cannot be pinned.
    pub fn new() -> Result<Self, String> {
        let cpus = allowed()?;
        if cpus.is_empty() {
            return Err("the process may use no CPU (empty affinity mask)".into());
        }
        Ok(Pins {
            cpus,
            next: AtomicUsize::new(0),
        })
    }

    /// The CPUs handed out, in order.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Pins the calling thread to the next CPU; returns it.
    pub fn pin_this_thread(&self) -> Result<usize, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let cpu = self.cpus[i % self.cpus.len()];
        pin_to(cpu)?;
        Ok(cpu)
    }
}

#[cfg(target_os = "linux")]
fn allowed() -> Result<Vec<usize>, String> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(None).map_err(|e| format!("cannot read the CPU affinity: {e}"))?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

#[cfg(target_os = "linux")]
fn pin_to(cpu: usize) -> Result<(), String> {
    use rustix::thread::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn allowed() -> Result<Vec<usize>, String> {
    Err("pinning threads to CPUs is supported on Linux only".into())
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_cpu: usize) -> Result<(), String> {
    Err("pinning threads to CPUs is supported on Linux only".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn threads_are_pinned_in_turn_to_the_allowed_cpus() {
        let pins = std::sync::Arc::new(Pins::new().unwrap());
        let n = pins.cpus().len();
        let got: Vec<(usize, Vec<usize>)> = (0..n + 1)
            .map(|_| {
                let pins = pins.clone();
                std::thread::spawn(move || {
                    let cpu = pins.pin_this_thread().unwrap();
                    (cpu, allowed().unwrap())
                })
                .join()
                .unwrap()
            })
            .collect();
        for (i, (cpu, now)) in got.iter().enumerate() {
            assert_eq!(*cpu, pins.cpus()[i % n]);
            // The thread may run on that CPU only.
            assert_eq!(now, &vec![*cpu]);
        }
        // The calling thread is not pinned.
        assert_eq!(allowed().unwrap(), pins.cpus());
    }
}
