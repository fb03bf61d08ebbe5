//! The config loader: `config::parse_str` (the TOML text of a config file: parsing over
//! the defaults, then validation) on arbitrary UTF-8 text. Beyond "no panic":
//! - a refusal is one line (what `check-config` and a reload print), and the line number
//!   it names exists in the text;
//! - an accepted config passes validation on its own, parses the same again, and has no
//!   reload differences with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::config::parse_str;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str(text) {
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "a refusal of more than one line: {shown:?}");
            if let Some(line) = e.line() {
                let lines = text.matches('\n').count() + 1;
                assert!(line >= 1 && line <= lines, "{shown:?} names line {line} of {lines}");
            }
        }
        Ok(config) => {
            assert_eq!(config.validate(), Ok(()));
            assert_eq!(parse_str(text).as_ref(), Ok(&config));
            assert!(config.reloadable_diff(&config).is_empty());
        }
    }
});
