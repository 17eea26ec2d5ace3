//! The architectures Turbine runs, one file each in this folder. Adding one: a new file here and
//! one line in `registry!` below (which also declares its module).

use turbine_core::Ops;

use crate::config::HfConfig;
use crate::model::{Architecture, Model};
use crate::weights::Weights;
use crate::{ModelError, Result};

macro_rules! registry {
    ($($module:ident => $ty:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every supported `config.json` architecture name.
        pub fn supported() -> Vec<&'static str> {
            let mut names = Vec::new();
            $(names.extend_from_slice($module::HF_NAMES);)*
            names
        }

        /// Fails with [`ModelError::UnknownArch`] unless the config's architecture is supported, and
        /// with [`ModelError::Config`] when a value that feeds the arithmetic is unsound
        /// ([`HfConfig::validate_values`]).
        pub fn check(cfg: &HfConfig) -> Result<()> {
            let arch = cfg.arch()?;
            if supported().contains(&arch) {
                cfg.validate_values()
            } else {
                Err(ModelError::UnknownArch { name: arch.to_string(), supported: supported().join(", ") })
            }
        }

        /// Builds the model the config names.
        pub fn build<B: Ops>(cfg: &HfConfig, w: &Weights<'_, B>) -> Result<Box<dyn Model<B>>> {
            check(cfg)?;
            let arch = cfg.arch()?;
            $(if $module::HF_NAMES.contains(&arch) {
                return Ok(Box::new($module::$ty::<B>::load(cfg, w)?));
            })*
            unreachable!("check() accepted {arch}")
        }
    };
}

registry! {
    llama => Llama,
    mistral => Mistral,
    qwen2 => Qwen2,
    qwen3 => Qwen3,
    phi3 => Phi3,
    gemma3 => Gemma3,
    gpt2 => Gpt2,
    gptneox => GptNeoX,
    bloom => Bloom,
    falcon => Falcon,
}
