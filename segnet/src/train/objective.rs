//! The stage objectives, under the path the step loop uses. They live in [`crate::objective`]
//! (a public module) so that `segnet bench step` runs the same loss code as the training stages.

pub use crate::objective::*;
