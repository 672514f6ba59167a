//! A kubeconfig: parses or fails, never panics, and no error ever quotes a secret: the values
//! of `token` and the `*-data` keys, and whatever stands where a user or cluster mapping
//! belongs. Files it names read as fixed bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use multihome::error::CniError;
use multihome::k8s::Access;
use serde_yaml_ng::Value;

/// String scalars that are secrets, or sit where a mapping of secrets belongs.
fn secrets(v: &Value, parent: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                secrets(v, k.as_str(), out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| secrets(i, parent, out)),
        Value::String(s) => {
            let secret_key = parent.is_some_and(|k| {
                k == "token" || k.ends_with("-data") || k == "user" || k == "users"
            });
            if secret_key && s.len() >= 4 {
                out.push(s.clone());
            }
        }
        Value::Tagged(t) => secrets(&t.value, parent, out),
        _ => {}
    }
}

fuzz_target!(|text: &str| {
    let read = |_: &Path| Ok(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec());
    let Err(e) = Access::from_kubeconfig_text(text, Path::new("/kc"), &read) else {
        return;
    };
    let e = CniError::from_anyhow(&e);
    let mut found = Vec::new();
    if let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) {
        secrets(&doc, None, &mut found);
    }
    for s in found {
        // Key names and fixed words may coincide with a short secret; long ones must never show.
        if s.len() >= 8 && !"kubeconfig must be a mapping string list true or false".contains(&s) {
            assert!(!e.msg.contains(&s), "error quotes {s:?}: {}", e.msg);
        }
    }
});
