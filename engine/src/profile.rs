//! A wall-clock profile of a training step by op, like a small `torch.profiler`: where the
//! time of the forward, the backward and the optimiser goes, per op name.
//!
//! Off by default (one relaxed atomic load per recorded op). While [`start`]ed:
//! * **forward**: each op recorded on a tape is charged the time since the previous recorded op
//!   (or since the last [`mark`]). The engine has no central forward dispatch, so this is the
//!   time between two tape pushes: the op's own work, plus any untracked work that ran before it
//!   on the calling thread (say, a no-grad op or host code between layers). Call [`mark`] before
//!   a step's first op so that data preparation is not charged to it;
//! * **backward**: each node's backward call is timed on its own, and adding a gradient into a
//!   parent that already has one is charged to `grad accumulate`;
//! * anything else timed by the caller goes in with [`add`] (the trainer's `optimizer step`).
//!
//! Wall time on the calling thread, so an op's parallel work counts once, at its wall length.
//! [`take`] returns the totals and stops the profile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<State>> = Mutex::new(None);

struct State {
    last: Instant,
    rows: HashMap<(&'static str, Phase), (usize, f64)>,
}

/// Which part of a step a row's time belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// The op's forward (time since the previous recorded op).
    Forward,
    /// The op's backward call.
    Backward,
    /// Work outside the tape, timed by the caller ([`add`]).
    Other,
}

impl Phase {
    /// `forward`, `backward` or `other`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Other => "other",
        }
    }
}

/// One row of a [`Profile`]: an op (or caller-named span) in one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The op's name (as [`crate::Backward::name`]) or the caller's label.
    pub name: &'static str,
    /// Its phase.
    pub phase: Phase,
    /// Calls.
    pub calls: usize,
    /// Total wall seconds.
    pub secs: f64,
}

/// The totals of a profile, largest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Rows, by decreasing time.
    pub rows: Vec<Row>,
}

impl Profile {
    /// Total seconds of a phase.
    pub fn total(&self, phase: Phase) -> f64 {
        self.rows.iter().filter(|r| r.phase == phase).map(|r| r.secs).sum()
    }
}

fn with_state(f: impl FnOnce(&mut State)) {
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = g.as_mut() {
        f(s);
    }
}

/// Start (or restart) profiling from zero; the forward clock starts now.
pub fn start() {
    *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State { last: Instant::now(), rows: HashMap::new() });
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stop profiling and return the totals (empty if it was not started).
pub fn take() -> Profile {
    ENABLED.store(false, Ordering::Relaxed);
    let Some(s) = STATE.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Profile::default() };
    let mut rows: Vec<Row> =
        s.rows.into_iter().map(|((name, phase), (calls, secs))| Row { name, phase, calls, secs }).collect();
    rows.sort_by(|a, b| b.secs.total_cmp(&a.secs).then(a.name.cmp(b.name)).then(a.phase.cmp(&b.phase)));
    Profile { rows }
}

/// True while a profile is running.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Restart the forward clock: work since the last recorded op is charged to nobody.
pub fn mark() {
    if enabled() {
        with_state(|s| s.last = Instant::now());
    }
}

/// Charge `secs` of `phase` to `name` (one call).
pub fn add(name: &'static str, phase: Phase, secs: f64) {
    if enabled() {
        with_state(|s| {
            let e = s.rows.entry((name, phase)).or_default();
            e.0 += 1;
            e.1 += secs;
        });
    }
}

/// The tape's hook: op `name` was just recorded; charge it the time since the previous one.
pub(crate) fn forward_recorded(name: &'static str) {
    if enabled() {
        with_state(|s| {
            let now = Instant::now();
            let e = s.rows.entry((name, Phase::Forward)).or_default();
            e.0 += 1;
            e.1 += (now - s.last).as_secs_f64();
            s.last = now;
        });
    }
}

/// Time `f` as one call of `name` in `phase` when profiling (and just run it otherwise).
pub fn timed<R>(name: &'static str, phase: Phase, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    add(name, phase, t0.elapsed().as_secs_f64());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ops, DType, Tape, Tensor};

    // One test drives the global profile, so no other test in this binary races it.
    #[test]
    fn the_profile_charges_each_op_and_stops_when_taken() {
        start();
        let tape = Tape::new();
        let x = tape.watch(&Tensor::ones(vec![4, 8], DType::F64));
        mark();
        let y = ops::relu(&x).unwrap();
        let z = ops::mul(&y, &y).unwrap();
        let l = ops::sum(&ops::add(&z, &y).unwrap(), &[0, 1], false).unwrap();
        add("optimizer step", Phase::Other, 0.25);
        tape.backward(&l).unwrap();
        let p = take();
        let row = |name: &str, phase| p.rows.iter().find(|r| r.name == name && r.phase == phase).cloned();
        for name in ["relu", "mul", "add", "sum"] {
            let f = row(name, Phase::Forward).unwrap_or_else(|| panic!("{name} forward missing: {p:?}"));
            assert_eq!(f.calls, 1, "{name}");
            let b = row(name, Phase::Backward).unwrap_or_else(|| panic!("{name} backward missing: {p:?}"));
            assert_eq!(b.calls, 1, "{name}");
        }
        // `y` feeds both `mul` (twice) and `add`: its gradients are summed.
        assert!(row("grad accumulate", Phase::Backward).is_some_and(|r| r.calls >= 1), "{p:?}");
        assert_eq!(row("optimizer step", Phase::Other).map(|r| (r.calls, r.secs)), Some((1, 0.25)));
        assert!(p.rows.windows(2).all(|w| w[0].secs >= w[1].secs), "largest first");
        assert!((p.total(Phase::Other) - 0.25).abs() < 1e-12);
        // Stopped: nothing more is recorded.
        assert!(!enabled());
        let _ = ops::relu(&tape.watch(&Tensor::ones(vec![2], DType::F64))).unwrap();
        assert_eq!(take(), Profile::default());
    }
}
