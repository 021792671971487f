//! The file system as the core meets it: inputs opened without blocking (regular files only), the
//! stamp that tells whether a file changed while it was read, the locks that mark a partial output
//! as alive, and the raw syscalls of the copy engine.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// What a file is, as far as telling that it changed goes: taken when a shard is opened, before
/// any byte of it is read, and compared again after the last one (as GNU tar does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// What differs from `earlier`, in words ("size 10 -> 12 bytes, ..."), or None.
    pub fn changes_since(&self, earlier: &FileStamp) -> Option<String> {
        let mut changes = Vec::new();
        if self.size != earlier.size {
            changes.push(format!("size {} -> {} bytes", earlier.size, self.size));
        }
        if self.mtime_ns != earlier.mtime_ns {
            changes.push(format!(
                "mtime {} -> {}",
                seconds(earlier.mtime_ns),
                seconds(self.mtime_ns)
            ));
        }
        if (self.dev, self.ino) != (earlier.dev, earlier.ino) {
            changes.push(format!(
                "inode {} -> {} (another file now has its name)",
                earlier.ino, self.ino
            ));
        }
        (!changes.is_empty()).then(|| changes.join(", "))
    }
}

fn seconds(ns: i128) -> String {
    format!("{}.{:09}", ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// What an input is, for its error lines.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    Shard,
    Pack,
    /// A resumable stream's journal (see `journal`), beside the outputs.
    Journal,
}

impl Input {
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Input::Shard => ("shard", "cannot open shard", "cannot stat shard"),
            Input::Pack => ("pack", "cannot open pack", "cannot stat pack"),
            Input::Journal => ("journal", "cannot open journal", "cannot stat journal"),
        }
    }
}

/// Opens an input for reading without ever blocking: a FIFO (or a link to one) would wait in
/// open() for a writer forever, and the retry on EINTR would keep even signals from ending it. So
/// the open is non-blocking, and anything but a regular file is refused, naming what it is.
pub fn open_regular(path: &Path, input: Input) -> Result<File> {
    let (what, cannot_open, cannot_stat) = input.words();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, cannot_open, e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::io(path, cannot_stat, e))?
        .file_type();
    let name = if kind.is_file() {
        return Ok(file);
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    let refused = Error::source(path, format!("{what} is {name}, not a regular file"));
    Err(match input {
        Input::Shard | Input::Journal => refused,
        Input::Pack => refused.of_pack(),
    })
}

/// Takes `file`'s exclusive lock without waiting; false when another open file holds it. Every
/// partial is locked while it is written (the lock goes with the descriptor), so that the sweeper
/// of another run, which cannot tell a live process in another PID namespace or on another
/// machine sharing the folder from a dead one, leaves it alone.
pub fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return true;
    }
    // Filesystems without locks (ENOLCK, EINVAL): nothing can hold one, so nothing is locked out.
    std::io::Error::last_os_error().raw_os_error() != Some(libc::EWOULDBLOCK)
}

/// Opens a file or folder for its lock only, without following a link or blocking on a FIFO.
pub(crate) fn open_for_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// `sync_file_range` over one window; best effort (errors are left for the final fsync).
pub(crate) fn sync_range(fd: std::os::fd::RawFd, offset: u64, len: u64, flags: libc::c_uint) {
    // SAFETY: a plain syscall on an open descriptor.
    unsafe {
        libc::sync_file_range(fd, offset as libc::off64_t, len as libc::off64_t, flags);
    }
}

pub(crate) fn kernel_copy_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EBADF | libc::EPERM)
    )
}

pub(crate) fn copy_file_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<u64> {
    let mut off_in = src_off as libc::loff_t;
    let mut off_out = dst_off as libc::loff_t;
    loop {
        // The raw syscall: glibc only wraps it from 2.27 on, and wheels target glibc 2.17.
        // SAFETY: valid descriptors and offset out-parameters; the kernel bounds-checks the rest.
        let n = unsafe {
            libc::syscall(
                libc::SYS_copy_file_range,
                src.as_raw_fd(),
                &mut off_in as *mut libc::loff_t,
                dst.as_raw_fd(),
                &mut off_out as *mut libc::loff_t,
                len as usize,
                0u32,
            )
        };
        if n >= 0 {
            return Ok(n as u64);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_refused_as_the_input_it_was_opened_as() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_regular(dir.path(), Input::Pack).err().unwrap();
        assert!(matches!(err, Error::PackFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains("pack is a directory, not a regular file"),
            "{err}"
        );
        let err = open_regular(dir.path(), Input::Shard).err().unwrap();
        assert!(matches!(err, Error::Source { .. }), "{err:?}");
        assert!(
            err.to_string().contains("shard is a directory, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_stamp_holds_the_files_own_figures_and_names_each_change_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        file.set_modified(when).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let stamp = FileStamp::of(&meta);
        assert_eq!(stamp.size, 10);
        assert_eq!(stamp.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!((stamp.dev, stamp.ino), (meta.dev(), meta.ino()));
        assert_eq!(stamp.changes_since(&stamp), None);

        let size = FileStamp { size: 12, ..stamp };
        assert_eq!(size.changes_since(&stamp).as_deref(), Some("size 10 -> 12 bytes"));
        // Before 1970 the seconds go down and the nanoseconds stay positive, as `date` prints them.
        let mtime = FileStamp {
            mtime_ns: -1_500_000_000,
            ..stamp
        };
        assert_eq!(
            mtime.changes_since(&stamp).as_deref(),
            Some("mtime 1700000000.123456789 -> -2.500000000")
        );
        let inode = FileStamp {
            ino: stamp.ino + 1,
            ..stamp
        };
        let moved = FileStamp {
            dev: stamp.dev + 1,
            ..stamp
        };
        let expected = format!(
            "inode {} -> {} (another file now has its name)",
            stamp.ino,
            stamp.ino + 1
        );
        assert_eq!(inode.changes_since(&stamp), Some(expected));
        assert!(moved.changes_since(&stamp).unwrap().starts_with("inode "));
        let all = FileStamp {
            size: 0,
            mtime_ns: 0,
            dev: stamp.dev,
            ino: stamp.ino + 1,
        };
        assert_eq!(
            all.changes_since(&stamp).unwrap(),
            format!(
                "size 10 -> 0 bytes, mtime 1700000000.123456789 -> 0.000000000, inode {} -> {} \
                 (another file now has its name)",
                stamp.ino,
                stamp.ino + 1
            )
        );
    }
}
