//! Device-plugin allocations from kubelet's checkpoint file
//! (`/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint`), for NetworkAttachmentDefinitions
//! that name a `k8s.v1.cni.cncf.io/resourceName` (SR-IOV VFs and the like).

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

use crate::error::{Code, coded};

/// The devices allocated to one pod, per resource name, sorted; handed out one per attachment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Devices {
    by_resource: BTreeMap<String, Vec<String>>,
    next: BTreeMap<String, usize>,
}

impl Devices {
    /// Reads the checkpoint JSON for the pod with `pod_uid`. Both layouts of `DeviceIDs` are
    /// accepted: a list (older kubelets) and a map of NUMA node to list.
    pub fn from_checkpoint(json: &[u8], pod_uid: &str) -> Result<Devices> {
        let v: Value = serde_json::from_slice(json).map_err(|e| {
            coded(
                Code::Decode,
                format!("kubelet checkpoint is not valid JSON: {e}"),
            )
        })?;
        let mut by_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let entries = v
            .pointer("/Data/PodDeviceEntries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for entry in entries.filter(|e| e.get("PodUID").and_then(Value::as_str) == Some(pod_uid)) {
            let Some(resource) = entry.get("ResourceName").and_then(Value::as_str) else {
                continue;
            };
            let ids = by_resource.entry(resource.to_string()).or_default();
            match entry.get("DeviceIDs") {
                Some(Value::Array(list)) => {
                    ids.extend(list.iter().filter_map(Value::as_str).map(String::from))
                }
                Some(Value::Object(numa)) => {
                    for list in numa.values().filter_map(Value::as_array) {
                        ids.extend(list.iter().filter_map(Value::as_str).map(String::from));
                    }
                }
                _ => {}
            }
        }
        for ids in by_resource.values_mut() {
            ids.sort();
            ids.dedup();
        }
        Ok(Devices {
            by_resource,
            next: BTreeMap::new(),
        })
    }

    /// The next unused device of `resource`.
    pub fn take(&mut self, resource: &str) -> Result<String> {
        let ids = self
            .by_resource
            .get(resource)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let next = self.next.entry(resource.to_string()).or_default();
        let id = ids.get(*next).cloned().ok_or_else(|| {
            coded(
                Code::InvalidConfig,
                format!("resource {resource:?}: {} device(s) allocated to the pod, not enough for every network that uses it", ids.len()),
            )
        })?;
        *next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKPOINT: &str = r#"{"Data":{"PodDeviceEntries":[
        {"PodUID":"u1","ContainerName":"a","ResourceName":"example.com/vf","DeviceIDs":{"0":["0000:03:02.3","0000:03:02.1"]}},
        {"PodUID":"u1","ContainerName":"b","ResourceName":"example.com/vf","DeviceIDs":{"1":["0000:81:00.2"]}},
        {"PodUID":"u1","ContainerName":"a","ResourceName":"example.com/old","DeviceIDs":["b","a"]},
        {"PodUID":"u2","ContainerName":"a","ResourceName":"example.com/vf","DeviceIDs":{"0":["0000:99:00.0"]}}
    ],"RegisteredDevices":{}},"Checksum":1}"#;

    #[test]
    fn devices_are_sorted_per_resource_and_handed_out_once() {
        let mut d = Devices::from_checkpoint(CHECKPOINT.as_bytes(), "u1").unwrap();
        assert_eq!(d.take("example.com/vf").unwrap(), "0000:03:02.1");
        assert_eq!(d.take("example.com/vf").unwrap(), "0000:03:02.3");
        assert_eq!(d.take("example.com/vf").unwrap(), "0000:81:00.2");
        let e = crate::error::CniError::from_anyhow(&d.take("example.com/vf").unwrap_err());
        assert!(e.msg.contains("3 device(s)"), "{}", e.msg);
        assert_eq!(d.take("example.com/old").unwrap(), "a");
        assert!(d.take("example.com/none").is_err());
    }

    #[test]
    fn other_pods_and_bad_json() {
        let mut d = Devices::from_checkpoint(CHECKPOINT.as_bytes(), "u2").unwrap();
        assert_eq!(d.take("example.com/vf").unwrap(), "0000:99:00.0");
        assert!(Devices::from_checkpoint(b"{", "u1").is_err());
    }
}
