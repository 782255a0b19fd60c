//! Output writers: Zarr v3 arrays, PNG images, PNG line plots and CSV files.
//!
//! Writers write where they are told; making a run's outputs appear atomically is the runner's job.
