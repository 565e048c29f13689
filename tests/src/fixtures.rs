//! One builder for the tests' configs: hosts, GPUs, models and any other
//! section, so a test says its scenario ("one host with an 8 GiB GPU serving
//! echo and a huge model") instead of repeating TOML blocks.

use std::path::Path;

use crate::TestSystem;

/// A `gpuq.toml` body for a [`TestSystem`] (which adds the namespace, the
/// broker URLs and fast heartbeats).
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    sections: Vec<String>,
    host_id: Option<String>,
    /// More `[dispatcher]` keys, e.g. `workers_per_gpu = 2`.
    dispatcher_keys: Vec<String>,
    /// Declared GPUs: memory and display name.
    gpus: Vec<(u64, Option<String>)>,
    models: Vec<ModelBlock>,
}

/// One `[[models]]` entry: its keys, then its `[models.params]` table.
#[derive(Debug, Clone)]
struct ModelBlock {
    /// `id`, `feature`, `runtime`, `vram_mib` and any more keys, one a line.
    keys: Vec<String>,
    /// The lines of its `[models.params]` table (none: no table).
    params: Vec<String>,
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Host `host-a` with one 16 GiB GPU serving `echo` (256 MiB) and a
    /// 4 GiB `sleep` model, both with `timeout_s = 30`; tests time out a
    /// hanging `sleep` job after a second (`min_timeout_s = 1`; production
    /// keeps the 10 s floor).
    pub fn echo_and_sleep() -> ConfigBuilder {
        ConfigBuilder::new()
            .host("host-a")
            .gpu(16384)
            .model("echo", "echo", 256)
            .model_keys("timeout_s = 30")
            .model("sleep", "sleep", 4096)
            .model_keys("timeout_s = 30\nmin_timeout_s = 1")
    }

    /// The usual scenario: host `host-a` with one 8 GiB GPU.
    pub fn one_host() -> ConfigBuilder {
        ConfigBuilder::new().host("host-a").gpu(8192)
    }

    /// Raw TOML written before the dispatcher and models: a section
    /// (`[gateway]` ...) or top-level keys.
    pub fn section(mut self, toml: &str) -> ConfigBuilder {
        self.sections.push(toml.trim().to_owned());
        self
    }

    /// The dispatcher's `host_id`.
    pub fn host(mut self, host_id: &str) -> ConfigBuilder {
        self.host_id = Some(host_id.to_owned());
        self
    }

    /// One more `[dispatcher]` key (`workers_per_gpu = 2`).
    pub fn dispatcher(mut self, key_value: &str) -> ConfigBuilder {
        self.dispatcher_keys.push(key_value.trim().to_owned());
        self
    }

    /// One more declared GPU (indices in order), with this much memory.
    pub fn gpu(mut self, memory_mib: u64) -> ConfigBuilder {
        self.gpus.push((memory_mib, None));
        self
    }

    /// Like [`ConfigBuilder::gpu`], with the name it shows.
    pub fn gpu_named(mut self, memory_mib: u64, name: &str) -> ConfigBuilder {
        self.gpus.push((memory_mib, Some(name.to_owned())));
        self
    }

    /// A model serving the feature of the same name.
    pub fn model(self, id: &str, runtime: &str, vram_mib: u64) -> ConfigBuilder {
        self.model_with(id, runtime, vram_mib, "")
    }

    /// A model with more keys after its four (`timeout_s = 30`, or a
    /// `[models.params]` table).
    pub fn model_with(self, id: &str, runtime: &str, vram_mib: u64, extra: &str) -> ConfigBuilder {
        self.model_of_feature(id, id, runtime, vram_mib, extra)
    }

    /// A model serving another feature than its id.
    pub fn model_of_feature(
        mut self,
        id: &str,
        feature: &str,
        runtime: &str,
        vram_mib: u64,
        extra: &str,
    ) -> ConfigBuilder {
        self.models.push(ModelBlock {
            keys: vec![
                format!("id = \"{id}\""),
                format!("feature = \"{feature}\""),
                format!("runtime = \"{runtime}\""),
                format!("vram_mib = {vram_mib}"),
            ],
            params: Vec::new(),
        });
        let (keys, params) = extra.split_once("[models.params]").unwrap_or((extra, ""));
        self.model_keys(keys).params(params)
    }

    /// The synthetic `echo` model (256 MiB) under `id`.
    pub fn echo(self, id: &str) -> ConfigBuilder {
        self.model(id, "echo", 256)
    }

    /// The synthetic `sleep` model under `id` (its feature too): each job
    /// sleeps `duration_ms` unless its inputs say otherwise.
    pub fn sleep_model(self, id: &str, vram_mib: u64, duration_ms: u64) -> ConfigBuilder {
        self.model(id, "sleep", vram_mib)
            .params(&format!("duration_ms = {duration_ms}"))
    }

    /// A model of the `adapter` runtime: `python3 script_path` speaking the
    /// adapter protocol, given `settings_toml` (the inside of an inline
    /// table, `load_seconds = 0.1`; empty: no `settings`) when it loads.
    pub fn adapter(
        self,
        id: &str,
        feature: &str,
        vram_mib: u64,
        script_path: &Path,
        settings_toml: &str,
    ) -> ConfigBuilder {
        let builder = self
            .model_of_feature(id, feature, "adapter", vram_mib, "")
            .params(&format!(
                "command = [\"python3\", \"{}\"]",
                script_path.display()
            ));
        if settings_toml.trim().is_empty() {
            return builder;
        }
        builder.params(&format!("settings = {{ {} }}", settings_toml.trim()))
    }

    /// More keys of the model added last (`timeout_s = 30`), one a line.
    pub fn model_keys(mut self, toml: &str) -> ConfigBuilder {
        let model = self.models.last_mut().expect("add a model before its keys");
        model.keys.extend(toml_lines(toml));
        self
    }

    /// More `[models.params]` keys of the model added last (`load_ms = 400`).
    pub fn params(mut self, toml: &str) -> ConfigBuilder {
        let model = self
            .models
            .last_mut()
            .expect("add a model before its params");
        model.params.extend(toml_lines(toml));
        self
    }

    /// The model added last (a `sleep` model) appends `<tag input> <start ms>`
    /// to the file at `path` on each run, so a test can count runs.
    pub fn run_log(self, path: &Path) -> ConfigBuilder {
        self.params(&format!("run_log = \"{}\"", path.display()))
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        for section in &self.sections {
            out.push_str(section);
            out.push('\n');
        }
        if self.host_id.is_some() || !self.gpus.is_empty() || !self.dispatcher_keys.is_empty() {
            out.push_str("[dispatcher]\n");
            if let Some(host_id) = &self.host_id {
                out.push_str(&format!("host_id = \"{host_id}\"\n"));
            }
            for key_value in &self.dispatcher_keys {
                out.push_str(key_value);
                out.push('\n');
            }
            for (index, (memory_mib, name)) in self.gpus.iter().enumerate() {
                out.push_str(&format!(
                    "[[dispatcher.gpus]]\nindex = {index}\nmemory_mib = {memory_mib}\n"
                ));
                if let Some(name) = name {
                    out.push_str(&format!("name = \"{name}\"\n"));
                }
            }
        }
        for model in &self.models {
            out.push_str("[[models]]\n");
            for line in &model.keys {
                out.push_str(line);
                out.push('\n');
            }
            if !model.params.is_empty() {
                out.push_str("[models.params]\n");
            }
            for line in &model.params {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// A system with this config.
    pub fn system(&self) -> TestSystem {
        TestSystem::new(&self.build())
    }
}

/// The non-empty lines of a TOML snippet, trimmed.
fn toml_lines(toml: &str) -> impl Iterator<Item = String> + '_ {
    toml.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ConfigBuilder;

    #[test]
    fn the_builder_writes_sections_then_the_dispatcher_then_models_and_it_loads() {
        let text = ConfigBuilder::one_host()
            .section("[gateway]\nmax_queue_depth = 1")
            .echo("echo")
            .model_with(
                "sleep",
                "sleep",
                4096,
                "timeout_s = 60\n[models.params]\nduration_ms = 5",
            )
            .build();
        let config = gpuq_common::Config::parse(&text, None, &Default::default()).unwrap();
        assert_eq!(config.gateway.max_queue_depth, 1);
        assert_eq!(config.dispatcher.host_id.as_deref(), Some("host-a"));
        assert_eq!(config.dispatcher.gpus[0].memory_mib, 8192);
        assert_eq!(config.models.len(), 2);
        assert_eq!(config.models[1].timeout_s, 60);
    }

    #[test]
    fn keys_and_params_go_to_the_model_added_last_in_one_params_table() {
        let text = ConfigBuilder::new()
            .adapter(
                "toy",
                "text_to_mesh",
                512,
                Path::new("/srv/adapter.py"),
                "load_seconds = 0.1",
            )
            .model_keys("timeout_s = 30\nmin_timeout_s = 1")
            .sleep_model("sleep", 1024, 10)
            .run_log(Path::new("/tmp/runs.log"))
            .params("allow_crash_inputs = true")
            .build();
        assert_eq!(text.matches("[models.params]").count(), 2, "{text}");
        let config = gpuq_common::Config::parse(&text, None, &Default::default()).unwrap();
        let (toy, sleep) = (&config.models[0], &config.models[1]);
        assert_eq!((toy.feature.as_str(), toy.timeout_s), ("text_to_mesh", 30));
        assert_eq!(toy.min_timeout_s_setting, Some(1));
        let command: Vec<_> = toy.params["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|word| word.as_str().unwrap())
            .collect();
        assert_eq!(command, ["python3", "/srv/adapter.py"]);
        assert_eq!(toy.params["settings"]["load_seconds"].as_float(), Some(0.1));
        assert_eq!(sleep.params["duration_ms"].as_integer(), Some(10));
        assert_eq!(sleep.params["run_log"].as_str(), Some("/tmp/runs.log"));
        assert_eq!(sleep.params["allow_crash_inputs"].as_bool(), Some(true));
    }
}
