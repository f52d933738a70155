//! Fault injection for the study index, for the reliability tests: a full disk while SQLite
//! writes. With `KDLAB_FAILPOINT_ENOSPC` set, the index is opened through a thin SQLite VFS that
//! wraps the default one and, for files whose name contains the variable's value (e.g.
//! `study.sqlite-wal`), answers a write as SQLite's own Unix VFS answers a write that hit ENOSPC:
//! `SQLITE_FULL`. The first `KDLAB_FAILPOINT_ENOSPC_AFTER_WRITES` such writes (default 0) in the
//! process succeed; every later one fails, as on a disk that stays full. Everything else —
//! reads, locks, syncs, the WAL index — is the default VFS's. Unset, the index opens as usual.
use rusqlite::{ffi, Connection, OpenFlags};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const VFS_NAME: &CStr = c"kdlab-failpoint";

/// Opens the database at `path`, through the failpoint VFS when the failpoint is set.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    if pattern().is_none() || path == Path::new(":memory:") {
        return Connection::open(path);
    }
    register();
    Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME)
}

fn pattern() -> Option<&'static str> {
    static P: OnceLock<Option<String>> = OnceLock::new();
    P.get_or_init(|| std::env::var("KDLAB_FAILPOINT_ENOSPC").ok().filter(|p| !p.is_empty())).as_deref()
}

fn writes_allowed() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("KDLAB_FAILPOINT_ENOSPC_AFTER_WRITES").ok().and_then(|n| n.parse().ok()).unwrap_or(0)
    })
}

static WRITES: AtomicUsize = AtomicUsize::new(0);

/// The default VFS and the I/O methods of its files, and this VFS's copies of them (raw pointers
/// kept as addresses: they live as long as the process).
struct Vfs {
    real: usize,
    real_methods: OnceLock<usize>,
    methods: OnceLock<usize>,
}

static VFS: OnceLock<Vfs> = OnceLock::new();

fn register() {
    VFS.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which lives as long as the
        // process; the copy registered here is leaked for the same lifetime.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!real.is_null(), "SQLite has no default VFS");
            let mut ours = *real;
            ours.zName = VFS_NAME.as_ptr();
            ours.pNext = std::ptr::null_mut();
            ours.xOpen = Some(x_open);
            ffi::sqlite3_vfs_register(Box::into_raw(Box::new(ours)), 0);
            Vfs { real: real as usize, real_methods: OnceLock::new(), methods: OnceLock::new() }
        }
    });
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let vfs = VFS.get().expect("registered before use");
    let real = vfs.real as *mut ffi::sqlite3_vfs;
    // SAFETY: the default VFS's xOpen, called with the arguments SQLite gave this one (the file
    // structure is the size the default VFS asked for: this VFS copied its szOsFile).
    let rc = unsafe { ((*real).xOpen.expect("xOpen"))(real, name, file, flags, out_flags) };
    if rc != ffi::SQLITE_OK || name.is_null() || unsafe { (*file).pMethods.is_null() } {
        return rc;
    }
    // SAFETY: a NUL-terminated name from SQLite.
    let name = unsafe { CStr::from_ptr(name as *const c_char) }.to_string_lossy();
    if pattern().is_some_and(|p| name.contains(p)) {
        // SAFETY: the file was opened by the default VFS, so pMethods points at its (static) methods.
        unsafe {
            let methods = (*file).pMethods;
            let first = *vfs.real_methods.get_or_init(|| methods as usize);
            if first == methods as usize {
                let ours = *vfs.methods.get_or_init(|| {
                    let mut m = *methods;
                    m.xWrite = Some(x_write);
                    Box::into_raw(Box::new(m)) as usize
                });
                (*file).pMethods = ours as *const ffi::sqlite3_io_methods;
            }
        }
    }
    rc
}

unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amount: c_int, offset: i64) -> c_int {
    if WRITES.fetch_add(1, Ordering::SeqCst) >= writes_allowed() {
        return ffi::SQLITE_FULL;
    }
    let real =
        *VFS.get().expect("registered").real_methods.get().expect("set on open") as *const ffi::sqlite3_io_methods;
    // SAFETY: the default VFS's own write on a file it opened.
    unsafe { ((*real).xWrite.expect("xWrite"))(file, buf, amount, offset) }
}
