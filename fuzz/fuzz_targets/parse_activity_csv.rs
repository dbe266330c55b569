//! The feature CSV reader (`detect::data::read_from`) on arbitrary bytes. Errors name the
//! file; a dataset that reads has a `rows × features` matrix of finite values, unique
//! feature names, consistent labels, and survives `write_csv` and reading back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_fuzz::checks::check_csv_input;

fuzz_target!(|data: &[u8]| {
    check_csv_input(data);
});
