//! `gpuq-bench`: gpuq's throughput, latency, GPU-bound efficiency and footprint
//! against the local RabbitMQ and Redis, beside the broker's raw limit; with
//! `--mixed`, the mixed-workload placement benchmark instead (`bench::mixed`).

use clap::Parser;
use gpuq_integration_tests::bench::{self, fairness, listing, mixed, BenchOptions};

/// Measures gpuq on this machine; see docs/benchmarks.md.
#[derive(Parser, Debug)]
#[command(name = "gpuq-bench")]
struct Args {
    /// No-op jobs per throughput run.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Jobs a worker runs at once for no-op jobs (its prefetch).
    #[arg(long, default_value_t = 64)]
    prefetch: u32,
    /// Bytes of payload in each no-op job.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// `quorum` or `classic`.
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Runs of each figure (median, min, max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequential submit-and-wait round trips for the latency figures.
    #[arg(long, default_value_t = 1000)]
    latency_samples: usize,
    /// Synthetic GPU-bound jobs per run.
    #[arg(long, default_value_t = 200)]
    sleep_jobs: usize,
    /// Run time of each GPU-bound job, ms.
    #[arg(long, default_value_t = 20)]
    sleep_ms: u64,
    /// Prefetch of the GPU-bound workers, which run one job at a time.
    #[arg(long, default_value_t = 2)]
    gpu_prefetch: u32,
    /// Measure the GPU-bound jobs' VRAM (the scripted source, as NVML would
    /// on a GPU host): each job's measured peak is then written to Redis.
    #[arg(long)]
    sleep_vram_meter: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only the mixed-workload benchmark: one seeded trace of bursty jobs
    /// for five slow-loading models, replayed with placement off, then on.
    #[arg(long)]
    mixed: bool,
    /// Multiplies the mixed trace's job counts and arrival window (0.25: a quick run).
    #[arg(long, default_value_t = 1.0)]
    mixed_scale: f64,
    /// Seed of the mixed trace.
    #[arg(long, default_value_t = 8)]
    seed: u64,
    /// GPUs (one worker each) of the mixed benchmark.
    #[arg(long, default_value_t = 4)]
    mixed_workers: usize,
    /// Spread the mixed trace over this many tenants (every 20th job high
    /// priority); 0 keeps every job the default tenant's.
    #[arg(long, default_value_t = 0)]
    mixed_tenants: usize,
    /// Runs the mixed benchmark with `tenants.fair_share = false`.
    #[arg(long)]
    fair_share_off: bool,
    /// Mixed benchmark without the (slow) naive run.
    #[arg(long)]
    mixed_skip_naive: bool,
    /// Mixed benchmark: also replay the best static assignment of models to
    /// workers (searched over the whole trace) and report placement / it.
    #[arg(long)]
    mixed_best_static: bool,
    /// Mixed benchmark trace: bursts (issue 8's), hot-spot (the popular
    /// model changes every 20 s) or long-tail (plus 12 rarely used models).
    #[arg(long, default_value = "bursts", value_parser = parse_shape)]
    mixed_shape: mixed::shapes::TraceShape,
    /// Mixed benchmark: write each run's per-job timeline (CSV) and the
    /// dispatcher's log into this directory.
    #[arg(long)]
    mixed_timeline: Option<std::path::PathBuf>,
    /// Simulates placement instead of running it (`bench::mixed::sim`, a
    /// model of the system): this many runs (jitter seeds) of every
    /// `--sim-seeds` × `--sim-workers` case, on the `--mixed-shape` trace
    /// at `--mixed-scale`.
    #[arg(long)]
    placement_sim: Option<u64>,
    /// Trace seeds of `--placement-sim`.
    #[arg(long, value_delimiter = ',', default_value = "3,8,21,5,13")]
    sim_seeds: Vec<u64>,
    /// Worker counts of `--placement-sim`.
    #[arg(long, value_delimiter = ',', default_value = "3,4,6")]
    sim_workers: Vec<usize>,
    /// Prints one simulated placement run's loads and assignment changes
    /// instead: this jitter seed, the first `--sim-seeds` trace and the
    /// first `--sim-workers` count; then the loads of the best schedule
    /// found knowing the trace (`bench::mixed::clairvoyant`).
    #[arg(long)]
    placement_sim_log: Option<u64>,
    /// Runs the job-listing benchmark over this many finished jobs instead
    /// (`bench::listing`; the figure is 50000).
    #[arg(long)]
    listing: Option<usize>,
    /// Runs the fair-share and priority benchmark instead (`bench::fairness`),
    /// with fair share on and then off.
    #[arg(long)]
    fairness: bool,
    /// Multiplies the fairness benchmark's backlogs (1.0: 2,000 jobs).
    #[arg(long, default_value_t = 1.0)]
    fairness_scale: f64,
    /// Run time of the fairness benchmark's synthetic jobs, ms.
    #[arg(long, default_value_t = 200)]
    fairness_run_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let simulating = args.placement_sim.is_some() || args.placement_sim_log.is_some();
    if simulating && (args.sim_workers.contains(&0) || args.sim_seeds.is_empty()) {
        anyhow::bail!("--sim-workers must each be at least 1, and --sim-seeds name a seed");
    }
    if let Some(jitter) = args.placement_sim_log {
        let (seed, workers) = (args.sim_seeds[0], args.sim_workers[0]);
        let models = &args.mixed_shape.models();
        let trace = args.mixed_shape.trace(workers, args.mixed_scale, seed);
        let (run, log) = mixed::sim::placement_log(&trace, models, workers, jitter);
        let bound = mixed::lower_bound(&trace, models, workers).value_ms;
        for line in log {
            println!("{line}");
        }
        println!(
            "seed {seed}, {workers} workers, jitter {jitter}: makespan / LB {:.3}, {} loads",
            run.makespan_ms / bound,
            run.loads
        );
        let traces = mixed::sim::StudyTraces {
            shape: args.mixed_shape,
            scale: args.mixed_scale,
            search: mixed::clairvoyant::Budget::FULL,
        };
        let (makespan_ms, loads) = mixed::sim::clairvoyant_loads(traces, (seed, workers), jitter);
        println!("the best schedule found knowing the trace, no load before its job arrives:");
        for line in &loads {
            println!("{line}");
        }
        println!(
            "makespan / LB {:.3}, {} loads (no per-job overhead)",
            makespan_ms / bound,
            loads.len()
        );
        return Ok(());
    }
    if let Some(runs) = args.placement_sim {
        let traces = mixed::sim::StudyTraces {
            shape: args.mixed_shape,
            scale: args.mixed_scale,
            search: mixed::clairvoyant::Budget::FULL,
        };
        let cases = mixed::sim::study(traces, &args.sim_seeds, &args.sim_workers, runs);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&cases)?);
        } else {
            print!("{}", mixed::sim::render_study(&cases));
        }
        return Ok(());
    }
    if let Some(jobs) = args.listing {
        let report = listing::run(jobs).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", listing::render(&report));
        }
        return Ok(());
    }
    if args.fairness {
        let report = fairness::run(&fairness::FairnessOptions {
            scale: args.fairness_scale,
            workers: 4,
            run_ms: args.fairness_run_ms,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", fairness::render(&report));
        }
        return Ok(());
    }
    if args.mixed {
        let report = mixed::run(&mixed::MixedOptions {
            scale: args.mixed_scale,
            seed: args.seed,
            workers: args.mixed_workers,
            skip_naive: args.mixed_skip_naive,
            best_static: args.mixed_best_static,
            shape: args.mixed_shape,
            tenants: args.mixed_tenants,
            fair_share: !args.fair_share_off,
            timeline: args.mixed_timeline.clone(),
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", mixed::render(&report));
        }
        return Ok(());
    }
    let options = BenchOptions {
        jobs: args.jobs,
        workers: args.workers,
        prefetch: args.prefetch,
        payload_bytes: args.payload_bytes,
        queue_type: args.queue_type,
        runs: args.runs.max(1),
        latency_samples: args.latency_samples,
        sleep_jobs: args.sleep_jobs,
        sleep_ms: args.sleep_ms,
        gpu_prefetch: args.gpu_prefetch,
        sleep_vram_meter: args.sleep_vram_meter,
    };
    let figures = bench::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        println!(
            "gpuq-bench: {} jobs x {} runs, {} workers (prefetch {}), {} B payload, {} queues",
            options.jobs,
            options.runs,
            options.workers,
            options.prefetch,
            options.payload_bytes,
            options.queue_type
        );
        print!("{}", bench::render(&figures));
    }
    Ok(())
}

fn parse_shape(text: &str) -> Result<mixed::shapes::TraceShape, String> {
    mixed::shapes::TraceShape::parse(text)
        .ok_or_else(|| format!("'{text}': one of bursts, hot-spot, long-tail"))
}
