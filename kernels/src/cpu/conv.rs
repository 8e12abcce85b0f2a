//! (kernel to be written)
