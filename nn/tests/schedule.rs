//! Learning-rate schedules at known steps.

use nn::{Decay, LrSchedule};
use std::f64::consts::PI;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn cosine_at_known_steps() {
    let s = LrSchedule::cosine(0.1, 100).unwrap();
    close(s.lr(0), 0.1);
    close(s.lr(50), 0.05);
    close(s.lr(25), 0.05 * (1.0 + (PI / 4.0).cos()));
    close(s.lr(100), 0.0);
    close(s.lr(1000), 0.0);
    let s = LrSchedule::new(0.1, 100, Decay::Cosine { min_lr: 0.01 }).unwrap();
    close(s.lr(50), 0.01 + 0.09 * 0.5);
    close(s.lr(100), 0.01);
}

#[test]
fn poly_at_known_steps() {
    let s = LrSchedule::poly(0.007, 1000).unwrap();
    close(s.lr(0), 0.007);
    close(s.lr(500), 0.007 * 0.5f64.powf(0.9));
    close(s.lr(900), 0.007 * 0.1f64.powf(0.9));
    close(s.lr(1000), 0.0);
}

#[test]
fn linear_warmup_then_decay() {
    let s = LrSchedule::cosine(0.1, 110).unwrap().with_warmup(10).unwrap();
    close(s.lr(0), 0.01);
    close(s.lr(4), 0.05);
    close(s.lr(9), 0.1);
    close(s.lr(10), 0.1);
    close(s.lr(60), 0.05);
    close(s.lr(110), 0.0);
    let s = LrSchedule::poly(1.0, 20).unwrap().with_warmup(4).unwrap();
    close(s.lr(1), 0.5);
    close(s.lr(12), 0.5f64.powf(0.9));
    let c = LrSchedule::new(0.3, 10, Decay::Constant).unwrap().with_warmup(3).unwrap();
    close(c.lr(0), 0.1);
    close(c.lr(7), 0.3);
}

#[test]
fn invalid_schedules_are_errors() {
    assert!(LrSchedule::cosine(0.1, 0).is_err());
    assert!(LrSchedule::cosine(-0.1, 10).is_err());
    assert!(LrSchedule::cosine(0.1, 10).unwrap().with_warmup(10).is_err());
    assert!(LrSchedule::new(0.1, 10, Decay::Cosine { min_lr: 0.2 }).is_err());
    assert!(LrSchedule::new(0.1, 10, Decay::Poly { power: 0.0 }).is_err());
}
