//! Element types and the bridge from a runtime [`DType`] to a generic kernel.

use crate::storage::CpuStorage;
use kernels::Float;

/// Runtime element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: training.
    F32,
    /// 64-bit float: gradient checks and references.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A [`Float`] that can live in a [`CpuStorage`].
pub trait Element: Float {
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// Borrow the slice if the storage holds this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Mutably borrow the slice if the storage holds this type.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// Wrap a vector into storage.
    fn wrap(v: Vec<Self>) -> CpuStorage;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// Run a generic expression with `$T` bound to the Rust type of a runtime [`DType`].
///
/// ```ignore
/// with_dtype!(x.dtype(), T, relu_fwd::<T>(x))
/// ```
#[macro_export]
macro_rules! with_dtype {
    ($dt:expr, $T:ident, $body:expr) => {
        match $dt {
            $crate::DType::F32 => {
                #[allow(unused_imports)]
                use $crate::Float as _;
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                #[allow(unused_imports)]
                use $crate::Float as _;
                type $T = f64;
                $body
            }
        }
    };
}
