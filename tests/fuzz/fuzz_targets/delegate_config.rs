//! A delegate network config (conf or conflist): parses or fails, and what parses survives the
//! cache's round trip unchanged (DEL acts on exactly what ADD recorded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::cache::record::{decode, encode};
use multihome::cache::{CachedAttachment, Record};
use multihome::cni::version::Version;
use multihome::config::NetworkConfig;
use multihome::plan::Attachment;

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Ok(network) = NetworkConfig::from_value(value, Version::new(1, 0, 0)) {
        let record = Record {
            network: "multihome".into(),
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            added: None,
            attachments: vec![CachedAttachment::planned(Attachment {
                name: network.name.clone(),
                network,
                ifname: "eth0".into(),
                cni_args: vec![],
                runtime_config: serde_json::Map::new(),
                device_info: None,
                default_route: None,
                source: String::new(),
                policy_rule: None,
            })],
        };
        let cached = encode(&record).expect("a record encodes");
        assert_eq!(decode(&cached).expect("and decodes"), record);
    }
});
