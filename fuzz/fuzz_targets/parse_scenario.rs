//! The scenario parser: any UTF-8 text through `ScenarioSpec::from_toml_str` and `check()`.
//! Errors name the file; a spec that parses serializes and parses back with the same check
//! outcome; a checked scenario keeps every documented limit (duration, clients, rates,
//! sources, windows, expectations, and a server config that passes its own check).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::checks::check_scenario_input;

fuzz_target!(|data: &[u8]| {
    check_scenario_input(data);
});
