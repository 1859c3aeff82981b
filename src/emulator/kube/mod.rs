//! Kubernetes API server emulator (placeholder; being written).
