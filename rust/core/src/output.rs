//! Atomic output: all bytes go to a hidden sibling temp file that is renamed over the destination
//! only once it is complete and on disk. Until then the destination is exactly as it was.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const PARTIAL_SUFFIX: &str = ".heartmula-partial";

/// The temp file's name: `.<name>.<pid>.heartmula-partial`, so a later run can tell whose it was.
fn partial_name(file_name: &str, pid: u32) -> String {
    format!(".{file_name}.{pid}{PARTIAL_SUFFIX}")
}

/// Removes temp files that earlier runs for the same destination left behind when they were killed
/// (their process no longer exists). Returns the paths removed.
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
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(PARTIAL_SUFFIX))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = pid > 0 && {
            // SAFETY: signal 0 only checks whether the process exists.
            let rc = unsafe { libc::kill(pid, 0) };
            rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        };
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
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
    let c =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
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
        return Err(Error::pack(
            what,
            format!("not enough free space: {size} bytes are needed, {available} are free"),
        ));
    }
    Ok(())
}

/// A file being written beside its destination. Dropped without `commit`, it deletes itself.
pub struct AtomicFile {
    pub file: File,
    temp_path: PathBuf,
    destination: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Checks the destination can be written and creates the temp file, `size` bytes long.
    pub fn create(destination: &Path, size: u64, overwrite: bool) -> Result<AtomicFile> {
        let dir = parent_dir(destination).ok_or_else(|| Error::pack(destination, "output path has no file name"))?;
        let file_name = destination
            .file_name()
            .ok_or_else(|| Error::pack(destination, "output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::pack(destination, "output folder is not a folder")),
            Err(_) => return Err(Error::pack(destination, "output folder does not exist")),
        }
        match std::fs::symlink_metadata(destination) {
            Ok(m) if m.is_dir() => return Err(Error::pack(destination, "output is an existing folder")),
            Ok(_) if !overwrite => return Err(Error::pack(destination, "output exists (use --force to replace it)")),
            _ => {}
        }
        ensure_free_space(destination, &dir, size)?;
        remove_stale_partials(destination);
        let temp_path = dir.join(partial_name(&file_name, std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp_path)
            .map_err(|e| Error::io(&temp_path, "cannot create temp file", e))?;
        let atomic = AtomicFile {
            file,
            temp_path,
            destination: destination.to_path_buf(),
            committed: false,
        };
        atomic.reserve(size)?;
        Ok(atomic)
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
            libc::ENOSPC | libc::EFBIG => Err(Error::pack(
                &self.destination,
                format!(
                    "not enough space for the {size}-byte pack: {}",
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
            .map_err(|e| Error::io(&self.destination, "cannot write pack", e))
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// fsync the data, rename over the destination, fsync the folder.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.destination, "cannot flush pack to disk", e))?;
        std::fs::rename(&self.temp_path, &self.destination)
            .map_err(|e| Error::io(&self.destination, "cannot move pack into place", e))?;
        self.committed = true;
        if let Some(dir) = parent_dir(&self.destination) {
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all(); // best effort: some filesystems refuse fsync on folders
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let stale = dir.path().join(partial_name("out.bpk", 0x7FFF_FFF0));
        let live = dir.path().join(partial_name("out.bpk", std::process::id()));
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
}
