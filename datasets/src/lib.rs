//! Memory-mapped packs, importers, synthetic data, augmentation, loader.
