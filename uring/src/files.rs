//! The ring's registered file table: connection sockets installed once, then named by
//! table index (`IOSQE_FIXED_FILE`) instead of by descriptor number.
//!
//! Why: an operation on a plain fd makes the kernel look the number up and take and drop a
//! reference on the file (`fget`/`fput`) each time; a table slot holds one reference for
//! the socket's whole stay. And an operation that names a slot can never reach a
//! descriptor number that was closed and reused: the slot keeps the file it was installed
//! with until it is released, and it is released only after the kernel is done with every
//! operation that named it.
//!
//! Ownership (the same rules as for the descriptors themselves, see `conns`):
//! - A slot is owned by the connection slot ([`Io`](crate::Io)) its socket is attached to
//!   ([`Ring::attach_file`](crate::Ring::attach_file)), at most [`FILES_PER_IO`] at once
//!   (the client leg and the origin leg). Operations of that `Io` on that fd use the slot;
//!   no other `Io` can name it (the mapping is per `Io`, and indices never leave `uring`).
//! - Each operation submitted on a slot sets its tag's bit in the slot's `ops` mask; its
//!   final completion clears it. A slot detached while a bit is set is *released late*:
//!   no new operation maps to it, and it goes back to the table only when the last bit
//!   clears. Until then its index is not handed out again, so an operation the kernel
//!   resolves late (a splice or a shutdown runs on an io-wq thread and looks its file up
//!   there) still finds the file it was submitted for.
//! - A socket leaving for the upstream pool takes its slot along as a [`FixedFile`]
//!   token (only with no operation in flight), and the connection that takes it from the
//!   pool attaches it again: no table update per pooled request.
//! - A released slot is emptied with an `IORING_OP_FILES_UPDATE` of -1 queued before any
//!   later install of the same index (the queue is FIFO and nothing is linked or
//!   drained), so whatever is still queued for the old file is issued first.
//!
//! Installs and removals are SQEs in the same batch as the operations around them (no
//! extra syscall), with `IOSQE_CQE_SKIP_SUCCESS`: only a failure posts a completion (worker
//! kind [`FILES_KIND`](crate::token::FILES_KIND)), which is counted.
//!
//! When the table is full, or the Io already holds two slots, a socket simply keeps using
//! its fd. The kernel must be 6.13 or later: before it, a removed file was put only once
//! every *older* table update was unreferenced, so one idle connection's long-lived
//! operation on a slot kept every socket closed after it from closing (no FIN).

use crate::conns::Io;
use crate::ring::{Backend, Op, Ring};
use crate::token::{encode_worker, OpTag, WorkerToken, FILES_KIND};
use io_uring::{opcode, squeue};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;

/// Table slots one connection slot may hold at once (its two legs).
pub const FILES_PER_IO: usize = 2;
/// The largest table a ring registers (per worker): 512 KiB of kernel memory, and indices
/// that fit a `u16` in every connection slot.
pub const MAX_FILES: u32 = u16::MAX as u32;
/// `index` of an empty [`FileUse`] (no table index reaches it).
const NONE: u16 = u16::MAX;
/// `fd` of a slot released late (no new operation maps to it).
const RELEASED: RawFd = -1;

/// Indices whose owner let go of them outside the ring (a dropped [`FixedFile`], a freed
/// connection slot): emptied and reused at the ring's next submission.
pub(crate) type Returns = Rc<RefCell<Vec<u32>>>;

/// One table slot held by a connection slot: the fd it was installed from and the tags
/// of its operations in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileUse {
    pub(crate) index: u16,
    pub(crate) fd: RawFd,
    pub(crate) ops: u16,
}

impl Default for FileUse {
    fn default() -> Self {
        FileUse { index: NONE, fd: RELEASED, ops: 0 }
    }
}

impl FileUse {
    pub(crate) fn is_empty(&self) -> bool {
        self.index == NONE
    }
}

/// A table slot holding a socket that is in no connection (parked in the upstream pool):
/// attach it again with the same socket, or drop it to give the slot back.
///
/// ```compile_fail,E0451
/// // Safe code cannot make up a slot it does not own...
/// let f = uring::FixedFile { ring: 1, index: 0, fd: 3, returns: Default::default() };
/// ```
/// ```compile_fail,E0599
/// // ...nor copy one to attach it to two connections.
/// fn twice(f: uring::FixedFile) -> (uring::FixedFile, uring::FixedFile) { (f.clone(), f) }
/// ```
#[derive(Debug)]
pub struct FixedFile {
    pub(crate) ring: u32,
    pub(crate) index: u32,
    /// The fd it was installed from: attaching it with another fd is refused.
    pub(crate) fd: RawFd,
    pub(crate) returns: Returns,
}

impl FixedFile {
    /// Gives the index up without returning it (it moves into a connection slot).
    pub(crate) fn into_index(mut self) -> u32 {
        std::mem::replace(&mut self.index, MOVED)
    }
}

/// `FixedFile::index` once the slot moved into a connection slot.
const MOVED: u32 = u32::MAX;

impl Drop for FixedFile {
    fn drop(&mut self) {
        // The socket is closing (or going elsewhere without its slot): empty the slot at the
        // ring's next submission, after anything already queued.
        if self.index != MOVED {
            self.returns.borrow_mut().push(self.index);
        }
    }
}

/// The ring's side of the table: which indices are free, and the value each install reads.
#[derive(Debug)]
pub(crate) struct FileTable {
    size: u32,
    /// Indices below this were handed out at least once (the rest are free).
    fresh_from: u32,
    /// Indices given back, reused first (most recently freed last).
    free: Vec<u32>,
    /// The fd each index was last installed from: the word an install SQE points the
    /// kernel at. Allocated zeroed (untouched pages cost nothing); never moves or shrinks.
    values: Box<[RawFd]>,
    /// Slots in use now (sockets the table holds).
    pub(crate) in_use: usize,
    /// False for a table the kernel does not hold (the in-memory ring): indices are handed
    /// out and tracked the same way, nothing is submitted.
    pub(crate) kernel: bool,
}

impl FileTable {
    pub(crate) fn new(size: u32, kernel: bool) -> FileTable {
        FileTable {
            size,
            fresh_from: 0,
            free: Vec::new(),
            values: vec![0; size as usize].into_boxed_slice(),
            in_use: 0,
            kernel,
        }
    }

    /// A free index, recording `fd` as the value its install reads.
    pub(crate) fn take(&mut self, fd: RawFd) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.fresh_from < self.size => {
                self.fresh_from += 1;
                self.fresh_from - 1
            }
            None => return None,
        };
        self.values[index as usize] = fd;
        self.in_use += 1;
        Some(index)
    }

    /// Where the kernel reads the fd an install of `index` puts in the table.
    pub(crate) fn value_ptr(&self, index: u32) -> *const RawFd {
        &self.values[index as usize]
    }

    /// Takes a released index back (its removal is queued by the caller first).
    pub(crate) fn give_back(&mut self, index: u32) {
        debug_assert!(index < self.fresh_from && !self.free.contains(&index), "index {index} freed twice");
        self.free.push(index);
        self.in_use -= 1;
    }
}

/// Builds an SQE on a [`File`]: `$f` is `types::Fd` or
/// `types::Fixed` (which sets `IOSQE_FIXED_FILE`, or `SPLICE_F_FD_IN_FIXED` for a
/// splice's input), the two types the opcode builders take.
macro_rules! on_file {
    ($file:expr, |$f:ident| $build:expr) => {
        match $file {
            crate::files::File::Fd(fd) => {
                let $f = io_uring::types::Fd(fd);
                $build
            }
            crate::files::File::Fixed(index) => {
                let $f = io_uring::types::Fixed(index);
                $build
            }
        }
    };
}

/// What an operation names a socket by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum File {
    Fd(RawFd),
    /// A slot of the ring's registered table.
    Fixed(u32),
}

impl File {
    pub(crate) fn index(self) -> Option<u32> {
        match self {
            File::Fixed(i) => Some(i),
            File::Fd(_) => None,
        }
    }
}

/// What a removal SQE points the kernel at: "no file".
static EMPTY_SLOT: RawFd = -1;

impl Ring {
    /// Registers a sparse file table of up to `slots` entries (at most [`MAX_FILES`]; a
    /// refused size is halved, down to 64) and returns how many it holds: 0 when the
    /// kernel offers none or is older than 6.13 (see the module header). An in-memory ring
    /// gets a table the kernel does not hold, so tests see the same slot bookkeeping.
    /// Once per ring, before any socket is attached.
    pub fn register_files(&mut self, slots: u32) -> u32 {
        assert!(self.files.is_none(), "the file table is registered once");
        let mut size = slots.min(MAX_FILES);
        let kernel = match &self.backend {
            Backend::Memory(_) => false,
            Backend::Kernel(ring) => {
                if !kernel_releases_promptly() || !ring.params().is_feature_skip_cqe_on_success() {
                    return 0;
                }
                loop {
                    if size == 0 {
                        return 0;
                    }
                    if ring.submitter().register_files_sparse(size).is_ok() {
                        break true;
                    }
                    // Refused (RLIMIT_NOFILE bounds a table): try half, down to 64.
                    size = if size > 64 { (size / 2).max(64) } else { 0 };
                }
            }
        };
        self.files = Some(FileTable::new(size, kernel));
        size
    }

    /// True when sockets can be attached to a registered file table.
    pub fn has_file_table(&self) -> bool {
        self.files.is_some()
    }

    /// Lets operations of `io` on `fd` name a table slot instead of the fd: `kept`'s (the
    /// socket comes back from the upstream pool with its slot), else a free one, installed
    /// by an SQE queued now, ahead of those operations. The socket must be owned by the
    /// connection and stay open until it is detached or the slot freed. False when the fd
    /// keeps being used as such (no table, the table full, the slot holding two already).
    ///
    /// An earlier attachment of the same fd number in this slot is let go first: that
    /// socket was closed, and its number now names this one.
    pub fn attach_file(&mut self, io: &mut Io, fd: RawFd, kept: Option<FixedFile>) -> bool {
        assert_eq!(io.ring(), self.id(), "a slot of an arena not bound to this ring");
        drop(self.detach_file(io, fd));
        self.take_returns();
        if self.files.is_none() {
            return false;
        }
        let Some(entry) = io.files.iter_mut().find(|f| f.is_empty()) else { return false };
        let index = match kept {
            // A token made by this ring for this very fd: the table already holds the socket.
            Some(k) if k.ring == self.id() && k.fd == fd => k.into_index(),
            // Another socket's slot (or another ring's): it goes back; install afresh.
            other => {
                drop(other);
                let Some(table) = self.files.as_mut() else { return false };
                let Some(index) = table.take(fd) else { return false };
                if table.kernel {
                    let update = opcode::FilesUpdate::new(table.value_ptr(index), 1).offset(index as i32).build();
                    self.push_table_update(update, index);
                }
                index
            }
        };
        // index < the table's size <= MAX_FILES: it fits, and is never NONE.
        *entry = FileUse { index: index as u16, fd, ops: 0 };
        true
    }

    /// `fd` leaves `io` (to the upstream pool, or to be closed). Returns its table slot as
    /// a token to keep with the socket when no operation of `io` names the slot; otherwise
    /// the slot is released once the last one completes, and nothing new maps to it.
    /// Dropping the token gives the slot back (emptied at the next submission).
    pub fn detach_file(&mut self, io: &mut Io, fd: RawFd) -> Option<FixedFile> {
        let entry = io.files.iter_mut().find(|f| !f.is_empty() && f.fd == fd && fd != RELEASED)?;
        if entry.ops != 0 {
            entry.fd = RELEASED;
            return None;
        }
        let index = std::mem::take(entry).index as u32;
        Some(FixedFile { ring: self.id(), index, fd, returns: self.returns.clone() })
    }

    /// What the op's sockets are named by: its fd (or `fd_in`), and a splice's `fd_out`.
    /// Each socket attached to `io` uses its slot, and the slot records `tag` as in flight
    /// (a second op of the same tag on the same slot keeps the fd, so one bit per tag
    /// suffices). Cancels always go by fd.
    pub(crate) fn files_of(&mut self, io: &mut Io, tag: OpTag, op: &Op) -> (File, File) {
        let (a, b) = match *op {
            Op::Recv { fd, .. }
            | Op::Send { fd, .. }
            | Op::PollIn { fd }
            | Op::PollOut { fd }
            | Op::Connect { fd, .. }
            | Op::ShutdownWrite { fd }
            | Op::RecvSelect { fd }
            | Op::RecvMulti { fd } => (fd, None),
            Op::Splice { fd_in, fd_out, .. } => (fd_in, Some(fd_out)),
            Op::CancelFd { fd } => return (File::Fd(fd), File::Fd(-1)),
            // Names the slot's operation by its user_data, not a socket.
            Op::Cancel { .. } => return (File::Fd(-1), File::Fd(-1)),
        };
        let first = file_of(io, tag, a);
        let second = b.map_or(File::Fd(-1), |fd| file_of(io, tag, fd));
        (first, second)
    }

    /// An operation of `io` with `tag` completed for good: its slot (if it used one) is no
    /// longer in the kernel's hands, and a slot released meanwhile goes back now.
    pub(crate) fn op_done(&mut self, io: &mut Io, tag: OpTag) {
        let bit = 1u16 << tag.0;
        for f in io.files.iter_mut() {
            if f.ops & bit == 0 {
                continue;
            }
            f.ops &= !bit;
            if f.ops == 0 && f.fd == RELEASED {
                let index = std::mem::take(f).index as u32;
                self.release_index(index);
            }
        }
    }

    /// Empties and frees the slots let go of outside the ring.
    pub(crate) fn take_returns(&mut self) {
        if self.returns.borrow().is_empty() {
            return;
        }
        let indices = std::mem::take(&mut *self.returns.borrow_mut());
        for index in indices {
            self.release_index(index);
        }
    }

    /// Queues the removal of `index`'s file and makes the index free: an install of it
    /// can only be queued after this removal, and so after everything queued before.
    fn release_index(&mut self, index: u32) {
        let Some(table) = self.files.as_mut() else { return };
        table.give_back(index);
        if table.kernel {
            let entry = opcode::FilesUpdate::new(&EMPTY_SLOT, 1).offset(index as i32).build();
            self.push_table_update(entry, index);
        }
    }

    /// Queues a table update that posts a completion only if it fails.
    fn push_table_update(&mut self, entry: squeue::Entry, index: u32) {
        let token = WorkerToken { kind: FILES_KIND, index };
        self.push(entry.flags(squeue::Flags::SKIP_SUCCESS).user_data(encode_worker(token)));
    }

    /// A table update failed (only failures complete): counted. The operations that named
    /// the slot fail with EBADF, on that one connection.
    pub(crate) fn table_update_failed(&mut self) {
        self.stats.file_update_errors += 1;
    }
}

/// The table slot `fd` uses in `io`, recording `tag` in flight on it; else the fd.
fn file_of(io: &mut Io, tag: OpTag, fd: RawFd) -> File {
    let bit = 1u16 << tag.0;
    match io.files.iter_mut().find(|f| f.fd == fd && fd != RELEASED && !f.is_empty()) {
        Some(f) if f.ops & bit == 0 => {
            f.ops |= bit;
            File::Fixed(f.index as u32)
        }
        _ => File::Fd(fd),
    }
}

/// Whether the running kernel puts a removed table file as soon as nothing uses it
/// (6.13 and later: one reference-counted node per slot).
pub(crate) fn kernel_releases_promptly() -> bool {
    crate::kernel::at_least(6, 13)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_handed_out_once_and_reused_after_being_given_back() {
        let mut t = FileTable::new(3, false);
        let (a, b, c) = (t.take(10).unwrap(), t.take(11).unwrap(), t.take(12).unwrap());
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(t.take(13), None, "a full table hands out nothing");
        assert_eq!(t.in_use, 3);
        t.give_back(b);
        assert_eq!(t.take(14), Some(b), "a given-back index is reused");
        assert_eq!(t.values[b as usize], 14, "what the index's install reads");
        assert_eq!(t.in_use, 3);
    }
}
