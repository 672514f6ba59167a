//! The pod's networks annotation: any text parses or fails with an error, never a panic, and
//! what parses is what ADD may act on (valid names and interface names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::annotations::parse_networks;
use multihome::cni::env::validate_ifname;

fuzz_target!(|text: &str| {
    if let Ok(elements) = parse_networks(text, "pods") {
        for el in elements {
            assert!(!el.name.is_empty() && !el.namespace.is_empty());
            if let Some(ifname) = &el.interface {
                assert!(validate_ifname(ifname).is_ok(), "{ifname:?}");
            }
            let _ = (el.runtime_config(), el.cni_args());
        }
    }
});
