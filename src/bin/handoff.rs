//! `handoff`: run graceful-restart conformance scenarios against a server and judge them.
//!
//! Exit status: 0 when every verdict is as expected, 1 when one is not (an expected-pass
//! invariant failed or could not be decided, or an expected-fail one passed), 2 on bad input
//! or a target that could not be run, 130 on interrupt.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use handoff_harness::report::{self, ScenarioResult};
use handoff_harness::run::{self, RunError, RunOptions};
use handoff_harness::scenario;
use handoff_harness::usage;

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
    Check {
        /// Scenario files, or directories searched for `*.toml`.
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
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
        /// Show progress, every verdict's summary and the target's output.
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

const EXIT_BAD_INPUT: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handoff: {e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    run::install_interrupt_handler().context("installing the interrupt handler")?;
    // Every connection the load holds is a descriptor; the target inherits the limit too.
    let fd_limit = usage::raise_fd_limit();
    match cli.command {
        Command::List { paths } => {
            let Some(scenarios) = load(&paths) else {
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            for s in scenarios {
                println!(
                    "{}\n  {}\n  {}\n  ({})",
                    s.id,
                    s.description,
                    s.requirement,
                    s.path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            paths,
            json,
            junit,
            html,
            repeat,
            mutation_table,
            verbose,
        } => {
            let Some(scenarios) = load(&paths) else {
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            let exe =
                std::env::current_exe().context("finding the handoff executable for `{bin}`")?;
            let bin_dir = exe
                .parent()
                .map(PathBuf::from)
                .context("finding the directory of the handoff executable for `{bin}`")?;
            let opts = RunOptions { bin_dir, verbose };
            warn_about_fd_limit(&scenarios, fd_limit.as_ref());
            if verbose && let Ok(l) = &fd_limit {
                eprintln!(
                    "handoff: descriptor limit {} (was {}, hard limit {}); the target inherits it",
                    l.now, l.was, l.hard
                );
            }
            let mut results = Vec::with_capacity(scenarios.len() * repeat as usize);
            let mut interrupted = false;
            let runs = scenarios
                .iter()
                .flat_map(|s| std::iter::repeat_n(s, repeat as usize));
            for s in runs {
                if verbose {
                    eprintln!("handoff: running {} ({})", s.id, s.path.display());
                }
                match run::run_scenario(s, &opts) {
                    Ok(record) => results.push(ScenarioResult::judge(s, record)),
                    Err(RunError::Setup(message)) => {
                        eprintln!("handoff: {}: {message}", s.path.display());
                        results.push(ScenarioResult::setup_failed(s, message));
                    }
                    Err(RunError::Interrupted) => {
                        interrupted = true;
                        break;
                    }
                }
            }
            print!("{}", report::render_terminal(&results, verbose));
            if let Some(path) = &json {
                report::write_json(path, &results)
                    .with_context(|| format!("writing the JSON report to `{}`", path.display()))?;
            }
            if let Some(path) = &junit {
                report::write_junit(path, &results)
                    .with_context(|| format!("writing the JUnit report to `{}`", path.display()))?;
            }
            if let Some(path) = &html {
                report::write_html(path, &results)
                    .with_context(|| format!("writing the HTML report to `{}`", path.display()))?;
            }
            if let Some(path) = &mutation_table {
                let table = report::mutation::render(&scenarios, &results);
                report::mutation::write_into(path, &table).with_context(|| {
                    format!("writing the mutation table into `{}`", path.display())
                })?;
            }
            if interrupted {
                eprintln!(
                    "handoff: interrupted after {} of {} scenario(s); the target was stopped",
                    results.len(),
                    scenarios.len()
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            let code = report::exit_code(&results);
            if code == 1 {
                eprintln!(
                    "handoff: some verdicts are not as expected (an expected verdict that came out unknown counts as not as expected)"
                );
            }
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(EXIT_BAD_INPUT)))
        }
    }
}

/// Says so when a scenario's load may need more descriptors than the harness may open (the
/// soft limit was raised to the hard one at startup; only the hard limit stops it now).
fn warn_about_fd_limit(
    scenarios: &[handoff_harness::Scenario],
    limit: Result<&usage::FdLimit, &std::io::Error>,
) {
    let limit = match limit {
        Ok(l) => l.now,
        Err(e) => {
            eprintln!("handoff: warning: could not raise the descriptor limit: {e}");
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
            eprintln!(
                "handoff: warning: scenario `{}` may hold {} connections at once, but the descriptor limit is {limit} (`ulimit -n`; raise the hard limit with `ulimit -Hn`, as root)",
                s.id,
                needed - OWN
            );
        }
    }
}

/// Load every scenario, printing every error (each names file, line and field); `None` if
/// there was any.
fn load(paths: &[PathBuf]) -> Option<Vec<handoff_harness::Scenario>> {
    match scenario::load_all(paths) {
        Ok(scenarios) if scenarios.is_empty() => {
            let shown: Vec<String> = paths.iter().map(|p| format!("`{}`", p.display())).collect();
            eprintln!(
                "handoff: no scenario files (`*.toml`) found in {}",
                shown.join(", ")
            );
            None
        }
        Ok(scenarios) => Some(scenarios),
        Err(errors) => {
            for e in &errors {
                eprintln!("handoff: {e}");
            }
            eprintln!(
                "handoff: {} error(s) in the scenario files; nothing was run",
                errors.len()
            );
            None
        }
    }
}
