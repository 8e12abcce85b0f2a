//! The tape: reverse-mode autodiff over an arena of nodes.
//!
//! Each op that has a tracked input pushes one [`Node`] holding the op's [`Backward`] (which owns
//! only what that backward needs: ReLU its output, add nothing, conv its input and weight) and the
//! node ids of its inputs. [`Tape::backward`] walks the arena from the output down to index 0,
//! calling each node's backward with its accumulated output gradient and adding the results into
//! the parents' slots. Each backward is *taken* out of its node when it runs, so saved tensors are
//! freed as the walk goes; a tape can be differentiated once. No recursion, no `Rc` cycles: nodes
//! hold untracked tensors only. Dropping the tape and the tracked tensors frees the whole step.

use crate::profile::{self, Phase};
use crate::{Error, Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// An op's backward pass, stored on the tape with whatever the op saved.
pub trait Backward: Send {
    /// The op's name (matches an entry of [`crate::ops::ALL`]).
    fn name(&self) -> &'static str;
    /// Bytes of tensor data this node keeps alive for its backward.
    fn saved_bytes(&self) -> usize {
        0
    }
    /// Gradients with respect to each input, given the gradient of the output.
    /// `needs[i]` says whether input `i` wants a gradient; return `None` where it does not (or
    /// where the input is not differentiable, like a label map).
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

struct Node {
    backward: Option<Box<dyn Backward>>,
    parents: Vec<Option<usize>>,
    saved_bytes: usize,
    name: &'static str,
}

#[derive(Default)]
struct Arena {
    nodes: Vec<Node>,
    used: bool,
}

/// The arena of one training step. Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct Tape {
    arena: Arc<Mutex<Arena>>,
}

/// A tensor's place on a tape.
#[derive(Clone)]
pub(crate) struct Tracked {
    pub(crate) tape: Tape,
    pub(crate) id: usize,
}

struct LeafMarker;
impl Backward for LeafMarker {
    fn name(&self) -> &'static str {
        "leaf"
    }
    fn backward(&self, _: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![])
    }
}

/// Saved bytes per op kind, from [`Tape::memory_report`].
#[derive(Clone, Debug, Default)]
pub struct MemoryReport {
    /// (op name, node count, saved bytes), largest first.
    pub per_op: Vec<(&'static str, usize, usize)>,
    /// Total saved bytes.
    pub total_bytes: usize,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<24} {:>7} {:>12}", "op", "nodes", "saved MiB")?;
        for (name, n, b) in &self.per_op {
            writeln!(f, "{:<24} {:>7} {:>12.2}", name, n, *b as f64 / (1 << 20) as f64)?;
        }
        write!(f, "{:<24} {:>7} {:>12.2}", "total", "", self.total_bytes as f64 / (1 << 20) as f64)
    }
}

impl Tape {
    /// A new, empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    fn lock(&self) -> MutexGuard<'_, Arena> {
        // A poisoned lock only means another thread panicked mid-push; the arena is still valid.
        self.arena.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn same(&self, other: &Tape) -> bool {
        Arc::ptr_eq(&self.arena, &other.arena)
    }

    /// Start tracking `t`: the result shares `t`'s data and is a leaf node of this tape, so
    /// [`Gradients::get`] returns its gradient after [`Tape::backward`].
    pub fn watch(&self, t: &Tensor) -> Tensor {
        let id = self.push(Box::new(LeafMarker), vec![]);
        Tensor { shape: t.shape.clone(), storage: t.storage.clone(), tracked: Some(Tracked { tape: self.clone(), id }) }
    }

    fn push(&self, backward: Box<dyn Backward>, parents: Vec<Option<usize>>) -> usize {
        let is_leaf = parents.is_empty();
        let mut a = self.lock();
        let id = a.nodes.len();
        let saved_bytes = backward.saved_bytes();
        let name = backward.name();
        a.nodes.push(Node { backward: Some(backward), parents, saved_bytes, name });
        drop(a);
        if !is_leaf {
            profile::forward_recorded(name);
        }
        id
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes saved for backward, per op kind.
    pub fn memory_report(&self) -> MemoryReport {
        let a = self.lock();
        let mut m: HashMap<&'static str, (usize, usize)> = HashMap::new();
        for n in a.nodes.iter().filter(|n| n.backward.is_some()) {
            let e = m.entry(n.name).or_default();
            e.0 += 1;
            e.1 += n.saved_bytes;
        }
        let mut per_op: Vec<_> = m.into_iter().map(|(k, (c, b))| (k, c, b)).collect();
        per_op.sort_by(|x, y| y.2.cmp(&x.2).then(x.0.cmp(y.0)));
        let total_bytes = per_op.iter().map(|x| x.2).sum();
        MemoryReport { per_op, total_bytes }
    }

    /// Differentiate a scalar `output` (seed gradient 1).
    pub fn backward(&self, output: &Tensor) -> Result<Gradients> {
        if output.numel() != 1 {
            return Err(Error::Tape {
                op: "backward",
                msg: format!("output must have one element, got shape {} (use backward_with)", output.shape),
            });
        }
        let seed = Tensor::ones(output.shape.clone(), output.dtype()).to_device(output.device())?;
        self.backward_with(output, &seed)
    }

    /// Differentiate `output` with the given seed gradient `d output` (same shape).
    pub fn backward_with(&self, output: &Tensor, seed: &Tensor) -> Result<Gradients> {
        let tr = output.tracked.as_ref().ok_or_else(|| Error::Tape {
            op: "backward",
            msg: "output is not tracked: no input was watched by a tape".into(),
        })?;
        if !tr.tape.same(self) {
            return Err(Error::Tape { op: "backward", msg: "output belongs to another tape".into() });
        }
        if seed.dims() != output.dims() {
            return Err(Error::shape("backward", format!("seed {} vs output {}", seed.shape, output.shape)));
        }
        {
            let mut a = self.lock();
            if a.used {
                return Err(Error::Tape { op: "backward", msg: "this tape was already differentiated".into() });
            }
            a.used = true;
        }
        let n = tr.id + 1;
        let mut grads: Vec<Option<Tensor>> = vec![None; n];
        grads[tr.id] = Some(seed.detach());
        let mut leaves = HashMap::new();
        for id in (0..n).rev() {
            let Some(g) = grads[id].take() else { continue };
            // Take the backward out so its saved tensors are freed after it runs.
            let (bw, parents) = {
                let mut a = self.lock();
                let node = &mut a.nodes[id];
                (node.backward.take(), node.parents.clone())
            };
            let Some(bw) = bw else { continue };
            if parents.is_empty() {
                leaves.insert(id, g);
                continue;
            }
            let needs: Vec<bool> = parents.iter().map(|p| p.is_some()).collect();
            let pg = profile::timed(bw.name(), Phase::Backward, || bw.backward(&g, &needs))?;
            drop(bw);
            for (p, gp) in parents.iter().zip(pg) {
                if let (Some(p), Some(gp)) = (p, gp) {
                    grads[*p] = Some(match grads[*p].take() {
                        None => gp,
                        Some(acc) => profile::timed("grad accumulate", Phase::Backward, || {
                            crate::ops::elementwise::accumulate_grad(acc, &gp)
                        })?,
                    });
                }
            }
        }
        Ok(Gradients { tape: self.clone(), leaves })
    }
}

/// Record an op's output on the tape of its tracked inputs. If no input is tracked, `out` is
/// returned untracked and `make` is never called, so nothing is saved (no-grad by default).
pub(crate) fn record<F>(op: &'static str, inputs: &[&Tensor], out: Tensor, make: F) -> Result<Tensor>
where
    F: FnOnce() -> Box<dyn Backward>,
{
    let mut tape: Option<&Tape> = None;
    for t in inputs {
        if let Some(tr) = &t.tracked {
            match tape {
                None => tape = Some(&tr.tape),
                Some(tp) if !tp.same(&tr.tape) => {
                    return Err(Error::Tape { op, msg: "inputs are tracked on different tapes".into() })
                }
                _ => {}
            }
        }
    }
    let Some(tape) = tape else { return Ok(out) };
    let parents = inputs.iter().map(|t| t.tracked.as_ref().map(|tr| tr.id)).collect();
    let id = tape.push(make(), parents);
    Ok(Tensor { tracked: Some(Tracked { tape: tape.clone(), id }), ..out })
}

/// Gradients of the watched leaves after [`Tape::backward`].
pub struct Gradients {
    tape: Tape,
    leaves: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of a watched tensor, or `None` if the output does not depend on it.
    pub fn get(&self, watched: &Tensor) -> Option<&Tensor> {
        let tr = watched.tracked.as_ref()?;
        if !tr.tape.same(&self.tape) {
            return None;
        }
        self.leaves.get(&tr.id)
    }
    /// Number of leaves that received a gradient.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }
    /// True when no leaf received a gradient.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}
