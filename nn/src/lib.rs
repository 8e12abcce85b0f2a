//! Modules, parameters, initialisation, losses, SGD and checkpoints (filled by the nn work).
