//! The `handoff` command line: `check`, `explore` and `list`, what each prints and its exit
//! code. The binary (`src/bin/handoff.rs`) only calls [`main`].
//!
//! Exit status: 0 when every verdict is as expected, 1 when one is not (an expected-pass
//! invariant failed or could not be decided, or an expected-fail one passed), 2 on bad input
//! or a target that could not be run, 130 on interrupt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::checkers::{self, ScenarioResult};
use crate::explore;
use crate::model::Scenario;
use crate::report;
use crate::run::{self, RunError, RunOptions};
use crate::scenario;
use crate::usage;
use crate::{errln, outln};

mod oneline;
#[doc(hidden)]
pub mod out;
mod progress;

#[derive(Parser)]
#[command(
    name = "handoff",
    version,
    about = "Graceful-restart conformance harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios and print the verdict table.
    ///
    /// Or, with `--exec`, check one server without a scenario file: `handoff check --exec
    /// 'my-server --listen 127.0.0.1:{port} --pid-file {dir}/pid' --pid-file {dir}/pid
    /// --restart SIGHUP` (add `--save FILE` to keep the scenario it ran).
    Check {
        /// Scenario files, or directories searched for `*.toml`.
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        one_line: oneline::OneLine,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
        /// Also write a self-contained HTML page with a timeline of each run to this file.
        #[arg(long, value_name = "PATH")]
        html: Option<PathBuf>,
        /// Run each scenario this many times in a row (each run is judged and reported).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: u32,
        /// Write the mutation table of the known-bad scenarios (from every run) into the
        /// generated section of this Markdown file.
        #[arg(long, value_name = "PATH")]
        mutation_table: Option<PathBuf>,
        /// Show each step of every run, every verdict's summary and the target's output.
        #[arg(short, long)]
        verbose: bool,
        /// No live progress line: one line per finished run on stderr (without a terminal,
        /// a line when each run starts too).
        #[arg(short, long, conflicts_with = "verbose")]
        quiet: bool,
    },
    /// Draw random event schedules against a scenario's target and load, run each for real,
    /// and shrink a failing one to a minimal scenario file that `handoff check` replays.
    ///
    /// Exit status: 0 when no case failed, 1 when one did (the file is written), 2 on bad
    /// input or a target that could not be run, 130 on interrupt.
    Explore {
        /// The base scenario: its target and load are used, its events and expectations not.
        scenario: PathBuf,
        /// How many schedules to run (more are run while shrinking a failure).
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        cases: u32,
        /// The seed (decimal or 0x-hex); a fresh one, printed, when not given.
        #[arg(long, value_parser = explore::parse_seed)]
        seed: Option<u64>,
        /// At most this many events per schedule (a burst of restart signals is one event).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        max_events: u64,
        /// At most this many re-runs to shrink a failing schedule.
        #[arg(long, default_value_t = 48)]
        shrink_runs: u32,
        /// Re-runs of the written scenario, to tell a reproducible failure from a flaky one.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        replays: u32,
        /// Run length of every case, instead of the base scenario's `duration-ms`.
        #[arg(long, value_parser = clap::value_parser!(u64).range(500..=600_000))]
        duration_ms: Option<u64>,
        /// Where to write the minimal failing scenario [default: explored/<base id>-<seed>.toml]
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// The written scenario's `id` [default: explored/<base id>/<seed>]
        #[arg(long)]
        id: Option<String>,
        /// Write the JSON report of every run that broke an invariant (as `check --json`
        /// writes it, the run record included) into this directory, as `run-<n>.json`.
        #[arg(long, value_name = "DIR")]
        records: Option<PathBuf>,
        /// Print the schedules the seed draws, without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Show each run's progress and the target's output.
        #[arg(short, long)]
        verbose: bool,
    },
    /// List scenario ids, descriptions and requirements without running anything.
    List {
        /// Scenario files, or directories searched for `*.toml`.
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
    },
}

const EXIT_FAILED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            errln!("handoff: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Runs one command. An `Err` is a message for stderr, and exit status 2.
fn run(cli: Cli) -> Result<ExitCode, String> {
    run::install_interrupt_handler()
        .map_err(|e| format!("installing the interrupt handler: {e}"))?;
    // Every connection the load holds is a descriptor; the target inherits the limit too.
    let fd_limit = usage::raise_fd_limit();
    match cli.command {
        Command::List { paths } => Ok(list(&paths)),
        Command::Explore {
            scenario,
            cases,
            seed,
            max_events,
            shrink_runs,
            replays,
            duration_ms,
            out,
            id,
            records,
            dry_run,
            verbose,
        } => {
            let mut base = match explore::Base::load(&scenario) {
                Ok(b) => b,
                Err(e) => {
                    errln!("handoff: {e}");
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            let seed = seed.unwrap_or_else(explore::fresh_seed);
            base.pin_load_seed(seed);
            let base_id = &base.scenario.id;
            let cfg = explore::ExploreConfig {
                cases,
                seed,
                max_steps: max_events as usize,
                shrink_runs,
                replays,
                duration_ms,
                out: out.unwrap_or_else(|| {
                    PathBuf::from(format!(
                        "explored/{}-{seed:x}.toml",
                        base_id.replace('/', "-")
                    ))
                }),
                id,
                records,
            };
            if let Some(dir) = &cfg.records
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                errln!(
                    "handoff: creating the records directory {}: {e}",
                    dir.display()
                );
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            outln!(
                "explore {}: seed {seed:#x} ({cases} cases, up to {max_events} events each); rerun with --seed {seed:#x}",
                scenario.display()
            );
            if dry_run {
                dry_run_schedules(&base, &cfg);
                return Ok(ExitCode::SUCCESS);
            }
            explore_for_real(&scenario, &base, &cfg, verbose)
        }
        Command::Check {
            paths,
            one_line,
            json,
            junit,
            html,
            repeat,
            mutation_table,
            verbose,
            quiet,
        } => {
            let scenarios = if one_line.exec.is_some() {
                match one_line.scenario() {
                    Ok(s) => vec![s],
                    Err(e) => {
                        errln!("handoff: {e}");
                        return Ok(ExitCode::from(EXIT_BAD_INPUT));
                    }
                }
            } else {
                let Some(scenarios) = load(&paths) else {
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                };
                scenarios
            };
            warn_about_fd_limit(&scenarios, fd_limit.as_ref());
            if verbose && let Ok(l) = &fd_limit {
                errln!(
                    "handoff: descriptor limit {} (was {}, hard limit {}); the target inherits it",
                    l.now,
                    l.was,
                    l.hard
                );
            }
            let reports = Reports {
                json,
                junit,
                html,
                mutation_table,
            };
            let mode = progress::Mode::choose(quiet, verbose);
            check(&scenarios, repeat, verbose, mode, &reports)
        }
    }
}

/// `handoff list`: ids, descriptions and requirements.
fn list(paths: &[PathBuf]) -> ExitCode {
    let Some(scenarios) = load(paths) else {
        return ExitCode::from(EXIT_BAD_INPUT);
    };
    for s in scenarios {
        // Whoever closed stdout has read all they wanted (`handoff list | head -1`).
        if !outln!(
            "{}\n  {}\n  {}\n  ({})",
            s.id,
            s.description,
            s.requirement,
            s.path.display()
        ) {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// `handoff explore --dry-run`: the schedules the seed draws, one event a line.
fn dry_run_schedules(base: &explore::Base, cfg: &explore::ExploreConfig) {
    let duration = cfg
        .duration_ms
        .unwrap_or(base.scenario.duration.as_millis() as u64);
    for (k, s) in explore::schedules(base, cfg).iter().enumerate() {
        outln!("case {}:", k + 1);
        for line in s.describe(duration) {
            outln!("  {line}");
        }
    }
}

/// `handoff explore`: runs the cases and prints the report.
fn explore_for_real(
    scenario: &Path,
    base: &explore::Base,
    cfg: &explore::ExploreConfig,
    verbose: bool,
) -> Result<ExitCode, String> {
    let opts = RunOptions {
        bin_dir: bin_dir()?,
        verbose,
        watch: None,
    };
    let explored = match explore::explore(base, cfg, &opts, &mut |line| {
        outln!("  {line}");
    }) {
        Ok(e) => e,
        Err(explore::ExploreError::Run(RunError::Interrupted)) => {
            errln!("handoff: interrupted; the target was stopped");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(e) => {
            errln!("handoff: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    out::print(format_args!("{}", explored.report(scenario, cfg.seed)));
    // A failure seen even once, reproducible or not, is reported: it is either the
    // target's or the harness's, and neither may be hidden.
    let failed = explored.found.is_some() || !explored.flaky.is_empty();
    Ok(ExitCode::from(if failed { EXIT_FAILED } else { 0 }))
}

/// The report files `handoff check` writes besides the terminal table.
struct Reports {
    json: Option<PathBuf>,
    junit: Option<PathBuf>,
    html: Option<PathBuf>,
    mutation_table: Option<PathBuf>,
}

/// `handoff check`: runs every scenario `repeat` times, prints the table, writes the reports.
fn check(
    scenarios: &[Scenario],
    repeat: u32,
    verbose: bool,
    mode: progress::Mode,
    reports: &Reports,
) -> Result<ExitCode, String> {
    let mut opts = RunOptions {
        bin_dir: bin_dir()?,
        verbose,
        watch: None,
    };
    let total = scenarios.len() * repeat as usize;
    let progress = progress::Progress::new(mode, total);
    let mut results = Vec::with_capacity(total);
    let mut interrupted = false;
    let runs = scenarios
        .iter()
        .flat_map(|s| std::iter::repeat_n(s, repeat as usize));
    for (n, s) in runs.enumerate() {
        let line = progress.start(n + 1, s);
        opts.watch = line.watch();
        let result = match run::run_scenario(s, &opts) {
            Ok(record) => checkers::judge(s, record),
            Err(RunError::Setup(message)) => ScenarioResult::setup_failed(s, message),
            Err(RunError::Interrupted) => {
                line.interrupted();
                interrupted = true;
                break;
            }
        };
        line.finish(&result);
        results.push(result);
    }
    out::print(format_args!(
        "{}",
        report::render_terminal(&results, verbose)
    ));
    write_reports(scenarios, &results, reports)?;
    if interrupted {
        errln!(
            "handoff: interrupted after {} of {} scenario(s); the target was stopped",
            results.len(),
            scenarios.len()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let code = report::exit_code(&results);
    if code == 1 {
        errln!(
            "handoff: some verdicts are not as expected (an expected verdict that came out unknown counts as not as expected)"
        );
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT)))
}

fn write_reports(
    scenarios: &[Scenario],
    results: &[ScenarioResult],
    reports: &Reports,
) -> Result<(), String> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        format!("writing the {what} `{}`: {e}", path.display())
    };
    if let Some(path) = &reports.json {
        report::write_json(path, results).map_err(|e| failed("JSON report to", path, e))?;
    }
    if let Some(path) = &reports.junit {
        report::write_junit(path, results).map_err(|e| failed("JUnit report to", path, e))?;
    }
    if let Some(path) = &reports.html {
        report::write_html(path, results).map_err(|e| failed("HTML report to", path, e))?;
    }
    if let Some(path) = &reports.mutation_table {
        let table = report::mutation::render(scenarios, results);
        report::mutation::write_into(path, &table)
            .map_err(|e| failed("mutation table into", path, e))?;
    }
    Ok(())
}

/// The directory `{bin}` stands for: the one this executable is in.
fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("finding the handoff executable for `{{bin}}`: {e}"))?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| "finding the directory of the handoff executable for `{bin}`".to_string())
}

/// Says so when a scenario's load may need more descriptors than the harness may open (the
/// soft limit was raised to the hard one at startup; only the hard limit stops it now).
fn warn_about_fd_limit(scenarios: &[Scenario], limit: Result<&usage::FdLimit, &std::io::Error>) {
    let limit = match limit {
        Ok(l) => l.now,
        Err(e) => {
            errln!("handoff: warning: could not raise the descriptor limit: {e}");
            match usage::fd_limit() {
                Some(n) => n,
                None => return,
            }
        }
    };
    // Connections, plus what the harness itself keeps open (pipes, the runtime, /proc reads).
    const OWN: u64 = 64;
    for s in scenarios {
        let needed = u64::from(s.load.clients) + u64::from(s.load.burst_size) + OWN;
        if needed > limit {
            errln!(
                "handoff: warning: scenario `{}` may hold {} connections at once, but the descriptor limit is {limit} (`ulimit -n`; raise the hard limit with `ulimit -Hn`, as root)",
                s.id,
                needed - OWN
            );
        }
    }
}

/// Load every scenario, printing every error (each names file, line and field); `None` if
/// there was any.
fn load(paths: &[PathBuf]) -> Option<Vec<Scenario>> {
    match scenario::load_all(paths) {
        Ok(scenarios) if scenarios.is_empty() => {
            let shown: Vec<String> = paths.iter().map(|p| format!("`{}`", p.display())).collect();
            errln!(
                "handoff: no scenario files (`*.toml`) found in {}",
                shown.join(", ")
            );
            None
        }
        Ok(scenarios) => Some(scenarios),
        Err(errors) => {
            for e in &errors {
                errln!("handoff: {e}");
            }
            errln!(
                "handoff: {} error(s) in the scenario files; nothing was run",
                errors.len()
            );
            None
        }
    }
}
