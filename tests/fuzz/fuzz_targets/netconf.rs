//! multihome's own config: any bytes parse or fail with a CNI error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::config::NetConf;
use multihome::error::CniError;

fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = NetConf::parse(bytes) {
        let e = CniError::from_anyhow(&e);
        assert!(e.code != 0 && !e.msg.is_empty());
    }
});
