//! Cutting the destination of a conv into pieces with a fixed set of live taps, then into tiles.
//!
//! An [`Axis`] says, per tap, which source coordinate a destination coordinate reads (forward:
//! `i = o s - p + k d`; input gradient: `o = (i + p - k d) / s`). [`segments`] splits an axis at the
//! points where a tap starts or stops landing inside the source (and, for the input gradient of a
//! strided conv, by phase `i mod s`), so that within a [`Segment`] each tap is live on one interval
//! ([`TapSpan`]). [`plan_tiles`] cuts each 2-D region (y segment x x segment) into [`TilePlan`]s of
//! about a target pixel count and records, per tile, which taps are live and how they group into
//! [`Run`]s of consecutive tap indices (one GEMM each). Everything here depends only on the shapes,
//! never on the data or the thread count.

/// How destination coordinates map to source coordinates along one axis, per tap:
/// `src = (dst * mul + off[tap]) / div`, live only when divisible and inside `[0, src_len)`.
pub(super) struct Axis {
    mul: isize,
    div: isize,
    pub(super) off: Vec<isize>,
    src_len: usize,
    dst_len: usize,
}

impl Axis {
    /// Forward: `i = o s - p + k d`.
    pub(super) fn forward(in_len: usize, out_len: usize, k: usize, s: usize, p: usize, d: usize) -> Axis {
        let off = (0..k).map(|t| (t * d) as isize - p as isize).collect();
        Axis { mul: s as isize, div: 1, off, src_len: in_len, dst_len: out_len }
    }
    /// Input gradient: `o = (i + p - k d) / s`.
    pub(super) fn input_grad(in_len: usize, out_len: usize, k: usize, s: usize, p: usize, d: usize) -> Axis {
        let off = (0..k).map(|t| p as isize - (t * d) as isize).collect();
        Axis { mul: 1, div: s as isize, off, src_len: out_len, dst_len: in_len }
    }
    fn src(&self, dst: usize, tap: usize) -> Option<usize> {
        let v = dst as isize * self.mul + self.off[tap];
        if v < 0 || v % self.div != 0 {
            return None;
        }
        let q = (v / self.div) as usize;
        (q < self.src_len).then_some(q)
    }
    /// True when every tap is a plain shift (`src = dst + off[tap]`: stride 1).
    pub(super) fn is_shift(&self) -> bool {
        self.mul == 1 && self.div == 1
    }
    /// For a shift axis ([`Self::is_shift`]): the destination coordinates where `tap` lands
    /// inside the source, and its shift `off[tap]`; `None` when it never does.
    pub(super) fn shift(&self, tap: usize) -> Option<(std::ops::Range<usize>, isize)> {
        debug_assert!(self.is_shift());
        let off = self.off[tap];
        let lo = (-off).max(0) as usize;
        let hi = (self.src_len as isize - off).clamp(0, self.dst_len as isize) as usize;
        (lo < hi).then_some((lo..hi, off))
    }
    /// Per tap, whether it lands inside the source for some destination coordinate (a tap that
    /// never does is in no segment: its weights are never read).
    pub(super) fn live_taps(&self) -> Vec<bool> {
        (0..self.off.len()).map(|t| (0..self.dst_len).any(|j| self.src(j, t).is_some())).collect()
    }
    pub(super) fn is_identity(&self) -> bool {
        self.off == [0] && self.mul == 1 && self.div == 1 && self.src_len == self.dst_len
    }
}

/// A tap live on destination coordinates `j in [ja, jb)` of a segment, reading source
/// `src0 + (j - ja) * src_step`.
#[derive(Clone, Copy, Debug)]
pub(super) struct TapSpan {
    pub(super) tap: usize,
    pub(super) ja: usize,
    pub(super) jb: usize,
    pub(super) src0: usize,
}

/// Destination coordinates `start + step * j` for `j < count`, with the taps live on them.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) start: usize,
    pub(super) step: usize,
    pub(super) count: usize,
    pub(super) src_step: usize,
    pub(super) taps: Vec<TapSpan>,
}

impl Segment {
    pub(super) fn coord(&self, j: usize) -> usize {
        self.start + self.step * j
    }
}

/// Cut an axis into segments with a fixed live-tap set (up to the merging of narrow ones).
pub(super) fn segments(ax: &Axis, min_span: usize) -> Vec<Segment> {
    let step = ax.div as usize;
    let src_step = (step as isize * ax.mul / ax.div) as usize;
    let mut out = Vec::new();
    for phase in 0..step.min(ax.dst_len) {
        let count = (ax.dst_len - phase).div_ceil(step);
        // Live interval of each tap over j (the live set is an interval: divisibility is fixed
        // within a phase and the range condition is monotone).
        let spans: Vec<Option<(usize, usize)>> = (0..ax.off.len())
            .map(|t| {
                let live = |j: usize| ax.src(phase + step * j, t).is_some();
                let ja = (0..count).find(|&j| live(j))?;
                let jb = (ja..count).find(|&j| !live(j)).unwrap_or(count);
                debug_assert!((jb..count).all(|j| !live(j)), "live taps must form an interval");
                Some((ja, jb))
            })
            .collect();
        let mut cuts: Vec<usize> = vec![0, count];
        for &(a, b) in spans.iter().flatten() {
            cuts.extend([a, b]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut cur: Option<(usize, usize)> = None;
        for w in cuts.windows(2) {
            let c = match cur {
                None => (w[0], w[1]),
                Some((a, _)) => (a, w[1]),
            };
            if c.1 - c.0 >= min_span {
                groups.push(c);
                cur = None;
            } else {
                cur = Some(c);
            }
        }
        if let Some(c) = cur {
            match groups.last_mut() {
                Some(last) => last.1 = c.1,
                None => groups.push(c),
            }
        }
        for (a, b) in groups {
            let taps = spans
                .iter()
                .enumerate()
                .filter_map(|(t, s)| {
                    let (ja, jb) = (*s)?;
                    let (ja, jb) = (ja.max(a), jb.min(b));
                    (ja < jb).then(|| TapSpan {
                        tap: t,
                        ja: ja - a,
                        jb: jb - a,
                        src0: ax.src(phase + step * ja, t).unwrap(),
                    })
                })
                .collect();
            out.push(Segment { start: phase + step * a, step, count: b - a, src_step, taps });
        }
    }
    out
}

/// A run of live taps with consecutive tap indices: col rows `[idx0, idx0 + len)` (times the
/// channel count) hold taps `tap0 .. tap0 + len`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) idx0: usize,
    pub(super) tap0: usize,
    pub(super) len: usize,
}

/// One tile: rows `[ja, jb)` of y-segment `sy` times all of x-segment `sx`, with its live taps.
#[derive(Debug)]
pub(super) struct TilePlan {
    pub(super) sy: usize,
    pub(super) sx: usize,
    pub(super) ja: usize,
    pub(super) jb: usize,
    /// Live y taps (x taps are those of the x segment).
    pub(super) ky: Vec<TapSpan>,
    pub(super) runs: Vec<Run>,
    pub(super) ntaps: usize,
    pub(super) npix: usize,
}

impl TilePlan {
    /// Where this tile's pixels lie in a plane of width `w`, in tile order (its rows of `yseg`,
    /// each over `xseg`): the map between a `[rows][npix]` tile buffer and full planes.
    pub(super) fn plane_offsets<'a>(
        &'a self,
        yseg: &'a Segment,
        xseg: &'a Segment,
        w: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        (self.ja..self.jb).flat_map(move |j| {
            let row = yseg.coord(j) * w;
            (0..xseg.count).map(move |q| row + xseg.coord(q))
        })
    }
}

/// Tiles of about `target` pixels over every (y segment, x segment) region, in region order, with
/// their live taps (`kw` turns a (y tap, x tap) pair into a tap index).
pub(super) fn plan_tiles(ys: &[Segment], xs: &[Segment], kw: usize, target: usize) -> Vec<TilePlan> {
    let mut plans = Vec::new();
    for (sy, yseg) in ys.iter().enumerate() {
        for (sx, xseg) in xs.iter().enumerate() {
            let rows_per = (target / xseg.count).max(1);
            let nt = yseg.count.div_ceil(rows_per);
            for i in 0..nt {
                let (ja, jb) = (i * yseg.count / nt, (i + 1) * yseg.count / nt);
                let ky: Vec<TapSpan> = yseg.taps.iter().copied().filter(|t| t.ja < jb && t.jb > ja).collect();
                let mut runs: Vec<Run> = Vec::new();
                let mut idx = 0;
                for ty in &ky {
                    for tx in &xseg.taps {
                        let tap = ty.tap * kw + tx.tap;
                        match runs.last_mut() {
                            Some(r) if r.tap0 + r.len == tap => r.len += 1,
                            _ => runs.push(Run { idx0: idx, tap0: tap, len: 1 }),
                        }
                        idx += 1;
                    }
                }
                plans.push(TilePlan { sy, sx, ja, jb, ky, runs, ntaps: idx, npix: (jb - ja) * xseg.count });
            }
        }
    }
    plans
}
