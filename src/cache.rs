//! The per-container cache under `cniDir`: what ADD attached (each delegate's exact config,
//! interface name, arguments and result), so DEL and CHECK act on exactly that even when config
//! files change or the API server is gone.
//!
//! One file per container, `<cniDir>/<containerID>.json`, written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves the old file or the new one, never a torn
//! one. Operations on one container are serialised by an `flock` on `<containerID>.lock`; other
//! containers are never blocked, and nothing scans the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::Attachment;

/// Marks the file format, so a future layout can be told apart.
pub const KIND: &str = "multihome/v1";

/// One container's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Always [`KIND`].
    pub kind: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` at ADD.
    pub netns: Option<String>,
    /// `CNI_IFNAME` at ADD.
    pub ifname: String,
    /// The attachments, in ADD order, with their results once added.
    pub attachments: Vec<CachedAttachment>,
}

/// An attachment and, once its ADD succeeded, its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    /// What was (or is about to be) run.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The delegate's ADD result, in its own version; `None` until it succeeded.
    pub result: Option<Value>,
    /// The original name of a host interface moved into the pod, to give back on DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_link: Option<String>,
}

impl CachedAttachment {
    /// An attachment about to be added.
    pub fn planned(attachment: Attachment) -> Self {
        CachedAttachment {
            attachment,
            result: None,
            host_link: None,
        }
    }
}

/// Whether a write must survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and the directory.
    Durable,
    /// Atomic, but left to the page cache.
    Atomic,
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// An exclusive hold on one container's cache entry; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: Flock<File>,
    path: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn record_path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!("{container_id}.json"))
    }

    /// Takes the container's lock, waiting for another operation on it to finish.
    pub fn lock(&self, container_id: &str) -> Result<Lock> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        let path = self.dir.join(format!("{container_id}.lock"));
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("opening lock {}", path.display()))?;
            let locked = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .with_context(|| format!("locking {}", path.display()))?;
            // DEL removes the lock file while holding it; a waiter that opened the old file
            // must not believe it holds the lock, so check the path still names our file.
            let held = locked
                .metadata()
                .with_context(|| format!("stat {}", path.display()))?;
            match fs::metadata(&path) {
                Ok(current) if current.ino() == held.ino() && current.dev() == held.dev() => {
                    return Ok(Lock {
                        _file: locked,
                        path,
                    });
                }
                _ => continue,
            }
        }
    }

    /// Reads a container's record. `Ok(None)` when there is none; an unreadable or torn file is
    /// an error the caller can choose to survive.
    pub fn load(&self, _lock: &Lock, container_id: &str) -> Result<Option<Record>> {
        let path = self.record_path(container_id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading cache {}", path.display())),
        };
        let record: Record = serde_json::from_slice(&bytes)
            .with_context(|| format!("decoding cache {}", path.display()))?;
        if record.kind != KIND {
            anyhow::bail!(
                "cache {} has unknown kind {:?}",
                path.display(),
                record.kind
            );
        }
        Ok(Some(record))
    }

    /// Writes a container's record atomically (temporary file, rename). With `durable` the data
    /// and the rename are also fsynced, so the record survives a power loss; without, it
    /// survives a crash of the process (the page cache outlives it) at no fsync cost.
    pub fn save(&self, _lock: &Lock, record: &Record, durable: Durability) -> Result<()> {
        let path = self.record_path(&record.container_id);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.container_id));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
            if durable == Durability::Durable {
                file.sync_all()?;
            }
            fs::rename(&tmp, &path)?;
            if durable == Durability::Durable {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("writing cache {}", path.display()))
    }

    /// Removes a container's record and its lock file (while holding the lock).
    pub fn remove(&self, lock: Lock, container_id: &str) -> Result<()> {
        let path = self.record_path(container_id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing cache {}", path.display()));
            }
            _ => {}
        }
        let _ = fs::remove_file(&lock.path);
        drop(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use serde_json::json;

    use super::*;
    use crate::cni::version::Version;
    use crate::config::NetworkConfig;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mh-cache-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn record(cid: &str) -> Record {
        let network = NetworkConfig::from_value(
            json!({"name": "n", "type": "bridge"}),
            Version::new(1, 0, 0),
        )
        .unwrap();
        Record {
            kind: KIND.into(),
            container_id: cid.into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            attachments: vec![CachedAttachment {
                attachment: Attachment {
                    name: "n".into(),
                    network,
                    ifname: "eth0".into(),
                    cni_args: vec![("IgnoreUnknown".into(), "1".into())],
                    runtime_config: serde_json::Map::new(),
                    device_info: None,
                    default_route: None,
                },
                result: Some(json!({"cniVersion": "1.0.0", "ips": []})),
                host_link: Some("ens5".into()),
            }],
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempdir("rt");
        let cache = Cache::new(&dir);
        let lock = cache.lock("c1").unwrap();
        assert_eq!(cache.load(&lock, "c1").unwrap(), None);
        cache
            .save(&lock, &record("c1"), Durability::Durable)
            .unwrap();
        assert_eq!(cache.load(&lock, "c1").unwrap(), Some(record("c1")));
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        cache.remove(lock, "c1").unwrap();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "record and lock are gone"
        );
        let lock = cache.lock("c1").unwrap();
        cache.remove(lock, "c1").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_file_is_an_error_not_a_panic() {
        let dir = tempdir("torn");
        let cache = Cache::new(&dir);
        let lock = cache.lock("c2").unwrap();
        fs::write(dir.join("c2.json"), b"{\"kind\":\"multihome/v1\",\"contai").unwrap();
        let err = cache.load(&lock, "c2").unwrap_err();
        assert!(format!("{err:#}").contains("c2.json"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_serialises_one_container_and_survives_removal() {
        let dir = tempdir("lock");
        let cache = Arc::new(Cache::new(&dir));
        let lock = cache.lock("c3").unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let waiter = {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let l = cache.lock("c3").unwrap();
                // It only gets here after the holder removed everything.
                let saw = cache.load(&l, "c3").unwrap();
                cache.remove(l, "c3").unwrap();
                saw
            })
        };
        barrier.wait();
        std::thread::sleep(std::time::Duration::from_millis(50));
        cache
            .save(&lock, &record("c3"), Durability::Atomic)
            .unwrap();
        cache.remove(lock, "c3").unwrap();
        assert_eq!(waiter.join().unwrap(), None);
        // A different container is never blocked by this one.
        let a = cache.lock("c4").unwrap();
        let b = cache.lock("c5").unwrap();
        drop((a, b));
        fs::remove_dir_all(&dir).unwrap();
    }
}
