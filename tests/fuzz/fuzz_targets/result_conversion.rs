//! Result conversion between every pair of versions: never a panic; converting again to the
//! same version changes nothing; and between the rich formats (0.3.0 on) a round trip keeps
//! every address, gateway and route the target version can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multihome::cni::result::convert;
use multihome::cni::version::{SUPPORTED, Version};
use serde_json::Value;

fn version(b: u8) -> Version {
    Version::parse(SUPPORTED[usize::from(b) % SUPPORTED.len()]).expect("supported")
}

/// What of a rich result survives any rich version: addresses, gateways, route dst/gw.
fn essence(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
        out.push(format!("ip {} {}", ip["address"], ip["gateway"]));
    }
    for r in v
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(format!("route {} {}", r["dst"], r["gw"]));
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let [from, to, json @ ..] = data else {
        return;
    };
    let Ok(result) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let (from, to) = (version(*from), version(*to));
    let Ok(out) = convert(&result, from, to) else {
        return;
    };
    let again = convert(&out, to, to).expect("a converted result converts to its own version");
    assert_eq!(again, out);
    let rich = Version::new(0, 3, 0);
    if from >= rich && to >= rich {
        let back = convert(&out, to, from).expect("rich versions convert both ways");
        assert_eq!(essence(&back), essence(&out));
    }
});
