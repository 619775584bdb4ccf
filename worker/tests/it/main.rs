//! Worker tests that need the real binary: crash recovery with `kill -9`.

mod crash;
