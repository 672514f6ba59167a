//! The cache under `cniDir`: for every attachment ADD made, what it attached (each delegate's
//! exact config, interface name, arguments and result), so DEL, CHECK and GC act on exactly that
//! even when config files change or the API server is gone.
//!
//! A record is keyed by the CNI attachment, (network name, `CNI_CONTAINERID`, `CNI_IFNAME`), as
//! libcni keys its own cache: `<cniDir>/<network>+<containerID>+<ifname>.json`. `+` cannot
//! appear in a network name or a container ID, so the name is unambiguous. Records of the layout
//! before (`<cniDir>/<containerID>.json`, one per container) are still read, so a node full of
//! running pods can DEL them after an upgrade in place.
//!
//! Writes are atomic (temporary file, rename; with [`Durability::Durable`] also fsync of the file
//! and the directory). Operations on one attachment are serialised by an `flock` on
//! `<key>.lock`; other attachments are never blocked. Only GC lists the directory.
//!
//! A completed DEL (or an ADD that attached nothing) leaves a tombstone, an empty file
//! `<cniDir>/deleted/<hour>/<key>`: the proof that nothing of the attachment is attached, so
//! the runtime's repeated DEL costs nothing. A DEL that finds neither record nor tombstone cannot
//! know that, and re-plans. Tombstones live one to two hours (the hour buckets older than the
//! previous one are removed whenever a tombstone is left, and by GC); ADD clears its key's.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::plan::Attachment;

pub mod record;

/// The separator of the parts of a record's file name; not allowed in network names or
/// container IDs.
const SEP: char = '+';

/// The directory of tombstones, below `cniDir`.
const TOMBSTONES: &str = "deleted";

/// The span of one bucket of tombstones: a tombstone is found for one to two of them. A runtime
/// repeats its DEL within minutes (containerd at sandbox removal, kubelet's retries).
const TOMBSTONE_BUCKET_SECS: u64 = 3600;

/// One CNI attachment of multihome: its network, container and runtime interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// multihome's network name (`name` of its config).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Key {
    fn stem(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}",
            self.network, self.container_id, self.ifname
        )
    }

    /// The key a record file name stands for, if it is one of `network`'s.
    fn from_stem(network: &str, stem: &str) -> Option<Key> {
        let rest = stem.strip_prefix(network)?.strip_prefix(SEP)?;
        let (container_id, ifname) = rest.split_once(SEP)?;
        (!container_id.is_empty() && !ifname.is_empty()).then(|| Key {
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }
}

/// One attachment's record, in memory; [`record`] writes and reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// multihome's network name (empty in records of the layout before).
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` at ADD.
    pub netns: Option<String>,
    /// `CNI_IFNAME` at ADD.
    pub ifname: String,
    /// When ADD began (RFC 3339, UTC).
    pub added: Option<String>,
    /// The attachments, in ADD order, with their results once added.
    pub attachments: Vec<CachedAttachment>,
}

/// An attachment and, once its ADD succeeded, its result.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    /// What was (or is about to be) run.
    pub attachment: Attachment,
    /// The delegate's ADD result, in its own version; `None` until it succeeded.
    pub result: Option<Value>,
    /// The original name of a host interface moved into the pod, to give back on DEL.
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

/// An exclusive hold on one record (its lock file); released on drop. Loading, saving and
/// removing the record go through it.
#[derive(Debug)]
pub struct Lock {
    /// `None` only in a read-only directory.
    _file: Option<Flock<File>>,
    lock: PathBuf,
    record: PathBuf,
    tmp: PathBuf,
}

/// What GC finds of one network in the directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Records (or lock and temporary files without a record) of the current layout.
    pub keys: Vec<Key>,
    /// Container IDs of records, lock or temporary files of the layout before.
    pub legacy: Vec<String>,
}

impl Cache {
    /// The cache in `dir` (created, mode 0700, on first use).
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the lock of `key`'s record, waiting for another operation on it to finish.
    pub fn lock(&self, key: &Key) -> Result<Lock> {
        self.lock_stem(&key.stem(), FlockArg::LockExclusive)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Takes the lock of `key`'s record unless another process holds it (`None`).
    pub fn try_lock(&self, key: &Key) -> Result<Option<Lock>> {
        self.lock_stem(&key.stem(), FlockArg::LockExclusiveNonblock)
    }

    /// Whether a record of the layout before (one per container) exists for `container_id`.
    pub fn has_legacy(&self, container_id: &str) -> bool {
        self.dir.join(format!("{container_id}.json")).exists()
    }

    /// Takes the lock of a record of the layout before (one per container), waiting.
    pub fn lock_legacy(&self, container_id: &str) -> Result<Lock> {
        self.lock_stem(container_id, FlockArg::LockExclusive)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Takes the lock of a record of the layout before unless another process holds it.
    pub fn try_lock_legacy(&self, container_id: &str) -> Result<Option<Lock>> {
        self.lock_stem(container_id, FlockArg::LockExclusiveNonblock)
    }

    fn lock_stem(&self, stem: &str, how: FlockArg) -> Result<Option<Lock>> {
        self.prepare_dir()?;
        let path = self.dir.join(format!("{stem}.lock"));
        let record = self.dir.join(format!("{stem}.json"));
        let tmp = self.dir.join(format!(".{stem}.json.tmp"));
        loop {
            let file = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => f,
                // A read-only cniDir: nothing can change a record there, so reading one (for DEL
                // to release what it lists) needs no lock file of its own.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EROFS as i32) => {
                    return Ok(Some(Lock {
                        _file: File::open(&path)
                            .ok()
                            .and_then(|f| Flock::lock(f, how).ok()),
                        lock: path,
                        record,
                        tmp,
                    }));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("opening lock {}", path.display()));
                }
            };
            let locked = match Flock::lock(file, how) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            };
            // Removal deletes the lock file while holding it; a waiter that opened the old file
            // must not believe it holds the lock, so check the path still names our file.
            let held = locked
                .metadata()
                .with_context(|| format!("stat {}", path.display()))?;
            match fs::metadata(&path) {
                Ok(current) if current.ino() == held.ino() && current.dev() == held.dev() => {
                    return Ok(Some(Lock {
                        _file: Some(locked),
                        lock: path,
                        record,
                        tmp,
                    }));
                }
                _ => continue,
            }
        }
    }

    /// Creates the directory 0700 (container IDs are nobody else's business), and tightens one
    /// that an earlier multihome created 0755: owned by us, not sticky, holding nothing but
    /// multihome's files. Anything else is left as the operator made it.
    fn prepare_dir(&self) -> Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        let meta =
            fs::metadata(&self.dir).with_context(|| format!("stat {}", self.dir.display()))?;
        let loose = meta.mode() & 0o077 != 0 && meta.mode() & 0o1000 == 0;
        if loose && meta.uid() == nix::unistd::geteuid().as_raw() && self.only_ours() {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)) {
                log::warn!("cannot make {} private: {e}", self.dir.display());
            }
        }
        Ok(())
    }

    /// Whether every entry of the directory is a record, lock or temporary file of multihome's,
    /// or its directory of tombstones.
    fn only_ours(&self) -> bool {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return false;
        };
        entries.filter_map(|e| e.ok()).all(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = e.file_type() else {
                return false;
            };
            (kind.is_dir() && name == TOMBSTONES)
                || (kind.is_file()
                    && (name.ends_with(".json")
                        || name.ends_with(".lock")
                        || name.ends_with(".json.tmp")))
        })
    }

    /// The bucket of tombstones left now, and the one before it.
    fn tombstone_buckets(&self) -> [PathBuf; 2] {
        let hour = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / TOMBSTONE_BUCKET_SECS);
        let root = self.dir.join(TOMBSTONES);
        [
            root.join(hour.to_string()),
            root.join(hour.saturating_sub(1).to_string()),
        ]
    }

    /// Leaves the tombstone of `key`: nothing of it is attached. Best effort: without it (a
    /// read-only or full directory) a repeated DEL only re-plans.
    pub fn leave_tombstone(&self, key: &Key) {
        let [bucket, _] = self.tombstone_buckets();
        let path = bucket.join(key.stem());
        let left = DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&bucket)
            .and_then(|()| {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .open(&path)
            });
        match left {
            Ok(_) => self.expire_tombstones(),
            Err(e) => log::warn!("cannot leave the tombstone {}: {e}", path.display()),
        }
    }

    /// Whether a recent DEL (or failed ADD) left the tombstone of `key`.
    pub fn has_tombstone(&self, key: &Key) -> bool {
        let stem = key.stem();
        self.tombstone_buckets()
            .iter()
            .any(|b| b.join(&stem).exists())
    }

    /// Clears the tombstone of `key`: ADD is attaching it again.
    pub fn clear_tombstone(&self, key: &Key) {
        let stem = key.stem();
        for bucket in self.tombstone_buckets() {
            let path = bucket.join(&stem);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    log::warn!("cannot clear the tombstone {}: {e}", path.display());
                }
                _ => {}
            }
        }
    }

    /// Removes the buckets of tombstones older than the previous hour's: the only listing on the
    /// DEL path, of a directory of at most three entries.
    pub fn expire_tombstones(&self) {
        let root = self.dir.join(TOMBSTONES);
        let Ok(entries) = fs::read_dir(&root) else {
            return;
        };
        let live = self.tombstone_buckets();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if ours && !live.contains(&path) {
                if let Err(e) = fs::remove_dir_all(&path) {
                    log::warn!("cannot expire the tombstones {}: {e}", path.display());
                }
            }
        }
    }

    /// Reads the locked record. `Ok(None)` when there is none; an unreadable or torn file is an
    /// error the caller can choose to survive.
    pub fn load(&self, lock: &Lock) -> Result<Option<Record>> {
        let path = &lock.record;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading cache {}", path.display())),
        };
        record::decode(&bytes)
            .with_context(|| format!("decoding cache {}", path.display()))
            .map(Some)
    }

    /// Writes the locked record atomically (temporary file, rename). With `durable` the data
    /// and the rename are also fsynced, so the record survives a power loss; without, it
    /// survives a crash of the process (the page cache outlives it) at no fsync cost.
    pub fn save(&self, lock: &Lock, record: &Record, durable: Durability) -> Result<()> {
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&lock.tmp)?;
            file.write_all(&record::encode(record).map_err(std::io::Error::other)?)?;
            if durable == Durability::Durable {
                file.sync_all()?;
            }
            fs::rename(&lock.tmp, &lock.record)?;
            if durable == Durability::Durable {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        };
        write().with_context(|| format!("writing cache {}", lock.record.display()))
    }

    /// Removes the locked record, a temporary file a crash left, and the lock file (while
    /// holding the lock).
    pub fn remove(&self, lock: Lock) -> Result<()> {
        for path in [&lock.record, &lock.tmp] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing cache {}", path.display()));
                }
                _ => {}
            }
        }
        self.unlock(lock);
        Ok(())
    }

    /// Releases the lock and removes its file, so that only records stay in the directory (a
    /// waiter that opened the old file notices and takes a new one).
    pub fn unlock(&self, lock: Lock) {
        let _ = fs::remove_file(&lock.lock);
        drop(lock);
    }

    /// Every record here, of every network and layout, read without locking (records are
    /// replaced by rename, so a read sees a whole one), with its file name; sorted by name.
    pub fn records(&self) -> Result<Vec<(String, Result<Record>)>> {
        let mut names: Vec<String> = match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir.display())),
        };
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let path = self.dir.join(&name);
                let record = fs::read(&path)
                    .with_context(|| format!("reading {}", path.display()))
                    .and_then(|b| {
                        record::decode(&b).with_context(|| format!("decoding {}", path.display()))
                    });
                (name, record)
            })
            .collect())
    }

    /// Every attachment of `network` with a file here (record, lock or temporary file), and
    /// every container with a file of the layout before.
    pub fn list(&self, network: &str) -> Result<Listing> {
        let mut listing = Listing::default();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => {
                return Err(e).with_context(|| format!("listing {}", self.dir.display()));
            }
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let stem = match name.strip_prefix('.') {
                Some(hidden) => hidden.strip_suffix(".json.tmp"),
                None => name
                    .strip_suffix(".json")
                    .or_else(|| name.strip_suffix(".lock")),
            };
            let Some(stem) = stem else { continue };
            if !stem.contains(SEP) {
                listing.legacy.push(stem.to_string());
            } else if let Some(key) = Key::from_stem(network, stem) {
                listing.keys.push(key);
            }
        }
        listing.keys.sort();
        listing.keys.dedup();
        listing.legacy.sort();
        listing.legacy.dedup();
        Ok(listing)
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

    fn key(cid: &str, ifname: &str) -> Key {
        Key {
            network: "mh".into(),
            container_id: cid.into(),
            ifname: ifname.into(),
        }
    }

    fn record(cid: &str) -> Record {
        let network = NetworkConfig::from_value(
            json!({"name": "n", "type": "bridge"}),
            Version::new(1, 0, 0),
        )
        .unwrap();
        Record {
            network: "mh".into(),
            container_id: cid.into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            added: Some("2026-12-01T00:00:00Z".into()),
            attachments: vec![CachedAttachment {
                attachment: Attachment {
                    name: "n".into(),
                    network,
                    ifname: "eth0".into(),
                    cni_args: vec![("IgnoreUnknown".into(), "1".into())],
                    runtime_config: serde_json::Map::new(),
                    device_info: None,
                    default_route: None,
                    source: String::new(),
                    policy_rule: None,
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
        let lock = cache.lock(&key("c1", "eth0")).unwrap();
        assert_eq!(cache.load(&lock).unwrap(), None);
        cache
            .save(&lock, &record("c1"), Durability::Durable)
            .unwrap();
        assert_eq!(cache.load(&lock).unwrap(), Some(record("c1")));
        assert!(dir.join("mh+c1+eth0.json").exists());
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "the directory is private");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        cache.remove(lock).unwrap();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "record and lock are gone"
        );
        let lock = cache.lock(&key("c1", "eth0")).unwrap();
        cache.remove(lock).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_container_on_two_networks_or_interfaces_has_two_records() {
        let dir = tempdir("keys");
        let cache = Cache::new(&dir);
        let a = cache.lock(&key("c1", "eth0")).unwrap();
        let b = cache.lock(&key("c1", "eth1")).unwrap();
        let other = Key {
            network: "other".into(),
            ..key("c1", "eth0")
        };
        let c = cache.lock(&other).unwrap();
        let mut second = record("c1");
        second.ifname = "eth1".into();
        cache.save(&a, &record("c1"), Durability::Atomic).unwrap();
        cache.save(&b, &second, Durability::Atomic).unwrap();
        cache.save(&c, &record("c1"), Durability::Atomic).unwrap();
        assert_eq!(cache.load(&a).unwrap(), Some(record("c1")));
        assert_eq!(cache.load(&b).unwrap(), Some(second));
        let listing = cache.list("mh").unwrap();
        assert_eq!(listing.keys, vec![key("c1", "eth0"), key("c1", "eth1")]);
        assert!(listing.legacy.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listing_finds_leftovers_and_the_layout_before() {
        let dir = tempdir("list");
        fs::create_dir_all(&dir).unwrap();
        for name in [
            "mh+c1+eth0.json",
            "mh+c2+eth0.lock",
            ".mh+c3+net+1.json.tmp",
            "mhx+c4+eth0.json",
            "other+c5+eth0.json",
            "old1.json",
            "old2.lock",
            ".old3.json.tmp",
            "README",
        ] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let listing = Cache::new(&dir).list("mh").unwrap();
        assert_eq!(
            listing.keys,
            vec![key("c1", "eth0"), key("c2", "eth0"), key("c3", "net+1")]
        );
        assert_eq!(listing.legacy, vec!["old1", "old2", "old3"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A record exactly as multihome 0.1.0 wrote it (captured from that binary), before records
    /// were keyed by attachment.
    const LEGACY_RECORD: &str = r#"{"kind":"multihome/v1","containerId":"ctr-1","netns":"/run/netns/p1","ifname":"eth0","attachments":[{"name":"cluster","network":{"name":"cluster","cniVersion":"1.0.0","disableCheck":false,"plugins":[{"type":"bridge","bridge":"mhbr0","isGateway":true,"ipam":{"type":"host-local","subnet":"198.18.0.0/24","dataDir":"/tmp/legacy-ipam"}}]},"ifname":"eth0","cniArgs":[["IgnoreUnknown","1"]],"runtimeConfig":{},"result":{"cniVersion":"1.0.0","interfaces":[{"name":"mhbr0","mac":"d6:8c:c7:e9:98:7b"},{"name":"veth9198e86c","mac":"62:5e:ab:79:71:08"},{"name":"eth0","mac":"da:4a:28:84:eb:6c","sandbox":"/run/netns/p1"}],"ips":[{"interface":2,"address":"198.18.0.2/24","gateway":"198.18.0.1"}],"dns":{}}}]}"#;

    #[test]
    fn records_of_the_layout_before_are_read() {
        let dir = tempdir("legacy");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("ctr-1.json"), LEGACY_RECORD).unwrap();
        let cache = Cache::new(&dir);
        let lock = cache.lock_legacy("ctr-1").unwrap();
        let r = cache.load(&lock).unwrap().unwrap();
        assert_eq!((r.network.as_str(), r.ifname.as_str()), ("", "eth0"));
        assert_eq!(r.attachments[0].attachment.network.plugins.len(), 1);
        assert_eq!(r.attachments[0].attachment.cni_args.len(), 1);
        assert!(r.attachments[0].result.is_some() && r.added.is_none());
        cache.remove(lock).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_loose_directory_is_tightened_only_when_it_is_multihomes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("loose");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("mh+c1+eth0.json"), b"{}").unwrap();
        fs::write(dir.join("c0.json"), b"{}").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let cache = Cache::new(&dir);
        drop(cache.lock(&key("c1", "eth0")).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Someone else's file in it: not ours to tighten.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("results"), b"").unwrap();
        drop(cache.lock(&key("c1", "eth0")).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tombstones_are_left_found_cleared_and_expire_by_the_hour() {
        let dir = tempdir("tomb");
        let cache = Cache::new(&dir);
        let (a, b) = (key("c1", "eth0"), key("c2", "eth0"));
        drop(cache.lock(&a).unwrap());
        assert!(!cache.has_tombstone(&a));
        cache.leave_tombstone(&a);
        cache.leave_tombstone(&a);
        assert!(cache.has_tombstone(&a) && !cache.has_tombstone(&b));
        // One found in the previous hour's bucket still counts.
        let [now, previous] = cache.tombstone_buckets();
        fs::create_dir_all(&previous).unwrap();
        fs::write(previous.join(b.stem()), b"").unwrap();
        assert!(cache.has_tombstone(&b));
        cache.clear_tombstone(&b);
        assert!(!cache.has_tombstone(&b) && cache.has_tombstone(&a));
        // Older hours go with the next tombstone; whatever is not an hour is not ours.
        let old = dir.join(TOMBSTONES).join("7");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(b.stem()), b"").unwrap();
        fs::write(dir.join(TOMBSTONES).join("notes"), b"").unwrap();
        cache.leave_tombstone(&b);
        assert!(!old.exists());
        assert!(dir.join(TOMBSTONES).join("notes").exists());
        assert_eq!(fs::read_dir(&now).unwrap().count(), 2);
        // The directory of tombstones does not stop a loose cniDir from being tightened.
        use std::os::unix::fs::PermissionsExt;
        fs::remove_file(dir.join(TOMBSTONES).join("notes")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        drop(cache.lock(&a).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_file_is_an_error_not_a_panic() {
        let dir = tempdir("torn");
        let cache = Cache::new(&dir);
        let lock = cache.lock(&key("c2", "eth0")).unwrap();
        fs::write(
            dir.join("mh+c2+eth0.json"),
            b"{\"kind\":\"multihome/v1\",\"contai",
        )
        .unwrap();
        let err = cache.load(&lock).unwrap_err();
        assert!(format!("{err:#}").contains("mh+c2+eth0.json"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_serialises_one_attachment_and_survives_removal() {
        let dir = tempdir("lock");
        let cache = Arc::new(Cache::new(&dir));
        let lock = cache.lock(&key("c3", "eth0")).unwrap();
        assert!(
            cache.try_lock(&key("c3", "eth0")).unwrap().is_none(),
            "held"
        );
        let barrier = Arc::new(Barrier::new(2));
        let waiter = {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let l = cache.lock(&key("c3", "eth0")).unwrap();
                // It only gets here after the holder removed everything.
                let saw = cache.load(&l).unwrap();
                cache.remove(l).unwrap();
                saw
            })
        };
        barrier.wait();
        std::thread::sleep(std::time::Duration::from_millis(50));
        cache
            .save(&lock, &record("c3"), Durability::Atomic)
            .unwrap();
        cache.remove(lock).unwrap();
        assert_eq!(waiter.join().unwrap(), None);
        // A different attachment is never blocked by this one.
        let a = cache.lock(&key("c4", "eth0")).unwrap();
        let b = cache.try_lock(&key("c4", "eth1")).unwrap();
        assert!(b.is_some());
        drop((a, b));
        fs::remove_dir_all(&dir).unwrap();
    }
}
