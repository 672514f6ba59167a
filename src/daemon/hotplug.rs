//! Hot-plug in the daemon: when the networks annotation of a pod of its node changes, the pod's
//! records (multihome's own: no CRI socket) are brought in line with it by
//! [`crate::flows::hotplug`], with the daemon's cache as the cluster. One worker takes the pods
//! in turn; a failed change is an event on the pod (the flow posts it) and is tried again a
//! bounded number of times, later, so it never holds up the changes of other pods or the pod's
//! DEL (which takes the same lock between two tries).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Daemon;
use super::reflector::read;
use super::server::Served;
use super::store::Key as PodKey;
use crate::cache::{Cache, Key, Record};
use crate::config::{NetConf, RUNTIME_CONF_DIR, runtime_config};
use crate::flows;
use crate::k8s::Reach;

/// Tries of one change, the first included.
const TRIES: u32 = 3;
/// The wait before the second try; doubled for each after.
const RETRY: Duration = Duration::from_secs(2);

/// One change to bring about.
pub struct Job {
    pod: PodKey,
    tried: u32,
}

impl Job {
    /// The first try of a change of `pod`.
    pub fn new(pod: PodKey) -> Job {
        Job { pod, tried: 0 }
    }
}

/// Takes the changes from `jobs` until the daemon ends; `again` puts a retry back in line.
/// `config` is multihome's config (`None`: the one a runtime would use), read anew for each
/// batch of changes: the installer rewrites it.
pub fn work(
    daemon: &Arc<Daemon>,
    config: Option<PathBuf>,
    jobs: Receiver<Job>,
    again: Sender<Job>,
) {
    while let Ok(first) = jobs.recv() {
        // The changes waiting now go with it, so that the records are read once for all of
        // them: at start-up every pod of the node is one.
        let mut batch: Vec<Job> = vec![first];
        for job in jobs.try_iter() {
            if !batch.iter().any(|b| b.pod == job.pod) {
                batch.push(job);
            }
        }
        let _busy = daemon.in_flight.busy();
        let found = attachments(config.as_deref());
        for job in batch {
            let outcome = match &found {
                Ok((conf, records)) => plug(daemon, conf, records, &job.pod),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            settle(daemon, job, outcome, &again);
        }
    }
}

/// Counts how a try of `job` went, and puts it back in line for a later try when it failed
/// and has tries left.
fn settle(daemon: &Daemon, mut job: Job, outcome: Result<bool>, again: &Sender<Job>) {
    job.tried += 1;
    let (namespace, name) = &job.pod;
    match outcome {
        Ok(changed) => {
            daemon.metrics.hotplug("ok");
            if changed {
                log::info!("hot-plug of pod {namespace}/{name} done");
            }
        }
        Err(e) if job.tried < TRIES => {
            daemon.metrics.hotplug("retry");
            let wait = RETRY * 2u32.pow(job.tried - 1);
            log::warn!("hot-plug of pod {namespace}/{name}: {e:#} (again in {wait:?})");
            let again = again.clone();
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                let _ = again.send(job);
            });
        }
        Err(e) => {
            daemon.metrics.hotplug("error");
            log::error!("hot-plug of pod {namespace}/{name}: {e:#} (given up)");
        }
    }
}

/// multihome's config (`config`, or the runtime's), read anew: the installer rewrites it; and
/// the records of the attachments on the node.
fn attachments(config: Option<&std::path::Path>) -> Result<(NetConf, Vec<Record>)> {
    let (file, bytes) = runtime_config(config, RUNTIME_CONF_DIR.as_ref())?;
    let conf =
        NetConf::parse(&bytes).with_context(|| format!("multihome config {}", file.display()))?;
    let records = Cache::new(&conf.cni_dir).records()?;
    let records = records.into_iter().filter_map(|(_, r)| r.ok()).collect();
    Ok((conf, records))
}

/// Brings every record of `pod` among `records` in line with its annotation; whether anything
/// changed.
fn plug(daemon: &Daemon, conf: &NetConf, records: &[Record], pod: &PodKey) -> Result<bool> {
    let Some(uid) = read(&daemon.pods)
        .items
        .get(pod)
        .map(|p| p.metadata.uid.clone())
    else {
        return Ok(false);
    };
    let served = Served(daemon);
    let reach = Reach::Given(&served);
    let mut changed = false;
    for record in records {
        let of_pod = record.attachments.first().is_some_and(|a| {
            a.attachment
                .cni_args
                .iter()
                .any(|(k, v)| k == "K8S_POD_UID" && *v == uid)
        });
        if !of_pod {
            continue;
        }
        let key = Key {
            network: conf.name.clone(),
            container_id: record.container_id.clone(),
            ifname: record.ifname.clone(),
        };
        let plugged = flows::hotplug(conf, &key, &reach)?;
        for a in &plugged.added {
            log::info!("pod {}/{}: added {a}", pod.0, pod.1);
        }
        for r in &plugged.removed {
            log::info!("pod {}/{}: removed {r}", pod.0, pod.1);
        }
        changed |= plugged != flows::Plugged::default();
    }
    Ok(changed)
}
