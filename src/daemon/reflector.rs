//! Keeps one resource of the cache current: LIST, then WATCH from the list's resourceVersion
//! (bookmarks on), resuming from the last resourceVersion seen when the server ends a watch or
//! a watch fails, listing again on 410 Gone, backing off while the server fails.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Result;
use serde::de::DeserializeOwned;

use super::api::Api;
use super::metrics::Metrics;
use super::store::{Cached, Key, Objects};
use crate::k8s::WatchEvent;

/// How long the server keeps one watch open before the reflector resumes it.
const WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// The first and the longest wait after a failure.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));
/// Failed resumptions in a row after which the reflector lists again.
const RESUMES: u32 = 3;

/// One resource the daemon watches.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Its name in metrics and logs (`pods`).
    pub name: &'static str,
    /// Its collection's path.
    pub path: String,
    /// Its selectors (`fieldSelector=spec.nodeName=...`), or nothing.
    pub query: String,
}

/// What one watch ended with.
enum Ended {
    /// In order (the server's timeout): resume.
    Closed,
    /// The resourceVersion is too old: list again.
    Expired,
}

/// Keeps `objects` current, forever, telling `changed` of every object whose
/// [`Cached::plugs`] changed.
pub fn run<T: Cached + DeserializeOwned>(
    api: &Api,
    resource: &Resource,
    objects: &RwLock<Objects<T>>,
    metrics: &Metrics,
    changed: &dyn Fn(Key),
) -> ! {
    let mut backoff = BACKOFF.0;
    let fail = |what: &str, e: &anyhow::Error, backoff: &mut Duration| {
        log::warn!("{} {what}: {e:#} (again in {backoff:?})", resource.name);
        write(objects).failing = true;
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(BACKOFF.1);
    };
    loop {
        metrics.relist(resource.name);
        match api.client().list::<T>(&resource.path, &resource.query) {
            Ok(listed) => {
                log::info!(
                    "{}: listed {} at resourceVersion {}",
                    resource.name,
                    listed.items.len(),
                    listed.resource_version
                );
                let plugged = write(objects).replace(listed);
                plugged.into_iter().for_each(changed);
            }
            Err(e) => {
                fail("list", &e, &mut backoff);
                continue;
            }
        }
        let mut failed = 0;
        while failed < RESUMES {
            match watch(api, resource, objects, changed) {
                Ok(Ended::Closed) => {
                    failed = 0;
                    backoff = BACKOFF.0;
                }
                Ok(Ended::Expired) => {
                    log::info!("{}: resourceVersion expired, listing again", resource.name);
                    break;
                }
                Err(e) => {
                    metrics.watch_restart(resource.name);
                    failed += 1;
                    fail("watch", &e, &mut backoff);
                }
            }
        }
    }
}

/// One watch, from where the cache stands, until it ends.
fn watch<T: Cached + DeserializeOwned>(
    api: &Api,
    resource: &Resource,
    objects: &RwLock<Objects<T>>,
    changed: &dyn Fn(Key),
) -> Result<Ended> {
    let client = api.client();
    let from = read(objects).resource_version.clone();
    let Some(mut watch) =
        client.watch::<T>(&resource.path, &resource.query, &from, WATCH_TIMEOUT)?
    else {
        return Ok(Ended::Expired);
    };
    write(objects).seen();
    loop {
        match watch.next_event()? {
            None => {
                write(objects).seen();
                return Ok(Ended::Closed);
            }
            Some(WatchEvent::Error(status)) if status.code == 410 => return Ok(Ended::Expired),
            Some(WatchEvent::Error(status)) => {
                anyhow::bail!("error event {}: {}", status.code, status.message)
            }
            Some(event) => {
                // Told after the cache has the change, so that the hot-plug reads it.
                let plugged = write(objects).apply(event);
                plugged.into_iter().for_each(changed);
            }
        }
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads `lock`, poisoned or not (a panic elsewhere leaves the cache as whole as it was).
pub fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
