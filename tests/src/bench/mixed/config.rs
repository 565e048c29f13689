//! The mixed benchmark's runs and the config body of each.

use super::{
    best_static, SyntheticModel, GPU_MEMORY_MIB, HEARTBEAT_INTERVAL_MS, MAX_MODELS_PER_WORKER,
};

/// The runs of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Naive,
    /// Placement off, each worker pinned to its set of the best static
    /// assignment (declared slots with model lists).
    Static,
    Placement,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Static => "best static",
            Mode::Placement => "placement",
        }
    }

    fn placement_section(self) -> String {
        match self {
            Mode::Naive | Mode::Static => "[placement]\nenabled = false\n".to_owned(),
            Mode::Placement => "[placement]\nenabled = true\n".to_owned(),
        }
    }
}

/// The config body of one run (`TestSystem` adds namespace and URLs);
/// `slots`: each worker's models, for [`Mode::Static`].
pub fn system_config(
    mode: Mode,
    models: &[SyntheticModel],
    workers: usize,
    fair_share: bool,
    slots: Option<&[best_static::ModelSet]>,
) -> String {
    let mut text = format!(
        r#"
[tenants]
fair_share = {fair_share}
[worker]
concurrency = 1
prefetch = 1
heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}
heartbeat_ttl_ms = 5000
shutdown_grace_s = 10
[dispatcher]
host_id = "bench"
workers_per_gpu = 1
vram_reserve_mib = 0
max_models_per_worker = {MAX_MODELS_PER_WORKER}
"#
    );
    for index in 0..workers {
        text.push_str(&format!(
            "[[dispatcher.gpus]]\nindex = {index}\nmemory_mib = {GPU_MEMORY_MIB}\n"
        ));
    }
    for (index, set) in slots.unwrap_or_default().iter().enumerate() {
        let ids: Vec<String> = set
            .iter()
            .map(|&m| format!("\"{}\"", models[m].id))
            .collect();
        text.push_str(&format!(
            "[[dispatcher.slots]]\ngpu = {index}\nmodels = [{}]\n",
            ids.join(", ")
        ));
    }
    text.push_str(&mode.placement_section());
    for model in models {
        text.push_str(&format!(
            "[[models]]\nid = \"{id}\"\nfeature = \"{id}\"\nruntime = \"sleep\"\nvram_mib = {vram}\n[models.params]\nduration_ms = {duration}\nload_ms = {load}\n",
            id = model.id,
            vram = model.vram_mib,
            duration = model.duration_ms,
            load = model.load_ms,
        ));
    }
    text
}
