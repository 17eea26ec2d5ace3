//! The CUDA correctness suites, listed once: `gpu-check` runs each from a carried test
//! executable on the GPU machine, and `cargo xtask emu` runs each through cargo on the emulator,
//! so every suite the GPU check runs has already passed on the emulator in CI.

/// One run of a test executable on the CUDA backend.
pub struct Suite {
    /// The step's name in the report (and its log's file name).
    pub name: &'static str,
    /// The Cargo package that holds the test.
    pub package: &'static str,
    /// The integration test's name (`--test NAME`; also the carried executable's file name).
    pub test: &'static str,
    /// Whether the suite loads its models on CUDA (`TURBINE_TEST_BACKEND=cuda`); the op suite and
    /// `cuda_vs_cpu` open both backends themselves.
    pub models_on_cuda: bool,
    /// Further environment: the configuration under test.
    pub env: &'static [(&'static str, &'static str)],
}

const GRAPHS: (&str, &str) = ("TURBINE_CUDA_GRAPHS", "1");
const FAST: (&str, &str) = ("TURBINE_CUDA_PRODUCTS", "fast");
/// 16-bit and 8-bit weights back on the gemv tiles (the tensor-core products off).
const GEMV_TILES: (&str, &str) = ("TURBINE_CUDA_MMA", "off");

/// Every suite, in the order they run. Each one must pass: a configuration whose results are
/// known to differ from a suite's expectation (fast products are not batch invariant) is checked
/// by the suites that compare within a tolerance, not by the bitwise one.
pub const SUITES: &[Suite] = &[
    Suite { name: "ops", package: "turbine-kernels-cuda", test: "ops_vs_ref", models_on_cuda: false, env: &[] },
    Suite { name: "golden-tiny", package: "turbine-tests", test: "golden_tiny", models_on_cuda: true, env: &[] },
    Suite { name: "engine", package: "turbine-tests", test: "engine", models_on_cuda: true, env: &[] },
    Suite {
        name: "batch-invariance",
        package: "turbine-tests",
        test: "batch_invariance",
        models_on_cuda: true,
        env: &[],
    },
    Suite {
        name: "batch-invariance-graphs",
        package: "turbine-tests",
        test: "batch_invariance",
        models_on_cuda: true,
        env: &[GRAPHS],
    },
    Suite { name: "cuda-vs-cpu", package: "turbine-tests", test: "cuda_vs_cpu", models_on_cuda: false, env: &[] },
    // The gemv tiles that the tensor-core products replaced, kept as the fallback.
    Suite {
        name: "ops-gemv-tiles",
        package: "turbine-kernels-cuda",
        test: "ops_vs_ref",
        models_on_cuda: false,
        env: &[GEMV_TILES],
    },
    Suite {
        name: "batch-invariance-gemv-tiles",
        package: "turbine-tests",
        test: "batch_invariance",
        models_on_cuda: true,
        env: &[GEMV_TILES],
    },
    // cuBLASLt's products (more than 8 rows), FP8 E4M3 included, against the CPU's emulation.
    Suite {
        name: "ops-fast-products",
        package: "turbine-kernels-cuda",
        test: "ops_vs_ref",
        models_on_cuda: false,
        env: &[FAST],
    },
    Suite {
        name: "cuda-vs-cpu-fast-products",
        package: "turbine-tests",
        test: "cuda_vs_cpu",
        models_on_cuda: false,
        env: &[FAST],
    },
];

impl Suite {
    /// The whole environment of a run: the configuration, and the backend the models load on.
    pub fn all_env(&self) -> Vec<(&'static str, &'static str)> {
        let mut env = self.env.to_vec();
        if self.models_on_cuda {
            env.push(("TURBINE_TEST_BACKEND", "cuda"));
        }
        env
    }

    /// The `run.sh` line that runs this suite from the carried executable in `$bin`.
    pub fn run_sh_line(&self) -> String {
        let env: String = self.all_env().iter().map(|(k, v)| format!(" {k}={v}")).collect();
        format!(
            "step {} env TURBINE_FIXTURES=\"$PWD/tests/fixtures\"{env} \"$bin/{}\" --test-threads 1 --nocapture",
            self.name, self.test
        )
    }
}

/// The distinct test executables the suites need, as (package, test).
pub fn executables() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for s in SUITES {
        if !out.contains(&(s.package, s.test)) {
            out.push((s.package, s.test));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_a_file_name() {
        for (i, s) in SUITES.iter().enumerate() {
            assert!(SUITES[..i].iter().all(|o| o.name != s.name), "{} twice", s.name);
            assert!(s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{}", s.name);
        }
    }

    #[test]
    fn a_run_sh_line_sets_the_configuration_and_the_backend() {
        let s = SUITES.iter().find(|s| s.name == "batch-invariance-graphs").unwrap();
        assert_eq!(
            s.run_sh_line(),
            "step batch-invariance-graphs env TURBINE_FIXTURES=\"$PWD/tests/fixtures\" TURBINE_CUDA_GRAPHS=1 \
             TURBINE_TEST_BACKEND=cuda \"$bin/batch_invariance\" --test-threads 1 --nocapture"
        );
        assert_eq!(executables().len(), 5);
    }
}
