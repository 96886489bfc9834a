//! Host package of the stardust-rs end-to-end tests (`tests/`) and examples (`examples/`).
//! Not published; use `stardust-runtime`.
