fn main() {
    // Die quietly when a reader closes the pipe (`kdlab models | head`), like other CLI tools.
    // SAFETY: resetting a signal disposition to its default at start-up, before any threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    kdlab::util::malloc::keep_freed_memory();
    if let Err(e) = kdlab::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
