//! The lifecycle both reference servers share.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use handoff::{Drained, Event, Upgrader};
pub use handoff_support::Listen;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fail;

/// Which protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// One reply line per request line.
    Echo,
    /// HTTP/1.1.
    Http,
}

/// A reference server's settings (its command-line flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// How long each request takes.
    pub delay: Duration,
    /// PID file kept by the library.
    pub pid_file: Option<PathBuf>,
    /// How long a superseded generation waits for its connections.
    pub drain_timeout: Duration,
    /// How long a new generation has to report ready.
    pub ready_timeout: Duration,
    /// A file a new generation reads to fail on purpose (`crash`, `exit`, `hang`).
    pub fail_next_file: Option<PathBuf>,
    /// Tokio worker threads; 0 (the default) runs everything on the main thread.
    pub worker_threads: usize,
    /// MiB of touched private memory to hold, allocated after ready.
    pub ballast_mb: usize,
    /// How long after a handover this generation takes the service back if its successor
    /// dies (zero: no rollback window).
    pub rollback_window: Duration,
    /// Offer the listeners at this unix socket to a new process that is not our child.
    pub handoff_socket: Option<PathBuf>,
    /// Start as the new process of such a hand-over, taking the listeners from this socket.
    pub take_over: Option<PathBuf>,
    /// Take `upgrade` and `status` commands at this unix socket.
    pub control_socket: Option<PathBuf>,
    /// Uids served on those sockets besides our own.
    pub allow_uids: Vec<u32>,
}

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The restart library refused (bad inherited descriptors, bind failure, ...).
    #[error(transparent)]
    Handoff(#[from] handoff::Error),
    /// The runtime or a socket failed.
    #[error("{0}")]
    Io(&'static str, #[source] io::Error),
}

/// What a connection handler knows about the process serving it.
pub(crate) struct Ctx {
    pub pid: u32,
    pub generation: u32,
    pub delay: Duration,
    pub upgrader: Upgrader,
    pub ballast_mb: usize,
}

impl Ctx {
    /// Whether this generation is draining: finish the current request, then close.
    pub fn draining(&self) -> bool {
        self.upgrader.phase().is_done()
    }
}

/// Prints one event line and flushes it at once: every generation shares stdout, and readers
/// wait on these lines.
pub(crate) fn event_line(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn print_event(pid: u32, event: &Event<'_>) {
    match event {
        Event::UpgradeStarted { child } => {
            event_line(format_args!("upgrade started pid={pid} child={child}"))
        }
        Event::UpgradeSucceeded { child } => {
            event_line(format_args!("upgrade ok pid={pid} child={child}"))
        }
        Event::UpgradeFailed { error } => {
            let child = error
                .child_pid()
                .map_or_else(|| "none".into(), |c| c.to_string());
            event_line(format_args!(
                "upgrade failed pid={pid} child={child} reason={}",
                error.chain()
            ))
        }
        Event::UpgradeRefused { error } => event_line(format_args!(
            "upgrade refused pid={pid} reason={}",
            error.chain()
        )),
        Event::Resumed { error } => {
            let child = error
                .child_pid()
                .map_or_else(|| "none".into(), |c| c.to_string());
            event_line(format_args!(
                "upgrade resumed pid={pid} child={child} reason={}",
                error.chain()
            ))
        }
        Event::Stopping => event_line(format_args!("stopping pid={pid}")),
        _ => {}
    }
}

/// How long an idle blocking thread waits for work before it exits: long enough that the one
/// spawned by [`warm_upgrade_thread`] is still there when the next SIGHUP comes.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long after reporting ready a generation spawns the thread its own upgrade will run on.
/// No upgrade of this generation can start before its predecessor has drained and exited,
/// and the first connections after ready are the ones that should not wait for a thread spawn.
const WARM_UPGRADE_THREAD_AFTER: Duration = Duration::from_millis(50);

/// The runtime, on the main thread alone unless `worker_threads` asks for more.
///
/// A restart is on the clock from the SIGHUP until the new generation answers its first
/// connection, and on a busy machine each thread on that path waits for a CPU. With worker
/// threads, a new generation spawns them before it can report ready, a connection it accepts
/// on the main thread waits until a worker is scheduled to run it, and the old generation's
/// signal reaches its upgrade through one more thread. On the main thread alone, the
/// accept, the first reply and the signal are handled by the thread that woke up for them.
fn runtime(worker_threads: usize) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
}

/// The upgrade that SIGHUP triggers runs on a blocking thread of the runtime
/// (`Upgrader::spawn_signal_task`); a thread spawned for it at that moment delays the fork of
/// the next generation. Spawn it beforehand, off every latency path, and let it wait idle.
fn warm_upgrade_thread(upgrader: &Upgrader) {
    let upgrader = upgrader.clone();
    tokio::spawn(async move {
        tokio::time::sleep(WARM_UPGRADE_THREAD_AFTER).await;
        if !upgrader.phase().is_done() {
            tokio::task::spawn_blocking(|| {});
        }
    });
}

/// Runs a reference server until it has handed over or stopped, and drained.
///
/// # Errors
/// When the listener cannot be inherited or bound, or the runtime cannot start.
pub fn run(config: Config, protocol: Protocol) -> Result<(), ServerError> {
    let pid = std::process::id();
    let mut builder = handoff::Builder::new()
        .ready_timeout(config.ready_timeout)
        .drain_timeout(config.drain_timeout)
        .rollback_window(config.rollback_window)
        .on_event(move |e| print_event(pid, e));
    if let Some(path) = &config.pid_file {
        builder = builder.pid_file(path);
    }
    if let Some(path) = &config.handoff_socket {
        builder = builder.handover_socket(path);
    }
    if let Some(path) = &config.take_over {
        builder = builder.take_over(path);
    }
    if let Some(path) = &config.control_socket {
        builder = builder.control_socket(path);
    }
    for uid in &config.allow_uids {
        builder = builder.allow_uid(*uid);
    }
    let upgrader = builder.build()?;
    if upgrader.has_parent()
        && let Some(mode) = config.fail_next_file.as_deref().and_then(fail::take)
    {
        fail::fail(mode);
    }
    let runtime =
        runtime(config.worker_threads).map_err(|e| ServerError::Io("starting the runtime", e))?;
    let ctx = Arc::new(Ctx {
        pid,
        generation: upgrader.generation(),
        delay: config.delay,
        upgrader: upgrader.clone(),
        ballast_mb: config.ballast_mb,
    });
    runtime.block_on(async {
        // A generation whose successor died in the rollback window serves again, on the
        // listeners the library kept.
        let mut resumed = false;
        loop {
            match &config.listen {
                Listen::Tcp(addr) => {
                    let listener = if resumed {
                        upgrader.kept_tokio_tcp_listener("main")?
                    } else {
                        upgrader.tokio_tcp_listener("main", *addr)?
                    };
                    let shown = listener
                        .local_addr()
                        .map_or_else(|_| addr.to_string(), |a| a.to_string());
                    serve(&ctx, protocol, &shown, resumed, || listener.accept()).await
                }
                Listen::Unix(path) => {
                    let listener = if resumed {
                        upgrader.kept_tokio_unix_listener("main")?
                    } else {
                        upgrader.tokio_unix_listener("main", path)?
                    };
                    let shown = format!("unix:{}", path.display());
                    serve(&ctx, protocol, &shown, resumed, || listener.accept()).await
                }
            }?;
            // The listener is closed now: the next generation (or nobody, on a stop) accepts.
            let active = upgrader.tracker().active();
            event_line(format_args!(
                "draining pid={pid} gen={} connections={active}",
                ctx.generation
            ));
            match upgrader.drain_async().await {
                Drained::Resume => resumed = true,
                Drained::Exit { remaining } => {
                    event_line(format_args!(
                        "exit pid={pid} gen={} remaining={remaining}",
                        ctx.generation
                    ));
                    break;
                }
                other => {
                    event_line(format_args!(
                        "exit pid={pid} gen={} drained={other:?}",
                        ctx.generation
                    ));
                    break;
                }
            }
        }
        Ok::<(), ServerError>(())
    })?;
    // Connection tasks cut at the drain deadline are abandoned, not awaited.
    runtime.shutdown_background();
    Ok(())
}

/// Allocates `mb` MiB, writes to every page so the kernel really backs it with private
/// memory, and keeps it for the life of the process. On a thread of its own, started after
/// ready: a large allocation must not delay readiness, nor the first connections.
fn ballast(pid: u32, mb: usize) {
    if mb == 0 {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("ballast".into())
        .spawn(move || {
            // `vec![1; n]` fills every byte, so every page is touched (zeroes could be left
            // to the kernel's zero page).
            let memory: &'static mut [u8] = vec![1u8; mb << 20].leak();
            std::hint::black_box(memory);
            event_line(format_args!("ballast pid={pid} mb={mb}"));
        });
    if let Err(e) = spawned {
        eprintln!("starting the ballast thread: {e}");
    }
}

/// Accepts and serves until this generation should stop accepting. The first time, it
/// installs the signal triggers and reports ready; after a resume it says so and goes on.
async fn serve<S, A, F, Fut>(
    ctx: &Arc<Ctx>,
    protocol: Protocol,
    shown: &str,
    resumed: bool,
    accept: F,
) -> Result<(), ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = io::Result<(S, A)>>,
{
    let upgrader = &ctx.upgrader;
    if resumed {
        event_line(format_args!(
            "resumed pid={} gen={} listen={shown}",
            ctx.pid, ctx.generation
        ));
    } else {
        upgrader.spawn_signal_task()?;
        upgrader.ready()?;
        event_line(format_args!(
            "ready pid={} gen={} listen={shown}",
            ctx.pid, ctx.generation
        ));
        warm_upgrade_thread(upgrader);
        ballast(ctx.pid, ctx.ballast_mb);
    }
    loop {
        tokio::select! {
            biased;
            _ = upgrader.done() => break,
            accepted = accept() => match accepted {
                Ok((stream, _)) => {
                    let guard = upgrader.conn_guard();
                    let ctx = Arc::clone(ctx);
                    tokio::spawn(async move {
                        let _guard = guard;
                        let result = match protocol {
                            Protocol::Echo => crate::echo::serve(stream, &ctx).await,
                            Protocol::Http => crate::http::serve(stream, &ctx).await,
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                // EMFILE and friends: keep serving what we have rather than spin or die.
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    Ok(())
}
