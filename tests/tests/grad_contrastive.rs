//! Gradient checks (f64, central differences) of the fused pixel contrastive loss: every mode and
//! both forms, on small random cases with ignore pixels, raw and unit-normalised features.

use engine::ops::{self, ContrastiveForm, ContrastiveMode};
use engine::{DType, Rng, Tensor};
use segnet_tests::contrastive_ref::{random_features, ContrastCase};
use segnet_tests::{arbitrary_via_rng, gc, property, Case};

#[derive(Clone, Debug)]
struct Small(ContrastCase);
impl Case for Small {
    fn from_rng(rng: &mut Rng) -> Self {
        Small(ContrastCase::draw(rng, 2, 5, 5, 3))
    }
    fn smaller(&self) -> Vec<Self> {
        self.0.smaller().into_iter().map(Small).collect()
    }
}
arbitrary_via_rng!(Small);

fn features(c: &ContrastCase) -> Tensor {
    Tensor::from_f64_vec(c.features(), vec![c.b, c.d, c.h, c.w], DType::F64)
}

#[test]
fn grad_pixel_contrastive_loss() {
    property("grad_pixel_contrastive_loss", 60, |c: &Small| {
        let c = &c.0;
        let labels = c.labels();
        gc(|x| ops::pixel_contrastive_loss(&x[0], &labels, &c.cfg), &[features(c)])
    });
}

#[test]
fn grad_pixel_contrastive_loss_every_mode_and_form_is_covered() {
    // The property above draws modes and forms at random; make sure each combination is checked
    // explicitly too, with ignore pixels and raw (not normalised) features.
    let mut rng = Rng::new(7);
    for mode in [ContrastiveMode::WithinImage, ContrastiveMode::CrossImage, ContrastiveMode::Batch] {
        for form in [ContrastiveForm::PerPositive, ContrastiveForm::SupCon] {
            for normalised in [false, true] {
                let mut c = ContrastCase::draw(&mut rng, 2, 5, 5, 3);
                (c.b, c.h, c.w, c.ignore_p, c.normalised) = (2, 4, 3, 0.2, normalised);
                (c.cfg.mode, c.cfg.form, c.cfg.max_pixels) = (mode, form, 15);
                let labels = c.labels();
                gc(|x| ops::pixel_contrastive_loss(&x[0], &labels, &c.cfg), &[features(&c)])
                    .unwrap_or_else(|e| panic!("{mode:?} {form:?} normalised={normalised}: {e}"));
            }
        }
    }
}

#[test]
fn grad_pixel_contrastive_loss_pair() {
    property("grad_pixel_contrastive_loss_pair", 40, |c: &Small| {
        let c = &c.0;
        let la = c.labels();
        let mut other = c.clone();
        other.seed ^= 0x5151;
        let lb = other.labels();
        let fa = features(c);
        let fb = Tensor::from_f64_vec(
            random_features(c.b, c.d, c.h * c.w, !c.normalised, other.seed),
            vec![c.b, c.d, c.h, c.w],
            DType::F64,
        );
        gc(|x| ops::pixel_contrastive_loss_pair(&x[0], &la, &x[1], &lb, &c.cfg), &[fa, fb])
    });
}
