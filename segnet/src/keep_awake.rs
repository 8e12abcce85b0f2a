//! Keep the pool's other workers spinning while a command runs, so the kernels' parallel loops
//! do not wait for a sleeping thread to wake.
//!
//! A training step is hundreds of parallel loops with short serial gaps between them (the tape,
//! allocation, small ops). Rayon parks an idle worker on a futex after a few dozen rounds of
//! looking for work, so nearly every loop first has to wake the other worker, and only then can it
//! split: on the default task's model (`bench step --backbone resnet18 --width 0.25
//! --output-stride 8 --crop 64 --batch 8`) ~77 sleeps and wake-ups per 22 ms step, ~10 % of the
//! CPU samples in the scheduler. OpenMP runtimes spin for a while before they sleep for the same
//! reason.
//!
//! [`run`] spawns one *spinner* per other worker into a scope around the command. A spinner
//! keeps its worker looking for work ([`rayon::yield_now`], which steals and runs one pending job)
//! instead of parking. Two rules keep it from ever blocking the command:
//! - it returns after one job it ran or [`SPIN`] without finding one, and hands over to a fresh
//!   spinner spawned on its own thread. A worker that picked it up while waiting inside some other
//!   job (rayon runs pending jobs while it waits for a latch) gets back to its latch within
//!   [`SPIN`], as it would after running any stolen job;
//! - on the thread that runs the command it only hands over (spawns its successor, which another
//!   worker steals), so the command's own thread never spins.
//!
//! The command's end, or its panic, stops them (a guard), and the scope waits for the last ones.
//! Results do not change: the kernels split their work by fixed rules, whichever thread runs a
//! part. `SEGNET_KEEP_AWAKE=0` turns it off (the other cores then idle between loops), and so does
//! a pool with more threads than the CPUs the process may use: a spinner would then take a CPU from
//! a thread with work (`--threads 4` on 2 CPUs: 71-78 ms per step of the default model spinning,
//! 30 ms without).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a spinner looks for work before it hands over to its successor.
const SPIN: Duration = Duration::from_micros(50);

/// Run `f` on a worker of the global pool, the other workers kept awake while it runs.
pub fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let off = std::env::var_os("SEGNET_KEEP_AWAKE").is_some_and(|v| v == "0");
    let spinners = spinner_count(rayon::current_num_threads(), cpus, off);
    if spinners == 0 {
        return rayon::scope(|_| f());
    }
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        let stop = &stop;
        let home = rayon::current_thread_index();
        for _ in 0..spinners {
            s.spawn(move |s| spinner(s, stop, home));
        }
        // Stops the spinners when `f` returns or unwinds (a panic must not leave them spinning:
        // the scope would wait for them forever).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(stop);
        f()
    })
}

/// Spinners for a pool of `threads` on `cpus` usable CPUs: one per other worker, none when turned
/// `off` or when the pool has more threads than CPUs.
fn spinner_count(threads: usize, cpus: usize, off: bool) -> usize {
    if off || threads > cpus {
        0
    } else {
        threads.saturating_sub(1)
    }
}

/// One spinner: look for work until one job ran, [`SPIN`] passed or `stop`; then spawn the next.
fn spinner<'s>(s: &rayon::Scope<'s>, stop: &'s AtomicBool, home: Option<usize>) {
    if stop.load(Ordering::Acquire) {
        return;
    }
    if rayon::current_thread_index() != home {
        let t0 = Instant::now();
        while !stop.load(Ordering::Acquire) && t0.elapsed() < SPIN {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                break;
            }
            std::hint::spin_loop();
        }
    }
    if !stop.load(Ordering::Acquire) {
        s.spawn(move |s| spinner(s, stop, home));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Nested parallel work inside the command finishes with the right result (a spinner that
    /// blocked a worker waiting inside a job would hang this test).
    #[test]
    fn nested_parallel_work_completes() {
        for _ in 0..20 {
            let total: u64 = run(|| {
                (0..64u64)
                    .into_par_iter()
                    .map(|i| {
                        let (a, b) = rayon::join(|| (0..1000u64).into_par_iter().sum::<u64>(), || i);
                        a + b
                    })
                    .sum()
            });
            assert_eq!(total, 64 * 499_500 + 63 * 64 / 2);
        }
    }

    #[test]
    fn no_spinners_when_off_oversubscribed_or_alone() {
        assert_eq!(spinner_count(2, 2, false), 1);
        assert_eq!(spinner_count(4, 8, false), 3);
        assert_eq!(spinner_count(1, 2, false), 0);
        assert_eq!(spinner_count(4, 2, false), 0);
        assert_eq!(spinner_count(2, 2, true), 0);
    }

    /// A panic in the command reaches the caller (the spinners stop; the scope does not hang).
    #[test]
    fn a_panic_stops_the_spinners() {
        let r = std::panic::catch_unwind(|| run(|| -> u32 { panic!("inside") }));
        assert!(r.is_err());
        assert_eq!(run(|| 7), 7);
    }
}
