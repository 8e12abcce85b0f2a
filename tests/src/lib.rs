//! Shared helpers for the workspace tests (gradient checking lives in `engine::gradcheck`).
