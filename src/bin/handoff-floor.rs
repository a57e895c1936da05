//! `handoff-floor`: the trivial next generation that `benches/restart_latency.rs` execs to
//! measure the floor under a restart. It is started the way a real next generation is (a
//! listening socket at fd 3, `LISTEN_FDS=1`, a readiness pipe at fd 4, `HANDOFF_READY_FD=4`),
//! writes one readiness byte and exits, so fork + exec + one readiness byte is all it costs.
//! It exists for the bench only.
use std::io::Write;
use std::os::fd::FromRawFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Refuse to claim fd 4 unless whoever started us says it put the readiness pipe there.
    if std::env::var_os("HANDOFF_READY_FD").as_deref() != Some("4".as_ref()) {
        eprintln!("handoff-floor: run by benches/restart_latency.rs only (HANDOFF_READY_FD=4)");
        return ExitCode::from(2);
    }
    // SAFETY: HANDOFF_READY_FD=4 says the launcher placed the write end of its readiness pipe
    // at fd 4 and hands it to this process; nothing else here owns or closes it.
    let mut ready = unsafe { std::fs::File::from_raw_fd(4) };
    match ready.write_all(b"\n") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-floor: writing the readiness byte to fd 4: {e}");
            ExitCode::FAILURE
        }
    }
}
