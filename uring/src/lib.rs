//! The event-loop layer of Sluice: everything that touches io_uring and raw memory.
//!
//! - [`ring`]: [`Uring`] (a ring and the slab pool registered with it), ring setup
//!   (SINGLE_ISSUER / COOP_TASKRUN / TASKRUN_FLAG / DEFER_TASKRUN when offered), typed
//!   operations, a backlog so a full submission queue never drops an operation, the opaque
//!   [`Completion`]s and one-use [`ProvidedBuf`] tokens it hands back.
//! - [`token`]: the `user_data` encoding: connection pointer + generation + op tag.
//! - [`slab`]: the per-worker pool of registered 64 KiB buffers and the ownership rules
//!   that keep a buffer still while the kernel writes into it.
//! - [`conns`]: the connection arena, bound to one ring. A connection is
//!   `Box::into_raw`'d on insert; each completion of that ring is turned back into `&mut`
//!   of it; it is freed exactly once, when it is closing and no operation of it is in
//!   flight, and a closing slot is never handed out again.
//! - [`files`]: the registered file table: sockets installed once and named by slot
//!   (`IOSQE_FIXED_FILE`), each slot owned by one connection slot (or, parked in the
//!   upstream pool, by a [`FixedFile`] token) and reused only after the kernel is done with
//!   every operation that named it.
//! - [`wake`]: the worker's ready queue and a `std::task::Waker` per slot, so one slot
//!   can wake another and futures (the `h2` crate's) are polled with no runtime.
//! - [`sim`]: the in-memory backend of a ring, for driving state machines in tests with
//!   injected completions and no kernel.
//! - [`pipe`]: kernel pipes for splicing a tunnel's bytes without copying them.
//! - [`kernel`]: the running kernel's version, for the features that depend on it.
//! - `sys`: this thread's affinity mask in the form io_uring's worker-pool registration
//!   takes.
//!
//! Every `unsafe` block of the project lives in this crate, each with a `SAFETY:` comment
//! naming the invariant it relies on.

mod bufring;
pub mod conns;
#[macro_use]
pub mod files;
pub mod kernel;
pub mod pipe;
mod recv_limit;
pub mod ring;
pub mod sim;
pub mod slab;
mod sys;
pub mod token;
pub mod wake;

pub use conns::{ConnId, Conns, Event, Io, Slot};
pub use files::FixedFile;
pub use pipe::Pipe;
pub use recv_limit::MULTISHOT_LIMIT;
pub use ring::{Completion, Op, ProvidedBuf, Ring, RingStats, Uring};
pub use sim::{Sim, SimOp};
pub use slab::{Slab, SlabPool, SLAB_SIZE};
pub use token::{OpTag, WorkerToken};
pub use wake::ReadyQueue;
