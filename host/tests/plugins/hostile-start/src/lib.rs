//! Test fixture: a plugin whose start-up code loops forever.
//!
//! A constructor in `.init_array` runs when the component's core module initialises
//! (before any export can answer), so the host meets the loop while loading the plugin.
//! The host must stop it at the load deadline, refuse the plugin with that reason, and
//! keep serving. On native targets (unit tests, clippy) the constructor is not
//! registered.
#![cfg_attr(target_arch = "wasm32", allow(unsafe_code))]

use maestro_sdk::{NoInput, ToolError, export_plugin, tool};

/// Never returns.
#[cfg(target_arch = "wasm32")]
extern "C" fn spin_forever() {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Registers [`spin_forever`] as a constructor of the wasm module.
#[cfg(target_arch = "wasm32")]
#[used]
#[unsafe(link_section = ".init_array")]
static START: extern "C" fn() = spin_forever;

fn unreachable_tool(_: NoInput) -> Result<&'static str, ToolError> {
    Ok("initialisation finished, which it never should")
}

export_plugin! {
    tools: [tool("never", "Never reachable: initialisation loops", unreachable_tool)],
}
