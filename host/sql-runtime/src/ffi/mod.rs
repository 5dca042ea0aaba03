//! The exported side of the runtime: the arena, the `sluice_v1` imports and the `rt_*` exports
//! generated code calls (removed from the final module by the compiler), plus `sluice_alloc`
//! and `sluice_abi_version`, which stay.
//!
//! - [`mem`]: the linear memory; every raw-pointer access (slots, slices, stores, growth).
//! - [`arena`]: the state and its bump arena, the one `&mut State` per export, value builders
//!   and the output buffer.
//! - [`host`]: the imports (a simulated host natively).
//! - [`value`]: the value model across the boundary and its text forms.
//! - [`message`]: ABI version, payload buffer, slot addresses, `rt_begin`, `rt_fail`.
//! - [`path`]: `rt_path`, payload paths.
//! - [`ops`]: comparison, arithmetic and `LIKE`.
//! - [`output`]: the output writer.
//! - [`functions`]: the SQL functions (`rt_f_*`).
//!
//! Built for wasm32, and natively for the unit tests (`tests`), where the memory and the host
//! are simulated per thread so the same code (and its `unsafe`) runs under `cargo test` and
//! Miri.

mod arena;
mod functions;
mod host;
mod mem;
mod message;
mod ops;
mod output;
mod path;
mod value;

#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
