//! Segmentation metrics from a confusion matrix accumulated over a whole evaluation set.
//!
//! `IoU_c = TP_c / (TP_c + FP_c + FN_c)`; mIoU is the mean over classes that appear in the ground
//! truth or in the predictions (a class absent from both has an undefined IoU and is left out of
//! the mean, as cityscapesScripts does); pixel accuracy is `sum TP / labelled pixels`. Pixels whose
//! ground truth is the ignore label are not counted at all.

use serde::Serialize;

/// `counts[gt * classes + pred]` over all non-ignored pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

/// Per-class and summary scores.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    /// IoU per class (`None` where the class is in neither ground truth nor predictions).
    pub iou: Vec<Option<f64>>,
    /// Mean over the classes with a defined IoU.
    pub miou: f64,
    /// Correct pixels / labelled pixels.
    pub pixel_accuracy: f64,
    /// Labelled pixels counted.
    pub pixels: u64,
}

impl ConfusionMatrix {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Raw counts, `gt`-major.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Add one batch of predictions and ground truth (same length). Ground-truth `ignore` pixels
    /// are skipped; a ground-truth label `>= classes` is an error.
    pub fn update(&mut self, pred: &[u8], gt: &[u8], ignore: u8) -> Result<(), String> {
        if pred.len() != gt.len() {
            return Err(format!("prediction has {} pixels, ground truth {}", pred.len(), gt.len()));
        }
        let c = self.classes;
        for (&p, &g) in pred.iter().zip(gt) {
            if g == ignore {
                continue;
            }
            if g as usize >= c || p as usize >= c {
                return Err(format!("label {g} or prediction {p} is outside [0, {c})"));
            }
            self.counts[g as usize * c + p as usize] += 1;
        }
        Ok(())
    }

    /// Merge another matrix (same class count).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// IoU per class, mIoU and pixel accuracy.
    pub fn scores(&self) -> Scores {
        let c = self.classes;
        let mut iou = Vec::with_capacity(c);
        let (mut tp_all, mut total) = (0u64, 0u64);
        for k in 0..c {
            let tp = self.counts[k * c + k];
            let gt: u64 = self.counts[k * c..(k + 1) * c].iter().sum();
            let pred: u64 = (0..c).map(|g| self.counts[g * c + k]).sum();
            let union = gt + pred - tp;
            iou.push((union > 0).then(|| tp as f64 / union as f64));
            tp_all += tp;
            total += gt;
        }
        let defined: Vec<f64> = iou.iter().flatten().copied().collect();
        let miou = if defined.is_empty() { 0.0 } else { defined.iter().sum::<f64>() / defined.len() as f64 };
        let pixel_accuracy = if total == 0 { 0.0 } else { tp_all as f64 / total as f64 };
        Scores { iou, miou, pixel_accuracy, pixels: total }
    }

    /// A printable table: per-class IoU, then mIoU and pixel accuracy, with the protocol stated.
    pub fn table(&self, names: &[String]) -> String {
        let s = self.scores();
        let mut out = String::new();
        out.push_str(&format!("{:<20} {:>8}\n", "class", "IoU %"));
        for (k, v) in s.iou.iter().enumerate() {
            let name = names.get(k).cloned().unwrap_or_else(|| format!("class {k}"));
            match v {
                Some(v) => out.push_str(&format!("{:<20} {:>8.2}\n", name, v * 100.0)),
                None => out.push_str(&format!("{:<20} {:>8}\n", name, "n/a")),
            }
        }
        let left_out = s.iou.iter().filter(|v| v.is_none()).count();
        out.push_str(&format!("{:<20} {:>8.2}\n", "mIoU", s.miou * 100.0));
        out.push_str(&format!("{:<20} {:>8.2}\n", "pixel accuracy", s.pixel_accuracy * 100.0));
        out.push_str(&format!(
            "({} labelled pixels; {} class(es) absent from both ground truth and predictions left out of the mean)\n",
            s.pixels, left_out
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_by_hand_and_absent_class_left_out() {
        let mut m = ConfusionMatrix::new(4);
        // gt:   0 0 1 1 255 2
        // pred: 0 1 1 1 3   2
        m.update(&[0, 1, 1, 1, 3, 2], &[0, 0, 1, 1, 255, 2], 255).unwrap();
        let s = m.scores();
        assert_eq!(s.iou[0], Some(0.5)); // tp 1, gt 2, pred 1
        assert!((s.iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12); // tp 2, gt 2, pred 3
        assert_eq!(s.iou[2], Some(1.0));
        assert_eq!(s.iou[3], None); // only predicted on an ignored pixel: not counted
        assert!((s.miou - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((s.pixel_accuracy - 4.0 / 5.0).abs() < 1e-12);
        assert_eq!(s.pixels, 5);
    }

    #[test]
    fn bad_labels_are_errors() {
        let mut m = ConfusionMatrix::new(2);
        assert!(m.update(&[0], &[2], 255).is_err());
        assert!(m.update(&[0, 1], &[0], 255).is_err());
    }
}
