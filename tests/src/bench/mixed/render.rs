//! The mixed benchmark's report as markdown tables and target lines.

use super::{
    MixedReport, GPU_MEMORY_MIB, TARGET_OVER_LOWER_BOUND, TARGET_OVER_NAIVE, TARGET_OVER_STATIC,
};

fn ratio_line(name: &str, value: f64, target: f64) -> String {
    let verdict = if value <= target { "met" } else { "NOT met" };
    format!("{name} = {value:.2} (target <= {target:.2}: {verdict})\n")
}

/// The report as markdown tables and summary lines.
pub fn render(report: &MixedReport) -> String {
    let bound = &report.lower_bound;
    let mut out = format!(
        "gpuq-bench --mixed: {:?} trace, seed {}, scale {}, {} workers (1 per GPU of {GPU_MEMORY_MIB} MiB), {} jobs, {:.1} s of work, last arrival at {:.1} s\n",
        report.shape, report.seed, report.scale, report.workers, report.jobs, report.total_work_s, report.last_arrival_s
    );
    out.push_str(&format!(
        "lower bound LB = {:.2} s (work + one load per model: {:.2} s, arrival tail: {:.2} s, last job: {:.2} s); LB_issue = {:.2} s\n\n",
        bound.value_ms / 1000.0,
        bound.work_ms / 1000.0,
        bound.tail_ms / 1000.0,
        bound.last_job_ms / 1000.0,
        report.lower_bound_issue_ms / 1000.0,
    ));
    out.push_str(&format!(
        "placement policy: the defaults (interval {} ms, min residency {} ms, max queue wait {} ms)\n\n",
        report.placement_interval_ms, report.min_residency_ms, report.max_queue_wait_ms
    ));
    out.push_str("| run | makespan s | makespan/LB | busy fraction | work fraction | loads | load s | worst p95 wait s | completed | failed |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in &report.runs {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.2} ({}) | {} | {} |\n",
            run.mode,
            run.makespan_s,
            run.makespan_over_lower_bound,
            run.busy_fraction,
            run.work_fraction,
            run.loads,
            run.load_s,
            run.worst_p95_wait_s,
            run.worst_p95_model,
            run.completed,
            run.failed,
        ));
    }
    out.push_str("\nQueue wait by model (started − created), seconds:\n\n");
    out.push_str("| model | jobs |");
    for run in &report.runs {
        out.push_str(&format!(
            " {0} mean | {0} p95 | {0} loads | {0} workers |",
            run.mode
        ));
    }
    out.push_str("\n|---|---:|");
    for _ in &report.runs {
        out.push_str("---:|---:|---:|---:|");
    }
    out.push('\n');
    for (model, jobs) in &report.trace_jobs {
        out.push_str(&format!("| {model} | {jobs} |"));
        for run in &report.runs {
            match run.models.get(model) {
                Some(m) => out.push_str(&format!(
                    " {:.2} | {:.2} | {} | {} |",
                    m.mean_wait_s, m.p95_wait_s, m.loads, m.workers_ran
                )),
                None => out.push_str(" - | - | - | - |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&ratio_line(
        "placement/lower bound",
        report.placement_over_lower_bound,
        TARGET_OVER_LOWER_BOUND,
    ));
    out.push_str(&format!(
        "placement/LB_issue = {:.2}\n",
        report.placement_over_lower_bound_issue
    ));
    if report.placement_over_naive.is_nan() {
        out.push_str("placement/naive: no naive run (--mixed-skip-naive)\n");
    } else {
        out.push_str(&ratio_line(
            "placement/naive",
            report.placement_over_naive,
            TARGET_OVER_NAIVE,
        ));
    }
    if let Some(best) = &report.best_static {
        let sets: Vec<String> = best.workers.iter().map(|set| set.join("+")).collect();
        out.push_str(&format!(
            "best static assignment: {} (simulated {:.2} s, best of {} searched)\n",
            sets.join(", "),
            best.simulated_s,
            best.searched
        ));
        out.push_str(&ratio_line(
            "placement/best static",
            best.placement_over_static,
            TARGET_OVER_STATIC,
        ));
        out.push_str(&format!(
            "LB/best static = {:.2} (no schedule's makespan / best static is lower{})\n",
            best.lower_bound_over_static,
            if best.lower_bound_over_static > TARGET_OVER_STATIC {
                format!("; the {TARGET_OVER_STATIC:.2} target is below it on this trace")
            } else {
                String::new()
            }
        ));
    }
    let bound_s = report.max_queue_wait_ms as f64 / 1000.0;
    out.push_str(&format!(
        "worst p95 queue wait = {:.1} s (bound = max_queue_wait_ms = {bound_s:.0} s: {})\n",
        report.worst_p95_wait_s,
        if report.worst_p95_wait_s <= bound_s {
            "met"
        } else {
            "NOT met"
        }
    ));
    for run in &report.runs {
        if run.max_submit_lag_ms > 100 {
            out.push_str(&format!(
                "note: the {} replay fell up to {} ms behind the trace\n",
                run.mode, run.max_submit_lag_ms
            ));
        }
    }
    out
}
