//! `multihome install` after the first install: watch the primary config's directory and the
//! service account's (inotify, through nix) and let the installer rewrite what changed, until
//! SIGTERM or SIGINT. What to do on a change is the caller's: this module knows directories,
//! events and signals only. kubelet rotates a projected service-account token by swapping the
//! `..data` symlink of that directory, so a watch on the token file itself would never fire:
//! the directory is watched.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};

/// What makes the watched directories worth another look: an entry created, removed, renamed
/// (kubelet's `..data` swap, an atomic config write), written or re-permissioned.
const WATCHED: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVE)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

enum Wake {
    Changed,
    Signal(Signal),
}

/// Blocks SIGTERM and SIGINT, to be taken by [`watch`] with sigwait on a thread of its own.
/// Called before any thread starts, so that every thread inherits the mask.
pub fn block_signals() -> Result<SigSet> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    Ok(signals)
}

/// Calls `refresh` once, then again after every burst of changes in `dirs` (those that exist),
/// until one of the blocked `signals`, which it returns. `log` takes its one-line reports.
pub fn watch(
    dirs: &[&Path],
    signals: SigSet,
    log: fn(&str),
    mut refresh: impl FnMut(),
) -> Result<Signal> {
    let (tx, rx) = mpsc::channel();
    let on_signal = tx.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = on_signal.send(Wake::Signal(sig));
        }
    });
    if !dirs.is_empty() {
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC).context("starting the file watcher (inotify)")?;
        for dir in dirs {
            if dir.is_dir() {
                inotify
                    .add_watch(*dir, WATCHED)
                    .with_context(|| format!("watching {}", dir.display()))?;
                log(&format!("watching {}", dir.display()));
            }
        }
        std::thread::spawn(move || {
            // Which entry changed does not matter: every pass rereads everything.
            loop {
                match inotify.read_events() {
                    Ok(_) if tx.send(Wake::Changed).is_ok() => {}
                    Ok(_) => return,
                    Err(e) => return log(&format!("the file watcher stopped: {e}")),
                }
            }
        });
    }
    // What changed between the first install and the watch: caught up once (a no-op otherwise).
    let mut wake = Wake::Changed;
    loop {
        if let Wake::Changed = wake {
            // One burst of events (a rename, kubelet's swap of three entries) is one update.
            std::thread::sleep(Duration::from_millis(200));
            while let Ok(next) = rx.try_recv() {
                if let Wake::Signal(_) = next {
                    wake = next;
                    break;
                }
            }
        }
        match wake {
            Wake::Signal(sig) => return Ok(sig),
            Wake::Changed => refresh(),
        }
        wake = rx.recv().context("the watcher stopped")?;
    }
}
