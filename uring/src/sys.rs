//! The one plain syscall the ring needs that has no safe wrapper in the shape it takes.

use std::io;

/// This thread's affinity mask as libc's `cpu_set_t`, the type
/// `Submitter::register_iowq_aff` takes (rustix's `CpuSet`, which the proxy uses, does not
/// expose one).
pub(crate) fn affinity_set() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data, so all-zero is a valid (empty) set; the pointer and
    // size given to sched_getaffinity describe that local, which outlives the call.
    let (set, rc) = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (set, rc)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}
