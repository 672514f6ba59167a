//! The default-network annotation: exactly one element or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::annotations::parse_default_network;

fuzz_target!(|text: &str| {
    if let Ok(el) = parse_default_network(text, "kube-system") {
        assert!(!el.name.is_empty() && !el.namespace.is_empty());
    }
});
