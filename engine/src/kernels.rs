//! Compute kernels on in-memory chunks: reductions, centroid recentering, FFT spectra and region copies.
//!
//! Kernels are pure functions of their inputs; they know nothing of tasks, stores or files.
