//! Opening a file below a root directory without following a symbolic link on the way.
//!
//! In: the root as an open directory (opened once, at start-up), a path relative to it and
//! the open flags. Out: the open file, or an error. A symbolic link anywhere on the path
//! (the last component included), an absolute path, or `..` leaving the root is refused
//! with ELOOP or EXDEV, which [`is_link_refused`] recognises; a missing component is
//! ENOENT as usual.
//!
//! - Linux 5.6 and later: one `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
//!   The kernel resolves the whole path under these rules, so nothing checked can change
//!   between a check and the open.
//! - Older kernels (openat2 answers ENOSYS; noted once on stderr): one `openat` per
//!   directory component, each relative to the descriptor of the one before, with
//!   `O_NOFOLLOW | O_DIRECTORY`, then the last component with `O_NOFOLLOW`. Every step
//!   opens exactly what it looked at, so this is race-free too. It refuses every `..`
//!   (openat2 allows one that stays below the root; stored paths never hold one).
//!
//! Neither variant stops at a mount point below the root: a mount is the operator's doing,
//! a link may be anybody's who can write into the tree.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once openat2 answered ENOSYS: every later open takes the per-component path.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens `relative` below `root` without following any symbolic link (see the module
/// docs). `flags` are the access mode and status flags; `O_CLOEXEC` and `O_NOFOLLOW` are
/// always added. `O_CREAT` and `O_TMPFILE` are not supported (no mode is passed).
pub fn open_beneath(root: &File, relative: &Path, flags: i32) -> io::Result<File> {
    // O_TMPFILE includes the O_DIRECTORY bit: only all of its bits mean a tmpfile.
    debug_assert!(
        flags & libc::O_CREAT == 0 && flags & libc::O_TMPFILE != libc::O_TMPFILE,
        "no mode is passed"
    );
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        match openat2_beneath(root, relative, flags) {
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => note_openat2_missing(),
            result => return result,
        }
    }
    open_by_components(root, relative, flags)
}

/// `lstat` of `relative` below `root` without following a link on the way (a link as the
/// last component is refused like one on the way).
pub fn metadata_beneath(root: &File, relative: &Path) -> io::Result<std::fs::Metadata> {
    open_beneath(root, relative, libc::O_PATH)?.metadata()
}

/// Removes the file `relative` below `root`, reaching its directory without following a
/// link: a link planted on the way makes this fail, never unlink a file elsewhere.
pub fn remove_beneath(root: &File, relative: &Path) -> io::Result<()> {
    let leaf = relative
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let leaf = CString::new(leaf.as_bytes())?;
    let parent = match relative.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => Some(open_beneath(
            root,
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
        )?),
        _ => None,
    };
    let dir_fd = parent.as_ref().unwrap_or(root).as_raw_fd();
    // SAFETY: `dir_fd` is an open directory descriptor owned by `parent` or `root`, both
    // alive across the call; `leaf` is a NUL-terminated name without a slash.
    let rc = unsafe { libc::unlinkat(dir_fd, leaf.as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when the open was refused because the path goes through a symbolic link or
/// leaves the root (ELOOP or EXDEV), as opposed to a missing file or an io error.
pub fn is_link_refused(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ELOOP | libc::EXDEV))
}

fn note_openat2_missing() {
    if !OPENAT2_MISSING.swap(true, Ordering::Relaxed) {
        crate::log_line!(
            "rhinobox: warning: openat2(2) is not available (Linux older than 5.6?): stored \
             files are opened one path component at a time with O_NOFOLLOW"
        );
    }
}

fn openat2_beneath(root: &File, relative: &Path, flags: i32) -> io::Result<File> {
    let path = CString::new(relative.as_os_str().as_bytes())?;
    let flags = u64::try_from(flags | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` (linux/openat2.h) is three u64 fields, so all zeros is a valid
    // value: no flags, mode 0, no resolve rules. The kernel also requires every field it
    // knows and we do not set to be zero, which zeroing guarantees.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `path` is NUL-terminated and `how` is a valid `open_how`; both outlive the
    // call, and the size passed is exactly that of `how`, which the kernel only reads.
    // `root` is an open descriptor borrowed for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).expect("the kernel returns descriptors that fit in an int");
    // SAFETY: `fd` was just returned by openat2; nothing else owns or closes it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The fallback for kernels without openat2: one `openat` per component, never following
/// a link, never going up.
fn open_by_components(root: &File, relative: &Path, flags: i32) -> io::Result<File> {
    // The directory opened last (None: the root) and the name not yet opened.
    let mut directory: Option<File> = None;
    let mut pending: Option<&OsStr> = None;
    for component in relative.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            // What openat2 answers for a path that would leave the root.
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        };
        if let Some(directory_name) = pending.replace(name) {
            let parent = directory.as_ref().unwrap_or(root);
            directory = Some(open_directory(parent, directory_name)?);
        }
    }
    let last = pending.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    let parent = directory.as_ref().unwrap_or(root);
    openat(parent, last, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC)
}

/// Opens one directory component. With `O_DIRECTORY`, Linux answers ENOTDIR rather than
/// ELOOP for a link, so a link is told apart by an `lstat` of that name.
fn open_directory(parent: &File, name: &OsStr) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    match openat(parent, name, flags) {
        Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) && is_link_at(parent, name) => {
            Err(io::Error::from_raw_os_error(libc::ELOOP))
        }
        result => result,
    }
}

fn openat(parent: &File, name: &OsStr, flags: i32) -> io::Result<File> {
    let name = CString::new(name.as_bytes())?;
    // SAFETY: `name` is NUL-terminated and outlives the call; `parent` is an open
    // descriptor borrowed for the call. No O_CREAT, so the variadic mode is not read.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat; nothing else owns or closes it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn is_link_at(parent: &File, name: &OsStr) -> bool {
    let Ok(name) = CString::new(name.as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated, `stat` is writable memory of the right type, both
    // outlive the call; `parent` is an open descriptor borrowed for the call.
    let rc = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            stat.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatat returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    stat.st_mode & libc::S_IFMT == libc::S_IFLNK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    type Open = fn(&File, &Path, i32) -> io::Result<File>;

    /// `O_DIRECTORY` is a bit of `O_TMPFILE`: opening a directory beneath the root must
    /// not trip the no-mode check (it did, in debug builds, for the hostile suite).
    #[test]
    fn a_directory_opens_beneath_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let root = File::open(dir.path()).unwrap();
        let opened = open_beneath(&root, Path::new("sub"), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(opened.unwrap().metadata().unwrap().is_dir());
    }

    /// Both variants: the one this kernel uses and the fallback for kernels without
    /// openat2 (on such a kernel the first is the fallback as well).
    const VARIANTS: [(&str, Open); 2] = [
        ("open_beneath", open_beneath),
        ("open_by_components", open_by_components),
    ];

    /// A temp dir holding `root/a/b/file.txt` and `outside/file.txt`; returns it and the
    /// root opened as a directory.
    fn tree() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/b")).unwrap();
        std::fs::write(dir.path().join("root/a/b/file.txt"), "inside").unwrap();
        std::fs::write(dir.path().join("outside/file.txt"), "outside").unwrap();
        std::fs::write(dir.path().join("outside/b/file.txt"), "outside").unwrap();
        let root = File::open(dir.path().join("root")).unwrap();
        (dir, root)
    }

    fn assert_refused(result: io::Result<File>, what: &str) {
        match result {
            Ok(_) => panic!("{what}: opened"),
            Err(error) => assert!(is_link_refused(&error), "{what}: {error}"),
        }
    }

    /// A plain file below the root opens and reads; a missing one is ENOENT, not a link.
    #[test]
    fn plain_file_opens() {
        let (_dir, root) = tree();
        for (variant, open) in VARIANTS {
            let mut file = open(&root, Path::new("a/b/file.txt"), libc::O_RDONLY).unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            assert_eq!(text, "inside", "{variant}");
            let missing = open(&root, Path::new("a/b/none.txt"), libc::O_RDONLY).unwrap_err();
            assert_eq!(missing.raw_os_error(), Some(libc::ENOENT), "{variant}");
            assert!(!is_link_refused(&missing), "{variant}");
        }
    }

    /// A directory on the path replaced by a link (to a tree with the same relative name)
    /// is refused, whether it is the first component or a deeper one.
    #[test]
    fn symlinked_directory_is_refused() {
        let (dir, root) = tree();
        std::fs::remove_dir_all(dir.path().join("root/a/b")).unwrap();
        symlink(dir.path().join("outside/b"), dir.path().join("root/a/b")).unwrap();
        symlink(dir.path().join("root/a"), dir.path().join("root/c")).unwrap();
        for (variant, open) in VARIANTS {
            let deep = open(&root, Path::new("a/b/file.txt"), libc::O_RDONLY);
            assert_refused(deep, &format!("{variant}: a/b linked"));
            let first = open(&root, Path::new("c/b/file.txt"), libc::O_RDONLY);
            assert_refused(first, &format!("{variant}: c linked"));
        }
    }

    /// The final component replaced by a link to a file outside, or to one inside, is
    /// refused.
    #[test]
    fn symlinked_final_file_is_refused() {
        let (dir, root) = tree();
        let root_path = dir.path().join("root");
        symlink(
            dir.path().join("outside/file.txt"),
            root_path.join("a/out.txt"),
        )
        .unwrap();
        symlink("b/file.txt", root_path.join("a/in.txt")).unwrap();
        for (variant, open) in VARIANTS {
            for name in ["a/out.txt", "a/in.txt"] {
                let result = open(&root, Path::new(name), libc::O_RDONLY);
                assert_refused(result, &format!("{variant}: {name}"));
            }
        }
    }

    /// `..` that leaves the root, and an absolute path, are refused.
    #[test]
    fn escaping_the_root_is_refused() {
        let (dir, root) = tree();
        let absolute = dir.path().join("outside/file.txt");
        for (variant, open) in VARIANTS {
            for path in [
                Path::new("../outside/file.txt"),
                Path::new("a/../../outside/file.txt"),
                absolute.as_path(),
            ] {
                let result = open(&root, path, libc::O_RDONLY);
                assert_refused(result, &format!("{variant}: {}", path.display()));
            }
        }
    }
}
