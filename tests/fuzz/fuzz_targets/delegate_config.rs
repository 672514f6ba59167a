//! A delegate network config (conf or conflist): parses or fails, and what parses survives the
//! cache's round trip unchanged (DEL acts on exactly what ADD recorded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::cni::version::Version;
use multihome::config::NetworkConfig;

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Ok(net) = NetworkConfig::from_value(value, Version::new(1, 0, 0)) {
        let cached = serde_json::to_vec(&net).expect("a network config serialises");
        let back: NetworkConfig = serde_json::from_slice(&cached).expect("and reads back");
        assert_eq!(back, net);
    }
});
