//! A host process that reaps children behind the library's back: `SIGCHLD` ignored (the kernel
//! reaps every child that sends it), or a thread that waits for any child. A new generation
//! that dies in the rollback window must still give the service back. A test binary of its
//! own: ignoring `SIGCHLD` is process-wide.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use handoff::{Builder, ErrorKind, Event, Phase, Upgrader};

static FORK: Mutex<()> = Mutex::new(());

const PATIENCE: Duration = Duration::from_secs(20);

/// An upgrader whose next generation reports ready, then exits 5 a moment later, with a long
/// window; `on_ready` is called with the child's pid once it reported ready, before the window
/// opens, on the upgrading thread.
fn upgrader(on_ready: impl Fn(u32) + Send + Sync + 'static) -> Upgrader {
    let up = Builder::new()
        .ready_timeout(PATIENCE)
        .rollback_window(PATIENCE)
        .program(
            "/bin/sh",
            [
                "sh",
                "-c",
                r#"printf 'ready\n' >&"$HANDOFF_READY_FD"; sleep 0.2; exit 5"#,
            ],
        )
        .on_event(move |e| {
            if let Event::UpgradeSucceeded { child } = e {
                on_ready(*child)
            }
        })
        .build()
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    drop(up.tcp_listener("main", addr).unwrap());
    up.ready().unwrap();
    up
}

#[test]
fn a_host_that_ignores_sigchld_still_sees_the_new_generation_die() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: setting a signal disposition; no handler runs.
    let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let up = upgrader(|_| {});
    let err = up.upgrade().unwrap_err();
    // SAFETY: restoring the disposition read above.
    unsafe { libc::signal(libc::SIGCHLD, old) };
    // The kernel reaped it (its exec made its exit signal SIGCHLD, whatever it was spawned
    // with), so its status is lost; its death is not.
    assert!(
        matches!(err.kind(), ErrorKind::DiedAfterReady { pid, .. } if *pid > 0),
        "the window saw the death: {err:?}"
    );
    assert_eq!(up.phase(), Phase::Serving);
    assert!(up.kept_listener("main").is_ok(), "the listeners are kept");
}

#[test]
fn a_new_generation_reaped_by_someone_else_still_gives_the_service_back() {
    let _lock = FORK.lock().unwrap_or_else(|p| p.into_inner());
    // Something else in the host waits for the child, the way a `waitpid(-1, __WALL)` loop
    // would, and takes its status: here before the window's watch begins, so that it surely
    // comes first.
    let up = upgrader(|child| {
        // SAFETY: `info` is a valid out-pointer; waiting for one pid.
        let reaped = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                child as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            )
        };
        assert_eq!(reaped, 0, "reaped the child behind the library's back");
    });
    let err = up.upgrade().unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::DiedAfterReady {
                code: None,
                signal: None,
                ..
            }
        ),
        "the death was seen although its status was taken: {err:?}"
    );
    assert_eq!(up.phase(), Phase::Serving);
    assert!(up.kept_listener("main").is_ok(), "the listeners are kept");
}
