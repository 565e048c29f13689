//! One builder for the tests' configs: hosts, GPUs, models and any other
//! section, so a test says its scenario ("one host with an 8 GiB GPU serving
//! echo and a huge model") instead of repeating TOML blocks.

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
    models: Vec<String>,
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
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
        let mut block = format!(
            "[[models]]\nid = \"{id}\"\nfeature = \"{feature}\"\nruntime = \"{runtime}\"\nvram_mib = {vram_mib}\n"
        );
        if !extra.trim().is_empty() {
            block.push_str(extra.trim());
            block.push('\n');
        }
        self.models.push(block);
        self
    }

    /// The synthetic `echo` model (256 MiB) under `id`.
    pub fn echo(self, id: &str) -> ConfigBuilder {
        self.model(id, "echo", 256)
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
            out.push_str(model);
        }
        out
    }

    /// A system with this config.
    pub fn system(&self) -> TestSystem {
        TestSystem::new(&self.build())
    }
}

#[cfg(test)]
mod tests {
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
}
