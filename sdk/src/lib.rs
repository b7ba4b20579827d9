//! `maestro-sdk`: what plugin authors depend on to write Maestro tools and personas in
//! Rust and build them as WebAssembly components (`wasm32-wasip2`).
//!
//! The contract between plugins and the host is the WIT package in `sdk/wit/`
//! (`maestro:plugin`). The bindings and the ergonomic layer (typed tools with derived
//! JSON Schemas, logging, progress, HTTP) arrive with the plugin capability.

/// The WIT package version this SDK targets.
pub const WIT_PACKAGE: &str = "maestro:plugin@0.1.0";
