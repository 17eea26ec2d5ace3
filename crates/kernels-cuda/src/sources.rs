//! The CUDA C sources of the backend's kernels (`cu/*.cu`), embedded in the crate so that a
//! binary can compile them with NVRTC wherever it runs.

/// One kernel file.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File stem (`norm` for `cu/norm.cu`).
    pub name: &'static str,
    /// The source as written, `#include "common.cuh"` included.
    pub src: &'static str,
}

/// Helpers every kernel file includes (`cu/common.cuh`).
pub const COMMON: &str = include_str!("../cu/common.cuh");

/// Every kernel file.
pub const SOURCES: &[KernelSource] = &[
    KernelSource { name: "embed", src: include_str!("../cu/embed.cu") },
    KernelSource { name: "norm", src: include_str!("../cu/norm.cu") },
    KernelSource { name: "rope", src: include_str!("../cu/rope.cu") },
    KernelSource { name: "act", src: include_str!("../cu/act.cu") },
    KernelSource { name: "fp8", src: include_str!("../cu/fp8.cu") },
    KernelSource { name: "attention", src: include_str!("../cu/attention.cu") },
    KernelSource { name: "flash", src: include_str!("../cu/flash.cu") },
    KernelSource { name: "sample", src: include_str!("../cu/sample.cu") },
    KernelSource { name: "gemm", src: include_str!("../cu/gemm.cu") },
    KernelSource { name: "mma", src: include_str!("../cu/mma.cu") },
    KernelSource { name: "gguf", src: include_str!("../cu/gguf.cu") },
];

impl KernelSource {
    /// The source with `common.cuh` pasted in place of its include, as NVRTC compiles it (NVRTC
    /// has no file system access to the crate's folder on another machine).
    /// `#line` directives keep compiler messages pointing at the right file and line.
    pub fn expanded(&self) -> String {
        let mut out = String::with_capacity(self.src.len() + COMMON.len() + 64);
        for (i, line) in self.src.lines().enumerate() {
            if line.trim() == "#include \"common.cuh\"" {
                out.push_str("#line 1 \"common.cuh\"\n");
                out.push_str(COMMON);
                out.push_str(&format!("\n#line {} \"{}.cu\"\n", i + 2, self.name));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_includes_the_helpers_once_and_names_are_unique() {
        for s in SOURCES {
            assert_eq!(s.src.matches("#include \"common.cuh\"").count(), 1, "{}", s.name);
            assert!(!s.expanded().contains("#include \"common.cuh\""));
        }
        let mut names: Vec<_> = SOURCES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SOURCES.len());
    }
}
