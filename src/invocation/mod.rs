//! One call: its validated environment and multihome's config ([`Invocation`]), and what it
//! attaches ([`resolve`]): the networks of the pod, resolved from the config, the pod's
//! annotations and its NetworkAttachmentDefinitions (through the [`crate::k8s::Cluster`] its
//! entry point passed in), then planned.

pub mod resolve;

use crate::cache::{Cache, Key};
use crate::cni::env::CniEnv;
use crate::config::NetConf;
use crate::plugin::{Runner, Timings, search_path};

/// One invocation: the validated environment and multihome's config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `CNI_*` environment.
    pub env: CniEnv,
    /// multihome's config (stdin).
    pub conf: NetConf,
    /// How long each of its plugin calls took.
    pub timings: Timings,
}

impl Invocation {
    /// The invocation of `env` with `conf`.
    pub fn new(env: CniEnv, conf: NetConf) -> Invocation {
        Invocation {
            env,
            conf,
            timings: Timings::default(),
        }
    }

    /// A runner for delegate calls about `netns` (the invocation's own, or a recorded one).
    pub(crate) fn runner_in(&self, container_id: &str, netns: Option<String>) -> Runner {
        Runner {
            search_path: search_path(&self.conf.bin_dir, &self.env.path),
            container_id: container_id.to_string(),
            netns,
            timeout: self.conf.delegate_timeout,
            timings: self.timings.clone(),
        }
    }

    pub(crate) fn runner(&self) -> Runner {
        self.runner_in(&self.env.container_id, self.env.netns.clone())
    }

    pub(crate) fn cache(&self) -> Cache {
        Cache::new(&self.conf.cni_dir)
    }

    /// The CNI attachment this invocation is about.
    pub(crate) fn key(&self) -> Key {
        Key {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }
}
