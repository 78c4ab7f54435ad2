//! Scheduling hints for the store's own threads, so that on a busy host (every core
//! running request handlers and nats-server) bulk work waits for the request path.
//! Hints only: a kernel or a sandbox that refuses them leaves the thread as it was.

/// A background thread (the store's flusher): nice 10, so it takes what the request
/// path leaves. On Linux the nice value is per thread.
pub(crate) fn background() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority on the calling thread's id.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a store thread's priority");
        }
    }
}
