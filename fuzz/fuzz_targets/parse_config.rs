//! The config parser: any UTF-8 text through `Config::from_toml_str`. A config that parses
//! has passed `check()`, serializes with `toml::to_string`, and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::checks::check_config_input;

fuzz_target!(|data: &[u8]| {
    check_config_input(data);
});
