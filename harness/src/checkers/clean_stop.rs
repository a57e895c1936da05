//! `clean-stop`: after the final stop, every process of the target is gone within
//! `target.stop-timeout-ms`, and the harness had to kill none of them.

use crate::checkers::{fail, pass, secs, ts, unknown};
use crate::model::{Action, RunRecord, Scenario, Verdict};

/// See the module docs.
pub fn check(s: &Scenario, r: &RunRecord) -> Verdict {
    let Some(stop) = r.final_stop else {
        return unknown("no final stop was recorded");
    };
    if r.processes.is_empty() {
        return unknown("the observer recorded no process of the target");
    }
    let deadline = stop + s.target.stop_timeout;
    let stop_errors: Vec<String> = r
        .injected
        .iter()
        .filter(|i| i.action == Action::Stop)
        .filter_map(|i| {
            i.error
                .as_ref()
                .map(|err| format!("the stop at {} could not be triggered: {err}", ts(i.at)))
        })
        .collect();
    let mut evidence = Vec::new();
    for p in &r.processes {
        let who = format!("pid {} (`{}`)", p.pid, p.cmdline);
        if r.killed_at_end.contains(&p.pid) {
            let when = p.exited.map_or_else(|| "at the end".to_string(), ts);
            evidence.push(format!(
                "{who} outlived the deadline {} and was killed by the harness {when}",
                ts(deadline)
            ));
            continue;
        }
        match p.exited {
            None => evidence.push(format!(
                "{who} was still alive when the run ended {} (deadline {})",
                ts(r.end),
                ts(deadline)
            )),
            Some(x) if x > deadline => evidence.push(format!(
                "{who} exited {}, {} after the deadline {} (stop {} + {})",
                ts(x),
                secs(x - deadline),
                ts(deadline),
                ts(stop),
                secs(s.target.stop_timeout)
            )),
            Some(_) => {}
        }
    }
    for pid in r
        .killed_at_end
        .iter()
        .filter(|pid| !r.processes.iter().any(|p| p.pid == **pid))
    {
        evidence.push(format!("pid {pid} was killed by the harness at the end"));
    }
    if !evidence.is_empty() {
        // A stop that could not be delivered explains what follows: say it first.
        let evidence = stop_errors.into_iter().chain(evidence).collect();
        return fail(
            format!(
                "the target was not gone within {} of the final stop",
                secs(s.target.stop_timeout)
            ),
            evidence,
        );
    }
    // A stop that found nothing to signal is fine when nothing was left to stop.
    let note = if stop_errors.is_empty() {
        String::new()
    } else {
        format!("; {}", stop_errors.join("; "))
    };
    let last = r
        .processes
        .iter()
        .filter_map(|p| p.exited)
        .max()
        .unwrap_or(stop);
    pass(format!(
        "all {} process(es) were gone by {} (stop {}, deadline {}){note}",
        r.processes.len(),
        ts(last),
        ts(stop),
        ts(deadline)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::fixture::*;

    #[test]
    fn passes_a_clean_run() {
        let v = check(&scenario(), &clean_run());
        assert!(is_pass(&v), "{v:?}");
    }

    #[test]
    fn fails_a_late_exit_a_survivor_and_a_kill() {
        let mut r = clean_run();
        r.processes[1].exited = Some(ms(4600));
        let v = check(&scenario(), &r);
        assert!(evidence(&v).contains("pid 200 (`handoff-echo --listen 127.0.0.1:4000`) exited t=4.600s, 0.100s after the deadline t=4.500s"), "{v:?}");

        let mut r = clean_run();
        r.processes[1].exited = None;
        assert!(evidence(&check(&scenario(), &r)).contains("still alive"));

        let mut r = clean_run();
        r.killed_at_end = vec![200];
        r.injected[1].error = Some("sending SIGTERM to pid 100: ESRCH".into());
        let e = evidence(&check(&scenario(), &r));
        assert!(e.contains("killed by the harness"), "{e}");
        assert!(
            e.contains("the stop at t=2.500s could not be triggered: sending SIGTERM"),
            "{e}"
        );
    }

    #[test]
    fn an_undeliverable_stop_is_fine_when_everything_is_gone() {
        let mut r = clean_run();
        r.processes[1].exited = Some(ms(2400));
        r.injected[1].error = Some("ESRCH".into());
        let v = check(&scenario(), &r);
        assert!(is_pass(&v), "{v:?}");
        assert!(evidence(&v).contains("could not be triggered: ESRCH"));
    }

    #[test]
    fn unknown_without_stop_or_processes() {
        let mut r = clean_run();
        r.final_stop = None;
        assert!(is_unknown(&check(&scenario(), &r)));
        let mut r = clean_run();
        r.processes.clear();
        assert!(is_unknown(&check(&scenario(), &r)));
    }
}
