//! Atomic output, and the one naming scheme for temporary outputs. All bytes go to a hidden
//! sibling, `.<name>.<pid>.heartmula-partial` (a file, or a folder for outputs that are folders),
//! which is renamed over the destination only once it is complete and on disk. Until then the
//! destination is exactly as it was. A run killed outright (SIGKILL) leaves its partial behind;
//! the next run for the same destination removes it, since its process no longer exists.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs::{open_for_lock, try_lock};

const PARTIAL_SUFFIX: &str = ".heartmula-partial";
/// In place of the pid, for a partial meant to outlive its run (an interrupted stream's, which the
/// next run continues): `.<name>.resume.heartmula-partial`. Never removed as stale; locked while in use.
const RESUME_TAG: &str = "resume";
/// Where a folder being replaced waits while the new one moves in (only where the filesystem
/// cannot swap two folders atomically); cleaned up like a partial.
const ASIDE_SUFFIX: &str = ".heartmula-aside";

fn partial_name(file_name: &str, pid: u32, suffix: &str) -> String {
    format!(".{file_name}.{pid}{suffix}")
}

/// This process's temporary path for `destination`: `.<name>.<pid>.heartmula-partial` beside it.
pub fn partial_path(destination: &Path) -> Result<PathBuf> {
    sibling(destination, PARTIAL_SUFFIX)
}

/// The partial that outlives its run for `destination`: `.<name>.resume.heartmula-partial` beside it.
pub fn resume_path(destination: &Path) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (parent_dir(destination), destination.file_name()) else {
        return Err(Error::output(destination, "output path has no file name"));
    };
    Ok(dir.join(format!(".{}.{RESUME_TAG}{PARTIAL_SUFFIX}", name.to_string_lossy())))
}

/// The journal of the resumable partials of a run whose first output is `destination`:
/// `.<name>.resume.heartmula-journal` beside it (see `journal`).
pub fn resume_journal_path(destination: &Path) -> Result<PathBuf> {
    let partial = resume_path(destination)?;
    Ok(partial.with_extension("heartmula-journal"))
}

fn sibling(destination: &Path, suffix: &str) -> Result<PathBuf> {
    let (Some(dir), Some(name)) = (parent_dir(destination), destination.file_name()) else {
        return Err(Error::output(destination, "output path has no file name"));
    };
    Ok(dir.join(partial_name(&name.to_string_lossy(), std::process::id(), suffix)))
}

/// Whether process `pid` exists in this PID namespace (a process we cannot see may still live).
fn visible_and_alive(pid: i32) -> bool {
    pid > 0 && {
        // SAFETY: signal 0 only checks whether the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// Cleans up after earlier runs for the same destination that were killed outright. A partial
/// (`.NAME.PID.heartmula-partial`) is removed when nobody holds its lock and its process is not
/// alive here. A folder moved aside while being replaced (`.NAME.PID.heartmula-aside`) is the
/// previous output, never deleted: when the destination is missing (the run died between moving
/// it aside and moving the new one in) it is renamed back; otherwise it is left as it is.
/// Returns the paths removed.
pub fn remove_stale_partials(destination: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (parent_dir(destination), destination.file_name()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let (pid, aside) = match (rest.strip_suffix(PARTIAL_SUFFIX), rest.strip_suffix(ASIDE_SUFFIX)) {
            (Some(pid), _) => (pid, false),
            (_, Some(pid)) => (pid, true),
            _ => continue,
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let path = entry.path();
        let Ok(lock) = open_for_lock(&path) else {
            continue; // a link, or gone meanwhile: not ours to touch
        };
        if !try_lock(&lock) || visible_and_alive(pid) {
            continue;
        }
        if aside {
            if std::fs::symlink_metadata(destination).is_err() {
                let _ = rename_into_place(&path, destination, false);
            }
            continue;
        }
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path).is_ok(),
            _ => std::fs::remove_file(&path).is_ok(),
        };
        if gone {
            removed.push(path);
        }
    }
    removed
}

pub fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// Bytes available to this user on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let c = c_path(dir)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses to start writing `size` bytes into `dir` when the filesystem has less free
/// (`what` names the output in the error).
pub fn ensure_free_space(what: &Path, dir: &Path, size: u64) -> Result<()> {
    let available = free_space(dir).map_err(|e| Error::io(dir, "cannot read free space", e))?;
    if available < size {
        return Err(Error::output(
            what,
            format!("not enough free space: {size} bytes are needed, {available} are free"),
        ));
    }
    Ok(())
}

/// Checks that `destination` can be written: its folder exists, and it is neither a folder nor,
/// without `overwrite`, an existing file. Returns the folder.
fn check_destination(destination: &Path, overwrite: bool) -> Result<PathBuf> {
    let dir = parent_dir(destination).ok_or_else(|| Error::output(destination, "output path has no file name"))?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::output(destination, "output folder is not a folder")),
        Err(_) => return Err(Error::output(destination, "output folder does not exist")),
    }
    match std::fs::symlink_metadata(destination) {
        Ok(m) if m.is_dir() => Err(Error::output(destination, "output is an existing folder")),
        Ok(_) if !overwrite => Err(Error::output(destination, "output exists (use --force to replace it)")),
        _ => Ok(dir),
    }
}

/// A file being written beside its destination. Dropped without `commit`, it deletes itself.
pub struct AtomicFile {
    pub file: File,
    temp_path: PathBuf,
    destination: PathBuf,
    overwrite: bool,
    /// Committed, or kept for the next run (`keep`): not deleted when dropped.
    committed: bool,
}

impl AtomicFile {
    /// Checks the destination can be written and creates the temp file, `size` bytes long.
    pub fn create(destination: &Path, size: u64, overwrite: bool) -> Result<AtomicFile> {
        let dir = check_destination(destination, overwrite)?;
        ensure_free_space(destination, &dir, size)?;
        remove_stale_partials(destination);
        let temp_path = partial_path(destination)?;
        // 0666 less the umask, as any program creating a file gets (the kernel applies the umask).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp_path)
            .map_err(|e| Error::io(&temp_path, "cannot create temp file", e))?;
        try_lock(&file); // a file we just created: nobody else can hold its lock yet
        let atomic = AtomicFile {
            file,
            temp_path,
            destination: destination.to_path_buf(),
            overwrite,
            committed: false,
        };
        atomic.reserve(size)?;
        Ok(atomic)
    }

    /// As `create`, under the name that outlives the run (`resume_path`), locked against any other
    /// run. With `reuse`, a partial already there of exactly `size` bytes is opened as it is (its
    /// bytes are the earlier run's, returned `true`); anything else is emptied and sized anew.
    pub fn resumable(destination: &Path, size: u64, overwrite: bool, reuse: bool) -> Result<(AtomicFile, bool)> {
        let dir = check_destination(destination, overwrite)?;
        remove_stale_partials(destination);
        let temp_path = resume_path(destination)?;
        // No link followed: a partial planted as a link would send the bytes elsewhere.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&temp_path)
            .map_err(|e| Error::io(&temp_path, "cannot open the resumable partial", e))?;
        if !try_lock(&file) {
            return Err(Error::output(
                destination,
                format!(
                    "another run is writing this output (its partial {} is locked)",
                    temp_path.display()
                ),
            ));
        }
        let meta = file
            .metadata()
            .map_err(|e| Error::io(&temp_path, "cannot read the resumable partial", e))?;
        if !meta.is_file() {
            return Err(Error::output(&temp_path, "the resumable partial is not a regular file"));
        }
        let atomic = AtomicFile {
            file,
            temp_path,
            destination: destination.to_path_buf(),
            overwrite,
            committed: false,
        };
        if reuse && meta.len() == size {
            return Ok((atomic, true));
        }
        atomic.empty(0)?; // an earlier run's bytes give their room back first
        ensure_free_space(destination, &dir, size)?;
        atomic.empty(size)?;
        Ok((atomic, false))
    }

    /// Empties the temp file and allocates it anew, `size` bytes of zeros.
    pub fn empty(&self, size: u64) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| Error::io(&self.temp_path, "cannot empty the temp file", e))?;
        self.reserve(size)
    }

    /// Leaves the temp file where it is when dropped (a resumable partial, for the next run).
    pub fn keep(mut self) {
        self.committed = true;
    }

    /// Allocates the blocks up front, so a full disk shows now as an error rather than later.
    fn reserve(&self, size: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        if size == 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on an open descriptor.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, size as libc::off_t) };
        match rc {
            0 => Ok(()),
            libc::EOPNOTSUPP | libc::EINVAL => self
                .file
                .set_len(size)
                .map_err(|e| Error::io(&self.temp_path, "cannot size temp file", e)),
            libc::ENOSPC | libc::EFBIG => Err(Error::output(
                &self.destination,
                format!(
                    "not enough space for the {size}-byte output: {}",
                    std::io::Error::from_raw_os_error(rc)
                ),
            )),
            errno => Err(Error::io(
                &self.temp_path,
                "cannot allocate temp file",
                std::io::Error::from_raw_os_error(errno),
            )),
        }
    }

    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io(&self.destination, "cannot write", e))
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn destination(&self) -> &Path {
        &self.destination
    }

    /// fsync the data (everything written to the temp file, through this handle or any other).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.destination, "cannot flush to disk", e))
    }

    /// fsync the data, rename over the destination, fsync the folder. Without `overwrite`, a
    /// destination that appeared meanwhile (another run) is not replaced: the rename refuses.
    /// An existing regular file that is replaced keeps its permission bits.
    pub fn commit(mut self) -> Result<()> {
        if self.overwrite {
            self.keep_mode_of_destination()?;
        }
        self.sync()?;
        rename_into_place(&self.temp_path, &self.destination, self.overwrite)?;
        self.committed = true;
        sync_parent(&self.destination);
        Ok(())
    }
}

impl AtomicFile {
    fn keep_mode_of_destination(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        let Ok(old) = std::fs::symlink_metadata(&self.destination) else {
            return Ok(());
        };
        if !old.is_file() {
            return Ok(()); // a symlink is replaced by the file itself; its target is not ours
        }
        let mode = old.permissions().mode() & 0o777;
        // SAFETY: a plain syscall on an open descriptor.
        if unsafe { libc::fchmod(self.file.as_raw_fd(), mode) } != 0 {
            return Err(Error::io(
                &self.temp_path,
                "cannot give the temp file the mode of the file it replaces",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = parent_dir(path) {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all(); // best effort: some filesystems refuse fsync on folders
        }
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// `renameat2(2)` through the raw syscall (glibc only wraps it from 2.28 on).
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: two valid NUL-terminated paths relative to the current folder.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP))
}

/// Renames `from` to `to`; without `overwrite`, atomically refuses an existing `to`.
fn rename_into_place(from: &Path, to: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        return std::fs::rename(from, to).map_err(|e| Error::io(to, "cannot move into place", e));
    }
    move_without_replacing(
        from,
        to,
        |a, b| renameat2(a, b, libc::RENAME_NOREPLACE),
        |a, b| std::fs::hard_link(a, b),
    )
}

/// `from` to `to`, refusing an existing `to`: `rename_noreplace`, or where the filesystem has no
/// RENAME_NOREPLACE, `hard_link` (which refuses an existing name as well) and an unlink.
fn move_without_replacing(
    from: &Path,
    to: &Path,
    rename_noreplace: impl Fn(&Path, &Path) -> std::io::Result<()>,
    hard_link: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    let moved = match rename_noreplace(from, to) {
        Err(e) if unsupported(&e) => match hard_link(from, to) {
            Ok(()) => std::fs::remove_file(from),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)) => {
                return Err(Error::output(
                    to,
                    "this filesystem can neither rename without replacing (RENAME_NOREPLACE) nor \
                     hard-link, so an output cannot be put in place while refusing to replace one \
                     that appeared meanwhile: use --force (an existing output is then replaced)",
                ))
            }
            Err(e) => Err(e),
        },
        other => other,
    };
    moved.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::output(to, "output exists (use --force to replace it)"),
        _ => Error::io(to, "cannot move into place", e),
    })
}

/// fsync every file and folder under `root` (not following links), folders after their contents,
/// `root` last: a folder renamed into place afterwards holds its data even after a power cut.
fn sync_tree(root: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, "cannot read", e))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, "cannot read folder", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(root, "cannot read folder", e))?;
            sync_tree(&entry.path())?;
        }
    } else if !meta.is_file() {
        return Ok(()); // links and the like hold no data of their own
    }
    let file = open_for_lock(root).map_err(|e| Error::io(root, "cannot open to flush to disk", e))?;
    match file.sync_all() {
        // Some filesystems refuse fsync on folders; their data is as safe as they make it.
        Err(e) if meta.is_dir() && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EROFS)) => Ok(()),
        other => other.map_err(|e| Error::io(root, "cannot flush to disk", e)),
    }
}

/// Puts the finished folder `partial` in place of `destination`, its files and itself flushed to
/// disk first. An existing destination (only with `overwrite`) is swapped out atomically where the
/// filesystem can (`RENAME_EXCHANGE`), else moved aside first (`.NAME.PID.heartmula-aside`, locked
/// while it is there: a run killed right then leaves it for the next run to rename back); either
/// way the old folder is then removed.
pub fn commit_dir(partial: &Path, destination: &Path, overwrite: bool) -> Result<()> {
    commit_dir_with(partial, destination, overwrite, |a, b| {
        renameat2(a, b, libc::RENAME_EXCHANGE)
    })
}

fn commit_dir_with(
    partial: &Path,
    destination: &Path,
    overwrite: bool,
    exchange: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    // Held until the folder is in place, so that no other run's sweeper takes it for a dead one's.
    let partial_lock = open_for_lock(partial).map_err(|e| Error::io(partial, "cannot open", e))?;
    try_lock(&partial_lock);
    sync_tree(partial)?;
    let exists = std::fs::symlink_metadata(destination).is_ok();
    if !exists || !overwrite {
        rename_into_place(partial, destination, false)?;
        sync_parent(destination);
        return Ok(());
    }
    let old = match exchange(partial, destination) {
        Ok(()) => partial.to_path_buf(), // now holds the old folder
        Err(e) if unsupported(&e) => {
            let aside = sibling(destination, ASIDE_SUFFIX)?;
            let old_lock = open_for_lock(destination).map_err(|e| Error::io(destination, "cannot open", e))?;
            try_lock(&old_lock);
            std::fs::rename(destination, &aside).map_err(|e| Error::io(destination, "cannot move aside", e))?;
            sync_parent(destination);
            if let Err(e) = std::fs::rename(partial, destination) {
                let _ = std::fs::rename(&aside, destination);
                return Err(Error::io(destination, "cannot move into place", e));
            }
            // The old folder goes under the partial's name (free now) before it is removed: a run
            // killed while removing it leaves a partial, which the next run removes.
            std::fs::rename(&aside, partial).map_err(|e| Error::io(&aside, "cannot rename", e))?;
            partial.to_path_buf()
        }
        Err(e) => return Err(Error::io(destination, "cannot move into place", e)),
    };
    sync_parent(destination);
    let removed = match std::fs::symlink_metadata(&old) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&old),
        _ => std::fs::remove_file(&old),
    };
    removed.map_err(|e| Error::io(&old, "cannot remove the replaced output", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumable_partial_outlives_its_run_and_is_reused_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        let partial = dir.path().join(".out.bpk.resume.heartmula-partial");
        assert_eq!(resume_path(&dest).unwrap(), partial);
        assert_eq!(
            resume_journal_path(&dest).unwrap(),
            dir.path().join(".out.bpk.resume.heartmula-journal")
        );
        let (f, reused) = AtomicFile::resumable(&dest, 8, false, true).unwrap();
        assert!(!reused);
        f.write_at(b"12345678", 0).unwrap();
        f.keep();
        assert_eq!(std::fs::read(&partial).unwrap(), b"12345678");
        remove_stale_partials(&dest); // not a dead process's partial: kept
        let (f, reused) = AtomicFile::resumable(&dest, 8, false, true).unwrap();
        assert!(reused);
        assert_eq!(std::fs::read(&partial).unwrap(), b"12345678");
        f.keep();
        for (size, reuse) in [(9, true), (8, false)] {
            let (f, reused) = AtomicFile::resumable(&dest, size, false, reuse).unwrap();
            assert!(!reused);
            assert_eq!(std::fs::read(&partial).unwrap(), vec![0; size as usize], "emptied anew");
            f.keep();
        }
        let (f, _) = AtomicFile::resumable(&dest, 8, false, true).unwrap();
        f.write_at(b"complete", 0).unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"complete");
        assert!(!partial.exists());
    }

    #[test]
    fn a_resumable_partial_planted_as_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"not yours").unwrap();
        std::os::unix::fs::symlink(&elsewhere, resume_path(&dest).unwrap()).unwrap();
        let err = AtomicFile::resumable(&dest, 8, false, true).err().unwrap().to_string();
        assert!(err.contains("cannot open the resumable partial"), "{err}");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not yours");
    }

    #[test]
    fn dropped_file_leaves_nothing_and_destination_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        std::fs::write(&dest, b"old").unwrap();
        let err = AtomicFile::create(&dest, 4, false).err().unwrap().to_string();
        assert!(err.contains("--force"), "{err}");
        let f = AtomicFile::create(&dest, 4, true).unwrap();
        f.write_at(b"new!", 0).unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(f);
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_replaces_and_stale_partials_of_dead_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        // pid 0x7FFFFFF0 does not exist; our own pid does.
        let stale = dir.path().join(partial_name("out.bpk", 0x7FFF_FFF0, PARTIAL_SUFFIX));
        let live = dir
            .path()
            .join(partial_name("out.bpk", std::process::id(), PARTIAL_SUFFIX));
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        assert_eq!(remove_stale_partials(&dest), vec![stale.clone()]);
        std::fs::remove_file(&live).unwrap();
        let f = AtomicFile::create(&dest, 3, false).unwrap();
        f.write_at(b"abc", 0).unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_when_space_is_short_before_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("huge.bpk");
        let err = AtomicFile::create(&dest, u64::MAX / 2, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not enough free space"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_output_folder_is_named() {
        let err = AtomicFile::create(Path::new("/nonexistent-dir/x.bpk"), 1, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/nonexistent-dir/x.bpk") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn without_overwrite_a_destination_that_appears_meanwhile_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        let f = AtomicFile::create(&dest, 3, false).unwrap();
        f.write_at(b"new", 0).unwrap();
        std::fs::write(&dest, b"theirs").unwrap(); // another run finished first
        let err = f.commit().err().unwrap().to_string();
        assert!(err.contains("output exists"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"theirs");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial left");
    }

    #[test]
    fn folders_replace_atomically_and_stale_partial_folders_go() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("export");
        let build = |content: &[u8]| {
            let partial = partial_path(&dest).unwrap();
            std::fs::create_dir(&partial).unwrap();
            std::fs::write(partial.join("f"), content).unwrap();
            partial
        };
        let first = build(b"one");
        commit_dir(&first, &dest, false).unwrap();
        let second = build(b"two");
        let err = commit_dir(&second, &dest, false).err().unwrap().to_string();
        assert!(err.contains("output exists"), "{err}");
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"one");
        commit_dir(&second, &dest, true).unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["export"]);

        let stale = dir.path().join(partial_name("export", 0x7FFF_FFF0, PARTIAL_SUFFIX));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("x"), b"x").unwrap();
        assert_eq!(remove_stale_partials(&dest), vec![stale]);
    }

    #[test]
    fn a_folder_moved_aside_by_a_killed_run_is_renamed_back_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("export");
        // Killed between moving the old folder aside and moving the new one in.
        let aside = dir.path().join(partial_name("export", 0x7FFF_FFF0, ASIDE_SUFFIX));
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("f"), b"old").unwrap();
        assert_eq!(remove_stale_partials(&dest), Vec::<PathBuf>::new());
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"old");
        assert!(!aside.exists());
        // Killed after the new one moved in: the old one is kept aside, not deleted.
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("f"), b"older").unwrap();
        assert_eq!(remove_stale_partials(&dest), Vec::<PathBuf>::new());
        assert_eq!(std::fs::read(aside.join("f")).unwrap(), b"older");
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"old");
    }

    #[test]
    fn without_rename_exchange_the_old_folder_goes_and_nothing_is_left_aside() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("export");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("f"), b"old").unwrap();
        let partial = partial_path(&dest).unwrap();
        std::fs::create_dir_all(partial.join("sub")).unwrap();
        std::fs::write(partial.join("sub/f"), b"new").unwrap();
        let unsupported = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        commit_dir_with(&partial, &dest, true, unsupported).unwrap();
        assert_eq!(std::fs::read(dest.join("sub/f")).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["export"]);
    }

    #[test]
    fn a_locked_partial_is_left_alone_whatever_its_pid_says() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        // A live run in another PID namespace, or on another machine: its pid means nothing here.
        let theirs = dir.path().join(partial_name("out.bpk", 0x7FFF_FFF0, PARTIAL_SUFFIX));
        std::fs::write(&theirs, b"x").unwrap();
        let held = File::open(&theirs).unwrap();
        assert!(try_lock(&held));
        assert_eq!(remove_stale_partials(&dest), Vec::<PathBuf>::new());
        assert!(theirs.exists());
        drop(held);
        assert_eq!(remove_stale_partials(&dest), vec![theirs]);
        // An output being written holds the lock of its partial.
        let f = AtomicFile::create(&dest, 3, false).unwrap();
        assert!(!try_lock(&File::open(f.temp_path()).unwrap()));
    }

    #[test]
    fn destinations_are_checked_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("taken");
        std::fs::create_dir(&folder).unwrap();
        let err = AtomicFile::create(&folder, 1, true).err().unwrap().to_string();
        assert!(err.ends_with("taken: output is an existing folder"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = AtomicFile::create(&file.join("out.bpk"), 1, true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.ends_with("out.bpk: output folder is not a folder"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "nothing created");
        // A bare file name lies in the current folder.
        assert_eq!(parent_dir(Path::new("out.bpk")), Some(PathBuf::from(".")));
        assert_eq!(parent_dir(Path::new("/")), None);
    }

    /// No process has PID 0 (kill(0, 0) would ask about our own process group): a partial named
    /// so is a dead run's.
    #[test]
    fn a_partial_named_for_pid_0_is_a_dead_runs() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        let zero = dir.path().join(partial_name("out.bpk", 0, PARTIAL_SUFFIX));
        std::fs::write(&zero, b"x").unwrap();
        assert_eq!(remove_stale_partials(&dest), vec![zero]);
    }

    /// What the sweep finds under a dead run's partial name may be anything: a link is not
    /// followed (nor removed), and a FIFO is not waited on.
    #[test]
    fn the_sweep_neither_follows_links_nor_waits_on_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bpk");
        let target = dir.path().join("someone-elses");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join(partial_name("out.bpk", 0x7FFF_FFF0, PARTIAL_SUFFIX));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join(partial_name("out.bpk", 0x7FFF_FFF1, PARTIAL_SUFFIX));
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain syscall on a path this test owns.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (sent, received) = std::sync::mpsc::channel();
        let swept = dest.clone();
        std::thread::spawn(move || sent.send(remove_stale_partials(&swept)));
        let removed = match received.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(removed) => removed,
            Err(_) => {
                let _writer = OpenOptions::new().write(true).open(&fifo); // frees the sweep
                panic!("the sweep waited on a FIFO");
            }
        };
        assert!(!removed.contains(&link), "{removed:?}");
        assert!(link.symlink_metadata().is_ok() && target.exists());
    }

    #[test]
    fn outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dest = dir.path().join("out.bpk");
        // SAFETY: umask only sets the process's file creation mask.
        let previous = unsafe { libc::umask(0o002) };
        let f = AtomicFile::create(&dest, 3, false);
        unsafe { libc::umask(previous) };
        f.unwrap().commit().unwrap();
        assert_eq!(mode(&dest), 0o664);
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        AtomicFile::create(&dest, 3, true).unwrap().commit().unwrap();
        assert_eq!(mode(&dest), 0o600);
    }

    #[test]
    fn without_noreplace_or_hard_links_the_error_says_to_use_force() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"x").unwrap();
        let err = move_without_replacing(
            &from,
            &to,
            |_, _| Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            |_, _| Err(std::io::Error::from_raw_os_error(libc::EPERM)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("{}: ", to.display())) && err.contains("use --force"),
            "{err}"
        );
        assert!(!err.contains("not permitted"), "{err}");
    }
}
